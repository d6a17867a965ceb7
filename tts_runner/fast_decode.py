"""A lean decode loop for the talker and its code predictor (`engine: fast`).

qwen_tts generates each frame through Hugging Face `generate()` twice over: once per frame for
the talker and, inside every talker step, a whole second `generate()` call for the code
predictor's 15 sub-steps. Most of a step is that machinery (logits-processor lists, stopping
criteria, cache objects, kwargs plumbing), not arithmetic. `lean_talker_generate` replaces
`talker.generate` with plain loops over the model's own modules and weights:

- talker: one prefill of the left-padded prompt, then one forward per frame with the KV cache;
- code predictor: a prefill of [talker hidden, first code] and 14 one-token forwards;
- sampling on the device, per request: repetition penalty, the min_new_tokens floor and the
  suppressed control codes (talker), then temperature, top-k, top-p (talker and sub-talker),
  or argmax when do_sample is false; finished items keep their slot, masked to end-of-speech;
- a frame budget per row (`max_frames`): a row that reaches it ends there, the others go on;
- the host checks "all finished?" only every `sync_every` frames, and then drops the rows that
  have ended from the batch and its KV cache (`compact`), so a batch does not keep paying for
  chunks that are done while its longest one finishes.

It returns what qwen_tts's `generate()` reads from `talker.generate`, so prompt construction
and the batched speech-tokenizer decode stay the library's. With greedy decoding in float32 the
codes equal the stock path's exactly (tests/test_fast_decode.py).
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from transformers.cache_utils import DynamicCache


@dataclass
class TalkerResult:
    """The part of HF's GenerateDecoderOnlyOutput that qwen_tts reads: per step,
    ((last hidden state,), the frame's 16 codes or None for the prefill)."""

    hidden_states: list


@dataclass(frozen=True)
class Sampler:
    do_sample: bool
    temperature: float = 1.0
    top_k: int = 0
    top_p: float = 1.0

    def __call__(self, scores: torch.Tensor, generator: torch.Generator | None = None) -> torch.Tensor:
        if not self.do_sample:
            return scores.argmax(dim=-1)
        scores = scores.float()
        if self.temperature != 1.0:
            scores = scores / self.temperature
        if self.top_k:
            kth = torch.topk(scores, min(self.top_k, scores.shape[-1])).values[..., -1:]
            scores = scores.masked_fill(scores < kth, float("-inf"))
        if self.top_p < 1.0:
            sorted_scores, order = torch.sort(scores, descending=False)
            cumulative = sorted_scores.softmax(dim=-1).cumsum(dim=-1)
            drop = cumulative <= (1 - self.top_p)
            drop[..., -1:] = False
            scores = scores.masked_fill(drop.scatter(-1, order, drop), float("-inf"))
        probs = scores.softmax(dim=-1)
        return torch.multinomial(probs, num_samples=1, generator=generator).squeeze(1)


def _penalise_repeats(scores: torch.Tensor, previous: torch.Tensor, penalty: float) -> torch.Tensor:
    if penalty == 1.0 or previous.shape[1] == 0:
        return scores
    seen = scores.gather(1, previous)
    seen = torch.where(seen < 0, seen * penalty, seen / penalty)
    return scores.scatter(1, previous, seen)


class CodePredictor:
    """The code predictor's 15 sub-steps for a whole batch, without HF generate().

    It always sees the same 17 positions (the talker hidden, code 0, codes 1..15) with no padding,
    so the rotary tables are computed once, no attention mask is needed (the two-token prefill is
    causal, later steps attend to everything cached), and its decoder layers are called directly.
    """

    def __init__(self, predictor: torch.nn.Module, sampler: Sampler, like: torch.Tensor):
        self.predictor = predictor
        model = predictor.model
        self.embeddings = model.get_input_embeddings()
        self.layers = list(model.layers[: model.config.num_hidden_layers])
        if any(layer.attention_type != "full_attention" for layer in self.layers):
            raise NotImplementedError("the lean code predictor supports full attention layers only")
        self.norm = model.norm
        self.sampler = sampler
        groups = len(predictor.lm_head)
        self.positions = torch.arange(groups + 2, device=like.device)
        probe = torch.zeros(1, groups + 2, model.config.hidden_size, dtype=like.dtype, device=like.device)
        self.cos, self.sin = model.rotary_emb(probe, self.positions[None])

    def _forward(self, x: torch.Tensor, cache: DynamicCache, start: int) -> torch.Tensor:
        end = start + x.shape[1]
        rotary = (self.cos[:, start:end], self.sin[:, start:end])
        for layer in self.layers:
            x = layer(x, attention_mask=None, past_key_values=cache, use_cache=True,
                      cache_position=self.positions[start:end], position_embeddings=rotary)[0]
        return self.norm(x[:, -1])

    def __call__(self, talker_hidden: torch.Tensor, first_code_embed: torch.Tensor,
                 generator: torch.Generator | None = None) -> torch.Tensor:
        """(B, 1, H) talker hidden and (B, 1, H) embedding of code 0 -> (B, 15) codes 1..15."""
        p = self.predictor
        cache = DynamicCache()
        x = p.small_to_mtp_projection(torch.cat((talker_hidden, first_code_embed), dim=1))
        hidden = self._forward(x, cache, 0)
        codes = []
        for group in range(len(p.lm_head)):
            code = self.sampler(p.lm_head[group](hidden), generator)
            codes.append(code)
            if group + 1 == len(p.lm_head):
                break
            x = p.small_to_mtp_projection(self.embeddings[group](code[:, None]))
            hidden = self._forward(x, cache, group + 2)
        return torch.stack(codes, dim=1)


def _full_batch(hidden: torch.Tensor, codes: torch.Tensor, rows: torch.Tensor, batch: int, width: int,
                eos: int) -> tuple:
    """One step's output in the shape qwen_tts expects: every original row, ended rows holding
    end-of-speech codes (qwen_tts cuts each item at its first end-of-speech code)."""
    if rows.numel() == batch:
        return (hidden,), codes
    full_codes = codes.new_full((batch, width), eos).index_copy(0, rows, codes)
    full_hidden = hidden.new_zeros((batch, *hidden.shape[1:])).index_copy(0, rows, hidden)
    return (full_hidden,), full_codes


def lean_talker_generate(
    talker: torch.nn.Module,
    inputs_embeds: torch.Tensor,
    attention_mask: torch.Tensor,
    trailing_text_hidden: torch.Tensor,
    tts_pad_embed: torch.Tensor,
    max_new_tokens: int,
    min_new_tokens: int = 2,
    do_sample: bool = True,
    top_k: int = 50,
    top_p: float = 1.0,
    temperature: float = 0.9,
    subtalker_dosample: bool = True,
    subtalker_top_k: int = 50,
    subtalker_top_p: float = 1.0,
    subtalker_temperature: float = 0.9,
    eos_token_id: int | None = None,
    repetition_penalty: float = 1.05,
    suppress_tokens: list[int] | None = None,
    max_frames: list[int] | None = None,
    sync_every: int = 1,
    compact: bool = True,
    generator: torch.Generator | None = None,
    **_ignored,
) -> TalkerResult:
    """Drop-in for `talker.generate(...)` as qwen_tts calls it. `max_frames` (one per row) ends each
    row at its own frame budget: its code at that step is end-of-speech, whatever was sampled."""
    device = inputs_embeds.device
    batch = inputs_embeds.shape[0]
    eos = talker.config.codec_eos_token_id if eos_token_id is None else eos_token_id
    sampler = Sampler(do_sample, temperature, top_k, top_p)
    predictor = CodePredictor(talker.code_predictor, Sampler(subtalker_dosample, subtalker_temperature,
                                                             subtalker_top_k, subtalker_top_p), inputs_embeds)
    codec_embedding = talker.get_input_embeddings()
    blocked = torch.zeros(talker.config.vocab_size, dtype=torch.bool, device=device)
    if suppress_tokens:
        blocked[torch.tensor(suppress_tokens, device=device)] = True

    # Prefill: positions from the left-padded mask, as the talker computes them (rope deltas).
    mask = attention_mask.long()
    positions, deltas = talker.get_rope_index(mask)
    deltas = deltas - (1 - mask).sum(dim=-1, keepdim=True)
    cache = DynamicCache()
    out = talker.model(inputs_embeds=inputs_embeds, attention_mask=mask, position_ids=positions,
                       past_key_values=cache, use_cache=True)
    hidden = out.last_hidden_state
    steps: list = [((hidden,), None)]
    rows = torch.arange(batch, device=device)  # the original rows still being generated
    generated = torch.empty(batch, 0, dtype=torch.long, device=device)
    unfinished = torch.ones(batch, dtype=torch.bool, device=device)
    budget = torch.tensor(max_frames if max_frames is not None else [max_new_tokens] * batch, device=device)
    length = mask.shape[1]
    width = talker.config.num_code_groups

    for step in range(max_new_tokens):
        if step > 0:
            # the previous frame's first code -> its other 15 codes -> the next talker input
            first = generated[:, -1:]
            first_embed = codec_embedding(first)
            rest = predictor(hidden[:, -1:], first_embed, generator)
            codes = torch.cat((first, rest), dim=1)
            parts = [first_embed] + [predictor.embeddings[g](rest[:, g:g + 1]) for g in range(rest.shape[1])]
            frame = torch.cat(parts, dim=1).sum(1, keepdim=True)  # summed as qwen_tts sums it
            text_step = step - 1
            frame = frame + (trailing_text_hidden[:, text_step:text_step + 1]
                             if text_step < trailing_text_hidden.shape[1] else tts_pad_embed)
            mask = torch.cat((mask, mask.new_ones(mask.shape[0], 1)), dim=1)
            position = (deltas + length).view(1, -1, 1).expand(3, -1, 1)
            out = talker.model(inputs_embeds=frame, attention_mask=mask, position_ids=position,
                               past_key_values=cache, use_cache=True)
            hidden = out.last_hidden_state
            length += 1
            steps.append(_full_batch(hidden, codes, rows, batch, width, eos))

        scores = talker.codec_head(hidden[:, -1]).float()
        scores = _penalise_repeats(scores, generated, repetition_penalty)
        if step < min_new_tokens:
            scores[:, eos] = float("-inf")
        scores = scores.masked_fill(blocked, float("-inf"))
        token = sampler(scores, generator)
        token = torch.where(unfinished & (budget > step), token, torch.full_like(token, eos))
        generated = torch.cat((generated, token[:, None]), dim=1)
        unfinished = unfinished & (token != eos)
        if (step + 1) % sync_every == 0:
            alive = unfinished.nonzero().squeeze(1)
            if alive.numel() == 0:
                break
            if compact and alive.numel() < unfinished.numel():
                # Drop ended rows: the rest of the job no longer pays for them (the long tail).
                cache.batch_select_indices(alive)
                rows, mask, deltas, generated, hidden, unfinished, budget = (
                    t.index_select(0, alive) for t in (rows, mask, deltas, generated, hidden, unfinished, budget))
                trailing_text_hidden = trailing_text_hidden.index_select(0, alive)
                if tts_pad_embed.shape[0] > 1:
                    tts_pad_embed = tts_pad_embed.index_select(0, alive)
    return TalkerResult(hidden_states=steps)
