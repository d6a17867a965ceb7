"""Long jobs that hold up: the runaway guard, clean joins, matched loudness, segment places in the
metadata, and every output format (the tiny model underneath, faults injected where a real model
would misbehave)."""

import base64
import io
from dataclasses import replace

import numpy as np
import pyloudnorm
import pytest
from mutagen.mp3 import MP3

from tests.helpers.config import FAST, make_job
from tests.helpers.faults import model_calls
from tests.helpers.media import agrees
from tts_runner.audio.codec import SAMPLES_PER_FRAME
from tts_runner.edge import build
from tts_runner.edge import config as config_mod
from tts_runner.edge.worker import Worker
from tts_runner.errors import GenerationError
from tts_runner.job.plan import frame_budget
from tts_runner.job.run import run_job, synthesize
from tts_runner.tools.tiny_model import build_variant


@pytest.fixture
def model(batch_model):
    """Faults are injected per batch call: the batch path (conftest's batch_model)."""
    return batch_model


NINETY_SIX = "A sentence of ninety-six characters, give or take none, written so the budget sums are all exact"
assert len(NINETY_SIX) == 96


@pytest.fixture(scope="module")
def endless(tmp_path_factory, tiny_env):
    """A tiny model whose end-of-speech code never wins (`tiny_model --stop-bias -1`)."""
    folder = tmp_path_factory.mktemp("endless")
    build_variant(folder, "Qwen3-TTS-12Hz-1.7B-CustomVoice", stop_bias=-1.0)
    with pytest.MonkeyPatch.context() as patch:  # only while it loads: the session's worker must not see it
        patch.setenv("QWEN_TTS_MODEL_DIR", str(folder))
        cfg = config_mod.load(["runtime.engine=fast", "scheduler.enabled=false"])
        return build.model_store(cfg).get("1.7B-CustomVoice")


def speech_job(segments, *overrides, **params):
    """A job whose chunks may end where they like (the floor 2 frames), up to 400 frames."""
    return make_job({"segments": segments, "params": {"min_new_tokens": 2, "max_new_tokens": 400, "seed": 3, **params}},
                    ["batching.min_seconds_per_char=0", *overrides], base=["audio.trim.threshold_db=null"])


def test_a_chunk_whose_speech_never_ends_fails_the_job_with_one_clear_error(endless):
    model = endless
    with model_calls(model) as calls, pytest.raises(GenerationError) as info:
        synthesize(speech_job([{"text": NINETY_SIX}]), model)
    assert str(info.value) == ("Generation failed on segment 1 of 1, chunk 1 of 1 after 3 attempts: "
                               "speech did not end within 14.2 s for 96 characters")
    assert len(calls) == 3  # retried with a fresh seed each time, then given up


def test_each_row_stops_at_its_own_budget_while_the_others_go_on(endless):
    model = endless
    texts = ["Short one.", "A line of middling length, for the middle row.", NINETY_SIX]
    spec = speech_job([{"text": t} for t in texts], "batching.runaway=keep")
    response, job = run_job(spec, model)
    budgets = [frame_budget(t, spec.recipe.batching.frame_budget, 400, 2) for t in texts]
    assert len(set(budgets)) == 3 and max(budgets) < 399  # each far below max_new_tokens
    spans = [(s["end"] - s["start"]) for s in response["metadata"]["segments"]]
    assert spans == pytest.approx([b * SAMPLES_PER_FRAME / 24000 for b in budgets], abs=0.002)
    assert response["metadata"]["runaways"] == 3
    assert job.stats.frame_steps == max(budgets) + 1  # one batch, run to its longest budget, not to 400


def test_a_runaway_is_retried_counted_and_the_job_still_succeeds(model):
    spec = make_job({"text": "A chunk that runs on the first time only.", "params": {"min_new_tokens": 2}},
                    ["batching.min_seconds_per_char=0"])
    budget = frame_budget(spec.segments[0].text, spec.recipe.batching.frame_budget, 16, 2)

    def fault(call, texts, wavs):  # the first attempt runs to its budget, as a chunk that never ends would;
        # the second ends before it (whatever the tiny model drew: it may not end within 15 frames)
        if call == 1:
            return [np.resize(wavs[0], budget * SAMPLES_PER_FRAME)]
        return [wavs[0][: (budget - 2) * SAMPLES_PER_FRAME]]

    with model_calls(model, fault) as calls:
        response, _ = run_job(spec, model)
    assert len(calls) == 2 and response["metadata"]["runaways"] == 1


def padded(silence_before: float, silence_after: float, scale: dict | None = None):
    """A fault that puts silence around every chunk (and scales the chunks of some texts)."""
    def fault(call, texts, wavs):
        out = []
        for text, wav in zip(texts, wavs, strict=True):
            wav = wav * (scale or {}).get(text, 1.0)
            out.append(np.concatenate([np.zeros(int(silence_before * 24000), np.float32), wav,
                                       np.zeros(int(silence_after * 24000), np.float32)]))
        return out
    return fault


def silences(samples: np.ndarray, threshold_db: float = -50) -> list[float]:
    """The lengths (s) of the quiet runs strictly inside the audio, by 10 ms windows."""
    windows = samples[: samples.size // 240 * 240].reshape(-1, 240)
    quiet = np.sqrt(np.mean(np.square(windows.astype(np.float64)), axis=1)) < 10 ** (threshold_db / 20)
    runs, length = [], 0
    for q in quiet:
        if q:
            length += 1
        elif length:
            runs.append(length * 0.01)
            length = 0
    first_loud = int(np.argmin(quiet))
    return runs[1:] if first_loud else runs


def test_pauses_between_chunks_and_segments_are_the_configured_ones(model):
    payload = {"segments": [{"text": "First part of one. Second part of one."},
                            {"text": "First part of two. Second part of two."}], "output_format": "wav"}
    # two chunks per segment, trimmed to 30 ms beside the sound
    spec = make_job(payload, ["chunking.max_chars=20", "audio.trim.threshold_db=-50", "audio.trim.keep_ms=30"])
    with model_calls(model, padded(0.3, 0.5)):
        out = synthesize(spec, model)
    samples = np.frombuffer(out.data[44:], "<i2") / 32768
    gaps = silences(samples)
    # inside a segment: 30 ms kept each side, less the 40 ms crossfade; between segments: 200 ms and up to
    # 30 each side (a 10 ms window that holds a little sound does not count as quiet)
    assert 0.2 <= max(gaps) <= 0.27 and all(g <= 0.03 for g in sorted(gaps)[:-1])
    assert out.metadata["num_chunks"] == 4 and out.duration_seconds < 4 * 1.2 + 0.5  # not 4 x 0.8 s of padding
    with model_calls(model, padded(0.3, 0.5)):
        untrimmed = synthesize(make_job(payload, ["chunking.max_chars=20", "audio.trim.threshold_db=null"]), model)
    assert untrimmed.duration_seconds > out.duration_seconds + 2.5


def loudness(samples: np.ndarray) -> float:
    return pyloudnorm.Meter(24000).integrated_loudness(samples.astype(np.float64))


def test_two_voices_made_12_db_apart_end_at_the_target_loudness(model):
    quiet_text = "The quiet guest speaks here."
    spec = make_job({"segments": [{"text": "The host speaks at his own level.", "voice": "male_1"},
                                  {"text": quiet_text, "voice": "female_1"}], "params": {"seed": 5}})
    with model_calls(model, padded(0, 0, {quiet_text: 0.25})):  # -12 dB
        raw = synthesize(replace(spec, output=replace(spec.output, loudness_lufs=None)), model)
    with model_calls(model, padded(0, 0, {quiet_text: 0.25})):
        response, matched = run_job(spec, model)

    def levels(job):
        samples = np.frombuffer(job.data[44:], "<i2") / 32768
        return [loudness(samples[int(s["start"] * 24000):int(s["end"] * 24000)]) for s in job.metadata["segments"]]

    before, after = levels(raw), levels(matched)
    assert before[0] - before[1] > 8  # 12 dB apart as made, give or take the voices' own levels
    assert abs(after[0] - after[1]) < 1 and all(abs(v + 16) < 1 for v in after)
    assert response["metadata"]["segments"][1]["speaker"] == "vivian"


def test_segment_places_in_the_metadata_match_the_file(worker):
    out = worker.handle({"id": "where", "input": {"segments": [{"text": "One."}, {"text": "Two, a bit longer."},
                                                               {"text": "Three."}]}})
    meta = out["metadata"]
    places = meta["segments"]
    assert places[0]["start"] == 0 and places[-1]["end"] == meta["duration_seconds"]
    assert [round(b["start"] - a["end"], 3) for a, b in zip(places, places[1:], strict=False)] == [0.2, 0.2]
    assert [p["speaker"] for p in places] == ["ryan"] * 3


@pytest.mark.parametrize("fmt, rate", [("flac", 24000), ("flac", 48000), ("opus", 24000), ("opus", 48000),
                                       ("pcm", 16000), ("wav", 44100), ("mp3", 22050)])
def test_every_format_and_rate_decodes_back_to_the_metadata(worker, fmt, rate):
    out = worker.handle({"id": fmt, "input": {"text": "Formats and rates.", "output_format": fmt, "sample_rate": rate}})
    meta = out["metadata"]
    assert (meta["format"], meta["sample_rate"]) == (fmt, rate)
    data = base64.b64decode(out["audio_base64"])
    assert meta["duration_seconds"] == pytest.approx(1.2, abs=0.002) and agrees(data, fmt, meta["duration_seconds"], rate)


def test_mp3_bitrate_reaches_the_file(worker):
    out = worker.handle({"id": "kbps", "input": {"text": "Bitrate.", "output_format": "mp3", "mp3_bitrate": 64}})
    assert MP3(io.BytesIO(base64.b64decode(out["audio_base64"]))).info.bitrate == 64000


@pytest.mark.parametrize("payload, message", [
    ({"output_format": "opus", "sample_rate": 44100},
     "Invalid input at $.sample_rate: output_format 'opus' takes 8000, 12000, 16000, 24000, 48000 Hz; got 44100."),
    ({"output_format": "mp3", "mp3_bitrate": 320},
     "Invalid input at $.mp3_bitrate: MP3 at 24000 Hz goes up to 160 kbps; got 320 (ask for sample_rate 44100 or 48000 "
     "for more)."),
    ({"sample_rate": 11025}, "Invalid input at $.sample_rate: 11025 is not allowed; allowed: 8000, 12000, 16000, "
                             "22050, 24000, 32000, 44100, 48000."),
    ({"loudness_lufs": -60}, "Invalid input at $.loudness_lufs: must be >= -40 and <= -5, got -60."),
    ({"output_format": "ogg"}, "Invalid input at $.output_format: 'ogg' is not allowed; allowed: wav, mp3, flac, opus, aac, pcm."),
])
def test_bad_output_options_get_one_clear_error(worker, payload, message):
    assert worker.handle({"id": "bad", "input": {"text": "x", **payload}})["error"] == message


def test_opus_against_an_operators_44k_output_is_refused_too(tiny_env):
    worker = Worker.from_env(FAST + ["audio.sample_rate=44100"])
    error = worker.handle({"id": "op", "input": {"text": "x", "output_format": "opus"}})["error"]
    assert error.startswith("Invalid input at $.sample_rate: output_format 'opus' takes")


@pytest.mark.parametrize("override, message", [
    ("batching.runaway=ignore", "Invalid setting batching.runaway='ignore': use retry or keep."),
    ("batching.frame_budget.factor=0", "Invalid setting batching.frame_budget.factor=0: use a number from 0.1 to 100."),
    ("audio.trim.threshold_db=10", "Invalid setting audio.trim.threshold_db=10: use a number from -120 to 0 or null."),
    ("audio.true_peak_dbtp=3", "Invalid setting audio.true_peak_dbtp=3: use a number from -20 to 0."),
])
def test_bad_settings_are_start_up_errors(tiny_env, override, message):
    worker = Worker.from_env(FAST + [override])
    assert worker.handle({"input": {"text": "Hi."}})["error"] == f"The worker failed to start: {message}"


def test_chunk_places_in_the_metadata_tile_each_segment(tiny_env):
    """A segment of three chunks: its chunks start where it starts, end where it ends, and overlap
    each other by the crossfade (40 ms) at most."""
    worker = Worker.from_env([*FAST, "chunking.max_chars=30"])
    out = worker.handle({"id": "chunks", "input": {"segments": [
        {"text": "The first sentence. The second sentence. And a third one."}, {"text": "Short."}]}})
    first, second = out["metadata"]["segments"]
    chunks = first["chunks"]
    assert len(chunks) == 3 and len(second["chunks"]) == 1
    assert chunks[0]["start"] == first["start"] and chunks[-1]["end"] == first["end"]
    assert second["chunks"] == [{"start": second["start"], "end": second["end"]}]
    overlaps = [round(a["end"] - b["start"], 3) for a, b in zip(chunks, chunks[1:], strict=False)]
    assert all(0 < o <= 0.04 for o in overlaps), overlaps
