"""The RunPod worker's logic (handler.py is its thin entry point).

At start-up: compose the config (defaults + environment), build the edge (the payload validator
and the recipe every job shares), load the default model and warm it up. A failure there is kept,
and every job is answered with it instead of the worker crash-looping. Per job: the edge makes the
payload a Job, the job's stages make it, and the answer is {audio_base64 | audio_url, metadata} or
{error, traceback}. Nothing returned or logged contains a secret. A GPU failure that may have broken the CUDA context (not out
of memory) is answered with `refresh_worker`, later jobs are refused, and the process exits, so
RunPod replaces the worker. A job still running after worker.job_timeout_seconds is stopped and
answered with an error naming the limit. On SIGTERM (`stop`) it takes no new job, gives the jobs running
worker.shutdown_grace_seconds to finish, then answers the rest with a clear error.
"""

from __future__ import annotations

import base64
import contextlib
import json
import logging
import os
import threading
import time
import traceback
from collections.abc import Iterator

from omegaconf import DictConfig

from tts_runner.audio.codec import SAMPLE_RATE
from tts_runner.edge import build
from tts_runner.edge import config as config_mod
from tts_runner.edge.jobs import Edge
from tts_runner.edge.redact import protect, redact
from tts_runner.errors import DeviceFailure, InputError, ShuttingDown, TimedOut, TTSError
from tts_runner.job.run import run_job
from tts_runner.job.spec import Job
from tts_runner.job.stream import stream_format, stream_job
from tts_runner.serving import memory
from tts_runner.serving.store import ModelStore
from tts_runner.serving.ticket import Ticket

log = logging.getLogger(__name__)

PROGRESS_EVERY_SECONDS = 5.0


def exit_soon(seconds: float) -> None:
    """End the process after `seconds` (time for the answers in flight to reach RunPod)."""
    timer = threading.Timer(seconds, os._exit, args=(1,))
    timer.daemon = True
    timer.start()


class Worker:
    def __init__(self, cfg: DictConfig, startup_error: str | None = None):
        """Start the worker on `cfg`; with `startup_error`, load nothing and answer every job with it."""
        self.cfg = cfg
        self.secrets = protect([cfg.sink.get("access_key"), cfg.sink.get("secret_key")])
        self.startup_error = redact(startup_error, self.secrets)
        self.store: ModelStore | None = None
        self.device_failure: str | None = None  # set once the GPU failed: every later job is refused
        self.exit = exit_soon
        self.active: set[Ticket] = set()   # the jobs running now (their tickets)
        self.idle = threading.Condition()
        self.stopping: threading.Thread | None = None  # the drain, once stop() was called
        self.time_limit = 900.0  # worker.job_timeout_seconds, read below
        self.vitals_every = 0.0  # worker.vitals_every_seconds (handler.py and the server start the reports)
        if startup_error:
            log.error("Worker start-up failed; every job will be answered with: %s", self.startup_error)
            return
        started = time.perf_counter()
        try:
            memory.limit_arenas(build.malloc_arenas(cfg.runtime))  # before this worker's threads allocate
            self.time_limit = build.job_time_limit(cfg.worker)
            self.vitals_every = build.vitals_every(cfg.worker)
            self.edge = Edge(cfg)
            try:
                self.edge.job({"text": "start-up check"})
            except TTSError as exc:
                raise TTSError(f"Invalid configuration (conf/ or environment): {exc}") from None
            self.store = build.model_store(cfg)
            self.store.get(self.store.catalog.default)
        except Exception as exc:  # noqa: BLE001 - kept and reported to every job
            self.startup_error = redact(_message(exc), self.secrets)
            log.error("Worker start-up failed; every job will be answered with: %s", self.startup_error)
        else:
            log.info("Worker ready in %.2f s (models: %s)", time.perf_counter() - started, self.store.loaded())

    @classmethod
    def from_env(cls, overrides: list[str] | None = None) -> Worker:
        """Compose conf/ with the environment; TTS_RUNNER_OVERRIDES may hold Hydra overrides
        (space-separated, e.g. "batching.max_batch_size=32 worker.concurrency=2")."""
        from_environment = os.environ.get("TTS_RUNNER_OVERRIDES", "").split()
        try:
            return cls(config_mod.load([*(overrides or []), *from_environment]))
        except Exception as exc:  # noqa: BLE001 - a bad override must not crash-loop the worker
            return cls(config_mod.load(overrides or []),
                       startup_error=f"Invalid TTS_RUNNER_OVERRIDES: {type(exc).__name__}: {exc}")

    def concurrency_modifier(self, current: int) -> int:
        return max(1, int(self.cfg.worker.concurrency))

    def ticket(self, job: dict) -> Ticket:
        """A handle to cancel `job` with (RunPod stopped it, its client went away)."""
        return Ticket(str(job.get("id", "local")))

    def job(self, job: dict) -> Job:
        """The payload as a Job (raises TTSError)."""
        if self.startup_error:
            raise TTSError(f"The worker failed to start: {self.startup_error}")
        if self.device_failure:
            raise DeviceFailure(f"This worker is unhealthy and about to be replaced: {self.device_failure}")
        if self.stopping is not None:
            raise ShuttingDown("Worker shutting down: it takes no new jobs. Send the job again (RunPod gives it "
                               "to another worker).")
        return self.edge.job(job.get("input"), id=str(job.get("id", "local")))

    def handle(self, job: dict, ticket: Ticket | None = None) -> dict:
        """Answer one RunPod job; never raises. `ticket` lets the caller cancel it."""
        return self.answer(job, ticket)[0]

    def answer(self, job: dict, ticket: Ticket | None = None) -> tuple[dict, Exception | None]:
        """handle's answer, and the exception behind it when it is {error, traceback} (for an HTTP status)."""
        try:
            spec = self.job(job)
            if spec.stream:
                raise InputError("Invalid input at $.stream: this worker does not stream (its handler is not a "
                                 "generator). Start it with TTS_RUNNER_STREAMING=true (worker.streaming), or leave "
                                 "stream out to get the whole file.")
            return self._whole(spec, job, ticket), None
        except Exception as exc:  # noqa: BLE001 - every failure becomes {error, traceback}
            return self.failure(job, exc), exc

    @contextlib.contextmanager
    def running(self, ticket: Ticket) -> Iterator[Ticket]:
        """Count `ticket`'s job as running while the block runs (stop() waits for it, then cancels it);
        cancel it, with an error naming the limit, if it runs past worker.job_timeout_seconds."""
        with self.idle:
            self.active.add(ticket)
        log.info("Job %s running", ticket.name)
        limit = threading.Timer(self.time_limit, self._time_out, args=(ticket,))
        limit.daemon, limit.name = True, "time-limit"
        limit.start()
        try:
            yield ticket
        finally:
            limit.cancel()
            with self.idle:
                self.active.discard(ticket)
                self.idle.notify_all()

    def stop(self, grace: float | None = None) -> threading.Thread:
        """Stop taking jobs (SIGTERM): every new one is answered "Worker shutting down"; the jobs
        running get `grace` seconds (worker.shutdown_grace_seconds) to finish, and those still running
        then are cancelled, each answered with a ShuttingDown error that says so. Returns the thread
        that drains (it ends when the last job was answered or cancelled); called again, the same."""
        with self.idle:
            if self.stopping is not None:
                return self.stopping
            grace = float(self.cfg.worker.shutdown_grace_seconds if grace is None else grace)
            self.stopping = threading.Thread(target=self._drain, args=(grace,), name="drain", daemon=True)
            log.warning("Stopping: no new jobs; the %d running get %g s to finish", len(self.active), grace)
        self.stopping.start()
        return self.stopping

    def _drain(self, grace: float) -> None:
        with self.idle:
            running = len(self.active)
            self.idle.wait_for(lambda: not self.active, timeout=grace)
            left = list(self.active)
        for ticket in left:
            ticket.error = ShuttingDown(
                f"Worker shutting down: job {ticket.name} did not finish within the {grace:g} s grace "
                "(worker.shutdown_grace_seconds). Send it again.")
            self.cancel(ticket)
        with self.idle:
            self.idle.wait_for(lambda: not self.active, timeout=grace + 30)  # their answers go out
        log.warning("Stopped: of the %d jobs running, %d finished in the grace time and %d were cancelled",
                    running, running - len(left), len(left))

    def _time_out(self, ticket: Ticket) -> None:
        if ticket.cancelled:
            return
        ticket.error = TimedOut(f"Job {ticket.name} ran past its time limit of {self.time_limit:g} s "
                                "(worker.job_timeout_seconds) and was stopped: send a shorter text, or split it.")
        self.cancel(ticket)

    def _whole(self, spec: Job, job: dict, ticket: Ticket | None) -> dict:
        """A job's one answer, the whole file (raises on failure)."""
        model = self.store.get(spec.model)
        with self.running(ticket or self.ticket(job)) as ticket:
            response, _ = run_job(spec, model, progress=self._progress(job), ticket=ticket)
        meta = {k: v for k, v in response["metadata"].items() if k != "segments"}
        log.info("Job %s done: %s", spec.id, json.dumps(meta))
        return redact(response, self.secrets)

    def stream(self, job: dict, ticket: Ticket | None = None) -> Iterator[dict]:
        """Answer one job as a generator handler does; never raises. A job with "stream": true
        yields its audio in pieces, {audio_base64, format, sample_rate, piece}, the last one with
        the metadata; any other job yields its one answer (handle's)."""
        try:
            spec = self.job(job)
        except Exception as exc:  # noqa: BLE001
            yield self.failure(job, exc)
            return
        if not spec.stream:
            try:
                yield self._whole(spec, job, ticket)
            except Exception as exc:  # noqa: BLE001
                yield self.failure(job, exc)
            return
        ticket = ticket or self.ticket(job)
        try:
            with self.running(ticket):
                yield from self._pieces(spec, ticket)
        except Exception as exc:  # noqa: BLE001 - the stream ends with {error, traceback}
            yield self.failure(job, exc)

    def _pieces(self, spec: Job, ticket: Ticket) -> Iterator[dict]:
        for piece, (data, metadata) in enumerate(stream_job(spec, self.store.get(spec.model), ticket)):
            answer = {"audio_base64": base64.b64encode(data).decode("ascii"), "format": stream_format(spec),
                      "sample_rate": SAMPLE_RATE, "piece": piece}
            if metadata is not None:
                answer["metadata"] = metadata
                log.info("Job %s streamed: %s", spec.id, json.dumps({k: v for k, v in metadata.items() if k != "segments"}))
            yield redact(answer, self.secrets)

    def cancel(self, ticket: Ticket) -> None:
        """RunPod stopped a job: its chunks leave every scheduler (waiting now, running at the next check)."""
        ticket.cancelled = True
        for model in self.store.loaded_models() if self.store else []:
            if model.scheduler is not None:
                model.scheduler.cancel(ticket)
        log.info("Job %s cancelled", ticket.name)

    def failure(self, job: dict, exc: BaseException) -> dict:
        if not isinstance(exc, TTSError):
            log.error("Job %s failed", job.get("id"), exc_info=exc)
        else:
            log.warning("Job %s failed: %s", job.get("id", "local"), redact(str(exc), self.secrets))
        answer = {"error": _message(exc),
                  "traceback": "".join(traceback.format_exception(type(exc), exc, exc.__traceback__))}
        if isinstance(exc, DeviceFailure):
            self._fail_device(str(exc))
            answer["refresh_worker"] = True  # RunPod stops this worker after the job and starts another
        return redact(answer, self.secrets)

    def _fail_device(self, message: str) -> None:
        """After a GPU failure (worker-vllm's rule): refuse every later job and exit, so RunPod
        replaces the worker instead of running on a context that may be broken."""
        if self.device_failure is None:
            self.device_failure = message
            grace = float(self.cfg.worker.exit_after_device_failure_seconds)
            log.critical("GPU failure; refusing new jobs and exiting in %.0f s: %s", grace, message)
            self.exit(grace)

    def _progress(self, job: dict):
        if not (self.cfg.worker.progress_updates and os.environ.get("RUNPOD_WEBHOOK_GET_JOB")):
            return None
        import runpod

        last = [0.0]

        def report(done: int, total: int, seconds: float) -> None:
            now = time.monotonic()
            if now - last[0] >= PROGRESS_EVERY_SECONDS or done == total:
                last[0] = now
                runpod.serverless.progress_update(job, f"{done}/{total} chunks, {seconds:.0f} s of audio made")

        return report


def _message(exc: BaseException) -> str:
    if isinstance(exc, TTSError):
        return str(exc)
    return f"Internal error: {type(exc).__name__}: {exc}"

