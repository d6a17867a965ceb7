"""Reading the files the worker makes with other code than the worker's (tts_runner/tools/decoded.py,
which the soak uses too), and test tones."""

from __future__ import annotations

import numpy as np

from tts_runner.tools.decoded import AAC_FRAME, agrees, file_seconds

__all__ = ["AAC_FRAME", "agrees", "file_seconds", "tone"]


def tone(seconds: float, rate: int = 24000, level: float = 0.3, hz: float = 440.0) -> np.ndarray:
    """A sine of `hz` at `level`, `seconds` long."""
    t = np.arange(int(round(seconds * rate))) / rate
    return (level * np.sin(2 * np.pi * hz * t)).astype(np.float32)
