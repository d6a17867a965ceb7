"""The `graph` engine's loop: one fixed-shape frame over static buffers, captured as a CUDA graph.

The fast loop removes Hugging Face's machinery, but still launches every kernel of a frame from
Python: on a GPU the step is launch-bound. Here a frame is a fixed sequence of kernels over fixed
buffers, so on CUDA it is captured once per batch bucket and replayed each frame:

- every tensor a frame touches lives in `State`, allocated once for the largest bucket and the
  configured length; bucket b uses the first b slots (views), so all buckets share memory;
- the talker's cache is a `StaticCache`: a frame writes its keys and values at each row's own
  position, held in a device tensor, and attends (through the library's kernel, SDPA) over the used
  prefix only, under a mask of valid positions: eagerly over exactly the positions in use, and on
  CUDA over the smallest length bucket that holds them (one graph per batch bucket x length bucket,
  so a 150-position chunk never reads 1280);
- each row's frame index, cache position and sampling (set when it joins, never frozen at capture)
  are device tensors; codes are chosen by `draw`, as in the fast loop;
- `GraphRows` runs the buffers as a batch that rows join (a prefill copied into free slots) and
  leave (by ending; when the rows left fit a smaller bucket, the live slots move to the front and
  that bucket's graph runs from then on).

On the CPU (and when nothing is captured) the same frame runs eagerly: the exactness tests run the
code a GPU captures. The prompt is prefilled by the talker's own forward and copied in.
"""

from __future__ import annotations

import dataclasses
import time
from dataclasses import dataclass

import torch

from tts_runner.engines.cache import StaticCache
from tts_runner.engines.core import (
    Kernels,
    Predictor,
    Rope,
    Row,
    RowBatch,
    blocked_codes,
    frame_embedding,
    prefill_rows,
    rms_norm,
    rows_sampling,
    rows_text,
    until_end,
)
from tts_runner.engines.draw import SamplingTensors, candidates, next_code


@dataclass
class State:
    """Every per-row buffer a frame reads or writes: rows are slots, bucket b uses slots [:b]."""

    cache: StaticCache         # the talker's keys and values
    valid: torch.Tensor        # [R, L] bool: cache positions a row may attend to
    deltas: torch.Tensor       # [R] rope position offset of each row (left padding)
    hidden: torch.Tensor       # [R, 1, H] the talker's last hidden state
    token: torch.Tensor        # [R] the last first-codebook code
    unfinished: torch.Tensor   # [R] bool
    seen: torch.Tensor         # [R, V] bool: codes made so far (repetition penalty)
    text: torch.Tensor         # [R, L, H] the text added to frame t at index t - 1
    codes: torch.Tensor        # [R, L, G] frame t's 16 codes at index t - 1
    frame: torch.Tensor        # [R, 1] the frame index t each row is at
    position: torch.Tensor     # [R, 1] the cache position each row's frame t writes
    sampling: SamplingTensors  # per-row sampling

    def map(self, fn) -> State:
        """A State of fn(tensor) for every per-row tensor (the cache's and settings' included)."""
        out = {}
        for f in dataclasses.fields(self):
            value = getattr(self, f.name)
            if isinstance(value, StaticCache):
                value = StaticCache([fn(t) for t in value.keys], [fn(t) for t in value.values])
            elif isinstance(value, SamplingTensors):
                value = SamplingTensors({k: fn(t) for k, t in value.tensors.items()})
            else:
                value = fn(value)
            out[f.name] = value
        return State(**out)

    def tensors(self) -> list[torch.Tensor]:
        found: list[torch.Tensor] = []
        self.map(lambda t: found.append(t) or t)
        return found


class GraphEngine:
    """Static-shape frames of one talker, with one CUDA graph per batch bucket when captured."""

    def __init__(self, talker: torch.nn.Module, buckets: tuple[int, ...] = (1, 2, 4, 8, 16, 32, 64, 128),
                 max_len: int = 1280, candidates: int | None = 64, compiled: bool = False):
        self.talker = talker
        self.kernels = Kernels.compiled() if compiled else Kernels()
        self.buckets = tuple(sorted({int(b) for b in buckets}))
        self.max_len = int(max_len)
        # The draws' widths, each with graphs of its own: over the `candidates` best codes (every row's
        # top_k within it: the same draws for less work), and over every code (a row with top-k off or larger)
        self.widths: tuple[int | None, ...] = (int(candidates), None) if candidates else (None,)
        config = talker.config
        self.eos = config.codec_eos_token_id
        self.groups = config.num_code_groups
        self.model = talker.model
        self.codec_embedding = talker.get_input_embeddings()
        pmodel = talker.code_predictor.model
        if any(layer.attention_type != "full_attention" for layer in pmodel.layers[: pmodel.config.num_hidden_layers]):
            raise NotImplementedError("the graph engine supports full-attention code predictors only")
        if getattr(config, "sliding_window", None) and config.sliding_window < self.max_len:
            raise NotImplementedError("the graph engine does not support a sliding-window talker")
        self.state: State | None = None
        self.predictor: Predictor | None = None
        self.lengths = length_buckets(self.max_len)
        self.graphs: dict[tuple[int, int, int | None], torch.cuda.CUDAGraph] = {}  # (batch, length, width) -> graph
        self.capture_seconds = 0.0
        self.busy = False  # a GraphRows holds the buffers: no other may take them

    # ---- buffers -------------------------------------------------------------------------------
    def allocate(self, like: torch.Tensor) -> None:
        rows, length, config = self.buckets[-1], self.max_len, self.talker.config
        device = like.device
        self.state = State(
            cache=StaticCache.allocate(config.num_hidden_layers, rows, length, config, like),
            valid=torch.zeros(rows, length, dtype=torch.bool, device=device),
            deltas=torch.zeros(rows, dtype=torch.long, device=device),
            hidden=like.new_zeros(rows, 1, config.hidden_size),
            token=torch.full((rows,), self.eos, dtype=torch.long, device=device),
            unfinished=torch.zeros(rows, dtype=torch.bool, device=device),
            seen=torch.zeros(rows, config.vocab_size, dtype=torch.bool, device=device),
            text=like.new_zeros(rows, length, config.hidden_size),
            codes=torch.full((rows, length, self.groups), self.eos, dtype=torch.long, device=device),
            frame=torch.ones(rows, 1, dtype=torch.long, device=device),
            position=torch.zeros(rows, 1, dtype=torch.long, device=device),
            sampling=SamplingTensors.allocate(rows, device),
        )
        self.predictor = Predictor(self.talker.code_predictor, rows, like, self.kernels)
        self.blocked = torch.zeros(config.vocab_size, dtype=torch.bool, device=device)
        self.lowest = torch.finfo(like.dtype).min
        self.views = {b: self.state.map(lambda t, b=b: t[:b]) for b in self.buckets}

    @property
    def buffer_bytes(self) -> int:
        """Bytes held by the static buffers (0 before they are allocated)."""
        if self.state is None:
            return 0
        return sum(t.numel() * t.element_size() for t in self.state.tensors()) + self.predictor.nbytes

    def bucket(self, n: int) -> int:
        return next(b for b in self.buckets if b >= n)

    # ---- one frame -----------------------------------------------------------------------------
    def width(self, need: tuple[int | None, int | None]) -> int | None:
        """The draws' width for rows whose draws need `need` (draw.candidates: the talker's and the
        code predictor's): the narrow width when both fit in it, else every code."""
        narrow = self.widths[0]
        fits = narrow is not None and all(k is not None and k <= narrow for k in need)
        return narrow if fits else None

    def _choose(self, s: State, hidden: torch.Tensor, width: int | None) -> None:
        """The next first-codebook code of every row from the talker's hidden state."""
        token = self.kernels.next_code(self.talker.codec_head(hidden[:, -1]), s.sampling, s.frame, s.seen,
                                       s.unfinished, self.blocked, self.eos, width)
        s.token.copy_(token)
        s.seen.scatter_(1, token[:, None], True)
        s.unfinished.logical_and_(token != self.eos)

    def _rope(self, x: torch.Tensor, positions: torch.Tensor):
        """The rotary embedding of a frame at each row's `positions` ([B, 1]), built once for every
        layer. The talker's rope is multimodal (three position streams, each rotating its own
        section of the channels), but a frame of speech has the same position in all three, so its
        combined table is any one stream's: the plain rotation (core.Rope) with that table computes
        what its multimodal one does (tests/unit/engines/test_graph.py holds them equal)."""
        cos, sin = self.model.rotary_emb(x, positions.view(1, -1, 1))
        return Rope(cos[0], sin[0])

    def _frame(self, s: State, length: int, width: int | None) -> None:
        """Frame t: codes 1..15 for the last code, the frame's talker step over the first `length`
        cache positions (every row's position must be below it), the next code; every draw over the
        `width` best codes (None: all)."""
        first = s.token[:, None]
        last = s.codes.shape[1] - 1  # rows past the buffers (ended, or spare) write in the last place
        rest = self.predictor(s.hidden, self.codec_embedding(first), s.sampling, s.frame - 1, width)
        at = (s.frame - 1).clamp(max=last)
        s.codes.scatter_(1, at[:, :, None].expand(-1, 1, self.groups), torch.cat((first, rest), dim=1)[:, None])
        x = frame_embedding(self.codec_embedding, self.predictor.embeddings, first, rest)
        x = x + s.text.gather(1, at[:, :, None].expand(-1, 1, s.text.shape[2]))
        position = s.position.clamp(max=last)
        s.valid.scatter_(1, position, True)
        valid = s.valid[:, :length]
        mask = torch.zeros_like(valid, dtype=x.dtype).masked_fill(~valid, self.lowest)[:, None, None]
        rope = self._rope(x, s.deltas[:, None] + position)
        for i, layer in enumerate(self.model.layers):
            x = self.kernels.layer_step(layer, x, rope, s.cache.layer(i), position, mask, length)
        hidden = rms_norm(self.model.norm, x)
        s.hidden.copy_(hidden)
        s.position.add_(1)
        self._choose(s, hidden, width)
        s.frame.add_(1)

    # ---- capture -------------------------------------------------------------------------------
    def capture(self, like: torch.Tensor) -> float:
        """Allocate the buffers and capture one CUDA graph per batch bucket x length bucket x draw
        width; returns the seconds it took."""
        started = time.perf_counter()
        if self.state is None:
            self.allocate(like)
        pool = torch.cuda.graph_pool_handle()
        for b in self.buckets:
            view = self.views[b]
            for length in self.lengths:
                for width in self.widths:
                    stream = torch.cuda.Stream()
                    stream.wait_stream(torch.cuda.current_stream())
                    with torch.cuda.stream(stream):
                        for _ in range(2):  # warm-up runs: allocator and kernel selection settle first
                            self._reset_counters()
                            self._frame(view, length, width)
                    torch.cuda.current_stream().wait_stream(stream)
                    self._reset_counters()
                    graph = torch.cuda.CUDAGraph()
                    with torch.cuda.graph(graph, pool=pool):
                        self._frame(view, length, width)
                    self.graphs[(b, length, width)] = graph
        torch.cuda.synchronize()
        self.capture_seconds = time.perf_counter() - started
        return self.capture_seconds

    def run_scratch(self, bucket: int, frames: int = 1, eager: bool = False) -> None:
        """Run `frames` frames of `bucket` from position 0 over whatever the buffers hold (for timing
        and profiling: nothing reads the result, and the next call reloads every buffer). `eager`
        runs the frame's operations one by one instead of replaying the captured graph."""
        self._reset_counters()
        for frame in range(frames):
            length = min(self.max_len, frame + 1)
            if eager:
                self._frame(self.views[bucket], length, self.widths[0])
            else:
                self.run(bucket, length, self.widths[0])

    def _reset_counters(self) -> None:
        self.state.frame.fill_(1)
        self.state.position.zero_()

    def run(self, b: int, length: int, width: int | None) -> None:
        """One frame of bucket `b` attending over `length` positions, drawing over the `width` best
        codes: the captured graph of the smallest length bucket that holds them replayed, or the
        frame run eagerly over exactly them."""
        key = (b, next(n for n in self.lengths if n >= length), width)
        graph = self.graphs.get(key) if self.graphs else None
        if graph is not None:
            graph.replay()
        else:
            self._frame(self.views[b], length, width)

    def compact(self, b: int, alive: list[int], smaller: int) -> None:
        """Move the live slots to the front and fill the smaller bucket's spare slots with a finished
        copy of the first."""
        index = torch.tensor(alive + [alive[0]] * (smaller - len(alive)), device=self.state.token.device)
        for tensor in self.views[b].tensors():
            tensor[:smaller].copy_(tensor.index_select(0, index))
        self.state.unfinished[len(alive):smaller] = False


def length_buckets(max_len: int, smallest: int = 128) -> tuple[int, ...]:
    """Attention lengths with a captured graph each: powers of two from `smallest`, then max_len."""
    lengths, n = [], smallest
    while n < max_len:
        lengths.append(n)
        n *= 2
    return (*lengths, max_len)


class GraphRows(RowBatch):
    """The graph engine's buffers as a running batch (the interface of running.RunningBatch): every
    row owns a slot, with its own frame and cache position, so rows join between frames by a prefill
    copied into free slots, and leave by ending. A frame runs the smallest bucket holding the highest
    slot in use (its captured graph on CUDA); when the rows left fit a smaller bucket, the live
    slots move to the front. One GraphRows holds the buffers at a time (`GraphEngine.busy`)."""

    def __init__(self, engine: GraphEngine, pad_embed: torch.Tensor, suppress: list[int] | None, like: torch.Tensor):
        super().__init__(engine.buckets[-1])
        self.engine = engine
        if engine.state is None:
            engine.allocate(like)
        self.pad = pad_embed.reshape(1, 1, -1)
        self.slots: list[int] = []  # the slot each row holds
        self.positions: list[int] = []  # the cache position each row writes next (the host's copy)
        self.need: tuple[int | None, int | None] = (1, 1)  # the rows' draw widths (draw.candidates)
        engine.state.unfinished.zero_()
        engine.blocked.copy_(blocked_codes(engine.blocked.shape[0], suppress, engine.blocked.device))
        engine.busy = True

    def fits(self, row: Row) -> bool:
        """A row fits when its prompt and frame budget fit the buffers (runtime.graph.max_len)."""
        return row.prompt.shape[0] + row.sampling.max_frames + 2 <= self.engine.max_len

    def admit(self, rows: list[Row]) -> None:
        """Prefill `rows` together and load them into the lowest free slots."""
        e, s = self.engine, self.engine.state
        for row in rows:
            if not self.fits(row):
                raise ValueError(f"a chunk of {row.prompt.shape[0]} prompt positions and up to {row.sampling.max_frames} "
                                 f"frames does not fit the graph buffers ({e.max_len} positions: runtime.graph.max_len)")
        taken = set(self.slots)
        slots = [i for i in range(self.capacity) if i not in taken][: len(rows)]
        index = torch.tensor(slots, device=s.token.device)
        n = len(rows)
        start = prefill_rows(e.talker, rows, self.pad)
        width = start.mask.shape[1]
        length = s.valid.shape[1]
        s.cache.load_rows(index, [layer.keys for layer in start.cache.layers],
                          [layer.values for layer in start.cache.layers])
        valid = torch.zeros(n, length, dtype=torch.bool, device=s.valid.device)
        valid[:, :width] = start.mask.bool()
        text = rows_text(rows, self.pad, length)
        sampling = rows_sampling(rows, index.device)
        frame = torch.zeros(n, 1, dtype=torch.long, device=index.device)
        seen = torch.zeros(n, s.seen.shape[1], dtype=torch.bool, device=index.device)
        unfinished = torch.ones(n, dtype=torch.bool, device=index.device)
        self.need = candidates([r.sampling for r in self.rows + rows])
        token = next_code(e.talker.codec_head(start.hidden[:, -1]), sampling, frame, seen, unfinished, e.blocked, e.eos,
                          self.need[0])
        seen.scatter_(1, token[:, None], True)
        fresh = {"valid": valid, "deltas": start.deltas.view(-1), "hidden": start.hidden, "token": token,
                 "unfinished": unfinished & (token != e.eos), "seen": seen, "text": text,
                 "codes": torch.full((n, length, e.groups), e.eos, dtype=torch.long, device=index.device),
                 "frame": frame + 1, "position": torch.full((n, 1), width, dtype=torch.long, device=index.device)}
        for name, value in fresh.items():
            getattr(s, name).index_copy_(0, index, value.to(getattr(s, name).dtype))
        for name, value in sampling.tensors.items():
            s.sampling.tensors[name].index_copy_(0, index, value)
        self.rows.extend(rows)
        self.slots.extend(slots)
        self.positions.extend([width] * n)

    def step(self) -> None:
        """One frame for every row (the smallest bucket that holds the highest slot in use)."""
        e = self.engine
        last = e.max_len - 1  # positions past the buffers write in the last place (the frame clamps them)
        e.run(e.bucket(max(self.slots) + 1), min(max(self.positions), last) + 1, e.width(self.need))
        self.positions = [p + 1 for p in self.positions]

    def finished(self) -> list[int]:
        """Indices of the rows that have ended (a host sync)."""
        if not self.rows:
            return []
        ended = (~self.engine.state.unfinished).nonzero().view(-1).tolist()
        where = {slot: i for i, slot in enumerate(self.slots)}
        return sorted(where[slot] for slot in ended if slot in where)

    def codes(self, index: int) -> torch.Tensor:
        """Row `index`'s frames so far, [F, 16] on the CPU, up to its end code (as qwen-tts cuts)."""
        s, slot = self.engine.state, self.slots[index]
        made = s.codes[slot, : int(s.frame[slot]) - 1].to("cpu", copy=True)  # never a view: slots are reused
        return until_end(made, self.engine.eos)

    def remove(self, indices: list[int]) -> list[Row]:
        """Free the rows' slots (ended, or cancelled); move the rest to the front when they fit a smaller bucket."""
        if not indices:
            return []
        e, s = self.engine, self.engine.state
        gone = set(indices)
        taken = [self.rows[i] for i in indices]
        freed = torch.tensor([self.slots[i] for i in indices], device=s.unfinished.device)
        s.unfinished.index_fill_(0, freed, False)
        self.rows = [r for i, r in enumerate(self.rows) if i not in gone]
        self.slots = [slot for i, slot in enumerate(self.slots) if i not in gone]
        self.positions = [p for i, p in enumerate(self.positions) if i not in gone]
        self.need = candidates([r.sampling for r in self.rows])
        if self.slots:
            now, smaller = e.bucket(max(self.slots) + 1), e.bucket(len(self.slots))
            if smaller < now:
                e.compact(now, self.slots, smaller)
                self.slots = list(range(len(self.slots)))
        return taken

    def close(self) -> None:
        """Give the buffers back (another GraphRows may take them)."""
        self.engine.busy = False
