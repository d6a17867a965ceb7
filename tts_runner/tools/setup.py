"""What every bench does first: point the config at a model folder and a device, as the
environment would (QWEN_TTS_MODEL_DIR, QWEN_TTS_DEVICE: conf defaults < environment), and the
text-sized lengths some of them run at."""

from __future__ import annotations

import os
from pathlib import Path


def point_at(model_dir: Path | str | None, device: str | None) -> None:
    """Set QWEN_TTS_MODEL_DIR and QWEN_TTS_DEVICE for this process where given (None: as they are)."""
    if model_dir:
        os.environ["QWEN_TTS_MODEL_DIR"] = str(model_dir)
    if device:
        os.environ["QWEN_TTS_DEVICE"] = device


CHARS_PER_SECOND = 15  # read speech: ~150 words a minute


def text_sized() -> list[str]:
    """Config overrides that size every chunk by its text, for a model that never ends its speech: a
    frame budget of 15 characters a second, kept when reached (the point here, not a runaway)."""
    return [f"batching.frame_budget.seconds_per_char={1 / CHARS_PER_SECOND}", "batching.frame_budget.factor=1.0",
            "batching.frame_budget.margin_seconds=0.0", "batching.runaway=keep"]
