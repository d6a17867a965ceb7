"""The assemble stage: chunks into segments, segments into the job's audio.

Each segment is built as soon as its last chunk is made, on a worker thread, so post-processing
overlaps generation (on a GPU the host is idle while a captured frame replays): every chunk's silent
edges trimmed (10 ms windows under `audio.trim.threshold_db`, cut to `keep_ms` beside the sound), the
segment's chunks crossfaded (`chunking.crossfade_ms`), the segment brought to the target loudness
under the true-peak ceiling. `finish()` joins the segments in order with `chunking.segment_gap_ms`
between them, and says where each segment and each chunk lies in the file. When the job asks for
word times, each chunk's text is force-aligned to its own trimmed audio on the same thread (off the
decode loop's), and `words()` gives them in the file's time. When it asks for its voice's
consistency, each multi-chunk segment's chunks are scored against its reference recording (or
its first chunk) on the same thread (tts_runner/voice/consistency.py).
"""

from __future__ import annotations

from concurrent.futures import ThreadPoolExecutor
from dataclasses import replace

import numpy as np

from tts_runner.audio import dsp
from tts_runner.audio.codec import SAMPLE_RATE
from tts_runner.captions import align
from tts_runner.job.plan import Chunk, Plan
from tts_runner.job.spec import Job
from tts_runner.voice import consistency

# A segment's place in the file and its chunks' places, in seconds: (start, end, [(start, end), ...])
Span = tuple[float, float, list[tuple[float, float]]]


def chunk_places(spans: list[tuple[int, int]], offset: int, rate: int = SAMPLE_RATE) -> list[tuple[float, float]]:
    """Chunk spans in samples within a segment that starts at sample `offset`, as seconds in the file."""
    return [(round((offset + a) / rate, 3), round((offset + b) / rate, 3)) for a, b in spans]


def trimmed(samples: np.ndarray, job: Job) -> np.ndarray:
    """A chunk's audio with its silent edges cut (the job's audio.trim; as it is with trimming off)."""
    trim = job.recipe.mastering.trim
    return samples if trim is None else dsp.trim_silence(samples, SAMPLE_RATE, trim.threshold_db, trim.keep_ms)


class Assembler:
    def __init__(self, plan: Plan, job: Job):
        self.job, self.references = job, plan.references
        self.waiting = [0] * plan.segments  # chunks still to come, per segment
        for chunk in plan.chunks:
            self.waiting[chunk.segment] += 1
        self.parts: list[dict[int, tuple[np.ndarray, str]]] = [{} for _ in range(plan.segments)]
        self.pool = ThreadPoolExecutor(max_workers=1, thread_name_prefix="assemble")
        self.segments: list = [None] * plan.segments
        self.aligned: list = []  # per segment: its chunks' words (finish)
        self.scores: list[dict | None] = []  # per segment: its voice's consistency (finish; None: not scored)

    def add(self, chunk: Chunk, wav: np.ndarray) -> None:
        self.parts[chunk.segment][chunk.position] = (wav, chunk.request.text)
        self.waiting[chunk.segment] -= 1
        if self.waiting[chunk.segment] == 0:
            parts = [part for _, part in sorted(self.parts[chunk.segment].items())]
            self.segments[chunk.segment] = self.pool.submit(self._segment, parts, chunk.segment)
            self.parts[chunk.segment] = {}

    def _segment(self, parts: list[tuple[np.ndarray, str]], segment: int):
        """A segment's audio, its chunks' spans in it (samples), each chunk's words (times from the
        chunk's own start; None when the job asks for no word times) and its voice's consistency."""
        job, crossfade = self.job, self.job.recipe.chunking.crossfade_ms
        audio = [trimmed(wav, job) for wav, _ in parts]
        words = ([align.align(wav, SAMPLE_RATE, text) for wav, (_, text) in zip(audio, parts, strict=True)]
                 if job.captions.align_words else None)
        score = (consistency.consistency(audio, SAMPLE_RATE, self.references.get(segment))
                 if job.score_consistency else None)
        joined = dsp.crossfade_concat(audio, SAMPLE_RATE, crossfade)
        spans = dsp.crossfade_spans([p.size for p in audio], SAMPLE_RATE, crossfade)
        return dsp.match_loudness(joined, SAMPLE_RATE, job.output.loudness_lufs,
                                  job.recipe.mastering.true_peak_dbtp), spans, words, score

    def finish(self) -> tuple[np.ndarray, list[Span]]:
        """The job's audio and each segment's place in it."""
        try:
            made = [future.result() for future in self.segments]
        finally:
            self.close()
        gap = self.job.recipe.chunking.segment_gap_ms
        segments = [samples for samples, _, _, _ in made]
        joined, spans = dsp.join_segments(segments, SAMPLE_RATE, gap)
        starts = dsp.segment_starts([s.size for s in segments], SAMPLE_RATE, gap)
        self.aligned = [words for _, _, words, _ in made]
        self.scores = [score for _, _, _, score in made]
        return joined, [(start, end, chunk_places(chunks, at))
                        for (start, end), at, (_, chunks, _, _) in zip(spans, starts, made, strict=True)]

    def words(self, spans: list[Span]) -> list[list[list[align.Word]]] | None:
        """After `finish`: each segment's chunks' words in the file's time (at 24 kHz, before any
        speed change): a word's time in its chunk's trimmed audio plus the chunk's start in the file
        (its crossfade and the segment gaps before it included), held within the chunk. None when
        the job asks for no word times."""
        if not self.job.captions.align_words:
            return None
        placed = []
        for (_, _, chunks), aligned in zip(spans, self.aligned, strict=True):
            placed.append([[replace(w, start=min(round(a + w.start, 3), b), end=min(round(a + w.end, 3), b))
                            for w in words] for (a, b), words in zip(chunks, aligned, strict=True)])
        return placed

    def close(self) -> None:
        self.pool.shutdown(wait=False, cancel_futures=True)
