"""Run by tests/gpu/test_gpu.py in a process of its own (a CUDA error poisons the process's context):
the HTTP server on the tiny model under captured graphs, a real CUDA error (a device-side assert)
raised inside the scheduler's loop while a request runs. Prints what a client saw as one JSON line,
then waits: the worker itself ends the process (worker.exit_after_device_failure_seconds)."""

import json
import threading

import httpx
import torch

from tts_runner.edge import build
from tts_runner.edge import config as config_mod
from tts_runner.edge.worker import Worker
from tts_runner.server.app import create_app
from tts_runner.server.local import in_process
from tts_runner.server.service import Service
from tts_runner.serving import scheduler

OVERRIDES = ["runtime.device=cuda:0", "runtime.engine=graph", "runtime.graph.buckets=[1,2,4,8]",
             "runtime.graph.max_len=256", "batching.max_batch_size=8", "worker.exit_after_device_failure_seconds=2"]


def failing_step(step):
    def step_then_fail(batches, frames):
        step(batches, frames)
        far = torch.tensor([1 << 20], device="cuda")
        torch.zeros(4, device="cuda")[far].sum().item()  # an index past the end: the kernel's assert fires
    return step_then_fail


def main() -> None:
    cfg = config_mod.load(OVERRIDES)
    worker = Worker(cfg)
    assert worker.startup_error is None, worker.startup_error
    service = Service(cfg, build.server(cfg.server, list(cfg.models.variants)))
    service.load(worker)
    with in_process(create_app(service)) as url, httpx.Client(timeout=120) as http:
        before = http.get(f"{url}/ping").status_code
        scheduler.step = failing_step(scheduler.step)
        speech = http.post(f"{url}/v1/audio/speech", json={"input": "A sentence the GPU fails on.", "voice": "alloy",
                                                           "response_format": "wav"})
        ping = http.get(f"{url}/ping")
        after = http.post(f"{url}/v1/audio/speech", json={"input": "Another one.", "voice": "alloy"})
        print(json.dumps({"ping_before": before, "speech": speech.status_code, "speech_error": speech.json()["error"],
                          "ping": ping.status_code, "ping_text": ping.text, "after": after.status_code,
                          "after_error": after.json()["error"]}), flush=True)
        threading.Event().wait()  # until the worker's own exit


if __name__ == "__main__":
    main()
