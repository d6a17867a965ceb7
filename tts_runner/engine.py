"""One loaded model and the batched calls the job graph makes on it.

`Engine.generate(requests, sampling)` runs a list of chunk requests (any mix of voices and
lengths) as one left-padded batch through qwen_tts and returns one waveform per request, in
order. It also enforces the `min_new_tokens` floor: qwen_tts hard-codes `min_new_tokens=2` for
the talker and forwards no argument to change it, so the engine wraps this instance's
`talker.generate` and raises the floor there (HF's MinNewTokensLengthLogitsProcessor then keeps
the end-of-speech code suppressed until that many frames exist).

The same seam selects the decode loop: `stock` is qwen_tts's own (HF generate per frame), `fast`
is tts_runner.fast_decode's lean loop. If the fast loop fails for a reason other than running
out of memory, the engine logs why, falls back to stock for good, and redoes the call.
"""

from __future__ import annotations

import logging
import threading
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch

from tts_runner.fast_decode import lean_talker_generate

log = logging.getLogger(__name__)

SAMPLES_PER_FRAME = 1920  # one codec frame = 80 ms at 24 kHz


@dataclass(frozen=True)
class ChunkRequest:
    text: str
    speaker: str | None  # None for VoiceDesign
    language: str        # the library's language name
    instruct: str | None


class Engine:
    """A loaded Qwen3TTSModel of one kind (custom_voice | voice_design); calls are serialized."""

    def __init__(self, tts: Any, kind: str, name: str, decode: str = "stock", sync_every: int = 1):
        self.tts = tts
        self.kind = kind
        self.name = name
        self.decode = decode
        self.lock = threading.Lock()
        self._floor = 2
        talker = tts.model.talker
        stock = talker.generate

        def generate(*args, **kwargs):
            kwargs["min_new_tokens"] = max(int(kwargs.get("min_new_tokens") or 0), self._floor)
            if self.decode == "fast":
                try:
                    return lean_talker_generate(talker, *args, sync_every=sync_every, **kwargs)
                except torch.cuda.OutOfMemoryError:
                    raise
                except Exception as exc:  # noqa: BLE001 - any other failure: stock from now on
                    log.warning("Fast decode failed for %s (%s: %s); falling back to stock for good",
                                name, type(exc).__name__, exc)
                    self.decode = "stock"
            return stock(*args, **kwargs)

        talker.generate = generate

    @property
    def speakers(self) -> list[str]:
        return list(self.tts.get_supported_speakers() or [])

    @property
    def languages(self) -> list[str]:
        return list(self.tts.get_supported_languages() or [])

    @property
    def device(self) -> torch.device:
        return self.tts.device

    def generate(self, requests: list[ChunkRequest], sampling: dict) -> tuple[list[np.ndarray], int]:
        """Waveforms (float32, mono) for `requests`, in order, and their sample rate."""
        kwargs = _sampling_kwargs(sampling)
        texts = [r.text for r in requests]
        languages = [r.language for r in requests]
        instructs = [r.instruct or "" for r in requests]
        with self.lock, torch.inference_mode():
            self._floor = max(2, min(int(sampling.get("min_new_tokens", 2)), kwargs["max_new_tokens"]))
            if self.kind == "voice_design":
                wavs, sr = self.tts.generate_voice_design(
                    text=texts, instruct=instructs, language=languages, **kwargs
                )
            else:
                wavs, sr = self.tts.generate_custom_voice(
                    text=texts, speaker=[r.speaker for r in requests], language=languages,
                    instruct=instructs, **kwargs,
                )
        return [np.asarray(w, dtype=np.float32).reshape(-1) for w in wavs], int(sr)


def _sampling_kwargs(sampling: dict) -> dict:
    keys = (
        "temperature", "top_k", "top_p", "repetition_penalty", "max_new_tokens",
        "subtalker_temperature", "subtalker_top_k", "subtalker_top_p",
    )
    kwargs = {k: sampling[k] for k in keys if sampling.get(k) is not None}
    kwargs["max_new_tokens"] = int(kwargs.get("max_new_tokens", 1024))
    do_sample = bool(sampling.get("do_sample", True))
    kwargs["do_sample"] = do_sample
    kwargs["subtalker_dosample"] = bool(sampling.get("subtalker_dosample", do_sample))
    return kwargs
