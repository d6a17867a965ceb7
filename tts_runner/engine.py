"""One loaded model and the batched calls the job graph makes on it.

`Engine.generate(requests, sampling)` runs a list of chunk requests (any mix of voices and
lengths) as one left-padded batch through qwen_tts and returns one waveform per request, in
order. It also enforces the `min_new_tokens` floor: qwen_tts hard-codes `min_new_tokens=2` for
the talker and forwards no argument to change it, so the engine wraps this instance's
`talker.generate` and raises the floor there (HF's MinNewTokensLengthLogitsProcessor then keeps
the end-of-speech code suppressed until that many frames exist).
"""

from __future__ import annotations

import threading
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch

SAMPLES_PER_FRAME = 1920  # one codec frame = 80 ms at 24 kHz


@dataclass(frozen=True)
class ChunkRequest:
    text: str
    speaker: str | None  # None for VoiceDesign
    language: str        # the library's language name
    instruct: str | None


class Engine:
    """A loaded Qwen3TTSModel of one kind (custom_voice | voice_design); calls are serialized."""

    def __init__(self, tts: Any, kind: str, name: str):
        self.tts = tts
        self.kind = kind
        self.name = name
        self.lock = threading.Lock()
        self._floor = 2
        talker = tts.model.talker
        original = talker.generate

        def generate_with_floor(*args, **kwargs):
            kwargs["min_new_tokens"] = max(int(kwargs.get("min_new_tokens") or 0), self._floor)
            return original(*args, **kwargs)

        talker.generate = generate_with_floor

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
