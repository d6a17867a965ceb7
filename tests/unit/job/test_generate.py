"""The plan and generate stages under batching: order, voices, retries and splitting, with faults
injected at the model boundary (the real tiny model underneath)."""


import numpy as np
import pytest
import torch

from tests.helpers.config import load_model, make_job
from tests.helpers.faults import model_calls
from tests.helpers.media import agrees
from tts_runner.audio.codec import SAMPLES_PER_FRAME
from tts_runner.errors import GenerationError, InputError
from tts_runner.job.events import Events
from tts_runner.job.generate import generate, make_batches
from tts_runner.job.plan import plan
from tts_runner.job.run import synthesize


@pytest.fixture
def model(batch_model):
    """Faults are injected per batch call: the batch path (conftest's batch_model)."""
    return batch_model


SENTENCES = [f"Sentence number {i} says something {'rather ' * (i % 5)}different." for i in range(12)]


def made(model, job) -> tuple[dict, object]:
    """Each chunk's audio by index, and the stats, from the plan and generate stages."""
    results: dict = {}
    chunks = plan(job, model)
    stats = generate(model, chunks, job, Events(result=lambda chunk, wav: results.update({chunk.index: wav})))
    return chunks, results, stats


def test_plan_spans_segments_and_voices(model):
    spec = make_job({"segments": [{"text": " ".join(SENTENCES[:6]), "voice": "male_1"},
                                  {"text": "Short reply.", "voice": "Female_1"},
                                  {"text": " ".join(SENTENCES[6:])}]}, ["chunking.max_chars=60"])
    planned = plan(spec, model)
    chunks = planned.chunks
    assert planned.segments == 3 and [c.index for c in chunks] == list(range(len(chunks)))
    assert {c.request.speaker for c in chunks if c.segment == 0} == {"ryan"}
    assert {c.request.speaker for c in chunks if c.segment == 1} == {"vivian"}
    assert {c.request.speaker for c in chunks if c.segment == 2} == {"ryan"}  # job default voice
    assert all(c.request.language == "english" for c in chunks)


def test_unknown_voice_and_language_are_input_errors(model):
    with pytest.raises(InputError, match=r"^Invalid input at \$.voice: unknown voice 'nobody'. Available: aliases female_1"):
        plan(make_job({"text": "Hi.", "voice": "nobody"}), model)
    segments = [{"text": "a"}, {"text": "b", "voice": "Ghost"}]
    with pytest.raises(InputError, match=r"^Invalid input at \$.segments\[1\].voice: unknown voice 'Ghost'"):
        plan(make_job({"segments": segments}), model)
    with pytest.raises(InputError, match=r"^Invalid input at \$.params.language: unknown language 'xx'"):
        plan(make_job({"text": "Hi.", "params": {"language": "xx"}}), model)
    for language in ("en", "English", "auto", "zh"):
        plan(make_job({"text": "Hi.", "params": {"language": language}}), model)


def test_batches_group_similar_lengths_within_limits(model):
    chunks = plan(make_job({"segments": [{"text": s} for s in SENTENCES]}), model).chunks
    batches = make_batches(chunks, max_batch_size=4, max_batch_chars=150)
    assert sorted(c.index for b in batches for c in b) == list(range(12))
    assert all(len(b) <= 4 and sum(len(c.request.text) for c in b) <= 150 for b in batches)
    lengths = [len(c.request.text) for b in batches for c in b]
    assert lengths == sorted(lengths, reverse=True)
    assert [len(b) for b in make_batches(chunks, 1, 10_000)] == [1] * 12


@pytest.mark.parametrize("batch_size", [1, 5, 16])
def test_batched_output_matches_the_job_in_order_count_and_voice(model, batch_size):
    voices = ["male_1", "female_1", "male_2"]
    segments = [{"text": s, "voice": voices[i % 3]} for i, s in enumerate(SENTENCES)]
    # chunks end where the model ends them (a seed of the test's: whichever lengths a drawn one gave,
    # a chunk that ran to the cap would be a runaway made again, and each batch one call more)
    spec = make_job({"segments": segments, "params": {"seed": 11}},
                    [f"batching.max_batch_size={batch_size}", "sampling.min_new_tokens=2", "sampling.max_new_tokens=40",
                     "batching.min_seconds_per_char=0", "batching.runaway=keep"])
    steps = []  # the talker scores the next code once per step it runs, whatever the engine
    hook = model.tts.model.talker.codec_head.register_forward_hook(lambda *args: steps.append(1))
    try:
        with model_calls(model) as calls:
            planned, results, stats = made(model, spec)
    finally:
        hook.remove()
    chunks = planned.chunks
    assert sorted(results) == [c.index for c in chunks]
    assert len(calls) == -(-len(chunks) // batch_size) and max(map(len, calls)) == min(batch_size, len(chunks))
    # every chunk was generated with its own segment's voice
    seen = {text: speaker for call in calls for text, speaker in call}
    expected = {"male_1": "ryan", "female_1": "vivian", "male_2": "aiden"}
    assert all(seen[c.request.text] == expected[voices[c.segment % 3]] for c in chunks)
    # durations are whole codec frames, as many as the model generated (at most 39 at max_new_tokens 40)
    frames = [w.size // SAMPLES_PER_FRAME for w in results.values()]
    assert all(w.size % SAMPLES_PER_FRAME == 0 for w in results.values()) and 0 < min(frames) < max(frames) <= 39
    assert stats.model_seconds > 0 and stats.retries == 0
    assert stats.frame_steps == len(steps)


def test_a_chunk_that_raises_twice_succeeds_on_the_third_try(model):
    spec = make_job({"text": "Only one chunk here."})

    def fault(call, texts, wavs):
        if call <= 2:
            raise RuntimeError(f"injected failure {call}")

    with model_calls(model, fault) as calls:
        out = synthesize(spec, model)
    assert len(calls) == 3 and out.stats.retries == 2 and out.duration_seconds == 1.2


def test_a_chunk_that_always_raises_fails_the_job_naming_segment_and_chunk(model):
    spec = make_job({"segments": [{"text": "Fine."}, {"text": "First part. " * 12 + "Bad part is here."}]})

    def fault(call, texts, wavs):
        if any("Bad part" in t for t in texts):
            raise RuntimeError("injected model failure")

    with model_calls(model, fault), pytest.raises(GenerationError) as info:
        synthesize(spec, model)
    assert str(info.value) == ("Generation failed on segment 2 of 2, chunk 2 of 2 after 3 attempts: "
                               "RuntimeError: injected model failure")


@pytest.mark.parametrize("bad", ["empty", "nan", "short"])
def test_bad_audio_is_retried_never_encoded(model, bad):
    spec = make_job({"segments": [{"text": s} for s in SENTENCES[:4]]})
    target = SENTENCES[2]

    def fault(call, texts, wavs):
        if call == 1:
            wavs = list(wavs)
            i = texts.index(target)
            wavs[i] = {"empty": np.zeros(0, np.float32), "nan": np.full(wavs[i].size, np.nan, np.float32),
                       "short": wavs[i][:SAMPLES_PER_FRAME]}[bad]
            return wavs
        return None

    with model_calls(model, fault) as calls:
        out = synthesize(spec, model)
    assert out.stats.retries == 1 and len(calls) == 2 and [t for t, _ in calls[1]] == [target]
    assert out.duration_seconds == pytest.approx(4 * 1.2 + 3 * 0.2, abs=0.01)


def test_bad_audio_three_times_is_an_error(model):
    spec = make_job({"text": "Always silent."})
    with model_calls(model, lambda c, t, w: [np.zeros(0, np.float32)] * len(t)), \
            pytest.raises(GenerationError, match="segment 1 of 1, chunk 1 of 1 after 3 attempts: the model returned empty audio"):
        synthesize(spec, model)


def test_out_of_memory_splits_the_batch_down_to_what_fits(model):
    spec = make_job({"segments": [{"text": s} for s in SENTENCES[:8]]}, ["batching.max_batch_size=8"])

    def fault(call, texts, wavs):
        if len(texts) > 2:
            raise torch.cuda.OutOfMemoryError("CUDA out of memory (injected)")

    with model_calls(model, fault) as calls:
        out = synthesize(spec, model)
    assert [len(c) for c in calls] == [8, 4, 2, 2, 4, 2, 2]
    assert out.stats.splits == 3 and out.stats.retries == 0 and out.metadata["num_chunks"] == 8


def test_out_of_memory_even_alone_is_a_clear_error(model):
    spec = make_job({"segments": [{"text": s} for s in SENTENCES[:2]]})

    def fault(call, texts, wavs):
        raise torch.cuda.OutOfMemoryError("CUDA out of memory (injected)")

    with model_calls(model, fault), pytest.raises(GenerationError, match="OutOfMemoryError: CUDA out of memory"):
        synthesize(spec, model)


@pytest.mark.parametrize("fmt", ["wav", "mp3"])
def test_duration_in_metadata_is_that_of_the_audio_made(model, fmt):
    spec = make_job({"segments": [{"text": SENTENCES[0]}, {"text": SENTENCES[1] + " " + SENTENCES[2]}],
                     "output_format": fmt}, ["chunking.max_chars=60"])
    out = synthesize(spec, model)
    # 3 chunks of 1.2 s, one 40 ms crossfade inside segment 2, one 200 ms gap
    assert out.duration_seconds == 3 * 1.2 - 0.04 + 0.2
    assert out.metadata["duration_seconds"] == out.duration_seconds
    assert agrees(out.data, fmt, out.duration_seconds)  # and the file, read by other code, says so


def test_tiny_model_stops_at_speech_like_lengths_above_the_floor(model):
    spec = make_job({"segments": [{"text": s} for s in SENTENCES],
                     "params": {"max_new_tokens": 200, "min_new_tokens": 20, "seed": 11}},
                    ["batching.min_seconds_per_char=0", "batching.runaway=keep"])
    _, results, stats = made(model, spec)
    frames = sorted(w.size // SAMPLES_PER_FRAME for w in results.values())
    assert frames[0] >= 20 and frames[-1] <= 199 and len(set(frames)) > 3, frames
    assert stats.retries == 0


def test_too_short_for_the_text_is_retried(model):
    # 71 characters at batching.min_seconds_per_char 0.02: at least 1.42 s, capped at 1.2 s
    spec = make_job({"text": "A sentence of some length that needs more than a fraction of a second."},
                    ["batching.min_seconds_per_char=0.02"])

    def fault(call, texts, wavs):
        return [w[: 10 * SAMPLES_PER_FRAME] for w in wavs] if call == 1 else None

    with model_calls(model, fault) as calls:
        out = synthesize(spec, model)
    assert len(calls) == 2 and out.stats.retries == 1 and out.duration_seconds == 1.2


def test_frame_steps_are_the_steps_the_engine_ran(tiny_env):
    """With a host check every 8 frames, a call runs on past its last chunk's end to the next check:
    the steps it ran, not its longest chunk's length, are what the bench divides by."""
    settings = ["sampling.min_new_tokens=2", "sampling.max_new_tokens=40", "batching.max_batch_size=4",
                "batching.min_seconds_per_char=0", "batching.runaway=keep", "sampling.seed=11"]
    model = load_model(["runtime.engine=fast", "runtime.sync_every=8", "scheduler.enabled=false", *settings])
    spec = make_job({"segments": [{"text": s} for s in SENTENCES]}, settings)
    steps = []
    hook = model.tts.model.talker.codec_head.register_forward_hook(lambda *args: steps.append(1))
    try:
        planned, results, stats = made(model, spec)
    finally:
        hook.remove()
    longest = sum(max(results[c.index].size for c in batch) // SAMPLES_PER_FRAME + 1
                  for batch in make_batches(planned.chunks, 4, spec.recipe.batching.max_batch_chars))
    assert stats.frame_steps == len(steps) > longest


@pytest.mark.parametrize("engine", ["stock", "fast", "graph"])
def test_progress_moves_during_a_batch(tiny_env, engine):
    """One batch of three chunks: seconds of audio made are reported while it runs, not only after."""
    model = load_model([f"runtime.engine={engine}", "runtime.graph.buckets=[1,2,4]", "runtime.graph.max_len=160",
                        "scheduler.enabled=false"])
    spec = make_job({"segments": [{"text": s} for s in SENTENCES[:3]]})
    seen = []
    out = synthesize(spec, model, progress=lambda done, total, seconds: seen.append((done, total, seconds)))
    during = [s for done, _, s in seen if done == 0]
    assert len(during) >= 10 and during == sorted(during) and 0 < during[-1]  # moving inside the one batch
    assert seen[-1][:2] == (3, 3) and seen[-1][2] == pytest.approx(3 * 1.2)
    assert out.stats.calls == 1


def test_finished_chunks_are_decoded_in_bounded_groups_in_order():
    from tts_runner.job import generate as generate_mod

    limit = generate_mod.DECODE_GROUP_FRAMES
    sizes = [0, 400] + [400] * 6 + [limit + 5, 10, 300]
    ready = [(i, None, torch.zeros(n, 16)) for i, n in enumerate(sizes)]
    groups = generate_mod._groups(ready)
    assert [item for group in groups for item in group] == ready  # all of them, once, in order
    for group in groups:  # within the bound, unless one chunk alone is past it
        assert len(group) == 1 or sum(item[2].shape[0] for item in group) <= limit
    assert [len(g) for g in groups] == [3, 2, 2, 1, 1, 2]
    assert generate_mod._groups([]) == []
