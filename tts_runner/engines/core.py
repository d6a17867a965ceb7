"""What both loops share: a row, prefill, one decoder layer over a static cache, a frame's input
embedding, the code predictor's 15 sub-steps, and the codes a row made. All of it uses the model's
own modules and weights; nothing in a frame syncs with the host, so the graph loop can capture it."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import torch
from transformers.cache_utils import DynamicCache

from tts_runner.engines.cache import StaticCache, write
from tts_runner.engines.draw import SamplingTensors, draw_subcode, next_code, stream_keys
from tts_runner.engines.sampling import Sampling


@dataclass
class Row:
    """One chunk's part of a talker call: what qwen-tts's prompt builder made for it, and how its
    codes are chosen."""

    prompt: torch.Tensor  # [P, H] the talker's input embeddings of its prompt, unpadded
    text: torch.Tensor    # [T, H] the text added to frames 0..T-1 (after it: the pad embedding)
    sampling: Sampling    # its own floor, frame budget and seed set (Sampling.for_row)
    tag: Any = None       # whoever runs the row: how it knows it again


class RowBatch:
    """What both running batches are: at most `capacity` rows, joining (`admit`) and leaving
    (`remove`) between frames; `step` runs one frame for every row, `finished` says which have ended
    (a host sync), `codes` gives a row's frames. engines.loop runs one call's rows through them; the
    scheduler runs rows that come and go."""

    def __init__(self, capacity: int):
        self.capacity = capacity
        self.rows: list[Row] = []

    def __len__(self) -> int:
        return len(self.rows)

    @property
    def free(self) -> int:
        return self.capacity - len(self.rows)

    def fits(self, row: Row) -> bool:
        """Can this batch hold the row to its end?"""
        return True

    def close(self) -> None:
        """Give back what the batch holds (nothing, unless it says otherwise)."""

    def admit(self, rows: list[Row]) -> None:
        raise NotImplementedError

    def step(self) -> None:
        raise NotImplementedError

    def finished(self) -> list[int]:
        raise NotImplementedError

    def codes(self, index: int) -> torch.Tensor:
        raise NotImplementedError

    def remove(self, indices: list[int]) -> list[Row]:
        raise NotImplementedError


@dataclass
class TalkerResult:
    """The part of HF's GenerateDecoderOnlyOutput that qwen-tts reads from `talker.generate`: per
    step, ((last hidden state,), that frame's 16 codes, or None for the prefill)."""

    hidden_states: list


@dataclass
class Prefill:
    cache: DynamicCache       # the prompt's keys and values, every layer
    hidden: torch.Tensor      # [B, 1, H] the talker's last hidden state
    mask: torch.Tensor        # [B, P] the prompt's attention mask (long)
    deltas: torch.Tensor      # [B, 1] rope offset of each row: position of frame t = P + t + delta


def prefill(talker: torch.nn.Module, inputs_embeds: torch.Tensor, attention_mask: torch.Tensor) -> Prefill:
    """The talker's forward over the left-padded prompt, positions as the talker computes them."""
    mask = attention_mask.long()
    positions, deltas = talker.get_rope_index(mask)
    deltas = deltas - (1 - mask).sum(dim=-1, keepdim=True)
    cache = DynamicCache()
    out = talker.model(inputs_embeds=inputs_embeds, attention_mask=mask, position_ids=positions,
                       past_key_values=cache, use_cache=True)
    return Prefill(cache, out.last_hidden_state[:, -1:], mask, deltas)


def prefill_rows(talker: torch.nn.Module, rows: list[Row], pad: torch.Tensor) -> Prefill:
    """The talker's prefill of `rows`' prompts together, left-padded to the longest."""
    width = max(r.prompt.shape[0] for r in rows)
    embeds = pad.new_zeros(len(rows), width, pad.shape[-1])
    mask = torch.zeros(len(rows), width, dtype=torch.long, device=pad.device)
    for i, row in enumerate(rows):
        embeds[i, width - row.prompt.shape[0]:] = row.prompt
        mask[i, width - row.prompt.shape[0]:] = 1
    return prefill(talker, embeds, mask)


def rows_text(rows: list[Row], pad: torch.Tensor, length: int) -> torch.Tensor:
    """[rows, length, H]: each row's trailing text, then the pad embedding (past its text, as stock)."""
    text = pad.reshape(1, 1, -1).expand(len(rows), length, -1).clone()
    for i, row in enumerate(rows):
        count = min(row.text.shape[0], length)
        text[i, :count] = row.text[:count]
    return text


def rows_sampling(rows: list[Row], device: torch.device) -> SamplingTensors:
    return SamplingTensors.of([row.sampling for row in rows], device)


def blocked_codes(vocab: int, suppress: list[int] | None, device: torch.device) -> torch.Tensor:
    """[V] bool: the codes the talker may never choose (qwen-tts's suppress_tokens)."""
    blocked = torch.zeros(vocab, dtype=torch.bool, device=device)
    if suppress:
        blocked[torch.tensor(suppress, device=device)] = True
    return blocked


def until_end(made: torch.Tensor, eos: int) -> torch.Tensor:
    """A row's frames [F, 16] up to (not including) its first end code, as qwen-tts cuts them."""
    ends = (made[:, 0] == eos).nonzero()
    return made[: int(ends[0])] if ends.numel() else made


def attend(q: torch.Tensor, keys: torch.Tensor, values: torch.Tensor, mask: torch.Tensor, scale: float) -> torch.Tensor:
    """Grouped-query attention, as the library computes it (transformers' sdpa path): q [B, H, Q, D],
    keys/values [B, KV, L, D] (each key/value head read once for its group), additive mask
    broadcastable to [B, 1, Q, L]. Written out (q.k, mask, softmax, second product), bfloat16 parted
    from the library's codes within a few frames; through the same kernel it does not."""
    return torch.nn.functional.scaled_dot_product_attention(q, keys, values, attn_mask=mask, scale=scale,
                                                            enable_gqa=True)


def rms_norm(norm: torch.nn.Module, x: torch.Tensor) -> torch.Tensor:
    """The model's RMSNorm module `norm` applied to `x` through torch's rms_norm: one operator in
    float32 (the library's module is eight), four in other dtypes, with the library's arithmetic
    exactly (the square mean and scaling in float32, the weight applied after rounding back to the
    input's dtype). A norm of another kind runs as it is."""
    eps = getattr(norm, "variance_epsilon", None)
    if eps is None:
        return norm(x)
    weight = norm.weight
    if x.dtype == torch.float32 and weight.dtype == torch.float32:
        return torch.nn.functional.rms_norm(x, weight.shape, weight, eps)
    return weight * torch.nn.functional.rms_norm(x.float(), weight.shape, eps=eps).to(x.dtype)


class Rope:
    """The rotary position embedding of queries and keys by one table (`cos`, `sin`: [B or 1, L, D]),
    built once and used by every layer: the library's `apply_rotary_pos_emb` exactly (x cos +
    rotate_half(x) sin), with rotate_half's halves-swap-and-negate as one roll and the negation
    moved onto the sine table, so a layer rotates each tensor in four operators instead of seven."""

    def __init__(self, cos: torch.Tensor, sin: torch.Tensor):
        self.half = cos.shape[-1] // 2
        self.cos = cos.unsqueeze(1)
        self.sin = torch.cat((-sin[..., : self.half], sin[..., self.half:]), dim=-1).unsqueeze(1)

    def rotate(self, x: torch.Tensor) -> torch.Tensor:
        return x * self.cos + x.roll(self.half, dims=-1) * self.sin

    def __call__(self, q: torch.Tensor, k: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        return self.rotate(q), self.rotate(k)


def layer_step(layer: torch.nn.Module, x: torch.Tensor, rope, kv: tuple[torch.Tensor, torch.Tensor], at: torch.Tensor,
               mask: torch.Tensor, length: int | None = None) -> torch.Tensor:
    """One decoder layer (the model's own projections, norms and MLP) for the positions `at`,
    attending over the first `length` positions of its static cache's buffers `kv` (keys, values;
    None: all of them) under `mask` (as wide as what is attended). It takes the buffers, not a cache
    and a layer number: compiled (runtime.compile), a number would be a constant, one compile a layer."""
    attn = layer.self_attn
    b, q_len, _ = x.shape
    h = rms_norm(layer.input_layernorm, x)
    shape = (b, q_len, -1, attn.head_dim)
    q = rms_norm(attn.q_norm, attn.q_proj(h).view(shape)).transpose(1, 2)
    k = rms_norm(attn.k_norm, attn.k_proj(h).view(shape)).transpose(1, 2)
    v = attn.v_proj(h).view(shape).transpose(1, 2)
    q, k = rope(q, k)
    keys, values = kv
    write(keys, values, at, k, v)
    if length is not None:  # the used prefix only: what the library's growing cache holds
        keys, values = keys[:, :, :length], values[:, :, :length]
    out = attend(q, keys, values, mask, attn.scaling).transpose(1, 2).reshape(b, q_len, -1)
    x = x + attn.o_proj(out)
    return x + layer.mlp(rms_norm(layer.post_attention_layernorm, x))


@dataclass(frozen=True)
class Kernels:
    """What a frame runs for each layer and each draw: the functions as written, or the same
    functions through torch.compile (`runtime.compile`: inductor fuses each into fewer kernels; on
    CUDA the compiled kernels are what the frame's graphs capture). Greedy float32 codes stay equal
    to the library's either way (tests/unit/engines/test_compile.py)."""

    layer_step: Callable = layer_step
    next_code: Callable = next_code
    draw_subcode: Callable = draw_subcode

    RECOMPILES = 32  # compiled variants a function may have before dynamo runs new shapes uncompiled

    @classmethod
    def compiled(cls) -> Kernels:
        # dynamic: a layer step attends over a length that grows every frame, and one compiled graph
        # serves every layer of a model (the layers' weights and buffers are its inputs, not constants).
        # A frame still needs about 9 variants of layer_step (talker and code predictor widths, one row
        # or many, the predictor's first sub-step, its last, whose length is the whole cache): past
        # dynamo's default limit of 8, the rest would run uncompiled without a word
        torch._dynamo.config.recompile_limit = max(torch._dynamo.config.recompile_limit, cls.RECOMPILES)
        return cls(*(torch.compile(f, dynamic=True) for f in (layer_step, next_code, draw_subcode)))


def frame_embedding(codec_embedding: torch.nn.Module, sub_embeddings, first: torch.Tensor,
                    rest: torch.Tensor) -> torch.Tensor:
    """A frame's 16 codes ([B, 1] code 0 and [B, 15] codes 1..15) as the talker's next input before
    the text is added: their embeddings summed, in qwen-tts's order."""
    parts = [codec_embedding(first)] + [sub_embeddings[g](rest[:, g:g + 1]) for g in range(rest.shape[1])]
    return torch.cat(parts, dim=1).sum(1, keepdim=True)


class Predictor:
    """The code predictor's 15 sub-steps (codes 1..15 of a frame) for a batch, over a static cache of
    its 16 positions (talker hidden, code 0, codes 1..14 fed back), with the rotary tables and the
    causal masks computed once. Each frame starts over at position 0, so rows need no bookkeeping:
    a batch of b rows uses the first b rows of the cache."""

    def __init__(self, predictor: torch.nn.Module, rows: int, like: torch.Tensor, kernels: Kernels = Kernels()):
        model = predictor.model
        self.predictor = predictor
        self.kernels = kernels
        self.layers = list(model.layers[: model.config.num_hidden_layers])
        if any(layer.attention_type != "full_attention" for layer in self.layers):
            raise NotImplementedError("the code predictor's loop supports full-attention layers only")
        self.embeddings = model.get_input_embeddings()
        slots = len(predictor.lm_head) + 1
        self.cache = StaticCache.allocate(len(self.layers), rows, slots, model.config, like)
        self.positions = torch.arange(slots, device=like.device)
        causal = torch.ones(slots, slots, dtype=torch.bool, device=like.device).tril()
        self.masks = torch.zeros(slots, slots, dtype=like.dtype, device=like.device).masked_fill(
            ~causal, torch.finfo(like.dtype).min)
        cos, sin = model.rotary_emb(like.new_zeros(1, slots, model.config.hidden_size), self.positions[None])
        # Each sub-step's positions, rotary tables and causal mask, sliced once: sub-step 0 reads the
        # talker hidden and code 0 (positions 0, 1), sub-step g > 0 code g (position g + 1).
        spans = [(0, 2)] + [(g + 1, g + 2) for g in range(1, slots - 1)]
        self.steps = [(Rope(cos[:, a:b], sin[:, a:b]), self.positions[a:b], self.masks[a:b, :b][None, None], b)
                      for a, b in spans]
        self.substeps = torch.arange(1, slots, device=like.device)  # the stream keys' sub-steps 1..15

    def __call__(self, hidden: torch.Tensor, first_embed: torch.Tensor, sampling: SamplingTensors,
                 frame: torch.Tensor | int, candidates: int | None = None) -> torch.Tensor:
        """[B, 1, H] talker hidden state and [B, 1, H] embedding of code 0 of frame `frame` -> [B, 15]
        codes 1..15 (`candidates`: see draw.draw)."""
        p = self.predictor
        cache = self.cache.rows(hidden.shape[0])
        keys = stream_keys(sampling["seed"], frame, self.substeps)  # [B, 15]: every draw's, hashed once
        x = p.small_to_mtp_projection(torch.cat((hidden, first_embed), dim=1))
        codes = []
        for group, head in enumerate(p.lm_head):
            rope, at, mask, end = self.steps[group]
            for i, layer in enumerate(self.layers):
                x = self.kernels.layer_step(layer, x, rope, cache.layer(i), at, mask, length=end)
            code = self.kernels.draw_subcode(head(rms_norm(p.model.norm, x[:, -1])), sampling, keys[:, group:group + 1],
                                             candidates)
            codes.append(code)
            if group + 1 < len(p.lm_head):
                x = p.small_to_mtp_projection(self.embeddings[group](code[:, None]))
        return torch.stack(codes, dim=1)

    @property
    def nbytes(self) -> int:
        return self.cache.nbytes
