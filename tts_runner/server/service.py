"""What the HTTP server serves: the queue worker's Worker (the one edge, the model store and its
schedulers), loaded on a thread while the server already answers /ping, and the saved voices.

Every route goes through here: an OpenAI request becomes a payload (tts_runner/server/openai.py),
the payload a Job at the worker's edge, the Job audio on the same stages as the queue worker's jobs
(whole files through tts_runner.job.run, streams through tts_runner.job.stream).
"""

from __future__ import annotations

import copy
import logging
import threading
import time
import uuid
from collections.abc import Iterator

from omegaconf import DictConfig

from tts_runner.audio.codec import FRAMES_PER_SECOND  # codec frames: the "output tokens" of a request
from tts_runner.edge import build
from tts_runner.edge.aio import Buffer
from tts_runner.edge.worker import Worker
from tts_runner.job.run import JobAudio, synthesize
from tts_runner.job.spec import Job
from tts_runner.job.stream import stream_job
from tts_runner.server.errors import ApiError
from tts_runner.server.openai import SpeechRequest, speech_request
from tts_runner.server.settings import ServerSettings
from tts_runner.serving import vitals
from tts_runner.serving.ticket import Ticket

log = logging.getLogger(__name__)



class Service:
    def __init__(self, cfg: DictConfig, settings: ServerSettings):
        self.cfg, self.settings = cfg, settings
        self.worker: Worker | None = None
        self.loaded = threading.Event()
        voices = build.voices(cfg.voices)
        reserved = {*voices.aliases, *voices.clones, *settings.voices}
        self.voices = build.saved_voices(cfg.voices, build.cloning(cfg.cloning), settings.voices_dir, reserved)
        self.variants = {name: str(v.kind) for name, v in cfg.models.variants.items()}
        self.clones = dict(voices.clones)
        self.default_model, self.default_voice = str(cfg.input.model), str(cfg.input.voice)
        self.counters: dict = {}  # model -> its tokenizer's copy, for usage
        self.counting = threading.Lock()
        self.stopping = False
        self.buffers: set[Buffer] = set()  # the open streams' buffers
        self.stream_drops = 0        # streams dropped for a client that stopped reading
        self.stream_peak_bytes = 0   # the most one stream's buffer has held
        self.buffering = threading.Lock()

    def load(self, worker: Worker | None = None) -> None:
        """Load the worker (its default model, warmed up): on a thread of its own at start-up."""
        started = time.perf_counter()
        self.worker = worker or Worker(self.cfg)
        self.loaded.set()
        log.info("Server ready in %.1f s", time.perf_counter() - started)

    def start(self) -> threading.Thread:
        thread = threading.Thread(target=self.load, name="load-models", daemon=True)
        thread.start()
        return thread

    # ---- health -------------------------------------------------------------------------------
    def health(self) -> tuple[int, str]:
        """RunPod's load balancer reads /ping: 204 while loading, 200 ready, 503 unhealthy."""
        if not self.loaded.is_set():
            return 204, "loading"
        if self.stopping:
            return 503, "shutting down"
        if self.worker.startup_error:
            return 503, f"start-up failed: {self.worker.startup_error}"
        if self.worker.device_failure:
            return 503, f"unhealthy: {self.worker.device_failure}"
        return 200, "ready"

    def ready_worker(self) -> Worker:
        if self.stopping:
            raise ApiError(503, "Worker shutting down: it takes no new requests. Send it again (to another worker).",
                           type="server_error", code="shutting_down")
        status, why = self.health()
        if status == 204:
            raise ApiError(503, "The server is loading its model; try again in a moment (GET /ping answers 200 "
                                "when it is ready).", type="server_error", code="not_ready")
        if status != 200:
            raise ApiError(503, f"The server cannot take requests: {why}", type="server_error", code="unhealthy")
        return self.worker

    # ---- speech -------------------------------------------------------------------------------
    def request(self, body) -> SpeechRequest:
        return speech_request(body, self.settings, self.voices, self.variants, self.clones, self.default_model,
                              self.default_voice)

    def job(self, request: SpeechRequest) -> tuple[Job, Ticket]:
        worker = self.ready_worker()
        id = f"http-{uuid.uuid4().hex[:12]}"
        return worker.job({"id": id, "input": request.payload}), Ticket(id)

    def whole(self, job: Job, ticket: Ticket) -> JobAudio:
        """The job's whole file, its metadata and the files beside it (raises on failure)."""
        try:
            with self.worker.running(ticket):
                made = synthesize(job, self.worker.store.get(job.model), ticket=ticket)
        except Exception as exc:
            self.failed(job, exc)
            raise
        log.info("Request %s done: %.2f s of %s audio in %.2f s", job.id, made.duration_seconds, job.output.format,
                 made.metadata["generation_time_seconds"])
        return made

    def stream(self, job: Job, ticket: Ticket, fmt: str) -> Iterator[tuple[bytes, dict | None]]:
        try:
            with self.worker.running(ticket):
                yield from stream_job(job, self.worker.store.get(job.model), ticket, fmt=fmt)
        except Exception as exc:
            self.failed(job, exc)
            raise

    def failed(self, job: Job, exc: BaseException) -> None:
        """Log it as the queue worker does; a GPU failure makes the worker unhealthy (/ping 503)."""
        self.worker.failure({"id": job.id}, exc)

    def open_buffer(self) -> Buffer:
        """A new stream's buffer (server.stream_buffer_bytes, stream_stall_seconds), counted while it is open."""
        buffer = Buffer(self.settings.stream_buffer_bytes, self.settings.stream_stall_seconds, on_end=self._closed)
        with self.buffering:
            self.buffers.add(buffer)
        return buffer

    def _closed(self, buffer: Buffer) -> None:
        with self.buffering:
            self.buffers.discard(buffer)
            self.stream_drops += buffer.dropped
            self.stream_peak_bytes = max(self.stream_peak_bytes, buffer.peak)

    def buffered_bytes(self) -> int:
        """What the open streams hold for their readers now."""
        with self.buffering:
            return sum(b.held for b in self.buffers)

    def vitals(self) -> dict:
        """The worker's vitals (tts_runner/serving/vitals.py) and the open streams' buffers; the process's
        alone while the model loads."""
        made = vitals.of_worker(self.worker) if self.loaded.is_set() else vitals.of_process()
        held = self.buffered_bytes()
        with self.buffering:
            made["streams"] = {"open": len(self.buffers), "buffered_bytes": held, "dropped": self.stream_drops,
                               "peak_bytes": self.stream_peak_bytes}
        return made

    def stop(self) -> None:
        """SIGTERM: the worker takes no new job; those running get server.shutdown_grace_seconds."""
        self.stopping = True
        if self.worker is not None:
            self.worker.stop(self.settings.shutdown_grace_seconds)

    def cancel(self, ticket: Ticket) -> None:
        if self.worker is not None:
            self.worker.cancel(ticket)

    def usage(self, job: Job, metadata: dict) -> dict:
        """OpenAI's usage: the text's tokens as the model's tokenizer counts them, and the codec frames made."""
        text = " ".join(s.text for s in job.segments)
        try:
            with self.counting:  # a copy of the model's tokenizer: the scheduler's thread uses the model's own,
                if job.model not in self.counters:  # and a fast tokenizer used from two threads fails ("Already borrowed")
                    self.counters[job.model] = copy.deepcopy(self.worker.store.get(job.model).tts.processor.tokenizer)
                input_tokens = len(self.counters[job.model](text)["input_ids"])
        except Exception:  # noqa: BLE001 - a count, never a failure
            input_tokens = len(text.split())
        output_tokens = int(round(float(metadata.get("duration_seconds", 0.0)) * FRAMES_PER_SECOND))
        return {"input_tokens": input_tokens, "output_tokens": output_tokens,
                "total_tokens": input_tokens + output_tokens}

    # ---- the queue worker's payload -----------------------------------------------------------
    def tts_job(self, body) -> dict:
        """POST /v1/tts's body, {"input": {...}}, as the queue worker's job (the worker checks the input)."""
        if not isinstance(body, dict) or "input" not in body or set(body) - {"input", "id"}:
            raise ApiError(400, "Invalid input: the body must be {\"input\": {...}}, a queue worker's job "
                                "(and optionally its \"id\").", code="invalid_value")
        self.ready_worker()
        return {"id": str(body.get("id") or f"http-{uuid.uuid4().hex[:12]}"), "input": body["input"]}
