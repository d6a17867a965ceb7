"""RunPod serverless entry point: `python -u handler.py` (add --rp_serve_api for a local HTTP API).

The worker composes conf/ with the environment, loads the default model and warms it up here,
once per warm worker; each job is then answered by Worker.handle. The handler is async and runs
each job in a thread, so with worker.concurrency > 1 jobs overlap their CPU work (chunking,
encoding, uploads) while model calls stay serialized.
"""

import asyncio
import os

# The RunPod SDK logs at DEBUG unless told otherwise, and at DEBUG and INFO it prints every job's
# whole result: megabytes of base64 per job. Its warnings and errors are enough; what a job did
# (id, duration, metadata) is logged by the worker itself. RUNPOD_LOG_LEVEL=INFO brings it back.
os.environ.setdefault("RUNPOD_LOG_LEVEL", "WARN")

import runpod  # noqa: E402  (reads the level at import)

from tts_runner.worker import Worker  # noqa: E402

WORKER = Worker.from_env()


async def handler(job: dict) -> dict:
    return await asyncio.to_thread(WORKER.handle, job)


if __name__ == "__main__":
    runpod.serverless.start({
        "handler": handler,
        "concurrency_modifier": WORKER.concurrency_modifier,
        "return_aggregate_stream": True,
    })
