"""Voice cloning with the Base models, end to end on the tiny Base model: references from a payload
(base64 or a URL), saved voices, per-segment references, the prompt cache, the reference limits."""

import base64
import io

import numpy as np
import pytest
import soundfile as sf

from tests.helpers.config import FAST
from tests.helpers.servers import REPO, audio_server
from tts_runner.edge.worker import Worker

ANNA = (REPO / "jobs" / "voices" / "anna.wav").read_bytes()
ANNA_SAYS = "Hello, I am Anna, and this is how I sound when I read the news."


def wav(seconds: float, rate: int = 24000, level: float = 0.2, channels: int = 1, fmt: str = "WAV") -> str:
    t = np.arange(int(seconds * rate)) / rate
    tone = level * np.sin(2 * np.pi * 220 * t) * (1 + 0.5 * np.sin(2 * np.pi * 3 * t))
    out = io.BytesIO()
    sf.write(out, np.stack([tone] * channels, axis=1), rate, format=fmt)
    return base64.b64encode(out.getvalue()).decode()


def clone(worker, **job):
    return worker.handle({"id": "clone", "input": {"model": "1.7B-Base", **job}})


def test_a_saved_voice_clones_and_the_metadata_names_it(worker):
    out = clone(worker, text="Read by the saved voice.", voice="anna")
    assert "error" not in out, out
    assert out["metadata"]["segments"][0]["voice"] == "clone:anna"


def test_two_guests_each_with_their_own_reference(worker):
    guest = wav(2.0)
    out = clone(worker, segments=[{"text": "First guest speaks.", "ref_audio": base64.b64encode(ANNA).decode(),
                                   "ref_text": ANNA_SAYS},
                                  {"text": "Second guest speaks.", "ref_audio": guest},
                                  {"text": "The first again, through the job's reference."}],
                ref_audio=base64.b64encode(ANNA).decode(), ref_text=ANNA_SAYS)
    assert "error" not in out, out
    voices = [s["voice"] for s in out["metadata"]["segments"]]
    assert voices[0] == voices[2] != voices[1] and all(v.startswith("reference:") for v in voices)


def test_a_hundred_chunk_job_computes_its_prompt_once_and_later_jobs_none(tiny_env, monkeypatch):
    worker = Worker.from_env(FAST + ["batching.max_batch_size=32"])
    model = worker.store.get("1.7B-Base")
    made = []
    real = model.tts.create_voice_clone_prompt
    monkeypatch.setattr(model.tts, "create_voice_clone_prompt", lambda **kw: made.append(1) or real(**kw))
    segments = [{"text": f"Line {i}."} for i in range(100)]
    guest = wav(1.5, level=0.3)
    out = clone(worker, segments=segments, ref_audio=guest)
    assert "error" not in out and out["metadata"]["num_chunks"] == 100
    assert len(made) == 1
    assert "error" not in clone(worker, text="A later job, the same guest.", ref_audio=guest)
    assert len(made) == 1  # from the cache


@pytest.mark.parametrize("reference, message", [
    (base64.b64encode(b"RIFF....WAVEfmt but not really").decode(),
     "Invalid input at $.ref_audio: not audio in a format read here (WAV, FLAC, MP3, OGG)"),
    ("not base64 at all!", "Invalid input at $.ref_audio: neither base64 nor an https:// URL."),
    (wav(0.5), "Invalid input at $.ref_audio: the recording is 0.50 s long; at least 1 s is needed."),
    (wav(31.0), "Invalid input at $.ref_audio: the recording is 31.0 s long; at most 30 s is taken"),
    (wav(2.0, level=1e-5), "Invalid input at $.ref_audio: the recording is silent ("),
    ("http://169.254.169.254/latest/meta-data/", "Invalid input at $.ref_audio: only https:// URLs are fetched"),
    ("https://169.254.169.254/latest/meta-data/", "Invalid input at $.ref_audio: the host '169.254.169.254' "
                                                  "resolves to 169.254.169.254, which is not a public address"),
    ("file:///etc/passwd", "Invalid input at $.ref_audio: only https:// URLs are fetched, not file://"),
])
def test_references_outside_the_limits_are_one_clear_error(worker, reference, message):
    out = clone(worker, text="Hi.", ref_audio=reference)
    assert out["error"].startswith(message), out["error"]


def test_a_segments_reference_is_named_by_its_path(worker):
    out = clone(worker, segments=[{"text": "Fine.", "voice": "anna"}, {"text": "Bad.", "ref_audio": wav(0.2)}])
    assert out["error"].startswith("Invalid input at $.segments[1].ref_audio: the recording is 0.20 s long")


def test_the_file_size_limit_is_the_configured_one(tiny_env):
    worker = Worker.from_env(FAST + ["cloning.max_bytes=100000"])
    out = clone(worker, text="Hi.", ref_audio=base64.b64encode(ANNA).decode())
    assert out["error"] == f"Invalid input at $.ref_audio: the recording is {len(ANNA)} bytes, over the limit of 100000."


@pytest.mark.parametrize("rate, channels, fmt", [(16000, 1, "WAV"), (44100, 2, "FLAC"), (48000, 1, "OGG")])
def test_any_rate_and_layout_is_brought_to_what_the_model_needs(worker, rate, channels, fmt):
    out = clone(worker, text="Resampled.", ref_audio=wav(2.0, rate, channels=channels, fmt=fmt))
    assert "error" not in out, out


def test_a_reference_from_a_url_a_test_config_allows(tiny_env):
    with audio_server(ANNA) as host:
        worker = Worker.from_env(FAST + ["cloning.fetch.allow_http=true", f"cloning.fetch.allowed_hosts=[\"{host}\"]"])
        out = clone(worker, text="Fetched first.", ref_audio=f"http://{host}/voice.wav", ref_text=ANNA_SAYS)
        assert "error" not in out, out
        bad = clone(worker, text="Not audio.", ref_audio=f"http://{host}/text")
        assert bad["error"].startswith("Invalid input at $.ref_audio: not audio in a format read here")


def test_cloning_is_for_the_base_models_and_needs_a_reference(worker):
    assert clone(worker, text="Hi.")["error"] == (
        "Invalid input at $.voice: model '1.7B-Base' clones a voice: give ref_audio (for the job, or this segment) "
        "or name a saved voice (voices.clones: anna; saved: none).")
    assert worker.handle({"input": {"text": "Hi.", "ref_audio": wav(2.0)}})["error"] == (
        "Invalid input at $.ref_audio: model '1.7B-CustomVoice' does not clone voices; ref_audio is for the Base "
        "models (1.7B-Base, 0.6B-Base).")


def test_voice_design_takes_an_instruct_per_segment(worker):
    out = worker.handle({"input": {"model": "1.7B-VoiceDesign", "segments": [
        {"text": "A deep voice.", "instruct": "A deep, slow male voice."},
        {"text": "A bright one.", "instruct": "A bright young female voice."}]}})
    assert "error" not in out, out
    voices = [s["voice"] for s in out["metadata"]["segments"]]
    assert voices[0] != voices[1] and all(v.startswith("design:") for v in voices)  # each designed once, then cloned
    missing = worker.handle({"input": {"model": "1.7B-VoiceDesign", "segments": [
        {"text": "Described.", "instruct": "A calm voice."}, {"text": "Not described."}]}})
    assert missing["error"].startswith("Invalid input at $.segments[1].instruct: model '1.7B-VoiceDesign' designs")
