"""One voice from the first chunk to the last (tts_runner/job/design.py, voice/design.py,
voice/consistency.py), on the tiny models: a VoiceDesign job designs each voice once and clones it
with the Base model; per-chunk design still works; without the Base model the job says its voice
may change; clone modes make the prompts the library defines; a designed voice can be saved and
used again by name; the consistency score tells voices apart on espeak-ng recordings."""

import base64
from pathlib import Path

import numpy as np
import pytest
import soundfile as sf

from tests.helpers.config import FAST
from tests.helpers.media import file_seconds
from tests.helpers.servers import REPO
from tts_runner.edge.worker import Worker
from tts_runner.job.chunking import split_text
from tts_runner.voice import consistency
from tts_runner.voice.saved import StoreBounds

VOICES = Path(__file__).resolve().parents[1] / "fixtures" / "voices"
ANNA = base64.b64encode((REPO / "jobs" / "voices" / "anna.wav").read_bytes()).decode()
ANNA_SAYS = "Hello, I am Anna, and this is how I sound when I read the news."
LONG = " ".join(f"Sentence number {n} of a narration that runs on for several chunks." for n in range(1, 7))


class Seam:
    """The texts (and clone prompts) that reach the library's generate calls of one loaded model."""

    def __init__(self, monkeypatch, model, method: str):
        self.texts, self.prompts = [], []
        real = getattr(model.tts, method)

        def spy(*args, **kwargs):
            self.texts += list(kwargs["text"])
            self.prompts += list(kwargs.get("voice_clone_prompt") or [])
            return real(*args, **kwargs)

        monkeypatch.setattr(model.tts, method, spy)


@pytest.fixture
def designer(tiny_env, tmp_path, monkeypatch):
    monkeypatch.setenv("TTS_RUNNER_VOICES_DIR", str(tmp_path / "voices"))
    worker = Worker.from_env(FAST)
    assert worker.startup_error is None, worker.startup_error
    return worker


def design_job(**fields):
    return {"id": "design", "input": {"model": "1.7B-VoiceDesign", **fields}}


def test_a_long_job_designs_each_voice_once_and_clones_it_for_every_chunk(designer, monkeypatch):
    design = Seam(monkeypatch, designer.store.get("1.7B-VoiceDesign"), "generate_voice_design")
    clone = Seam(monkeypatch, designer.store.get("1.7B-Base"), "generate_voice_clone")
    warm, cold = "A warm, low male voice.", "A bright, quick female voice."
    out = designer.handle(design_job(segments=[{"text": LONG, "instruct": warm}, {"text": LONG, "instruct": cold},
                                               {"text": "The first voice again.", "instruct": warm}]))
    assert "error" not in out, out
    meta = out["metadata"]
    sentence = designer.edge.recipe.voices.design.sentence("english")
    assert design.texts == [sentence, sentence]  # one design per distinct voice, none per chunk
    chunks = [t for s in (LONG, LONG, "The first voice again.") for t in split_text(s, 120)]
    assert sorted(clone.texts) == sorted(chunks) and len(chunks) == meta["num_chunks"] > 3  # every chunk cloned
    voices = [s["voice"] for s in meta["segments"]]
    assert voices[0] == voices[2] != voices[1] and all(v.startswith("design:") for v in voices)
    # every chunk of one voice ran from the one prompt: the same object, made once
    by_voice = {}
    for text, prompt in zip(clone.texts, clone.prompts, strict=True):
        by_voice.setdefault(id(prompt), set()).add(text)
    assert len(by_voice) == 2
    assert [d["voice"] for d in meta["designs"]] == [voices[0], voices[1]]
    assert meta["designs"][0]["reference_text"] == sentence and meta["designs"][0]["clone_with"] == "1.7B-Base"
    assert meta["model"] == "1.7B-VoiceDesign" and "warnings" not in meta
    assert file_seconds(base64.b64decode(out["audio_base64"]), "wav") == meta["duration_seconds"]


def test_design_per_chunk_keeps_the_models_own_behaviour(designer, monkeypatch):
    design = Seam(monkeypatch, designer.store.get("1.7B-VoiceDesign"), "generate_voice_design")
    out = designer.handle(design_job(text=LONG, design="per_chunk", params={"instruct": "A calm voice."}))
    assert "error" not in out, out
    assert len(design.texts) == out["metadata"]["num_chunks"] > 1
    assert out["metadata"]["segments"][0]["voice"] == "design" and "designs" not in out["metadata"]


def test_without_the_base_model_the_job_runs_per_chunk_and_says_the_voice_may_change(model_dir, tmp_path, monkeypatch):
    only = tmp_path / "models"
    only.mkdir()
    for folder in model_dir.iterdir():
        if "Base" not in folder.name:
            (only / folder.name).symlink_to(folder)
    monkeypatch.setenv("QWEN_TTS_MODEL_DIR", str(only))
    monkeypatch.setenv("QWEN_TTS_DOWNLOAD", "false")
    worker = Worker.from_env(FAST)
    out = worker.handle(design_job(text=LONG, params={"instruct": "A calm voice."}))
    assert "error" not in out, out
    warning, = out["metadata"]["warnings"]
    assert warning.startswith("The voice may change between chunks: each chunk designed its own, because "
                              "voices.design.clone_with '1.7B-Base' is not under QWEN_TTS_MODEL_DIR")
    assert out["metadata"]["segments"][0]["voice"] == "design"


def test_xvector_and_icl_prompts_are_the_librarys_two_kinds(designer, monkeypatch):
    clone = Seam(monkeypatch, designer.store.get("1.7B-Base"), "generate_voice_clone")
    out = designer.handle({"input": {"model": "1.7B-Base", "ref_audio": ANNA, "ref_text": ANNA_SAYS, "segments": [
        {"text": "In context.", "clone_mode": "icl"}, {"text": "The embedding alone."}]}})
    assert "error" not in out, out
    icl, xvector = clone.prompts[clone.texts.index("In context.")], clone.prompts[clone.texts.index("The embedding alone.")]
    assert icl.icl_mode and not icl.x_vector_only_mode and icl.ref_text == ANNA_SAYS and icl.ref_code is not None
    assert xvector.x_vector_only_mode and not xvector.icl_mode and xvector.ref_code is None
    assert torch_equal(icl.ref_spk_embedding, xvector.ref_spk_embedding)  # the same speaker either way
    voices = [s["voice"] for s in out["metadata"]["segments"]]
    assert voices[0] != voices[1]  # two prompts of one recording, cached apart


def torch_equal(a, b) -> bool:
    return bool((a == b).all())


def test_icl_without_a_transcript_is_one_clear_error(designer):
    out = designer.handle({"input": {"model": "1.7B-Base", "text": "Hi.", "ref_audio": ANNA, "clone_mode": "icl"}})
    assert out["error"] == ("Invalid input at $.ref_text: clone_mode 'icl' clones in context, which needs what the "
                            "recording says; give ref_text, or use clone_mode 'xvector' (the speaker embedding alone).")
    bad = designer.handle({"input": {"model": "1.7B-Base", "text": "Hi.", "ref_audio": ANNA, "clone_mode": "both"}})
    assert bad["error"] == "Invalid input at $.clone_mode: 'both' is not allowed; allowed: xvector, icl."


def test_a_designed_voice_is_saved_and_returns_by_name(designer):
    out = designer.handle(design_job(text="Design me and keep me.", save_voice="narrator",
                                     params={"instruct": "A warm, low male voice.", "seed": 7}))
    assert "error" not in out, out
    designed = out["metadata"]["designs"][0]
    assert designed["saved_as"] == "narrator"
    stored = designer.edge.recipe.saved.get("narrator")
    assert stored.ref_text == designer.edge.recipe.voices.design.sentence("english")
    assert abs(stored.seconds - designed["reference_seconds"]) < 1e-3
    again = designer.handle({"input": {"model": "1.7B-Base", "text": "Next week, the same voice.", "voice": "narrator"}})
    assert "error" not in again, again
    assert again["metadata"]["segments"][0]["voice"] == "clone:narrator"
    taken = designer.handle(design_job(text="Again.", save_voice="narrator", params={"instruct": "Another."}))
    assert taken["error"] == ("Invalid input at $.save_voice: a voice 'narrator' is saved already; pick another name "
                              "or delete it first.")
    wrong = designer.handle({"input": {"text": "Preset.", "save_voice": "preset"}})
    assert wrong["error"].startswith("Invalid input at $.save_voice: it keeps a voice designed once (a VoiceDesign "
                                     "model with design 'once'); this job runs on '1.7B-CustomVoice'.")
    two = designer.handle(design_job(save_voice="pair", segments=[{"text": "A.", "instruct": "One."},
                                                                 {"text": "B.", "instruct": "Two."}]))
    assert two["error"].startswith("Invalid input at $.save_voice: it keeps one designed voice; this job designs 2")


def test_consistency_is_in_the_metadata_when_asked_and_flagged_for_random_weights(designer):
    out = designer.handle(design_job(text=LONG, score_consistency=True, params={"instruct": "A calm voice."}))
    assert "error" not in out, out
    score = out["metadata"]["segments"][0]["voice_consistency"]
    assert score["against"] == "reference" and score["chunks"] == out["metadata"]["num_chunks"]
    assert -1 <= score["min"] <= score["mean"] <= 1 and "random weights" in score["note"]
    plain = designer.handle(design_job(text=LONG, params={"instruct": "A calm voice."}))
    assert "voice_consistency" not in plain["metadata"]["segments"][0]
    streamed = designer.handle(design_job(text=LONG, score_consistency=True, stream=True,
                                          params={"instruct": "A calm voice."}))
    assert streamed["error"].startswith("Invalid input at $.score_consistency: a voice's consistency is scored")


def read(voice: str) -> list[np.ndarray]:
    return [sf.read(VOICES / f"{voice}-{n}.flac", dtype="float32")[0] for n in range(1, 5)]


def test_the_consistency_score_separates_one_voice_from_another_on_real_speech():
    same = consistency.consistency(read("en-us"), 16000)
    other = read("en-us+f4")
    changed = consistency.consistency([read("en-us")[0], *other[1:]], 16000)
    assert same["against"] == "first chunk" and same["chunks"] == 4
    assert same["min"] > 0.85 and changed["mean"] < 0.75
    assert same["min"] - changed["mean"] > 0.15  # a clear margin, sentence for sentence the same texts
    against = consistency.consistency(other, 16000, reference=read("en-us")[0])
    assert against["against"] == "reference" and against["mean"] < 0.75
    close = consistency.consistency([read("en-us")[0], *read("en-gb+f3")[1:]], 16000)
    assert changed["mean"] < close["mean"] < same["mean"]  # a close voice scores between: a fall, not an identity


def test_a_full_voice_store_refuses_save_voice_before_anything_runs(designer, monkeypatch):
    store = designer.edge.recipe.saved
    count = store.usage()[0]
    monkeypatch.setattr(store, "bounds", StoreBounds(max_voices=max(1, count), max_megabytes=2048))
    if not count:
        store.save("filler", base64.b64decode(ANNA), None)
    out = designer.handle(design_job(text="Keep me too.", save_voice="one_more", params={"instruct": "A voice."}))
    assert out["error"].startswith("The saved-voice store is full: it holds ")
    assert "voices.saved_max_voices" in out["error"] and store.get("one_more") is None
