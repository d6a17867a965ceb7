"""The scheduler of one loaded model: jobs hand it their chunks; it owns the loop that generates them.

Iteration-level batching, as Orca and vLLM schedule language-model requests: one thread steps the
model's running batches of rows (tts_runner/engines: the graph engine's slots and the fast loop
beside them, or the fast loop alone) and, every `sync_every` frames, at its host check, retires the
rows that have ended (their codes go back to the job that asked) and admits waiting chunks into the
free rows: qwen-tts builds their prompts, they are prefilled as a group and placed as one call's rows
are placed (engines.loop.place). Each row holds its own sampling, so jobs with different params share
a batch.

Fairness: free rows go round-robin over the jobs that have chunks waiting, in the order the jobs
arrived (a job's own chunks in the order it gave them). A job alone gets every row (a per-job cap
would leave rows idle while a podcast runs alone), and a job that arrives while a long one holds
every row gets every other row that frees: a short request does not wait behind a podcast, and the
podcast keeps the rest.

Codes become audio on a thread of their own, beside the loop (`decode`, the speech decoder's work):
the jobs hand it their finished chunks and it decodes everything waiting in one length-grouped call
of the speech tokenizer, so chunks of many jobs that end together are decoded together, and the
frame loop keeps stepping while it runs instead of waiting between rounds. On CUDA the decoder
runs on its own stream, so its kernels overlap the loop's frames (captured graphs included); there
is one decoder per model, never one per job (on the CPU a decode per job thrashed: each ran its own
thread pool).

Bounds: at most `max_rows` rows run at once; at most `queue_limit` chunks wait, over all jobs, and
a job that would go beyond is refused at once with WorkerBusy (never an out-of-memory later). A job
that is cancelled loses its waiting chunks at once and its rows at the next host check. A failure in
the loop fails the chunks it touched (the jobs retry them, as they retry a failed batch); out of
memory also halves the rows; a failure that may have broken the GPU fails everything with
DeviceFailure.
"""

from __future__ import annotations

import contextlib
import logging
import threading
from collections import deque
from collections.abc import Callable, Iterator
from concurrent.futures import Future
from dataclasses import dataclass, field
from typing import Any, Protocol

import numpy as np
import torch

from tts_runner.engines.core import Row, RowBatch
from tts_runner.engines.loop import place, step
from tts_runner.engines.sampling import Sampling
from tts_runner.errors import DeviceFailure, WorkerBusy
from tts_runner.serving.device import device_broken
from tts_runner.serving.ticket import Ticket

log = logging.getLogger(__name__)


class Served(Protocol):
    """What the scheduler asks of its model (tts_runner.serving.model.Model)."""

    name: str
    lock: threading.Lock

    def prompts(self, requests: list[Any]) -> tuple[list[tuple[torch.Tensor, torch.Tensor]], torch.Tensor, list]: ...
    def new_batches(self, pad: torch.Tensor, suppress: list[int] | None, capacity: int) -> list[RowBatch]: ...
    def decode(self, items: list[tuple[Any, torch.Tensor]]) -> list[np.ndarray]: ...


@dataclass(eq=False)
class Pending:
    """A chunk waiting for, or holding, a row: its request (a model's ChunkRequest), its row's
    sampling, its job. `listener` (streaming) hears the row's codes so far at every host check
    while it runs."""

    request: Any
    sampling: Sampling
    ticket: Ticket
    listener: Callable[[torch.Tensor], None] | None = None
    future: Future = field(default_factory=Future)


class Scheduler:
    def __init__(self, model: Served, max_rows: int, queue_limit: int, sync_every: int):
        self.model, self.max_rows, self.queue_limit = model, int(max_rows), int(queue_limit)
        self.rows = self.max_rows  # lowered after an out-of-memory
        self.sync_every = max(1, int(sync_every))
        self.cond = threading.Condition()
        self.waiting: dict[Ticket, deque[Pending]] = {}  # insertion order = arrival order
        self.count = 0  # chunks waiting
        self.turn = 0   # where the round-robin goes on
        # the running rows: the model's batches (for the graph engine its slots, and the fast loop beside
        # them for chunks too long for its buffers); made at the first admission, rows stay where they start
        self.batches: list[RowBatch] = []
        self.broken: str | None = None
        self.thread: threading.Thread | None = None
        self.rounds = 0
        self.to_decode: list = []  # ((request, codes), future) waiting to be decoded
        self.decoder: threading.Thread | None = None
        self.decodes = 0  # decoder calls made
        self.piece_seconds = 0.0  # how long the streams' piece decodes lately took, their recent worst (measured
                                  # at warm-up, then by tts_runner/job/stream.py): each stream's estimate
        self.streams_starting = 0  # streams whose first piece has not gone out (their first decodes meet)
        self.holds = 0  # holds on admission (held()): while any is on, waiting chunks wait

    # ---- the jobs' side --------------------------------------------------------------------------
    def submit(self, ticket: Ticket, items: list[tuple[Any, Sampling, Callable | None]]) -> list[Future]:
        """Queue chunks of one job (request, its row's sampling, listener); all or none: beyond the
        queue limit, WorkerBusy."""
        with self.cond:
            if self.broken:
                raise DeviceFailure(self.broken)
            if self.count + len(items) > self.queue_limit:
                raise WorkerBusy(
                    f"Worker busy: {self.count} chunks are waiting for {self.model.name} and this job adds "
                    f"{len(items)}, over the queue limit of {self.queue_limit} (scheduler.queue_limit). Send it again "
                    "shortly, or to another worker.")
            queue = self.waiting.setdefault(ticket, deque())
            pending = [Pending(request, sampling, ticket, listener) for request, sampling, listener in items]
            queue.extend(pending)
            self.count += len(pending)
            self._start()
            self.cond.notify_all()  # two threads wait on it: the loop and the decoder
        return [p.future for p in pending]

    def _start(self) -> None:
        if self.thread is None:
            self.thread = threading.Thread(target=self._loop, name=f"scheduler-{self.model.name}", daemon=True)
            self.thread.start()
        if self.decoder is None:
            self.decoder = threading.Thread(target=self._decode_loop, name=f"decoder-{self.model.name}", daemon=True)
            self.decoder.start()

    def cancel(self, ticket: Ticket) -> None:
        """Drop a job: its waiting chunks now, its rows at the next host check."""
        with self.cond:
            ticket.cancelled = True
            for pending in self.waiting.pop(ticket, ()):
                self.count -= 1
                pending.future.cancel()

    @contextlib.contextmanager
    def held(self) -> Iterator[None]:
        """Hold admission: chunks handed over meanwhile wait, and are admitted together once the hold
        ends (rows already running go on). The runs of a batched sweep start under a hold, so that
        their chunks meet in one prefill instead of joining one by one a frame apart: a row that
        joins late pads the others' caches (a masked attention from then on) and ends apart from
        them (a decode call of its own)."""
        with self.cond:
            self.holds += 1
        try:
            yield
        finally:
            with self.cond:
                self.holds -= 1
                self.cond.notify_all()  # two threads wait on it: the loop and the decoder

    @property
    def jobs_waiting(self) -> int:
        """How many jobs have chunks waiting for a row."""
        with self.cond:
            return len(self.waiting)

    def count_starting(self, change: int) -> None:
        """A stream starts (+1) or has sent its first piece or ended (-1)."""
        with self.cond:
            self.streams_starting += change

    @property
    def load(self) -> tuple[int, int]:
        """(rows running, chunks waiting)."""
        return self.running, self.count

    @property
    def running(self) -> int:
        return sum(len(b) for b in self.batches)

    def decode(self, items: list[tuple[Any, torch.Tensor]]) -> list[np.ndarray]:
        """Waveforms for (request, codes) items, decoded with whatever other jobs are waiting for."""
        if not items:
            return []
        futures = [Future() for _ in items]
        with self.cond:
            self.to_decode.extend(zip(items, futures, strict=True))
            self._start()
            self.cond.notify_all()  # two threads wait on it: the loop and the decoder
        return [f.result() for f in futures]

    def _decode_loop(self) -> None:
        """The decoder's thread: everything waiting, in one call, while the loop goes on stepping (on
        CUDA on a stream of its own: the codes come from the host, so nothing waits on the loop's)."""
        stream = torch.cuda.Stream() if self._on_cuda() else None
        while True:
            with self.cond:
                while not self.to_decode:
                    self.cond.wait()
                batch, self.to_decode = self.to_decode, []
            if stream is None:
                self._decode(batch)
            else:
                # what the loop's stream queued before (a clone's reference codes) comes first
                stream.wait_stream(torch.cuda.default_stream(self.model.like.device))
                with torch.cuda.stream(stream):
                    self._decode(batch)
            self.decodes += 1

    def _on_cuda(self) -> bool:
        like = getattr(self.model, "like", None)
        return isinstance(like, torch.Tensor) and like.device.type == "cuda"

    def _decode(self, batch: list) -> None:
        try:
            wavs = self.model.decode([item for item, _ in batch])
        except Exception as exc:  # noqa: BLE001 - each job hears it
            for _, future in batch:
                future.set_exception(exc)
        else:
            for (_, future), wav in zip(batch, wavs, strict=True):
                future.set_result(wav)

    # ---- the loop --------------------------------------------------------------------------------
    def take(self, free: int) -> list[Pending]:
        """Up to `free` waiting chunks, round-robin over the jobs in arrival order."""
        taken: list[Pending] = []
        while free > len(taken) and self.waiting:
            jobs = list(self.waiting)
            ticket = jobs[self.turn % len(jobs)]
            queue = self.waiting[ticket]
            taken.append(queue.popleft())
            self.count -= 1
            if queue:
                self.turn += 1
            else:
                del self.waiting[ticket]  # the next job moves into this place in the turn
        return taken

    def _loop(self) -> None:
        while True:
            with self.cond:
                while not (self.count and not self.holds) and not self.running:
                    self.cond.wait()
                free = self.rows - self.running
                admit = self.take(free) if free > 0 and not self.holds else []
            if admit or self.running:
                self._round(admit)
            with self.cond:
                self.cond.notify_all()  # for wait_idle

    def wait_idle(self, timeout: float) -> bool:
        """Wait until no chunk waits or runs (True), or `timeout` seconds pass (False)."""
        with self.cond:
            return self.cond.wait_for(lambda: not self.count and not self.running, timeout)

    def _round(self, admit: list[Pending]) -> None:
        """Admit, step `sync_every` frames, check: one round of the loop, under the model's lock."""
        try:
            with self.model.lock, torch.inference_mode():
                if admit:
                    self.admit(admit)
                step(self.batches, self.sync_every)
                self._check()
        except Exception as exc:  # noqa: BLE001 - fail what the round touched, go on serving
            self._fail(exc, admit)
        self.rounds += 1

    def admit(self, pending: list[Pending]) -> None:
        """Build the prompts of the chunks taken (their job not cancelled) and place their rows."""
        live = [p for p in pending if not p.ticket.cancelled]
        for p in pending:
            if p.ticket.cancelled:
                p.future.cancel()
        if not live:
            return
        prompts, pad, suppress = self.model.prompts([p.request for p in live])
        rows = [Row(prompt, text, p.sampling, p) for (prompt, text), p in zip(prompts, live, strict=True)]
        if not self.batches:
            self.batches = self.model.new_batches(pad, suppress, self.max_rows)
        place(self.batches, rows)

    def _check(self) -> None:
        """The host check: hand back the rows that ended, drop cancelled ones, feed listeners."""
        for batch in self.batches:
            if not len(batch):
                continue
            ended = set(batch.finished())
            gone = [i for i, row in enumerate(batch.rows) if i in ended or row.tag.ticket.cancelled]
            results = {i: batch.codes(i) for i in gone if i in ended and not batch.rows[i].tag.ticket.cancelled}
            for i, row in enumerate(batch.rows):
                if row.tag.listener and i not in ended:
                    row.tag.listener(batch.codes(i))
            for i, row in zip(gone, batch.remove(gone), strict=True):
                if i in results:
                    row.tag.future.set_result(results[i])
                else:
                    row.tag.future.cancel()

    def _fail(self, exc: BaseException, admit: list[Pending]) -> None:
        touched = [p for p in admit if not p.future.done()]
        for batch in self.batches:
            touched += [row.tag for row in batch.rows if not row.tag.future.done()]
            batch.close()
        self.batches = []
        if device_broken(exc):
            self.broken = (f"The GPU failed ({type(exc).__name__}: {exc}); this worker stops and a fresh one takes "
                           "its place. Send the job again.")
            exc = DeviceFailure(self.broken)
            with self.cond:  # nothing may run on this device again
                for queue in self.waiting.values():
                    touched += list(queue)
                self.waiting.clear()
                self.count = 0
        elif isinstance(exc, torch.cuda.OutOfMemoryError):
            self.rows = max(1, self.rows // 2)
            log.warning("Out of memory with %d rows; %s now runs at most %d rows at once", len(touched),
                        self.model.name, self.rows)
            if torch.cuda.is_available():
                torch.cuda.empty_cache()
        else:
            log.warning("Decode round failed for %d chunks (%s: %s); their jobs retry them", len(touched),
                        type(exc).__name__, exc)
            log.debug("Decode round failure", exc_info=True)
        for p in touched:
            if not p.future.done():
                p.future.set_exception(exc)
