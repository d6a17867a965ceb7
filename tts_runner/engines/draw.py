"""Choosing codes from scores, one row at a time: the talker's logits processing, then warp and draw.

Both loops choose every code here, with each row's `Sampling` held as device tensors
(`SamplingTensors`: a batch may mix greedy and sampled rows, temperatures, floors and budgets), and
with no host round trip, so the graph loop can capture it. The steps and their order are Hugging
Face's for qwen-tts's calls: repetition penalty, the end-of-speech floor (`min_new_tokens`) and
suppressed codes (talker only), then temperature, top-k, and top-p over what top-k kept.

Randomness is per row: each row has a seed, and the uniform numbers behind its draws are a hash of
(seed, frame, sub-step, code), so a row draws the same codes whatever else shares its batch, with
no generator state to carry (and nothing for a CUDA graph to capture but integer arithmetic).
"""

from __future__ import annotations

import torch

from tts_runner.engines.sampling import Sampling

# The fields of Sampling a loop reads per row, and each one's dtype as a row tensor.
COLUMNS: dict[str, torch.dtype] = {
    "do_sample": torch.bool,
    "temperature": torch.float32,
    "top_k": torch.long,
    "top_p": torch.float32,
    "repetition_penalty": torch.float32,
    "subtalker_dosample": torch.bool,
    "subtalker_temperature": torch.float32,
    "subtalker_top_k": torch.long,
    "subtalker_top_p": torch.float32,
    "min_new_tokens": torch.long,  # the end-of-speech floor, in frames
    "max_frames": torch.long,      # the frame budget: the row ends there
    "seed": torch.long,            # the row's random stream
}


class SamplingTensors:
    """The rows' Sampling as one [rows, 1] device tensor per column of COLUMNS."""

    def __init__(self, tensors: dict[str, torch.Tensor]):
        self.tensors = tensors

    def __getitem__(self, name: str) -> torch.Tensor:
        return self.tensors[name]

    @classmethod
    def allocate(cls, rows: int, device: torch.device) -> SamplingTensors:
        return cls({name: torch.zeros(rows, 1, dtype=dtype, device=device) for name, dtype in COLUMNS.items()})

    @classmethod
    def of(cls, rows: list[Sampling], device: torch.device) -> SamplingTensors:
        """The tensors of rows whose floor, budget and seed are set (Sampling.for_row)."""
        return cls({name: torch.tensor([[float(getattr(row, name))] for row in rows], dtype=torch.float64,
                                       device=device).to(dtype) for name, dtype in COLUMNS.items()})

    @classmethod
    def stack(cls, parts: list[SamplingTensors]) -> SamplingTensors:
        """The rows of `parts`, one after another."""
        return cls({name: torch.cat([p.tensors[name] for p in parts]) for name in parts[0].tensors})

    def select(self, index: torch.Tensor) -> SamplingTensors:
        return SamplingTensors({name: t.index_select(0, index) for name, t in self.tensors.items()})


def warp(scores: torch.Tensor, temperature: torch.Tensor, top_k: torch.Tensor, top_p: torch.Tensor) -> torch.Tensor:
    """Float32 scores [B, V] after temperature, then top-k, then top-p over what top-k kept, as HF's
    warpers do, with per-row values ([B, 1]; top_k 0 and top_p >= 1 mean off). Codes left out get
    -inf; the best code always stays."""
    warped = scores / temperature
    ranked, order = warped.sort(dim=-1)  # ascending, as HF's top-p sorts
    vocab = ranked.shape[-1]
    k = torch.where(top_k > 0, top_k, vocab).clamp(1, vocab)
    keep = ranked >= ranked.gather(1, vocab - k)
    cumulative = ranked.masked_fill(~keep, float("-inf")).softmax(dim=-1).cumsum(dim=-1)
    keep &= (cumulative > 1 - top_p) | (top_p >= 1)
    keep[:, -1].fill_(True)  # the best code always stays
    return warped.masked_fill(~torch.zeros_like(keep).scatter(1, order, keep), float("-inf"))


_MASK32 = 0xFFFFFFFF


def _hash32(x: torch.Tensor) -> torch.Tensor:
    """A 32-bit integer mixer (int64 tensors holding values below 2**32; products stay below 2**63)."""
    x = (((x >> 16) ^ x) * 0x45D9F3B) & _MASK32
    x = (((x >> 16) ^ x) * 0x45D9F3B) & _MASK32
    return (x >> 16) ^ x


def stream_keys(seeds: torch.Tensor, frame: torch.Tensor | int, substeps: torch.Tensor | int) -> torch.Tensor:
    """The key of each row's random stream at (frame, sub-step): a hash of the row's seed ([B, 1]),
    the frame and the sub-step (0 the talker, 1..15 the code predictor); [B, S] for S sub-steps given
    as a tensor, so a frame's code predictor hashes its rows once for all of its 15 draws."""
    return _hash32(_hash32(_hash32(seeds & _MASK32) ^ frame) ^ substeps)


def uniform_at(key: torch.Tensor, codes: torch.Tensor) -> torch.Tensor:
    """Uniform numbers in (0, 1), one per (row, code) of `codes` ([B, N] code ids), from the rows'
    stream keys ([B, 1], see `stream_keys`)."""
    return ((_hash32(key ^ codes).float() + 0.5) * 2.0**-32).clamp_(max=1.0 - 2.0**-24)


def uniform(seeds: torch.Tensor, frame: torch.Tensor | int, substep: int, codes: torch.Tensor) -> torch.Tensor:
    """Uniform numbers in (0, 1), one per (row, code) of `codes` ([B, N] code ids): a hash of the
    row's seed ([B, 1]), the frame, the sub-step and the code."""
    return uniform_at(stream_keys(seeds, frame, substep), codes)


def draw(scores: torch.Tensor, do_sample: torch.Tensor, temperature: torch.Tensor, top_k: torch.Tensor,
         top_p: torch.Tensor, key: torch.Tensor, candidates: int | None = None) -> torch.Tensor:
    """One code per row: greedy rows take the argmax of the scores, sampling rows draw from the
    warped distribution by an exponential race (the argmax of p / Exp(1) is a draw from p), with the
    row's own uniform numbers (`key` [B, 1]: the rows' stream keys, see `stream_keys`) and no host
    round trip. `candidates` (at least every sampling row's top_k; None: all codes) warps and draws
    over only that many best codes: the same draw, for less work (only the candidates are hashed)."""
    greedy = scores.argmax(dim=-1)
    if candidates is not None and candidates < scores.shape[-1]:
        scores, index = scores.topk(candidates, dim=-1)
    else:
        index = torch.arange(scores.shape[-1], device=scores.device).expand_as(scores)
    probs = warp(scores, temperature, top_k, top_p).softmax(dim=-1)
    race = -uniform_at(key, index).log()  # Exp(1) per code
    drawn = index.gather(1, (probs / race).argmax(dim=-1, keepdim=True)).squeeze(1)
    return torch.where(do_sample.squeeze(1), drawn, greedy)


def candidates(rows: list[Sampling]) -> tuple[int | None, int | None]:
    """How many best codes the talker's and the code predictor's draws need, read on the host: the
    largest top_k of the rows that sample (None when one of them has top-k off: every code is a
    candidate; 1 when none samples: greedy rows take the argmax over every code anyway)."""
    def fewest(pairs: list[tuple[int, bool]]) -> int | None:
        sampled = [int(k) for k, sample in pairs if sample]
        if not sampled:
            return 1
        return None if min(sampled) <= 0 else max(sampled)

    return (fewest([(r.top_k, r.do_sample) for r in rows]),
            fewest([(r.subtalker_top_k, r.subtalker_dosample) for r in rows]))


def draw_subcode(scores: torch.Tensor, sampling: SamplingTensors, key: torch.Tensor,
                 candidates: int | None = None) -> torch.Tensor:
    """A code predictor code of a frame (`key` [B, 1]: the rows' stream keys for its sub-step): the
    code predictor's sampling (subtalker_*), nothing else."""
    return draw(scores.float(), sampling["subtalker_dosample"], sampling["subtalker_temperature"],
                sampling["subtalker_top_k"], sampling["subtalker_top_p"], key, candidates)


def next_code(scores: torch.Tensor, sampling: SamplingTensors, frame: torch.Tensor | int, seen: torch.Tensor,
              unfinished: torch.Tensor, blocked: torch.Tensor, eos: int, candidates: int | None = None) -> torch.Tensor:
    """The talker's next first-codebook code per row, for frame `frame`: repetition penalty over the
    codes a row has made (`seen`, [B, V] bool), the floor held on the end code, suppressed codes
    (`blocked`, [V] bool, the end code never among them), warp and draw. Rows already ended, or at
    their frame budget, get the end code."""
    scores = scores.float()
    penalty = sampling["repetition_penalty"]
    scores = torch.where(seen, torch.where(scores < 0, scores * penalty, scores / penalty), scores)
    scores = scores.masked_fill(blocked, float("-inf"))
    end = scores[:, eos:eos + 1]
    end.masked_fill_(frame < sampling["min_new_tokens"], float("-inf"))  # the floor holds the end code back
    token = draw(scores, sampling["do_sample"], sampling["temperature"], sampling["top_k"], sampling["top_p"],
                 stream_keys(sampling["seed"], frame, 0), candidates)
    going = unfinished & (frame < sampling["max_frames"]).view(-1)
    return torch.where(going, token, eos)
