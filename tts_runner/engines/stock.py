"""The `stock` engine: qwen-tts's own `talker.generate` (Hugging Face `generate()` per frame, and again
per frame for the code predictor), with what tts-runner adds around it: the end-of-speech floor,
per-row frame budgets, a seed, and progress while it runs.

Hugging Face generate holds one floor for the whole batch (the highest of the rows'), has no per-row
budget (it runs to the largest, and each row's codes end at its own after), and samples from torch's
one generator: seeded by the first row, a batch is reproducible as a whole, but a row's draws depend
on the rows beside it (unlike the fast and graph loops).
"""

from __future__ import annotations

from collections.abc import Callable

import torch
from transformers.generation.stopping_criteria import StoppingCriteria, StoppingCriteriaList


class _Progress(StoppingCriteria):
    """Hugging Face asks its stopping criteria once a step: tell the caller how far the stock
    engine has come (every row counts as going: HF does not say which have ended). Never stops."""

    def __init__(self, progress: Callable[[int, int], None]):
        self.progress = progress

    def __call__(self, input_ids: torch.Tensor, scores, **kwargs) -> torch.Tensor:
        self.progress(input_ids.shape[1], input_ids.shape[0])
        return torch.zeros(input_ids.shape[0], dtype=torch.bool, device=input_ids.device)


def end_rows_at(steps: list, budgets: list[int], eos: int) -> None:
    """End each row of a stock result at its frame budget: from frame `budget` on, its first code
    is end-of-speech (qwen-tts cuts every item at its first one)."""
    frames = [codes for _, codes in steps if codes is not None]
    limit = torch.tensor(budgets, device=frames[0].device) if frames else None
    for frame, codes in enumerate(frames):
        codes[:, 0] = torch.where(limit > frame, codes[:, 0], eos)


def generate(stock: Callable, device: torch.device, floor: int, budgets: list[int] | None, seed: int | None,
             progress: Callable[[int, int], None] | None, *args, **kwargs):
    """The library's talker.generate (`stock`) with the floor held (`floor` frames at least), rows
    cut at their `budgets`, torch's generator seeded with `seed` (then restored), `progress` told."""
    kwargs["min_new_tokens"] = max(int(kwargs.get("min_new_tokens") or 0), floor)
    # HF's generate pads with the end code when no pad id is given, and says so on every call.
    kwargs.setdefault("pad_token_id", kwargs.get("eos_token_id"))
    if progress:
        kwargs["stopping_criteria"] = StoppingCriteriaList([_Progress(progress)])
    if budgets is not None:  # run to the largest budget, end each row at its own
        kwargs["max_new_tokens"] = min(int(kwargs["max_new_tokens"]), max(budgets) + 1)
    with torch.random.fork_rng(devices=[device] if device.type == "cuda" else []):
        if seed is not None:
            torch.manual_seed(seed)
        result = stock(*args, **kwargs)
    if budgets is not None:
        end_rows_at(result.hidden_states, budgets, kwargs["eos_token_id"])
    return result
