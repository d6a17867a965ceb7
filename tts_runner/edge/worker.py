"""The RunPod worker's logic (handler.py is its thin entry point).

At start-up: compose the config (defaults + environment), build the payload validator, load
the default model and warm it up. A failure there is kept, and every job is answered with it
instead of the worker crash-looping. Per job: validate the input, merge it onto the config, run
the job graph, answer {audio_base64 | audio_url, metadata} or {error, traceback}. Nothing
returned or logged contains a secret. A GPU failure that may have broken the CUDA context (not out
of memory) is answered with `refresh_worker`, later jobs are refused, and the process exits, so
RunPod replaces the worker.
"""

from __future__ import annotations

import base64
import json
import logging
import os
import threading
import time
import traceback
from collections.abc import Iterator

from omegaconf import DictConfig

from tts_runner.edge import config as config_mod
from tts_runner.edge import payload as payload_mod
from tts_runner.edge.redact import protect, redact
from tts_runner.errors import DeviceFailure, InputError, TTSError
from tts_runner.job.run import run_job
from tts_runner.job.stream import stream_job
from tts_runner.serving.model import SAMPLE_RATE
from tts_runner.serving.scheduler import Ticket
from tts_runner.serving.store import ModelStore

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
        self.secrets = protect(cfg.sink)
        self.startup_error = redact(startup_error, self.secrets)
        self.store: ModelStore | None = None
        self.device_failure: str | None = None  # set once the GPU failed: every later job is refused
        self.exit = exit_soon
        if startup_error:
            log.error("Worker start-up failed; every job will be answered with: %s", self.startup_error)
            return
        started = time.perf_counter()
        try:
            config_mod.check(cfg)
            self.validator = payload_mod.build_validator(cfg)
            defaults = {**payload_mod.from_config(cfg), "text": "start-up check"}
            defaults.pop("segments", None)
            try:
                payload_mod.validate(defaults, self.validator, cfg.limits.max_total_chars)
            except TTSError as exc:
                raise TTSError(f"Invalid configuration (conf/ or environment): {exc}") from None
            self.store = ModelStore(cfg.models, cfg.runtime, max_batch=int(cfg.batching.max_batch_size),
                                    cloning=cfg.cloning,
                                    scheduler=cfg.scheduler)
            self.store.get(cfg.models.default)
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

    def _resolve(self, job: dict) -> DictConfig:
        """The job's config: the payload validated and merged onto the worker's (raises TTSError)."""
        if self.startup_error:
            raise TTSError(f"The worker failed to start: {self.startup_error}")
        if self.device_failure:
            raise DeviceFailure(f"This worker is unhealthy and about to be replaced: {self.device_failure}")
        payload = payload_mod.validate(job.get("input"), self.validator, self.cfg.limits.max_total_chars)
        cfg = payload_mod.merge(self.cfg, payload)
        # the payload with the worker's own settings around it (an opus request against an
        # operator's 44.1 kHz output, say) must make sense as a whole
        payload_mod.validate(payload_mod.from_config(cfg), self.validator, self.cfg.limits.max_total_chars)
        return cfg

    def handle(self, job: dict, ticket: Ticket | None = None) -> dict:
        """Answer one RunPod job; never raises. `ticket` lets the caller cancel it."""
        try:
            cfg = self._resolve(job)
            if cfg.input.stream:
                raise InputError("Invalid input at $.stream: this worker does not stream (its handler is not a "
                                 "generator). Start it with TTS_RUNNER_STREAMING=true (worker.streaming), or leave "
                                 "stream out to get the whole file.")
            return self._whole(cfg, job, ticket)
        except Exception as exc:  # noqa: BLE001 - every failure becomes {error, traceback}
            return self._failure(job, exc)

    def _whole(self, cfg: DictConfig, job: dict, ticket: Ticket | None) -> dict:
        """A resolved job's one answer, the whole file (raises on failure)."""
        model = self.store.get(cfg.input.model)
        response, _ = run_job(cfg, model, str(job.get("id", "local")), progress=self._progress(job),
                              ticket=ticket or Ticket(str(job.get("id", "local"))))
        meta = {k: v for k, v in response["metadata"].items() if k != "segments"}
        log.info("Job %s done: %s", job.get("id", "local"), json.dumps(meta))
        return redact(response, self.secrets)

    def stream(self, job: dict, ticket: Ticket | None = None) -> Iterator[dict]:
        """Answer one job as a generator handler does; never raises. A job with "stream": true
        yields its audio in pieces, {audio_base64, format, sample_rate, piece}, the last one with
        the metadata; any other job yields its one answer (handle's)."""
        try:
            cfg = self._resolve(job)
        except Exception as exc:  # noqa: BLE001
            yield self._failure(job, exc)
            return
        if not cfg.input.stream:
            try:
                yield self._whole(cfg, job, ticket)
            except Exception as exc:  # noqa: BLE001
                yield self._failure(job, exc)
            return
        ticket = ticket or Ticket(str(job.get("id", "local")))
        piece = 0
        try:
            model = self.store.get(cfg.input.model)
            for data, metadata in stream_job(cfg, model, ticket):
                answer = {"audio_base64": base64.b64encode(data).decode("ascii"),
                          "format": "mp3" if cfg.input.output_format == "mp3" else "pcm",
                          "sample_rate": SAMPLE_RATE, "piece": piece}
                if metadata is not None:
                    answer["metadata"] = metadata
                    log.info("Job %s streamed: %s", job.get("id", "local"),
                             json.dumps({k: v for k, v in metadata.items() if k != "segments"}))
                piece += 1
                yield redact(answer, self.secrets)
        except Exception as exc:  # noqa: BLE001 - the stream ends with {error, traceback}
            yield self._failure(job, exc)

    def cancel(self, ticket: Ticket) -> None:
        """RunPod stopped a job: its chunks leave every scheduler (waiting now, running at the next check)."""
        ticket.cancelled = True
        for model in self.store.loaded_models() if self.store else []:
            if model.scheduler is not None:
                model.scheduler.cancel(ticket)
        log.info("Job %s cancelled", ticket.name)

    def _failure(self, job: dict, exc: BaseException) -> dict:
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

