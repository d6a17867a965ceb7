"""The generate stage: every chunk of a plan made into audio, with retries.

With the model's scheduler (the fast and graph engines), every chunk is handed over at once (in job
order) and shares the model's rows with other jobs' chunks; each is checked and decoded on the job's
thread as its codes come back, and a chunk that fails is handed over again with its next seed.
Without one (the stock engine, or `scheduler.enabled: false`), the job runs its own batches: its
chunks sorted by length, so that a batch holds chunks of similar length, bounded by
`batching.max_batch_size` and `max_batch_chars` (`max_batch_size: 1` is the sequential path).

Retries are per chunk: audio the check stage refuses is made again. A batch that raises (CUDA out
of memory, say) is split in half and retried, down to single chunks; a chunk out of attempts ends
the job with an error naming its segment and chunk. A DeviceFailure (the GPU's context may be
broken) ends the job at once.
"""

from __future__ import annotations

import logging
import time
from collections import deque
from concurrent.futures import FIRST_COMPLETED, wait
from dataclasses import dataclass

import numpy as np
import torch

from tts_runner.audio.codec import FRAMES_PER_SECOND, SAMPLE_RATE
from tts_runner.errors import DeviceFailure, GenerationError
from tts_runner.job.check import judge
from tts_runner.job.events import Events
from tts_runner.job.plan import Chunk, Plan, seeded
from tts_runner.job.spec import Job
from tts_runner.serving.model import Model
from tts_runner.serving.ticket import Ticket

log = logging.getLogger(__name__)


@dataclass
class Stats:
    model_seconds: float = 0.0
    calls: int = 0
    retries: int = 0
    splits: int = 0
    runaways: int = 0  # chunk attempts that reached their frame budget without ending
    frame_steps: int = 0  # talker steps the engine ran (prefill included), as it reports them
    audio_seconds: float = 0.0  # of accepted audio


class _Tally:
    """A job's chunks as they are judged: the accepted ones counted and handed on, the others
    counted against their attempts (the last one ends the job)."""

    def __init__(self, plan: Plan, job: Job, events: Events):
        self.plan, self.job, self.events = plan, job, events
        self.stats = Stats()
        self.done = 0

    def judge(self, chunk: Chunk, wav: np.ndarray) -> bool:
        """Accept the chunk's audio (True), or count its failure (False; raises on the last attempt)."""
        problem, runaway = judge(chunk, wav, self.job.sampling, self.job.recipe.batching)
        self.stats.runaways += runaway
        if problem is not None:
            self.fail(chunk, problem)
            return False
        self.done += 1
        self.stats.audio_seconds += wav.size / SAMPLE_RATE
        self.events.result(chunk, wav)
        return True

    def fail(self, chunk: Chunk, problem: str) -> None:
        chunk.attempts += 1
        where = self.plan.where(chunk)
        if chunk.attempts >= self.job.recipe.batching.retries:
            raise GenerationError(f"Generation failed on {where} after {chunk.attempts} attempts: {problem}")
        self.stats.retries += 1
        log.warning("Retrying %s (attempt %d failed: %s)", where, chunk.attempts, problem[:200])
        self.events.retry(chunk, problem, where)

    def progress(self, extra_seconds: float = 0.0) -> None:
        self.events.progress(self.done, len(self.plan.chunks), self.stats.audio_seconds + extra_seconds)


def generate(model: Model, plan: Plan, job: Job, events: Events | None = None, ticket: Ticket | None = None) -> Stats:
    """Make every chunk of `plan` (through the model's scheduler when it has one); `events` hears how
    it goes; `ticket` lets the caller cancel the job."""
    tally = _Tally(plan, job, events or Events())
    if model.scheduler is not None:
        _scheduled(model, tally, ticket or Ticket(job.id))
    else:
        _batched(model, tally)
    return tally.stats


def make_batches(chunks: list[Chunk], max_batch_size: int, max_batch_chars: int) -> list[list[Chunk]]:
    """Longest first, so each batch holds chunks of similar length; bounded in count and text."""
    batches: list[list[Chunk]] = []
    current: list[Chunk] = []
    chars = 0
    for chunk in sorted(chunks, key=lambda c: (-len(c.request.text), c.index)):
        size = len(chunk.request.text)
        if current and (len(current) >= max_batch_size or chars + size > max_batch_chars):
            batches.append(current)
            current, chars = [], 0
        current.append(chunk)
        chars += size
    if current:
        batches.append(current)
    return batches


def _batched(model: Model, tally: _Tally) -> None:
    """The job's own batches, one model call each; a batch that raises is split."""
    job, stats, batching = tally.job, tally.stats, tally.job.recipe.batching
    during = {"frames": 0, "seconds": 0.0}  # the batch running now: seconds estimated from frames stepped

    def progress(frames: int, going: int) -> None:
        during["seconds"] += (frames - during["frames"]) * going / FRAMES_PER_SECOND
        during["frames"] = frames
        tally.progress(during["seconds"])

    def steps(count: int) -> None:
        stats.frame_steps += count

    pending = deque(make_batches(tally.plan.chunks, batching.max_batch_size, batching.max_batch_chars))
    while pending:
        batch = pending.popleft()
        started = time.perf_counter()
        during.update(frames=0, seconds=0.0)
        try:
            requests = [seeded(c, job.sampling.seed) for c in batch]
            wavs, sample_rate = model.generate(requests, job.sampling, on_steps=steps, progress=progress)
        except DeviceFailure:
            raise  # nothing may run on this device again
        except Exception as exc:  # noqa: BLE001 - any other failure of a batch is retried smaller
            _release_memory(exc)
            problem = f"{type(exc).__name__}: {exc}"
            if len(batch) > 1:
                half = len(batch) // 2
                log.warning("Batch of %d failed (%s); splitting and retrying", len(batch), problem[:200])
                stats.splits += 1
                pending.extendleft([batch[half:], batch[:half]])
            else:
                tally.fail(batch[0], problem)
                pending.append(batch)
            continue
        finally:
            stats.model_seconds += time.perf_counter() - started
            stats.calls += 1
        if sample_rate != SAMPLE_RATE:
            raise GenerationError(f"The model made audio at {sample_rate} Hz; tts-runner expects {SAMPLE_RATE}.")
        if len(wavs) != len(batch):
            raise GenerationError(f"The model returned {len(wavs)} waveforms for a batch of {len(batch)}.")
        retry = [chunk for chunk, wav in zip(batch, wavs, strict=True) if not tally.judge(chunk, wav)]
        if retry:
            pending.extend(make_batches(retry, batching.max_batch_size, batching.max_batch_chars))
        tally.progress()


def _scheduled(model: Model, tally: _Tally, ticket: Ticket) -> None:
    """Every chunk handed to the model's scheduler at once; checked and decoded here, on the job's
    thread, as its codes come back."""
    scheduler, job, stats, events = model.scheduler, tally.job, tally.stats, tally.events
    started = time.perf_counter()

    def submit(chunks: list[Chunk]) -> dict:
        items = []
        for chunk in chunks:
            request = seeded(chunk, job.sampling.seed)
            items.append((request, model.row_sampling(request, job.sampling), events.listener(chunk)))
        futures = scheduler.submit(ticket, items)
        return {future: (chunk, request) for future, chunk, (request, _, _) in zip(futures, chunks, items, strict=True)}

    waiting = submit(tally.plan.chunks)
    try:
        while waiting:
            done, _ = wait(waiting, timeout=0.5, return_when=FIRST_COMPLETED)
            if ticket.cancelled:
                raise ticket.failure()
            ready, retry = [], []
            for future in done:
                chunk, request = waiting.pop(future)
                try:
                    ready.append((chunk, request, future.result()))
                except DeviceFailure:
                    raise
                except Exception as exc:  # noqa: BLE001 - the round failed (out of memory, say): try the chunk again
                    tally.fail(chunk, f"{type(exc).__name__}: {exc}")
                    retry.append(chunk)
            wavs = []
            for group in _groups(ready):  # a cancel is heard between groups, not after every decode
                if ticket.cancelled:
                    raise ticket.failure()
                tails = [events.tail(chunk, request, codes) for chunk, request, codes in group]
                decoded = scheduler.decode([(request, codes) if tail is None else tail[0]
                                            for (_, request, codes), tail in zip(group, tails, strict=True)])
                wavs += [wav if tail is None else tail[1](wav) for wav, tail in zip(decoded, tails, strict=True)]
            for (chunk, _, codes), wav in zip(ready, wavs, strict=True):
                stats.calls += 1
                stats.frame_steps += codes.shape[0] + 1
                if not tally.judge(chunk, wav):
                    retry.append(chunk)
            if retry:
                waiting.update(submit(sorted(retry, key=lambda c: c.index)))
            if done:
                tally.progress()
    except BaseException:
        scheduler.cancel(ticket)  # the job is over: its other chunks give their rows back
        raise
    stats.model_seconds = time.perf_counter() - started


DECODE_GROUP_FRAMES = 1024  # frames decoded in one call at most (82 s of audio): rows that end together are
                           # many; one call for all would keep a cancel (SIGTERM's grace) and other jobs'
                           # stream pieces, which share the decoder, waiting behind it


def _groups(ready: list) -> list[list]:
    """(chunk, request, codes) items in order, in groups of at most DECODE_GROUP_FRAMES frames (one
    item alone may be more)."""
    groups, frames = [], 0
    for item in ready:
        if not groups or frames + item[2].shape[0] > DECODE_GROUP_FRAMES:
            groups.append([])
            frames = 0
        groups[-1].append(item)
        frames += item[2].shape[0]
    return groups


def _release_memory(exc: Exception) -> None:
    if isinstance(exc, torch.cuda.OutOfMemoryError) and torch.cuda.is_available():
        torch.cuda.empty_cache()
