"""The worker in-process: answers, start-up failures kept, secrets never returned or logged."""

import base64
import logging
import time

import pytest
import torch

from tests.helpers.config import FAST
from tests.helpers.env import environment
from tests.helpers.media import file_seconds
from tts_runner.edge.worker import Worker
from tts_runner.serving.device import device_broken


def test_text_job_returns_wav_matching_its_metadata(worker):
    out = worker.handle({"id": "t1", "input": {"text": "Hello there. How are you today?"}})
    assert set(out) == {"audio_base64", "metadata"}
    meta = out["metadata"]
    assert file_seconds(base64.b64decode(out["audio_base64"]), "wav") == meta["duration_seconds"] == 1.2
    assert meta["sample_rate"] == 24000 and meta["format"] == "wav" and meta["num_segments"] == 1
    assert meta["generation_time_seconds"] > 0


def test_voice_design_model_needs_instruct(worker):
    out = worker.handle({"id": "vd", "input": {"text": "Hi.", "model": "1.7B-VoiceDesign"}})
    assert out["error"] == ("Invalid input at $.params.instruct: model '1.7B-VoiceDesign' designs a voice from an "
                            "instruct (params.instruct for the job, or a segment's own); describe the voice there.")
    out = worker.handle({"id": "vd", "input": {"text": "Hi.", "model": "1.7B-VoiceDesign",
                                               "params": {"instruct": "A warm, low voice."}}})
    assert out["metadata"]["model"] == "1.7B-VoiceDesign" and out["metadata"]["duration_seconds"] == 1.2


def test_errors_carry_a_traceback_and_the_worker_keeps_serving(worker):
    out = worker.handle({"id": "bad", "input": {"text": "x", "params": {"top_k": "many"}}})
    assert out["error"] == "Invalid input at $.params.top_k: must be of type integer, got string."
    assert "Traceback" in out["traceback"]
    assert "audio_base64" in worker.handle({"id": "ok", "input": {"text": "Still here."}})
    assert worker.handle({"id": "none"})["error"].startswith("Invalid input at $: the job input must be")


def test_missing_model_folder_is_kept_and_returned_to_every_job(tmp_path, tiny_env, monkeypatch):
    monkeypatch.setenv("QWEN_TTS_MODEL_DIR", str(tmp_path / "empty"))
    broken = Worker.from_env(FAST)
    expected = (f"The worker failed to start: Model '1.7B-CustomVoice' not found: {tmp_path}/empty/"
                "Qwen3-TTS-12Hz-1.7B-CustomVoice has no config.json. Put the Qwen3-TTS-12Hz-1.7B-CustomVoice "
                f"folder under QWEN_TTS_MODEL_DIR (now {tmp_path}/empty), or let it be fetched from the Hugging Face "
                "Hub (Qwen/Qwen3-TTS-12Hz-1.7B-CustomVoice) with QWEN_TTS_DOWNLOAD=true. Without weights, build "
                "random-weight test models: python -m tts_runner.tools.tiny_model DIR.")
    for i in range(2):
        assert broken.handle({"id": str(i), "input": {"text": "Hi."}})["error"] == expected


def test_corrupt_model_folder_is_a_clear_start_up_error(tmp_path, model_dir, tiny_env, monkeypatch):
    folder = tmp_path / "Qwen3-TTS-12Hz-1.7B-CustomVoice"
    folder.mkdir()
    (folder / "config.json").write_text("{not json")
    monkeypatch.setenv("QWEN_TTS_MODEL_DIR", str(tmp_path))
    broken = Worker.from_env(FAST)
    error = broken.handle({"id": "1", "input": {"text": "Hi."}})["error"]
    assert error.startswith(f"The worker failed to start: Model '1.7B-CustomVoice' at {folder} could not be loaded: ")


def test_bad_environment_is_a_clear_start_up_error(tiny_env, monkeypatch):
    monkeypatch.setenv("QWEN_TTS_MIN_NEW_TOKENS", "lots")
    broken = Worker.from_env(FAST[:1])
    assert broken.handle({"input": {"text": "Hi."}})["error"] == (
        "The worker failed to start: Invalid configuration (conf/ or environment): "
        "Invalid input at $.params.min_new_tokens: must be of type integer, got string.")


def test_secrets_never_appear_in_answers_or_logs(tiny_env, caplog, tmp_path):
    planted = {"S3_SECRET_KEY": "sk-PLANTED-secret-123", "S3_ACCESS_KEY": "AKIAPLANTED456",
               "RUNPOD_AI_API_KEY": "rp-PLANTED-key-789", "HF_TOKEN": "hf_PLANTEDtoken",
               "DB_PASSWORD": "pw-PLANTED-000"}
    # nothing listens on port 9
    with environment(**planted, S3_BUCKET="bucket", S3_ENDPOINT="http://127.0.0.1:9"), \
            caplog.at_level(logging.DEBUG):
        w = Worker.from_env(FAST)
        answers = [
            w.handle({"id": "s3-down", "input": {"text": "Upload me."}}),
            # a payload that quotes a secret must not get it echoed back either
            w.handle({"id": "echo", "input": {"text": "x", "voice": planted["HF_TOKEN"] + "/.."}}),
            w.handle({"id": "echo2", "input": {"text": "x", "params": {"language": planted["DB_PASSWORD"]}}}),
        ]
    assert answers[0]["error"].startswith("S3 upload to bucket 'bucket' at http://127.0.0.1:9 failed")
    everything = repr(answers) + caplog.text + "".join(r.getMessage() for r in caplog.records)
    for value in planted.values():
        assert value not in everything
    assert "[REDACTED]" in repr(answers)


def test_bad_overrides_in_the_environment_are_a_kept_start_up_error(tiny_env, monkeypatch):
    monkeypatch.setenv("TTS_RUNNER_OVERRIDES", "batching.no_such_key=1")
    broken = Worker.from_env(FAST)
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
    # the scheduler builds each chunk's prompt once, whichever jobs share the call
    assert sorted(speaker for call in calls for speaker in call) == ["aiden", "ryan", "serena", "vivian"]
    spans.sort()
    assert all(end <= next_start for (_, end), (next_start, _) in zip(spans, spans[1:], strict=False))  # serialized
    assert worker.concurrency_modifier(0) == worker.cfg.worker.concurrency


def test_each_worker_replaces_the_log_filter_instead_of_stacking_them(tiny_env):
    from tts_runner.edge.redact import RedactingFilter

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


@pytest.mark.parametrize("path", [
    "scheduler.enabled=true",   # the scheduler's rounds
    "scheduler.enabled=false",  # one model call per batch, its rows run to their end
])
def test_a_broken_gpu_fails_the_job_then_the_worker_refuses_work_and_exits(tiny_env, monkeypatch, path):
    """worker-vllm's rule: after a CUDA error that may have broken the context, nothing runs on it."""
    loop = "tts_runner.engines.running.RunningBatch.step"  # the fast engine's loop, either way
    worker = Worker.from_env([*FAST, path])
    exits, calls = [], []
    worker.exit = exits.append

    def broken(*args, **kwargs):
        calls.append(1)
        raise torch.AcceleratorError("CUDA error: an illegal memory access was encountered")

    monkeypatch.setattr(loop, broken)
    out = worker.handle({"id": "1", "input": {"segments": [{"text": "One."}, {"text": "Two."}]}})
    assert out["refresh_worker"] is True  # RunPod stops this worker after the job
    assert out["error"].startswith("The GPU failed (AcceleratorError: CUDA error: an illegal memory access")
    assert calls == [1]  # no retry, no split, no fallback to stock on a broken context
    assert worker.store.get("1.7B-CustomVoice").engine == "fast" and exits == [5.0]
    monkeypatch.undo()
    later = worker.handle({"id": "2", "input": {"text": "Hi."}})
    assert later["refresh_worker"] is True and later["error"].startswith("This worker is unhealthy")
    assert exits == [5.0]  # one exit, however many jobs come


@pytest.mark.parametrize("error, broken", [
    (torch.AcceleratorError("CUDA error: device-side assert triggered"), True),
    (RuntimeError("CUDA error: an illegal memory access was encountered"), True),
    (torch.cuda.OutOfMemoryError("CUDA out of memory. Tried to allocate 2.00 GiB"), False),
    (RuntimeError("shape mismatch"), False),
])
def test_which_errors_mean_the_gpu_may_be_broken(error, broken):
    assert device_broken(error) is broken


def test_a_job_past_its_time_limit_is_stopped_with_an_error_naming_it(fresh_worker):
    w = fresh_worker("worker.job_timeout_seconds=0.001", "worker.streaming=true")  # no job is made in a millisecond
    limit = "ran past its time limit of 0.001 s (worker.job_timeout_seconds) and was stopped"
    whole = w.handle({"id": "slow", "input": {"text": "A sentence that takes longer than a millisecond."}})
    assert whole["error"].startswith("Job slow " + limit), whole["error"]
    pieces = list(w.stream({"id": "slow-stream", "input": {"text": "A streamed sentence.", "stream": True}}))
    assert pieces[-1]["error"].startswith("Job slow-stream " + limit), pieces[-1]
    assert not w.active
    w.time_limit = 900.0  # the same worker, its limit raised: it serves as before
    assert "audio_base64" in w.handle({"id": "fine", "input": {"text": "Hi."}})


def test_the_handler_runs_as_many_jobs_at_once_as_its_concurrency(tiny_env, monkeypatch):
    """RunPod gives the worker worker.concurrency jobs at once; each must get a thread at once, even
    past asyncio's default pool (min(32, cores + 4) threads): N jobs meet at a barrier of N."""
    import asyncio
    import importlib.util
    import os
    import threading

    from tests.helpers.servers import REPO

    n = min(32, (os.cpu_count() or 1) + 4) + 4
    monkeypatch.setenv("TTS_RUNNER_OVERRIDES", " ".join([*FAST, f"worker.concurrency={n}"]))
    spec = importlib.util.spec_from_file_location("handler_under_test", REPO / "handler.py")
    handler = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(handler)
    assert handler.WORKER.concurrency_modifier(1) == n
    barrier = threading.Barrier(n, timeout=60)
    monkeypatch.setattr(handler.WORKER, "handle", lambda job, ticket=None: barrier.wait() >= 0 and {"ok": job["id"]})

    async def all_at_once():
        return await asyncio.gather(*(handler.handler({"id": str(i), "input": {}}) for i in range(n)))

    assert asyncio.run(all_at_once()) == [{"ok": str(i)} for i in range(n)]
