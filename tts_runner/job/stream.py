"""A job's audio streamed in order as it becomes final (a payload's `"stream": true`).

The job's chunks go to the scheduler in order. While the chunk at the head of the line runs, its
codes so far reach the stream at every host check and are decoded with the speech tokenizer's left
context (`stream.left_context_frames` frames before the new ones; the decoder is causal, so the
opening of a chunk is there before its end). Finished chunks behind the head wait their turn; the
head, once finished, is decoded only after the frames the stream decoded of it (the same left
context), so its last piece comes as soon as its row ends.

The pieces are exactly the samples the whole job would have: each chunk's silent edges trimmed,
chunks crossfaded, segments joined with their gap, as tts_runner.job.assemble builds them, except
loudness matching, which needs a whole segment (a streamed job is left at the level the model made
it). A sample goes out once nothing to come can change it: not before the first loud window of its
chunk is known (leading trim), nor within the last loud window + keep (trailing trim) or the last
crossfade of what is known. So the pieces joined equal the audio of the same job, seed and settings
run without streaming and with `loudness_lufs: null`, to within the decoder's float rounding (it
decodes a shorter window: 1 LSB of PCM16 at most; tests/e2e/test_stream.py).

A head chunk that has been partly streamed cannot be retried (too short, or ran away): the stream
ends with an error naming it.
"""

from __future__ import annotations

import math
import queue
import threading
import time
from collections import deque
from dataclasses import replace

import numpy as np
import torch

from tts_runner.audio import dsp
from tts_runner.audio.codec import FRAMES_PER_SECOND, SAMPLE_RATE, SAMPLES_PER_FRAME
from tts_runner.audio.streams import StreamEncoder
from tts_runner.errors import GenerationError, InputError, JobCancelled
from tts_runner.job import describe
from tts_runner.job.assemble import chunk_places, trimmed
from tts_runner.job.design import design_voices
from tts_runner.job.events import Events
from tts_runner.job.generate import generate
from tts_runner.job.plan import Chunk, Plan, plan
from tts_runner.job.spec import Job
from tts_runner.serving.model import Model
from tts_runner.serving.ticket import Ticket

PACE_CHECKS = 6  # a running chunk's speed is read over its last host checks (it falls as other rows join it)


class StreamAssembler:
    """The job's audio so far and how much of it is final."""

    def __init__(self, model: Model, chunks: Plan, job: Job):
        pacing, chunking = job.recipe.pacing, job.recipe.chunking
        self.model, self.job = model, job
        self.left_context = pacing.left_context_frames
        self.first_frames = max(1, pacing.first_piece_frames)
        self.piece_frames = max(self.first_frames, pacing.piece_frames)
        self.adaptive = pacing.schedule == "adaptive"
        self.low_water = pacing.low_water_seconds
        self.scheduler = model.scheduler
        self.decode_seconds = 0.0                   # how long this stream's piece decodes took lately (their recent worst)
        self.pace: dict[int, deque] = {}            # chunk -> its last host checks heard, (time, frames)
        self.playing_since: float | None = None     # when the first samples went out (a listener starts then)
        self.counted = False                        # among the model's streams starting
        self.crossfade_ms = chunking.crossfade_ms
        self.crossfade = int(round(SAMPLE_RATE * chunking.crossfade_ms / 1000.0))
        self.gap = int(round(SAMPLE_RATE * chunking.segment_gap_ms / 1000.0))
        self.order: list[list[Chunk]] = [[] for _ in range(chunks.segments)]  # chunks of each segment, in order
        for chunk in sorted(chunks.chunks, key=lambda c: (c.segment, c.position)):
            self.order[chunk.segment].append(chunk)
        self.cond = threading.Condition()
        self.done: dict[int, np.ndarray] = {}       # chunk index -> its audio, accepted
        self.latest: dict[int, torch.Tensor] = {}   # chunk index -> its codes so far, while it runs
        self.head: tuple[int, int, np.ndarray] | None = None  # (chunk index, frames decoded, their samples)
        self.streamed: set[int] = set()             # chunks partly sent before they ended
        self.segment = 0                            # the segment being sent
        self.sent = 0                               # samples of it sent
        self.spans: list[tuple] = []                # each segment's (start, end, chunk places) in the stream, seconds
        self.total = 0                              # samples sent in all
        self.start = 0                              # where the segment being sent starts
        self.finished = False
        self.error: BaseException | None = None

    def events(self) -> Events:
        """What the generate stage tells this assembler."""
        return Events(result=self.add, retry=self.retry, listener=self.listener, tail=self.tail)

    def _starting(self, starts: bool) -> None:
        """Count this stream among its model's streams starting (their first pieces are decoded together,
        on one decoder) from its first row's first codes (not while it waits for a row) until its first
        piece goes out or it ends."""
        with self.cond:  # the stream's thread and the job's may both end it
            if starts == self.counted or not hasattr(self.scheduler, "streams_starting") or \
                    (starts and (self.playing_since is not None or self.finished)):
                return
            self.counted = starts
        self.scheduler.count_starting(1 if starts else -1)

    # ---- what the generation side tells it (job thread, scheduler thread) -------------------------
    def listener(self, chunk):
        def hear(codes: torch.Tensor) -> None:
            now = time.monotonic()
            with self.cond:
                self.latest[chunk.index] = codes
                self.pace.setdefault(chunk.index, deque(maxlen=PACE_CHECKS)).append((now, codes.shape[0]))
                self.cond.notify_all()
            if not self.counted:
                self._starting(True)
        return hear

    def tail(self, chunk, request, codes: torch.Tensor):
        """A finished chunk whose opening this stream has decoded: its other frames only, with the left
        context a piece has (the whole chunk again would hold its last piece back and load the shared
        decoder twice); None for any other chunk (decoded whole)."""
        with self.cond:
            if not (self.head and self.head[0] == chunk.index and self.head[1]):
                return None
            _, frames, samples = self.head
        item, skip = self._after(request, codes, frames)
        return item, lambda wav: np.concatenate([samples, wav[skip:]])

    def _after(self, request, codes: torch.Tensor, frames: int):
        """What the decoder is given for the frames after the first `frames` of `codes` (up to
        left_context frames before them as context), and how many samples of its output are context."""
        start = 0 if self.left_context is None else max(0, frames - self.left_context)
        request = request if start == 0 else replace(request, clone=None)  # the reference is context at 0
        return (request, codes[start:]), (frames - start) * SAMPLES_PER_FRAME

    def add(self, chunk, wav: np.ndarray) -> None:
        with self.cond:
            self.latest.pop(chunk.index, None)
            self.pace.pop(chunk.index, None)
            if self.head and self.head[0] == chunk.index and self.head[1]:
                decoded = self.head[2]  # what was sent came from these samples: keep them
                wav = np.concatenate([decoded, wav[decoded.size:]]) if wav.size >= decoded.size else decoded
            self.done[chunk.index] = wav
            self.cond.notify_all()

    def retry(self, chunk, problem: str, where: str) -> None:
        """A chunk is generated again: fine unless part of it has gone out."""
        with self.cond:
            self.latest.pop(chunk.index, None)
            self.pace.pop(chunk.index, None)
            if self.head and self.head[0] == chunk.index:
                self.head = None
            if chunk.index in self.streamed:
                raise GenerationError(f"Generation failed on {where} after part of it was streamed: {problem}. A stream "
                                      "cannot take audio back; send the job again (another seed), or without stream.")

    def close(self, error: BaseException | None = None) -> None:
        with self.cond:
            self.finished, self.error = True, error
            self.cond.notify_all()
        self._starting(False)

    # ---- what goes out (the stream's thread) --------------------------------------------------------
    def pieces(self, timeout: float = 0.25):
        """Yield float32 arrays of final samples, in order, until the job's audio is all out."""
        while True:
            wait = timeout
            with self.cond:
                if self.error is not None:
                    raise self.error
                if self.segment >= len(self.order):
                    return
                head = self._head_chunk()
                codes = self.latest.get(head.index) if head is not None else None
            if codes is not None:
                self._decode_head(head, codes)
            out = self._release()
            if out.size:
                if self.playing_since is None:
                    self.playing_since = time.monotonic()
                    self._starting(False)
                yield out
                continue
            with self.cond:
                if self.segment >= len(self.order):
                    return
                if self.error is None and not self._news():
                    left, low = self._left_to_play(), self._low_water()
                    if left is not None and left > low:  # wake when it is time to decode early
                        wait = min(timeout, max(0.005, left - low))
                    self.cond.wait(wait)

    def _news(self) -> bool:
        head = self._head_chunk()
        if head is None:
            return False
        if head.index in self.done:
            return True
        codes = self.latest.get(head.index)
        decoded = self.head[1] if self.head and self.head[0] == head.index else 0
        return codes is not None and self._due(head.index, decoded, codes.shape[0])

    def _due(self, chunk: int, decoded: int, available: int) -> bool:
        """Is the head chunk's next piece due, with `decoded` of its `available` frames decoded? (stream.schedule)

        fixed: first at first_piece_frames, then at every piece_frames new frames.

        adaptive, from the row's measured speed s (x real time) and what a piece's decode lately took, d:
        a piece of P frames brings the listener P/12.5 s of audio and took P/(12.5 s) + d to make and
        decode, so it gains P/12.5 (1 - 1/s) - d. The smallest piece worth decoding early is the one
        that gains at least one more decode's time (`_min_piece`): 4 frames at 3x real time, 8 at 1.2x,
        piece_frames at or below 1x. While nothing has gone out, the first piece waits until what it
        brings (less the crossfade that stays behind) covers the making of such a piece and two
        decodes, a decode counted once for each of the model's streams still waiting for their first
        piece (for a fast row alone, or one not yet measured: at first_piece_frames, the time to first
        audio; after a chunk's silent opening, as soon again); then a piece is decoded early, at
        that size or more, once the listener has less than the low water left (`_low_water`), at the
        last moment, so pieces grow by the row's speed over real time (x3 at 3x: 4, 12, 36 frames...).
        No piece waits for more than piece_frames new frames (each decode costs its left context again,
        so pieces are as large as the listener allows, and no larger than that)."""
        new = available - decoded
        if new >= self.piece_frames:
            return True
        if new < self.first_frames:
            return False
        if not self.adaptive:
            return not decoded
        speed = self._speed(chunk)
        left = self._left_to_play()
        if left is None:  # nothing out yet: the first piece, once what it brings covers the making of the next
            if speed is None:
                return True
            decode = self._decode_time(first=True)
            audible = available / FRAMES_PER_SECOND - self.crossfade / SAMPLE_RATE  # a crossfade's worth waits
            return audible >= self._min_piece(speed, decode) / (speed * FRAMES_PER_SECOND) + 2.0 * decode
        return new >= self._min_piece(speed) and left <= self._low_water()

    def _decode_time(self, first: bool = False) -> float:
        """What a piece's decode lately took: this stream's recent worst, or the other streams' on the
        same decoder (measured at warm-up before any), whichever is longer. For a first piece, that
        times the streams starting together: their first pieces, and the next, meet on one decoder."""
        decode = max(self.decode_seconds, getattr(self.scheduler, "piece_seconds", 0.0))
        return decode * max(1, getattr(self.scheduler, "streams_starting", 1)) if first else decode

    def _min_piece(self, speed: float | None, decode: float | None = None) -> int:
        """Frames in the smallest piece that gains the listener at least a decode's time (`decode`; the
        recent one by default) at `speed` (x real time; None, not yet measured: first_piece_frames)."""
        if speed is None:
            return self.first_frames
        gain = 1.0 - 1.0 / speed if speed > 0 else 0.0  # seconds of listening gained per second of audio made
        if gain <= 0:
            return self.piece_frames
        need = math.ceil(2.0 * (self._decode_time() if decode is None else decode) * FRAMES_PER_SECOND / gain)
        return min(self.piece_frames, max(self.first_frames, need))

    def _low_water(self) -> float:
        """When an early piece is due: low_water_seconds left to play, and twice what a piece's decode
        has lately taken on top (on a loaded loop a decode waits its turn; the piece must still come
        before the listener runs dry)."""
        return self.low_water + 2.0 * self._decode_time()

    def _speed(self, chunk: int) -> float | None:
        """The running chunk's speed over its last host checks, x real time (None until two have been heard)."""
        checks = self.pace.get(chunk)
        if not checks or len(checks) < 2:
            return None
        (first_t, first_n), (last_t, last_n) = checks[0], checks[-1]
        return (last_n - first_n) / (last_t - first_t) / FRAMES_PER_SECOND if last_t > first_t else None

    def _left_to_play(self) -> float | None:
        """Seconds of audio sent and not yet played by a listener who started at the first piece."""
        if self.playing_since is None:
            return None
        return self.total / SAMPLE_RATE - (time.monotonic() - self.playing_since)

    def _head_chunk(self):
        """The first chunk of the current segment not yet accepted (None: all are)."""
        for chunk in self.order[self.segment]:
            if chunk.index not in self.done:
                return chunk
        return None

    def _decode_head(self, chunk, codes: torch.Tensor) -> None:
        """Decode the head chunk's new frames, with up to left_context frames before them as context."""
        index, frames, samples = self.head if self.head and self.head[0] == chunk.index else (chunk.index, 0, None)
        if not self._due(chunk.index, frames, codes.shape[0]):
            return  # decode in pieces of a useful size: each decode costs the decoder's left context again
        item, skip = self._after(chunk.request, codes, frames)
        began = time.monotonic()
        wav = self.model.scheduler.decode([item])[0]
        took = time.monotonic() - began
        self.decode_seconds = max(took, 0.8 * self.decode_seconds)  # the recent worst, forgotten slowly
        if self.scheduler is not None:  # and the model's other streams', which share its decoder
            self.scheduler.piece_seconds = max(took, 0.8 * self.scheduler.piece_seconds)
        new = wav[skip:]
        samples = new if samples is None else np.concatenate([samples, new])
        with self.cond:
            if chunk.index not in self.done:
                self.head = (index, codes.shape[0], samples)

    def _running(self, samples: np.ndarray) -> np.ndarray | None:
        """The part of a running chunk's audio certain to stay once its silent edges are cut (as
        assemble.trimmed cuts the whole chunk): None while its first loud window is unknown."""
        trim = self.job.recipe.mastering.trim
        if trim is None:
            return samples
        span = dsp.loud_span(samples, SAMPLE_RATE, trim.threshold_db, trim.keep_ms)
        return None if span is None else samples[span[0]:span[1]]

    def _release(self) -> np.ndarray:
        """The samples that have become final since the last call (the gap after a finished segment too)."""
        with self.cond:
            chunks = self.order[self.segment]
            parts = []
            for chunk in chunks:
                if chunk.index not in self.done:
                    break
                parts.append(trimmed(self.done[chunk.index], self.job))
            complete = len(parts) == len(chunks)
            known = dsp.crossfade_concat(parts, SAMPLE_RATE, self.crossfade_ms)
            stable = known.size if complete else max(0, known.size - self.crossfade)
            head = None if complete else chunks[len(parts)]
            if head is not None and self.head and self.head[0] == head.index:
                piece = self._running(self.head[2])
                if piece is not None and piece.size > 2 * self.crossfade:
                    with_head = dsp.crossfade_concat([*parts, piece], SAMPLE_RATE, self.crossfade_ms)
                    if with_head.size - self.crossfade > stable:
                        known, stable = with_head, with_head.size - self.crossfade
                        if stable > self.sent:
                            self.streamed.add(head.index)
            out = known[self.sent:stable]
            self.sent = max(self.sent, stable)
            self.total += out.size
            if complete:
                places = chunk_places(dsp.crossfade_spans([p.size for p in parts], SAMPLE_RATE, self.crossfade_ms),
                                      self.start)
                self.spans.append((round(self.start / SAMPLE_RATE, 3), round(self.total / SAMPLE_RATE, 3), places))
                for chunk in chunks:
                    self.done.pop(chunk.index, None)
                self.segment += 1
                self.sent = 0
                self.head = None
                if self.segment < len(self.order) and self.gap:
                    out = np.concatenate([out, np.zeros(self.gap, dtype=np.float32)])
                    self.total += self.gap
                self.start = self.total
            return out.astype(np.float32, copy=False)


def stream_format(job: Job) -> str:
    """What the queue worker streams: MP3 frames for an mp3 job, raw PCM16 for any other."""
    return "mp3" if job.output.format == "mp3" else "pcm"


def stream_job(job: Job, model: Model, ticket: Ticket | None = None, fmt: str | None = None):
    """Run a job on the scheduler and yield (bytes, None) pieces of its audio in order, each as soon
    as the encoder has it (`fmt`, one of tts_runner.audio.streams.STREAM_FORMATS, at the job's speed;
    None: stream_format(job)), then (b"", metadata). The caller may stop at any piece: the job's
    rows go back and the encoder stops."""
    started = time.perf_counter()
    if model.scheduler is None:
        raise InputError("Invalid input at $.stream: streaming needs the scheduler (runtime.engine fast, "
                         "scheduler.enabled true); this worker runs the stock engine or has it off.")
    ticket = ticket or Ticket(job.id)
    chunks = plan(job, model, design_voices(job, model, ticket))
    model = chunks.model  # a designed voice's chunks run on the Base model that clones it
    if model.scheduler is None:
        raise InputError(f"Invalid input at $.stream: streaming needs the scheduler, and the model that clones the "
                         f"designed voice ({model.name}) runs without one on this worker.")
    assembler = StreamAssembler(model, chunks, job)
    outcome: dict = {}
    out: queue.Queue = queue.Queue()  # encoded bytes, then _END or the failure
    encoder = StreamEncoder(fmt or stream_format(job), SAMPLE_RATE, out.put, speed=job.output.speed,
                            bitrate_kbps=job.output.mp3_bitrate)

    def run() -> None:
        try:
            outcome["stats"] = generate(model, chunks, job, assembler.events(), ticket)
            assembler.close()
        except BaseException as exc:  # noqa: BLE001 - handed to the stream's thread, which raises it
            assembler.close(exc)

    def encode() -> None:
        try:
            for samples in assembler.pieces():
                encoder.encode(samples)
            encoder.finish()
            out.put(_END)
        except BaseException as exc:  # noqa: BLE001 - raised on the caller's thread
            out.put(_Failed(exc))

    threads = [threading.Thread(target=run, name="stream-generate", daemon=True),
               threading.Thread(target=encode, name="stream-encode", daemon=True)]
    for thread in threads:
        thread.start()
    first = None
    try:
        while (item := out.get()) is not _END:
            if isinstance(item, _Failed):
                raise item.error
            first = first if first is not None else time.perf_counter() - started  # the client's first audio
            yield item, None
    finally:
        if threads[0].is_alive() or threads[1].is_alive():  # stopped early: give the rows back, stop encoding
            model.scheduler.cancel(ticket)
            assembler.close(JobCancelled(f"Job {job.id}: its stream was closed"))
            encoder.close()
        for thread in threads:
            thread.join()
        encoder.close()  # however it ended (a failure too): no ffmpeg, reader thread or pipe outlives the stream
    took = time.perf_counter() - started
    duration = assembler.total / SAMPLE_RATE if job.output.speed == 1.0 else encoder.seconds
    yield b"", describe.metadata(job, chunks, outcome["stats"], assembler.spans, duration=round(duration, 3),
                                 sample_rate=SAMPLE_RATE, fmt=encoder.format, seconds=took,
                                 first_audio=took if first is None else first)


_END = object()


class _Failed:
    def __init__(self, error: BaseException):
        self.error = error
