"""The deliver stage: the job's audio resampled to the file's rate, encoded, and sent to the sink."""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from tts_runner.audio import dsp, formats, sinks
from tts_runner.audio.codec import SAMPLE_RATE
from tts_runner.audio.tempo import change_tempo
from tts_runner.job.spec import Job


@dataclass(frozen=True)
class File:
    data: bytes
    format: str
    sample_rate: int
    duration_seconds: float  # of the audio encoded, exactly (tests read the files back)


def encode(samples: np.ndarray, job: Job) -> File:
    """The job's audio (24 kHz) as the file it asks for (at its speed, then its rate)."""
    out = job.output
    samples = change_tempo(samples, SAMPLE_RATE, out.speed)
    samples = dsp.resample(samples, SAMPLE_RATE, out.sample_rate)
    data = formats.encode(samples, out.sample_rate, out.format, out.mp3_bitrate)
    return File(data, out.format, out.sample_rate, round(samples.size / out.sample_rate, 3))


def deliver(file: File, job: Job) -> dict:
    """The answer's fields that point to the audio (audio_base64, audio_url or audio_path)."""
    return sinks.deliver(file.data, file.format, job.recipe.sink, job.id, job.name)


def deliver_beside(data: bytes, fmt: str, job: Job, field: str) -> dict:
    """A file that goes with the audio (`field`: subtitles, chapters), sent the way the audio is:
    `<field>_base64` inline, `<field>_url` on S3, `<field>_path` beside the audio file (`<name>.srt`,
    `<name>.chapters.json`; in the command line's run folder `chapters.json`). Inline, the chapters
    are the metadata's own document already, so they are not sent twice."""
    sink = job.recipe.sink
    if field == "chapters" and sinks.resolve_kind(sink) == "base64":
        return {}
    name = job.name
    if field == "chapters":  # the command line's run folder holds one job: chapters.json there
        name = "chapters" if sink.keep is not None and sink.dir == sink.keep else f"{job.name}.chapters"
    return sinks.deliver(data, fmt, sink, job.id, name, field=field)
