"""What every bench does first: point the config at a model folder and a device, as the
environment would (QWEN_TTS_MODEL_DIR, QWEN_TTS_DEVICE: conf defaults < environment)."""

from __future__ import annotations

import os
from pathlib import Path


def point_at(model_dir: Path | str | None, device: str | None) -> None:
    """Set QWEN_TTS_MODEL_DIR and QWEN_TTS_DEVICE for this process where given (None: as they are)."""
    if model_dir:
        os.environ["QWEN_TTS_MODEL_DIR"] = str(model_dir)
    if device:
        os.environ["QWEN_TTS_DEVICE"] = device
