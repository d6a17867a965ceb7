"""Calling the library's generate() through one engine, as the exactness tests compare them."""

from __future__ import annotations

import torch

TEXTS = ["Hi.", "A considerably longer sentence, so that the batch is left-padded.", "Medium length text here."]
SPEAKERS = ["ryan", "vivian", "aiden"]
GREEDY = dict(do_sample=False, subtalker_dosample=False, max_new_tokens=30, repetition_penalty=1.05)


def codes(model, engine: str, texts: list[str], speakers: list[str], min_new_tokens: int = 2,
          max_frames: list[int] | None = None, **sampling) -> list[torch.Tensor]:
    """The codes qwen-tts's generate() returns for this batch on `engine`, with the end-of-speech
    floor `min_new_tokens` and per-row frame budgets `max_frames`."""
    tts = model.tts
    prompts = [tts._build_assistant_text(t) for t in texts]
    with torch.inference_mode(), model.using(engine=engine, floor=min_new_tokens, budgets=max_frames):
        out, _ = tts.model.generate(input_ids=tts._tokenize_texts(prompts), instruct_ids=[None] * len(texts),
                                    languages=["english"] * len(texts), speakers=speakers,
                                    non_streaming_mode=True, **sampling)
    return out
