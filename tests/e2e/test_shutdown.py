"""SIGTERM while jobs run: no new job is taken, the jobs running finish within the grace time or are
answered "Worker shutting down", no job is left unanswered, and the process exits 0. In-process for
the drain itself (admission held on the scheduler, so which jobs run and when is an event, not a
time), then as RunPod runs them: handler.py's local API and the HTTP server, each a real process
sent a real SIGTERM."""

from __future__ import annotations

import json
import re
import signal
import sys
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import httpx
import requests

from tests.helpers.servers import free_port, process

LONG = "This sentence is one of very many in a text far too long to be spoken in the grace time. " * 60
# frames per chunk: minutes of CPU time for LONG's ~45 chunks, against a grace of one second
SLOW = "sampling.max_new_tokens=400 sampling.min_new_tokens=400"


def runs(log: Path) -> int:
    """How many jobs the worker's log says it has begun."""
    return len(re.findall(r"Job \S+ running$", log.read_text(), re.M))


def wait_until(condition, what: str, timeout: float = 120) -> None:
    deadline = time.monotonic() + timeout
    while not condition():
        assert time.monotonic() < deadline, f"not within {timeout} s: {what}"
        time.sleep(0.01)


def test_a_job_running_when_the_worker_stops_finishes_and_new_ones_are_refused(fresh_worker):
    worker = fresh_worker()
    scheduler = worker.store.get("1.7B-CustomVoice").scheduler
    answers: dict = {}
    with scheduler.held():  # its chunks wait for a row until the hold ends
        thread = threading.Thread(target=lambda: answers.update(
            running=worker.handle({"id": "running", "input": {"text": "Finished in the grace time."}})))
        thread.start()
        wait_until(lambda: scheduler.count > 0, "the job's chunks wait")
        drain = worker.stop(grace=600)
        refused = worker.handle({"id": "late", "input": {"text": "Too late."}})
    thread.join(120)
    drain.join(120)
    assert refused["error"].startswith("Worker shutting down: it takes no new jobs.")
    assert "audio_base64" in answers["running"], answers["running"]  # the grace was not spent waiting
    assert not drain.is_alive() and worker.active == set()


def test_a_job_still_running_after_the_grace_is_answered_with_a_clear_error(fresh_worker):
    worker = fresh_worker()
    scheduler = worker.store.get("1.7B-CustomVoice").scheduler
    answers: dict = {}
    with scheduler.held():  # never admitted before the grace ends: it cannot finish in time
        thread = threading.Thread(target=lambda: answers.update(
            held=worker.handle({"id": "held", "input": {"text": "Never spoken."}})))
        thread.start()
        wait_until(lambda: scheduler.count > 0, "the job's chunks wait")
        worker.stop(grace=0).join(120)
        thread.join(120)
    assert answers["held"]["error"] == ("Worker shutting down: job held did not finish within the 0 s grace "
                                        "(worker.shutdown_grace_seconds). Send it again.")
    assert scheduler.count == 0 and worker.active == set()


def test_sigterm_to_the_queue_worker_answers_every_job_and_exits_0(tmp_path):
    """handler.py with RunPod's local API: a long job in flight when SIGTERM comes is answered with the
    shutting-down error once the grace (1 s) has passed; nothing more is accepted; the exit status is 0."""
    from tests.helpers.servers import runpod_api

    log = tmp_path / "worker.log"
    env = {"TTS_RUNNER_OVERRIDES": f"{SLOW} worker.shutdown_grace_seconds=1"}
    with runpod_api(log, env) as runsync, ThreadPoolExecutor(2) as pool:
        assert "audio" in json.dumps(runsync({"text": "Warm.", "params": {"max_new_tokens": 8, "min_new_tokens": 8}}))
        long_job = pool.submit(runsync, {"text": LONG})
        wait_until(lambda: runs(log) >= 2, "the long job runs")
        runsync.proc.send_signal(signal.SIGTERM)
        answer = long_job.result(timeout=180)
        assert runsync.proc.wait(timeout=120) == 0, log.read_text()[-3000:]
    output = answer.get("output", answer)
    assert "Worker shutting down: job " in json.dumps(output) and "within the 1 s grace" in json.dumps(output), answer
    assert "of the 1 jobs running, 0 finished in the grace time and 1 were cancelled" in log.read_text()


def test_sigterm_to_the_http_server_drains_answers_and_exits_0(tmp_path):
    """The HTTP server (python -m tts_runner.serve): a whole-file request and an SSE stream in flight
    when SIGTERM comes are answered 503 / an error event saying the worker is shutting down; a
    request that finishes in the grace would have been served (the in-process tests above); the port
    stops accepting; the exit status is 0."""
    port = free_port()
    log = tmp_path / "server.log"
    env = {"TTS_RUNNER_VOICES_DIR": str(tmp_path / "voices"),
           "TTS_RUNNER_OVERRIDES": f"{SLOW} worker.shutdown_grace_seconds=1"}
    url = f"http://127.0.0.1:{port}"
    with process([sys.executable, "-m", "tts_runner.serve", "--port", str(port)], port, log, env) as proc:
        wait_until(lambda: httpx.get(f"{url}/ping").status_code == 200, "the server is ready", timeout=180)
        events: list[str] = []
        with ThreadPoolExecutor(2) as pool:
            whole = pool.submit(requests.post, f"{url}/v1/audio/speech", timeout=180,
                                json={"input": LONG, "voice": "alloy", "response_format": "wav"})

            def stream() -> None:
                with requests.post(f"{url}/v1/audio/speech", json={"input": LONG, "voice": "alloy",
                                   "stream_format": "sse", "response_format": "pcm"}, stream=True, timeout=180) as r:
                    for line in r.iter_lines():
                        if line:
                            events.append(json.loads(line.decode().removeprefix("data: "))["type"])

            streamed = pool.submit(stream)
            wait_until(lambda: runs(log) >= 2 and events, "both requests run")
            proc.send_signal(signal.SIGTERM)
            answer = whole.result(timeout=180)
            streamed.result(timeout=180)
        assert proc.wait(timeout=120) == 0, log.read_text()[-3000:]
    assert answer.status_code == 503 and answer.json()["error"]["code"] == "shutting_down", answer.text
    assert "within the 1 s grace" in answer.json()["error"]["message"]
    assert events[0] == "speech.audio.delta" and events[-1] == "error", events
    assert "of the 2 jobs running, 0 finished in the grace time and 2 were cancelled" in log.read_text()
    try:
        httpx.get(f"{url}/ping", timeout=5)
        raise AssertionError("the server still accepts connections after it exited")
    except httpx.ConnectError:
        pass
    assert Path(log).read_text().count("Traceback") == 0, log.read_text()[-3000:]
