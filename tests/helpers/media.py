"""Reading the files the worker makes with other code than the worker's (tts_runner/tools/decoded.py,
which the soak uses too), and test tones."""

from __future__ import annotations

from fractions import Fraction

import numpy as np

from tts_runner.audio.formats import ffmpeg
from tts_runner.tools.decoded import AAC_FRAME, agrees, file_seconds

__all__ = ["AAC_FRAME", "agrees", "chapters_by_ffmpeg", "file_seconds", "tone"]


def tone(seconds: float, rate: int = 24000, level: float = 0.3, hz: float = 440.0) -> np.ndarray:
    """A sine of `hz` at `level`, `seconds` long."""
    t = np.arange(int(round(seconds * rate))) / rate
    return (level * np.sin(2 * np.pi * hz * t)).astype(np.float32)


def chapters_by_ffmpeg(data: bytes) -> list[tuple[float, str]]:
    """The (start in seconds, title) of each chapter ffmpeg finds in these MP3 bytes, from its
    FFMETADATA dump: ffmpeg's own reader, not the mutagen that wrote the tags. The ffmpeg on PATH or
    the one imageio-ffmpeg bundles (which has no ffprobe beside it)."""
    # -copyts: the times as tagged. Without it ffmpeg moves them back by the stream's start (an MP3's
    # encoder delay, 46 ms at 24 kHz), as it moves every output time to start at zero.
    dump = ffmpeg(["-copyts", "-f", "mp3", "-i", "pipe:0", "-f", "ffmetadata", "pipe:1"], data, "read the chapters")
    chapters: list[dict[str, str]] = []
    section: dict[str, str] | None = None  # the [CHAPTER] being read; None in any other section
    for line in dump.decode().splitlines():
        if line.startswith("["):
            section = {} if line == "[CHAPTER]" else None
            if section is not None:
                chapters.append(section)
        elif section is not None and "=" in line:
            key, _, value = line.partition("=")
            section[key] = value
    return [(float(int(c["START"]) * Fraction(c["TIMEBASE"])), c.get("title", "")) for c in chapters]
