"""How codes are chosen, as one plain value: `Sampling`.

A job holds one (its `params`, validated at the edge); each of its chunks' rows holds its own copy,
with the row's end-of-speech floor, frame budget and random stream filled in (`for_row`); the
engines' loops turn the rows' values into device tensors (`draw.SamplingTensors`). No torch here, so
the edge builds jobs without loading any model code.
"""

from __future__ import annotations

from dataclasses import dataclass, fields, replace

SEED_RANGE = 2**31  # seeds are 0 .. 2**31 - 1
LIBRARY_FLOOR = 2   # qwen-tts's own end-of-speech floor, in frames


@dataclass(frozen=True)
class Sampling:
    """The talker's and the code predictor's sampling, named as qwen-tts names them; the defaults are
    the documented API's (conf/sampling/default.yaml)."""

    do_sample: bool = True            # False: greedy (and the code predictor too, unless told)
    temperature: float = 0.3
    top_k: int = 50                   # 0: off
    top_p: float = 0.85               # 1.0: off
    repetition_penalty: float = 1.0
    subtalker_dosample: bool | None = None  # None: as do_sample
    subtalker_temperature: float = 0.3
    subtalker_top_k: int = 50
    subtalker_top_p: float = 0.85
    max_new_tokens: int = 1024        # the cap: at most max_new_tokens - 1 frames
    min_new_tokens: int = 60          # the end-of-speech floor, in frames
    seed: int | None = None           # a job's seed, or a row's random stream
    max_frames: int | None = None     # a row's frame budget: it ends there (None: the cap)

    def __post_init__(self) -> None:
        if self.subtalker_dosample is None:
            object.__setattr__(self, "subtalker_dosample", self.do_sample)

    def library_kwargs(self) -> dict:
        """The sampling arguments of qwen-tts's generate calls."""
        names = ("do_sample", "temperature", "top_k", "top_p", "repetition_penalty", "subtalker_dosample",
                 "subtalker_temperature", "subtalker_top_k", "subtalker_top_p", "max_new_tokens")
        return {name: getattr(self, name) for name in names}

    def for_row(self, floor: int | None, budget: int | None, seed: int) -> Sampling:
        """One row's sampling: its own floor (None: this one's min_new_tokens), at least the library's 2
        and at most the cap; its frame budget, capped as the cap caps one call (max_new_tokens - 1
        frames); its seed."""
        cap = self.max_new_tokens
        floor = self.min_new_tokens if floor is None else floor
        budget = cap if budget is None else max(1, int(budget))
        return replace(self, min_new_tokens=max(LIBRARY_FLOOR, min(int(floor), cap)), max_frames=min(budget, cap - 1),
                       seed=int(seed))

    @classmethod
    def names(cls) -> tuple[str, ...]:
        return tuple(f.name for f in fields(cls))
