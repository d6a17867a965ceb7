"""RunPod serverless entry point: `python -u handler.py` (add --rp_serve_api for a local HTTP API).
With TTS_RUNNER_MODE=http it runs the HTTP server instead (`python -m tts_runner.serve`), for RunPod's
load-balancing endpoints.

The worker composes conf/ with the environment, loads the default model and warms it up here,
once per warm worker; each job is then answered on its own thread, up to worker.concurrency at
once, their chunks sharing the model's rows through its scheduler. A job RunPod stops (cancel,
timeout) gives its rows back. With worker.streaming (TTS_RUNNER_STREAMING=true) the handler is a
generator: a payload with "stream": true gets its audio in pieces as it is made. On SIGTERM the
worker takes no new job, lets those running finish within worker.shutdown_grace_seconds, answers
the rest with "Worker shutting down", and exits 0.
"""

import asyncio
import contextlib
import os
import sys

# The RunPod SDK logs at DEBUG unless told otherwise, and at DEBUG and INFO it prints every job's
# whole result: megabytes of base64 per job. Its warnings and errors are enough; what a job did
# (id, duration, metadata) is logged by the worker itself. RUNPOD_LOG_LEVEL=INFO brings it back.
os.environ.setdefault("RUNPOD_LOG_LEVEL", "WARN")

MODE = os.environ.get("TTS_RUNNER_MODE", "queue").strip().lower()
if __name__ == "__main__" and MODE != "queue":
    # One image, two RunPod modes: a load-balancing endpoint runs the HTTP server instead of the queue worker.
    if MODE != "http":
        sys.exit(f"TTS_RUNNER_MODE={MODE!r}: use queue (the queue worker, the default) or http (the HTTP server).")
    from tts_runner.serve import main

    sys.exit(main(sys.argv[1:]))

import runpod  # noqa: E402  (reads the level at import)

from tts_runner.edge.aio import iterate_in_thread, started_pool  # noqa: E402
from tts_runner.edge.signals import drain_first  # noqa: E402
from tts_runner.edge.worker import Worker  # noqa: E402
from tts_runner.serving import vitals  # noqa: E402

WORKER = Worker.from_env()
# A thread for each job RunPod may give at once, all started now: asyncio's default pool has min(32,
# cores + 4) threads, fewer than worker.concurrency on a small machine, and a job past them would wait.
JOBS = started_pool(WORKER.concurrency_modifier(0), "job")


async def handler(job: dict) -> dict:
    ticket = WORKER.ticket(job)
    try:
        return await asyncio.get_running_loop().run_in_executor(JOBS, WORKER.handle, job, ticket)
    except asyncio.CancelledError:
        WORKER.cancel(ticket)
        raise


async def stream_handler(job: dict):
    """Worker.stream on a thread, its pieces handed over as they come."""
    ticket = WORKER.ticket(job)
    pieces = iterate_in_thread(lambda: WORKER.stream(job, ticket), lambda: WORKER.cancel(ticket), JOBS)
    async with contextlib.aclosing(pieces):  # a stopped stream gives its rows back at once
        async for piece in pieces:
            yield piece


if __name__ == "__main__":
    vitals.Reporter(lambda: vitals.of_worker(WORKER), WORKER.vitals_every).start()  # a JSON line every N s
    drain_first(WORKER.stop)  # SIGTERM: no new jobs, worker.shutdown_grace_seconds for those running, exit 0
    runpod.serverless.start({
        "handler": stream_handler if WORKER.cfg.worker.streaming else handler,
        "concurrency_modifier": WORKER.concurrency_modifier,
        "return_aggregate_stream": True,
    })
