"""Reading the files the worker makes with other code than the worker's (tts_runner/tools/decoded.py,
which the soak uses too), and test tones."""

from __future__ import annotations

import subprocess
from fractions import Fraction
from pathlib import Path

import numpy as np

from tts_runner.audio.formats import ffmpeg_path
from tts_runner.tools.decoded import AAC_FRAME, agrees, file_seconds

__all__ = ["AAC_FRAME", "agrees", "chapters_by_ffmpeg", "file_seconds", "tone"]


def tone(seconds: float, rate: int = 24000, level: float = 0.3, hz: float = 440.0) -> np.ndarray:
    """A sine of `hz` at `level`, `seconds` long."""
    t = np.arange(int(round(seconds * rate))) / rate
    return (level * np.sin(2 * np.pi * hz * t)).astype(np.float32)


def chapters_by_ffmpeg(path: Path) -> list[tuple[float, str]]:
    """The (start in seconds, title) of each chapter ffmpeg finds in `path`, from its FFMETADATA
    dump: ffmpeg's own reader, not the mutagen that wrote the tags. The ffmpeg on PATH or the one
    imageio-ffmpeg bundles (which has no ffprobe beside it)."""
    # -copyts: the times as tagged. Without it ffmpeg moves them back by the stream's start (an MP3's
    # encoder delay, 46 ms at 24 kHz), as it moves every output time to start at zero.
    dump = subprocess.run([ffmpeg_path(), "-v", "error", "-copyts", "-i", str(path), "-f", "ffmetadata", "-"],
                          capture_output=True, text=True, check=True).stdout
    chapters: list[dict[str, str]] = []
    for line in dump.splitlines():
        if line == "[CHAPTER]":
            chapters.append({})
        elif line.startswith("[") or not chapters:
            continue
        elif "=" in line:
            key, _, value = line.partition("=")
            chapters[-1].setdefault(key, value)
    return [(float(int(c["START"]) * Fraction(c["TIMEBASE"])), c.get("title", "")) for c in chapters]
