"""The device a model runs on: choosing it, its dtype, its name, and telling a broken one from a full one."""

from __future__ import annotations

import logging
from typing import TYPE_CHECKING

from tts_runner.errors import ModelError

if TYPE_CHECKING:
    import torch

log = logging.getLogger(__name__)

DTYPES = ("bfloat16", "float16", "float32")


def resolve_device(device: str | None) -> str:
    """auto -> cuda:0 when CUDA is available, else cpu; anything else as given."""
    import torch

    if device in (None, "", "auto"):
        if torch.cuda.is_available():
            return "cuda:0"
        log.warning("QWEN_TTS_DEVICE=auto and CUDA is not available: running on the CPU, far slower than a GPU.")
        return "cpu"
    if device.startswith("cuda") and not torch.cuda.is_available():
        raise ModelError(f"QWEN_TTS_DEVICE={device} but CUDA is not available on this machine; use cpu or auto.")
    if device != "cpu" and not device.startswith("cuda"):
        raise ModelError(f"QWEN_TTS_DEVICE={device!r} is not a device; use auto, cpu or cuda:N.")
    return device


def resolve_dtype(dtype: str | None, device: str) -> torch.dtype:
    """auto -> bfloat16 on CUDA, float32 on the CPU; or as given."""
    import torch

    if dtype in (None, "", "auto"):
        return torch.bfloat16 if device.startswith("cuda") else torch.float32
    if dtype not in DTYPES:
        raise ModelError(f"runtime.dtype={dtype!r} is not supported; use auto, {', '.join(DTYPES)}.")
    return getattr(torch, dtype)


def device_name(device: str) -> str:
    """The GPU's name (NVIDIA H100 80GB HBM3, ...), or cpu."""
    import torch

    if device.startswith("cuda"):
        return torch.cuda.get_device_name(torch.device(device))
    return "cpu"


def device_broken(exc: BaseException) -> bool:
    """A CUDA error other than out-of-memory (illegal address, device-side assert, ...): the
    context may be unusable, so nothing should run on it again."""
    import torch

    if isinstance(exc, torch.cuda.OutOfMemoryError):
        return False
    return isinstance(exc, torch.AcceleratorError) or (isinstance(exc, RuntimeError) and "CUDA error" in str(exc))
