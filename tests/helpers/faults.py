"""Faults injected at the model boundary, with the real (tiny) model underneath."""

from __future__ import annotations

import contextlib


@contextlib.contextmanager
def model_calls(model, fault=None):
    """Record every batch the model sees; `fault(call_number, texts, wavs)` may raise or return
    replacement waveforms (None: keep the model's)."""
    calls = []
    real = model.tts.generate_custom_voice

    def wrapper(text, speaker, language, instruct, **kwargs):
        calls.append(list(zip(text, speaker, strict=False)))
        wavs, sr = real(text=text, speaker=speaker, language=language, instruct=instruct, **kwargs)
        if fault:
            replaced = fault(len(calls), text, wavs)
            if replaced is not None:
                wavs = replaced
        return wavs, sr

    model.tts.generate_custom_voice = wrapper
    try:
        yield calls
    finally:
        del model.tts.generate_custom_voice
