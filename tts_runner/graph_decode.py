"""Static-shape decoding for CUDA graphs (`engine: graph`).

The lean loop (fast_decode.py) removes HF generate()'s machinery, but each frame still launches
thousands of small kernels from Python: on a GPU the step is launch-bound. This module makes one
frame a fixed sequence of kernels over fixed buffers, so that on CUDA it can be captured once as a
CUDA graph and replayed each frame:

- every tensor a frame touches lives in `_State`, allocated once for the largest batch bucket and
  the configured length; bucket b uses the first b rows (views), so all buckets share memory;
- the talker's and the code predictor's KV caches are static: a frame writes its keys and values
  at a position held in a device tensor and attends over the whole buffer under a mask of valid
  positions, with attention written out here (grouped-query, no key/value repeat, no host sync);
- the frame index, the cache position, the end-of-speech floor and frame budget, repetition penalty, suppressed
  codes and sampling are all device tensors, and sampling parameters are per row (set per call,
  never frozen at capture); sampling uses the exponential-race form of multinomial so it needs no
  host round trip;
- ended rows are masked to end-of-speech; every `sync_every` frames the host asks which rows are
  still going and, when they fit a smaller bucket, moves them to the front and switches to that
  bucket's graph.

On CPU (and when graphs are off) the same frame function runs eagerly: the exactness test in
tests/test_graph_decode.py runs the code that is captured on a GPU. The prompt prefill is the stock
talker forward, its cache copied into the static buffers.
"""

from __future__ import annotations

import functools
import logging
import time
from dataclasses import dataclass, field

import torch
from qwen_tts.core.models.modeling_qwen3_tts import apply_multimodal_rotary_pos_emb, apply_rotary_pos_emb
from transformers.cache_utils import DynamicCache

from tts_runner.fast_decode import TalkerResult

log = logging.getLogger(__name__)


def warp_rows(scores: torch.Tensor, temperature: torch.Tensor, top_k: torch.Tensor,
              top_p: torch.Tensor) -> torch.Tensor:
    """Float32 scores [B, V] after temperature, then top-k, then top-p over what top-k kept, as HF's
    warpers do, with per-row settings ([B, 1] tensors; top_k 0 and top_p >= 1 mean off). Codes
    left out get -inf; the best code always stays."""
    warped = scores / temperature
    ranked, order = warped.sort(dim=-1)  # ascending, as HF's top-p sorts
    vocab = ranked.shape[-1]
    k = torch.where(top_k > 0, top_k, vocab).clamp(1, vocab)
    keep = ranked >= ranked.gather(1, vocab - k)
    cumulative = ranked.masked_fill(~keep, float("-inf")).softmax(dim=-1).cumsum(dim=-1)
    keep &= (cumulative > 1 - top_p) | (top_p >= 1)
    keep[:, -1].fill_(True)  # the best code always stays
    return warped.masked_fill(~torch.zeros_like(keep).scatter(1, order, keep), float("-inf"))


def sample_rows(scores: torch.Tensor, do_sample: torch.Tensor, temperature: torch.Tensor,
                top_k: torch.Tensor, top_p: torch.Tensor) -> torch.Tensor:
    """One code per row: greedy rows take the argmax of the scores, sampling rows draw from the
    warped distribution by an exponential race (argmax of p / Exp(1) is a draw from p), which needs
    no host round trip."""
    greedy = scores.argmax(dim=-1)
    probs = warp_rows(scores, temperature, top_k, top_p).softmax(dim=-1)
    race = torch.empty_like(probs).exponential_().clamp_min_(1e-20)
    return torch.where(do_sample.squeeze(1), (probs / race).argmax(dim=-1), greedy)


def _attend(q: torch.Tensor, keys: torch.Tensor, values: torch.Tensor, mask: torch.Tensor,
            scale: float) -> torch.Tensor:
    """Grouped-query attention over a whole static cache: q [B, H, Q, D], keys/values [B, KV, L, D],
    additive mask broadcastable to [B, 1, Q, L]. Each key/value head is read once for its group."""
    b, heads, q_len, dim = q.shape
    kv = keys.shape[1]
    group = heads // kv
    q = q.reshape(b, kv, group * q_len, dim)
    weights = torch.matmul(q, keys.transpose(2, 3)) * scale
    weights = weights.view(b, kv, group, q_len, -1) + mask[:, :, None]
    weights = weights.softmax(dim=-1, dtype=torch.float32).to(q.dtype).view(b, kv, group * q_len, -1)
    return torch.matmul(weights, values).view(b, heads, q_len, dim)


def _layer(layer: torch.nn.Module, x: torch.Tensor, rope, keys: torch.Tensor, values: torch.Tensor,
           at: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    """One decoder layer (the model's own projections, norms and MLP) over a static cache slice."""
    attn = layer.self_attn
    b, q_len, _ = x.shape
    h = layer.input_layernorm(x)
    shape = (b, q_len, -1, attn.head_dim)
    q = attn.q_norm(attn.q_proj(h).view(shape)).transpose(1, 2)
    k = attn.k_norm(attn.k_proj(h).view(shape)).transpose(1, 2)
    v = attn.v_proj(h).view(shape).transpose(1, 2)
    q, k = rope(q, k)
    keys.index_copy_(2, at, k)
    values.index_copy_(2, at, v)
    out = _attend(q, keys, values, mask, attn.scaling).transpose(1, 2).reshape(b, q_len, -1)
    x = x + attn.o_proj(out)
    return x + layer.mlp(layer.post_attention_layernorm(x))


def _cache(layers: int, rows: int, length: int, config, like: torch.Tensor) -> list[torch.Tensor]:
    head_dim = getattr(config, "head_dim", None) or config.hidden_size // config.num_attention_heads
    return [like.new_zeros(rows, config.num_key_value_heads, length, head_dim) for _ in range(layers)]


@dataclass
class _State:
    """Every buffer a frame reads or writes; rows are slots, a bucket of size b uses slots [:b]."""

    talker_keys: list
    talker_values: list
    predictor_keys: list
    predictor_values: list
    valid: torch.Tensor        # [R, L] bool: cache positions a row may attend to
    deltas: torch.Tensor       # [R] rope position offset of each row (left padding)
    hidden: torch.Tensor       # [R, 1, H] the talker's last hidden state
    token: torch.Tensor        # [R] the last first-codebook code
    unfinished: torch.Tensor   # [R] bool
    seen: torch.Tensor         # [R, V] bool: codes generated so far (repetition penalty)
    text: torch.Tensor         # [R, N, H] the text added to frame t at index t - 1
    codes: torch.Tensor        # [R, N, G] frame t's 16 codes at index t - 1
    settings: dict = field(default_factory=dict)  # per-row sampling, [R, 1] (min_new: [R])
    frame: torch.Tensor = None  # [1] the frame index t
    position: torch.Tensor = None  # [1] the cache position frame t writes

    def rows(self, n: int) -> _State:
        return _State(
            *[[t[:n] for t in ts] for ts in (self.talker_keys, self.talker_values, self.predictor_keys,
                                              self.predictor_values)],
            *[t[:n] for t in (self.valid, self.deltas, self.hidden, self.token, self.unfinished, self.seen,
                              self.text, self.codes)],
            settings={k: v[:n] for k, v in self.settings.items()}, frame=self.frame, position=self.position)

    def per_row(self) -> list[torch.Tensor]:
        return [*self.talker_keys, *self.talker_values, self.valid, self.deltas, self.hidden, self.token,
                self.unfinished, self.seen, self.text, self.codes, *self.settings.values()]


SETTINGS = {  # per-row sampling tensors and their dtype
    "do_sample": torch.bool, "temperature": torch.float32, "top_k": torch.long, "top_p": torch.float32,
    "sub_do_sample": torch.bool, "sub_temperature": torch.float32, "sub_top_k": torch.long,
    "sub_top_p": torch.float32, "penalty": torch.float32,
}


class GraphDecoder:
    """Static-shape decoding of one talker, with one CUDA graph per batch bucket when captured."""

    def __init__(self, talker: torch.nn.Module, buckets: tuple[int, ...] = (1, 2, 4, 8, 16, 32, 64),
                 max_len: int = 1280, sync_every: int = 8):
        self.talker = talker
        self.buckets = tuple(sorted({int(b) for b in buckets}))
        self.max_len = int(max_len)
        self.sync_every = max(1, int(sync_every))
        config = talker.config
        self.eos = config.codec_eos_token_id
        self.groups = config.num_code_groups
        self.model = talker.model
        self.predictor = talker.code_predictor
        self.codec_embedding = talker.get_input_embeddings()
        self.sub_embeddings = self.predictor.model.get_input_embeddings()
        pmodel = self.predictor.model
        self.predictor_layers = list(pmodel.layers[: pmodel.config.num_hidden_layers])
        if any(layer.attention_type != "full_attention" for layer in self.predictor_layers):
            raise NotImplementedError("graph decoding supports full-attention code predictors only")
        if getattr(config, "sliding_window", None) and config.sliding_window < self.max_len:
            raise NotImplementedError("graph decoding does not support a sliding-window talker")
        self.state: _State | None = None
        self.graphs: dict[int, torch.cuda.CUDAGraph] = {}
        self.capture_seconds = 0.0

    # ---- buffers -------------------------------------------------------------------------------
    def _allocate(self, like: torch.Tensor) -> None:
        rows, length = self.buckets[-1], self.max_len
        config, pconfig = self.talker.config, self.predictor.model.config
        device = like.device
        slots = self.groups  # predictor positions: talker hidden, code 0, codes 1..14 fed back
        self.state = _State(
            talker_keys=_cache(config.num_hidden_layers, rows, length, config, like),
            talker_values=_cache(config.num_hidden_layers, rows, length, config, like),
            predictor_keys=_cache(len(self.predictor_layers), rows, slots, pconfig, like),
            predictor_values=_cache(len(self.predictor_layers), rows, slots, pconfig, like),
            valid=torch.zeros(rows, length, dtype=torch.bool, device=device),
            deltas=torch.zeros(rows, dtype=torch.long, device=device),
            hidden=like.new_zeros(rows, 1, config.hidden_size),
            token=torch.full((rows,), self.eos, dtype=torch.long, device=device),
            unfinished=torch.zeros(rows, dtype=torch.bool, device=device),
            seen=torch.zeros(rows, config.vocab_size, dtype=torch.bool, device=device),
            text=like.new_zeros(rows, length, config.hidden_size),
            codes=torch.full((rows, length, self.groups), self.eos, dtype=torch.long, device=device),
            settings={name: torch.zeros(rows, 1, dtype=dtype, device=device) for name, dtype in SETTINGS.items()},
            frame=torch.ones(1, dtype=torch.long, device=device),
            position=torch.zeros(1, dtype=torch.long, device=device),
        )
        for name in ("min_new", "max_frames"):  # per-row frame floor and budget, [R]
            self.state.settings[name] = torch.zeros(rows, dtype=torch.long, device=device)
        self.eos_column = torch.zeros(config.vocab_size, dtype=torch.bool, device=device)
        self.eos_column[self.eos] = True
        self.blocked = torch.zeros(config.vocab_size, dtype=torch.bool, device=device)
        lowest = torch.finfo(like.dtype).min
        causal = torch.ones(slots, slots, dtype=torch.bool, device=device).tril()
        self.predictor_masks = torch.zeros(slots, slots, dtype=like.dtype, device=device).masked_fill(~causal, lowest)
        self.predictor_positions = torch.arange(slots, device=device)
        probe = like.new_zeros(1, slots, pconfig.hidden_size)
        self.predictor_rope = self.predictor.model.rotary_emb(probe, self.predictor_positions[None])
        self.lowest = lowest
        self.views = {b: self.state.rows(b) for b in self.buckets}

    @property
    def buffer_bytes(self) -> int:
        """Bytes held by the static buffers (0 before they are allocated)."""
        if self.state is None:
            return 0
        s = self.state
        tensors = [*s.per_row(), *s.predictor_keys, *s.predictor_values]
        return sum(t.numel() * t.element_size() for t in tensors)

    def fits(self, batch: int, prompt_len: int, max_new_tokens: int) -> bool:
        return batch <= self.buckets[-1] and prompt_len + max_new_tokens <= self.max_len

    def bucket(self, n: int) -> int:
        return next(b for b in self.buckets if b >= n)

    # ---- one frame -----------------------------------------------------------------------------
    def _predict(self, s: _State, first_embed: torch.Tensor) -> torch.Tensor:
        """Codes 1..15 of frame t for every row: the code predictor over its static 16-slot cache."""
        p = self.predictor
        cos, sin = self.predictor_rope
        x = p.small_to_mtp_projection(torch.cat((s.hidden, first_embed), dim=1))
        codes = []
        start = 0
        for group in range(len(p.lm_head)):
            end = start + x.shape[1]
            at = self.predictor_positions[start:end]
            rope = functools.partial(apply_rotary_pos_emb, cos=cos[:, start:end], sin=sin[:, start:end])
            mask = self.predictor_masks[start:end][None, None]
            for i, layer in enumerate(self.predictor_layers):
                x = _layer(layer, x, rope, s.predictor_keys[i], s.predictor_values[i], at, mask)
            hidden = p.model.norm(x[:, -1])
            st = s.settings
            code = sample_rows(p.lm_head[group](hidden).float(), st["sub_do_sample"], st["sub_temperature"],
                               st["sub_top_k"], st["sub_top_p"])
            codes.append(code)
            if group + 1 < len(p.lm_head):
                x = p.small_to_mtp_projection(self.sub_embeddings[group](code[:, None]))
                start = end
        return torch.stack(codes, dim=1)

    def _choose(self, s: _State, hidden: torch.Tensor) -> None:
        """The next first-codebook code of every row from the talker's hidden state."""
        st = s.settings
        scores = self.talker.codec_head(hidden[:, -1]).float()
        penalty = st["penalty"]
        scores = torch.where(s.seen, torch.where(scores < 0, scores * penalty, scores / penalty), scores)
        held = (s.frame < st["min_new"])[:, None] & self.eos_column
        scores = scores.masked_fill(held | self.blocked, float("-inf"))
        token = sample_rows(scores, st["do_sample"], st["temperature"], st["top_k"], st["top_p"])
        token = torch.where(s.unfinished & (s.frame < st["max_frames"]), token, self.eos)
        s.token.copy_(token)
        s.seen.scatter_(1, token[:, None], True)
        s.unfinished.logical_and_(token != self.eos)

    def _frame(self, s: _State) -> None:
        """Frame t: codes 1..15 for the last code, the frame's talker step, the next code."""
        first = s.token[:, None]
        first_embed = self.codec_embedding(first)
        rest = self._predict(s, first_embed)
        s.codes.index_copy_(1, s.frame - 1, torch.cat((first, rest), dim=1)[:, None])
        parts = [first_embed] + [self.sub_embeddings[g](rest[:, g:g + 1]) for g in range(rest.shape[1])]
        x = torch.cat(parts, dim=1).sum(1, keepdim=True) + s.text.index_select(1, s.frame - 1)
        s.valid.index_fill_(1, s.position, True)
        mask = torch.zeros_like(s.valid, dtype=x.dtype).masked_fill(~s.valid, self.lowest)[:, None, None]
        positions = (s.deltas + s.position).view(1, -1, 1).expand(3, -1, 1)
        cos, sin = self.model.rotary_emb(x, positions)
        scaling = self.talker.config.rope_scaling
        rope = functools.partial(apply_multimodal_rotary_pos_emb, cos=cos, sin=sin,
                                 mrope_section=scaling["mrope_section"], mrope_interleaved=scaling["interleaved"])
        for i, layer in enumerate(self.model.layers):
            x = _layer(layer, x, rope, s.talker_keys[i], s.talker_values[i], s.position, mask)
        hidden = self.model.norm(x)
        s.hidden.copy_(hidden)
        s.position.add_(1)
        self._choose(s, hidden)
        s.frame.add_(1)

    # ---- capture -------------------------------------------------------------------------------
    def capture(self, like: torch.Tensor) -> float:
        """Allocate the buffers and capture one CUDA graph per bucket; returns the seconds it took."""
        started = time.perf_counter()
        if self.state is None:
            self._allocate(like)
        pool = torch.cuda.graph_pool_handle()
        for b in self.buckets:
            view = self.views[b]
            stream = torch.cuda.Stream()
            stream.wait_stream(torch.cuda.current_stream())
            with torch.cuda.stream(stream):
                for _ in range(2):  # warm-up runs: allocator and kernel selection settle first
                    self._reset_counters()
                    self._frame(view)
            torch.cuda.current_stream().wait_stream(stream)
            self._reset_counters()
            graph = torch.cuda.CUDAGraph()
            with torch.cuda.graph(graph, pool=pool):
                self._frame(view)
            self.graphs[b] = graph
        torch.cuda.synchronize()
        self.capture_seconds = time.perf_counter() - started
        return self.capture_seconds

    def _reset_counters(self) -> None:
        self.state.frame.fill_(1)
        self.state.position.zero_()

    def _run(self, b: int) -> None:
        graph = self.graphs.get(b)
        if graph is not None:
            graph.replay()
        else:
            self._frame(self.views[b])

    # ---- a call --------------------------------------------------------------------------------
    def _start(self, b: int, batch: int, inputs_embeds, attention_mask, trailing_text_hidden, tts_pad_embed,
               kwargs: dict) -> None:
        """Prefill the prompt with the stock talker forward and load the bucket's slots."""
        if self.state is None:
            self._allocate(inputs_embeds)
        s = self.views[b]
        fill = torch.cat((torch.arange(batch), torch.full((b - batch,), batch - 1, dtype=torch.long)))
        fill = fill.to(inputs_embeds.device)  # spare slots repeat the last row and start finished
        embeds, mask = inputs_embeds.index_select(0, fill), attention_mask.long().index_select(0, fill)
        positions, deltas = self.talker.get_rope_index(mask)
        deltas = deltas - (1 - mask).sum(dim=-1, keepdim=True)
        cache = DynamicCache()
        out = self.model(inputs_embeds=embeds, attention_mask=mask, position_ids=positions,
                         past_key_values=cache, use_cache=True)
        prompt = mask.shape[1]
        for i, layer in enumerate(cache.layers):
            s.talker_keys[i][:, :, :prompt].copy_(layer.keys)
            s.talker_values[i][:, :, :prompt].copy_(layer.values)
        s.valid.zero_()
        s.valid[:, :prompt].copy_(mask.bool())
        s.deltas.copy_(deltas.view(-1))
        s.hidden.copy_(out.last_hidden_state[:, -1:])
        trailing = trailing_text_hidden.index_select(0, fill)
        n = min(trailing.shape[1], s.text.shape[1])
        s.text[:, :n].copy_(trailing[:, :n])
        pad = tts_pad_embed if tts_pad_embed.shape[0] == 1 else tts_pad_embed.index_select(0, fill)
        s.text[:, n:] = pad.reshape(pad.shape[0], 1, -1)  # past the text: the pad embedding, as stock
        s.codes.fill_(self.eos)
        s.seen.zero_()
        s.token.fill_(self.eos)
        s.unfinished.copy_(torch.arange(b, device=s.unfinished.device) < batch)
        st = s.settings
        for name, key in (("do_sample", "do_sample"), ("temperature", "temperature"), ("top_k", "top_k"),
                          ("top_p", "top_p"), ("sub_do_sample", "subtalker_dosample"),
                          ("sub_temperature", "subtalker_temperature"), ("sub_top_k", "subtalker_top_k"),
                          ("sub_top_p", "subtalker_top_p"), ("penalty", "repetition_penalty")):
            st[name].copy_(_rows(kwargs[key], fill, st[name]))
        st["min_new"].copy_(_rows(kwargs["min_new_tokens"], fill, st["min_new"][:, None]).view(-1))
        budget = kwargs.get("max_frames") or kwargs["max_new_tokens"]
        st["max_frames"].copy_(_rows(budget, fill, st["max_frames"][:, None]).view(-1))
        self.blocked.zero_()
        if kwargs.get("suppress_tokens"):
            self.blocked[torch.tensor(kwargs["suppress_tokens"], device=self.blocked.device)] = True
        self.state.frame.zero_()
        self.state.position.fill_(prompt)
        self._choose(s, s.hidden)  # frame 0's code comes from the prefill
        self.state.frame.fill_(1)

    def generate(self, inputs_embeds, attention_mask, trailing_text_hidden, tts_pad_embed, **kwargs) -> TalkerResult:
        batch = inputs_embeds.shape[0]
        max_new = int(kwargs["max_new_tokens"])
        b = self.bucket(batch)
        self._start(b, batch, inputs_embeds, attention_mask, trailing_text_hidden, tts_pad_embed, kwargs)
        slots = list(range(batch))  # the original row in each live slot
        result = torch.full((batch, max(max_new - 1, 0), self.groups), self.eos, dtype=torch.long,
                            device=inputs_embeds.device)
        frames = 0
        for frames in range(1, max_new):
            self._run(b)
            if frames % self.sync_every and frames < max_new - 1:
                continue
            alive = self.views[b].unfinished.nonzero().view(-1).tolist()  # the host sync
            if not alive:
                break
            smaller = self.bucket(len(alive))
            if smaller < b:
                self._flush(result, slots, frames)
                slots = [slots[i] for i in alive]
                self._compact(b, alive, smaller)
                b = smaller
        self._flush(result, slots, frames)
        result = result[:, :frames]
        empty = inputs_embeds.new_zeros(batch, 1, 1)  # callers of talker.generate ignore the hidden states
        return TalkerResult(hidden_states=[((empty,), None)] + [((empty,), result[:, i]) for i in range(frames)])

    def _flush(self, result: torch.Tensor, slots: list[int], frames: int) -> None:
        rows = torch.tensor(slots, device=result.device)
        result[:, :frames].index_copy_(0, rows, self.state.codes[: len(slots), :frames])

    def _compact(self, b: int, alive: list[int], smaller: int) -> None:
        """Move the live slots to the front and fill the smaller bucket's spare slots with a finished
        copy of the first."""
        index = torch.tensor(alive + [alive[0]] * (smaller - len(alive)), device=self.state.token.device)
        for tensor in self.state.per_row():
            tensor[:smaller].copy_(tensor[:b].index_select(0, index))
        self.state.unfinished[len(alive):smaller] = False


def _rows(value, fill: torch.Tensor, like: torch.Tensor) -> torch.Tensor:
    """A per-request sampling value (scalar, or one per request) as a [b, 1] tensor for the slots."""
    values = value if isinstance(value, (list, tuple)) else [value]
    column = torch.tensor([float(v) for v in values], dtype=torch.float64, device=like.device)
    column = column.expand(int(fill.max()) + 1) if column.numel() == 1 else column
    return column.index_select(0, fill)[:, None].to(like.dtype)
