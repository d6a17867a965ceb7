"""The worker in-process: answers, start-up failures kept, secrets never returned or logged."""

import base64
import io
import logging
import os
import time

import soundfile as sf

from tests.conftest import FAST
from tts_runner.worker import Worker


def test_text_job_returns_wav_matching_its_metadata(worker):
    out = worker.handle({"id": "t1", "input": {"text": "Hello there. How are you today?"}})
    assert set(out) == {"audio_base64", "metadata"}
    info = sf.info(io.BytesIO(base64.b64decode(out["audio_base64"])))
    meta = out["metadata"]
    assert (info.samplerate, info.channels, info.subtype) == (24000, 1, "PCM_16")
    assert meta["duration_seconds"] == round(info.frames / info.samplerate, 3) == 1.2
    assert meta["sample_rate"] == 24000 and meta["format"] == "wav" and meta["num_segments"] == 1
    assert meta["generation_time_seconds"] > 0


def test_voice_design_model_needs_instruct(worker):
    out = worker.handle({"id": "vd", "input": {"text": "Hi.", "model": "1.7B-VoiceDesign"}})
    assert out["error"] == ("Invalid input at $.params.instruct: model '1.7B-VoiceDesign' designs a voice "
                            "from params.instruct; describe the voice there.")
    out = worker.handle({"id": "vd", "input": {"text": "Hi.", "model": "1.7B-VoiceDesign",
                                               "params": {"instruct": "A warm, low voice."}}})
    assert out["metadata"]["model"] == "1.7B-VoiceDesign" and out["metadata"]["duration_seconds"] == 1.2


def test_errors_carry_a_traceback_and_the_worker_keeps_serving(worker):
    out = worker.handle({"id": "bad", "input": {"text": "x", "params": {"top_k": "many"}}})
    assert out["error"] == "Invalid input at $.params.top_k: must be of type integer, got string."
    assert "Traceback" in out["traceback"]
    assert "audio_base64" in worker.handle({"id": "ok", "input": {"text": "Still here."}})
    assert worker.handle({"id": "none"})["error"].startswith("Invalid input at $: the job input must be")


def test_missing_model_folder_is_kept_and_returned_to_every_job(tmp_path, tiny_env):
    saved = os.environ["QWEN_TTS_MODEL_DIR"]
    os.environ["QWEN_TTS_MODEL_DIR"] = str(tmp_path / "empty")
    try:
        broken = Worker.from_env(FAST)
    finally:
        os.environ["QWEN_TTS_MODEL_DIR"] = saved
    expected = (f"The worker failed to start: Model '1.7B-CustomVoice' not found: {tmp_path}/empty/"
                "Qwen3-TTS-12Hz-1.7B-CustomVoice has no config.json. Put the Qwen3-TTS-12Hz-1.7B-CustomVoice "
                f"folder under QWEN_TTS_MODEL_DIR (now {tmp_path}/empty).")
    for i in range(2):
        assert broken.handle({"id": str(i), "input": {"text": "Hi."}})["error"] == expected


def test_corrupt_model_folder_is_a_clear_start_up_error(tmp_path, model_dir, tiny_env):
    folder = tmp_path / "Qwen3-TTS-12Hz-1.7B-CustomVoice"
    folder.mkdir()
    (folder / "config.json").write_text("{not json")
    saved = os.environ["QWEN_TTS_MODEL_DIR"]
    os.environ["QWEN_TTS_MODEL_DIR"] = str(tmp_path)
    try:
        broken = Worker.from_env(FAST)
    finally:
        os.environ["QWEN_TTS_MODEL_DIR"] = saved
    error = broken.handle({"id": "1", "input": {"text": "Hi."}})["error"]
    assert error.startswith(f"The worker failed to start: Model '1.7B-CustomVoice' at {folder} could not be loaded: ")


def test_bad_environment_is_a_clear_start_up_error(tiny_env):
    os.environ["QWEN_TTS_MIN_NEW_TOKENS"] = "lots"
    try:
        broken = Worker.from_env(FAST[:1])
    finally:
        del os.environ["QWEN_TTS_MIN_NEW_TOKENS"]
    assert broken.handle({"input": {"text": "Hi."}})["error"] == (
        "The worker failed to start: Invalid configuration (conf/ or environment): "
        "Invalid input at $.params.min_new_tokens: must be of type integer, got string.")


def test_secrets_never_appear_in_answers_or_logs(tiny_env, caplog, tmp_path):
    planted = {"S3_SECRET_KEY": "sk-PLANTED-secret-123", "S3_ACCESS_KEY": "AKIAPLANTED456",
               "RUNPOD_AI_API_KEY": "rp-PLANTED-key-789", "HF_TOKEN": "hf_PLANTEDtoken",
               "DB_PASSWORD": "pw-PLANTED-000"}
    os.environ.update(planted, S3_BUCKET="bucket", S3_ENDPOINT="http://127.0.0.1:9")  # nothing listens on 9
    try:
        with caplog.at_level(logging.DEBUG):
            w = Worker.from_env(FAST)
            answers = [
                w.handle({"id": "s3-down", "input": {"text": "Upload me."}}),
                # a payload that quotes a secret must not get it echoed back either
                w.handle({"id": "echo", "input": {"text": "x", "voice": planted["HF_TOKEN"] + "/.."}}),
                w.handle({"id": "echo2", "input": {"text": "x", "params": {"language": planted["DB_PASSWORD"]}}}),
            ]
    finally:
        for k in [*planted, "S3_BUCKET", "S3_ENDPOINT"]:
            os.environ.pop(k, None)
    assert answers[0]["error"].startswith("S3 upload to bucket 'bucket' at http://127.0.0.1:9 failed")
    everything = repr(answers) + caplog.text + "".join(r.getMessage() for r in caplog.records)
    for value in planted.values():
        assert value not in everything
    assert "[REDACTED]" in repr(answers)


def test_bad_overrides_in_the_environment_are_a_kept_start_up_error(tiny_env):
    os.environ["TTS_RUNNER_OVERRIDES"] = "batching.no_such_key=1"
    try:
        broken = Worker.from_env(FAST)
    finally:
        del os.environ["TTS_RUNNER_OVERRIDES"]
    error = broken.handle({"input": {"text": "Hi."}})["error"]
    assert error.startswith("The worker failed to start: Invalid TTS_RUNNER_OVERRIDES: ConfigCompositionException")


def test_oversized_inline_result_is_refused_with_size_limit_and_advice(tiny_env):
    w = Worker.from_env(FAST + ["sink.max_inline_bytes=20000"])
    out = w.handle({"id": "big", "input": {"text": "A result too large to return inline."}})
    # 1.2 s of 16-bit mono at 24 kHz: 57,644 bytes of WAV, 76,860 characters of base64
    assert out["error"] == ("The wav result is 76860 bytes as base64, over the inline limit of 20000 bytes "
                            "(sink.max_inline_bytes): configure S3 (S3_BUCKET, S3_ACCESS_KEY, S3_SECRET_KEY) to "
                            "receive a URL instead, or ask for output_format 'mp3' (about 6x smaller).")
    assert "audio_base64" not in out


def test_concurrent_jobs_with_different_voices_and_formats_get_their_own_results(worker):
    from concurrent.futures import ThreadPoolExecutor

    jobs = [
        {"id": "a", "input": {"text": "First job, in a male voice.", "voice": "male_1", "output_format": "wav"}},
        {"id": "b", "input": {"segments": [{"text": "Second job.", "voice": "female_1"},
                                           {"text": "Two segments.", "voice": "female_2"}], "output_format": "mp3"}},
        {"id": "c", "input": {"text": "Third job.", "voice": "male_2", "output_format": "mp3"}},
        {"id": "d", "input": {"text": "x", "voice": "nobody"}},
    ]
    calls = []
    real = worker.store.get("1.7B-CustomVoice").tts.generate_custom_voice

    spans = []

    def recording(**kwargs):
        calls.append(kwargs["speaker"])
        started = time.perf_counter()
        try:
            return real(**kwargs)
        finally:
            spans.append((started, time.perf_counter()))

    engine = worker.store.get("1.7B-CustomVoice")
    engine.tts.generate_custom_voice = recording
    try:
        with ThreadPoolExecutor(4) as pool:
            answers = list(pool.map(worker.handle, jobs))
    finally:
        del engine.tts.generate_custom_voice
    assert answers[0]["metadata"]["format"] == "wav" and answers[0]["metadata"]["duration_seconds"] == 1.2
    assert answers[1]["metadata"]["format"] == "mp3" and answers[1]["metadata"]["num_segments"] == 2
    assert answers[2]["metadata"]["format"] == "mp3" and answers[2]["metadata"]["num_segments"] == 1
    assert "unknown voice 'nobody'" in answers[3]["error"]
    assert sorted(tuple(sorted(c)) for c in calls) == [("aiden",), ("ryan",), ("serena", "vivian")]
    spans.sort()
    assert all(end <= next_start for (_, end), (next_start, _) in zip(spans, spans[1:], strict=False))  # serialized
    assert worker.concurrency_modifier(0) == worker.cfg.worker.concurrency


def test_each_worker_replaces_the_log_filter_instead_of_stacking_them(tiny_env):
    from tts_runner.redact import RedactingFilter

    Worker.from_env(FAST)
    Worker.from_env(FAST)
    for handler in logging.getLogger().handlers:
        assert sum(isinstance(f, RedactingFilter) for f in handler.filters) <= 1


def test_text_that_looks_like_an_interpolation_is_spoken_literally(worker, monkeypatch):
    monkeypatch.setenv("TTS_PROBE_SECRET", "hunter2")
    out = worker.handle({"id": "lit", "input": {"text": "${oc.env:TTS_PROBE_SECRET} and ${"}})
    assert "audio_base64" in out, out.get("error")
    out = worker.handle({"id": "lit", "input": {"segments": [{"text": "Hi.", "voice": "${oc.env:TTS_PROBE_SECRET}"}]}})
    assert "${oc.env:TTS_PROBE_SECRET}" in out["error"] and "hunter2" not in out["error"] + out["traceback"]
