"""The describe stage: a job's metadata, one builder for whole files and streams alike."""

from __future__ import annotations

from tts_runner.job.assemble import Span
from tts_runner.job.generate import Stats
from tts_runner.job.plan import Plan
from tts_runner.job.spec import Job


def segment_metadata(plan: Plan, spans: list[Span], speed: float = 1.0) -> list[dict]:
    """The metadata's segments: each one's place in the file, its speaker and voice, and each chunk's
    place in it (seconds, from its fade-in to its last sample; at the job's speed, in the file's time)."""
    voices = {c.segment: (c.request.speaker, c.voice) for c in plan.chunks}

    def at(t: float) -> float:
        return t if speed == 1.0 else round(t / speed, 3)

    return [{"start": at(start), "end": at(end), "speaker": voices[i][0], "voice": voices[i][1],
             "chunks": [{"start": at(a), "end": at(b)} for a, b in places]}
            for i, (start, end, places) in enumerate(spans)]


RANDOM_SCORE = "the model has random weights: its audio is noise, so this score says nothing about a voice"


def metadata(job: Job, plan: Plan, stats: Stats, spans: list[Span], *, duration: float, sample_rate: int,
             fmt: str, seconds: float, first_audio: float | None = None) -> dict:
    """What the answer says of the audio: its length, rate and format, the job's shape, what making
    it took (`seconds`; a stream's `first_audio` too), where each segment and chunk lies, the
    designed voices and warnings."""
    described = {
        "duration_seconds": duration,
        "sample_rate": sample_rate,
        "format": fmt,
        "num_segments": plan.segments,
        "num_chunks": len(plan.chunks),
        "generation_time_seconds": round(seconds, 3),
    }
    if first_audio is not None:
        described["first_audio_seconds"] = round(first_audio, 3)
    segments = segment_metadata(plan, spans, job.output.speed)
    extra = {}
    if plan.designs.voices:
        extra["designs"] = plan.designs.describe()
    if plan.designs.warnings:
        extra["warnings"] = list(plan.designs.warnings)
    return {**described, "model": job.model, "seed": job.sampling.seed, "runaways": stats.runaways,
            "retries": stats.retries, "segments": segments, **extra}


def with_scores(segments: list[dict], plan: Plan, scores: list[dict | None]) -> list[dict]:
    """The metadata's segments with each scored one's `voice_consistency` (a random-weight model's
    flagged as meaningless)."""
    random = plan.model is not None and getattr(plan.model, "random_weights", False)
    return [{**segment, "voice_consistency": {**score, **({"note": RANDOM_SCORE} if random else {})}}
            if score is not None else segment for segment, score in zip(segments, scores, strict=True)]
