"""The `fast` engine's loop: a running batch that rows join and leave between frames.

qwen-tts generates each frame through Hugging Face `generate()` twice over: once per frame for the
talker and, inside every talker step, a whole second `generate()` for the code predictor's 15
sub-steps; most of a step is that machinery, not arithmetic. This loop runs the same modules and
weights without it: one prefill of the rows' prompts (left-padded), then one forward per frame with
a growing key/value cache (the library's own attention); the code predictor and every choice of a
code are the engines' core's (`core.Predictor`, `draw`).

Rows come and go: whoever runs the batch (the scheduler, or one call's `loop.run_to_end`) takes
finished rows out at each host check and admits waiting ones, which are prefilled as a group and
merged in. Merging left-pads the shorter side (its cache, its attention mask, and its rope offsets,
so every row keeps its own positions); taking rows out drops them from the cache, so a batch stops
paying for chunks that are done while its longest one finishes. Each row counts its own frames, so
its floor, budget, trailing text and random draws are its own, exactly as when it runs alone: the
greedy codes of a row do not depend on its company, and equal the stock library's in float32
(tests/unit/engines/test_fast.py, tests/unit/serving/test_scheduler.py).
"""

from __future__ import annotations

from typing import Any

import torch

from tts_runner.engines.core import (
    Predictor,
    Row,
    RowBatch,
    blocked_codes,
    frame_embedding,
    prefill_rows,
    rows_sampling,
    rows_text,
    until_end,
)
from tts_runner.engines.draw import SamplingTensors, candidates, next_code


def _left_pad(t: torch.Tensor, dim: int, n: int) -> torch.Tensor:
    if n == 0:
        return t
    shape = list(t.shape)
    shape[dim] = n
    return torch.cat((t.new_zeros(shape), t), dim=dim)


def _right_pad(t: torch.Tensor, dim: int, n: int, fill) -> torch.Tensor:
    if n == 0:
        return t
    shape = list(t.shape)
    shape[dim] = n
    return torch.cat((t, torch.as_tensor(fill, dtype=t.dtype, device=t.device).expand(shape)), dim=dim)


class RunningBatch(RowBatch):
    """The rows one talker is running, at most `capacity` of them; any row fits (the cache grows)."""

    def __init__(self, talker: torch.nn.Module, pad_embed: torch.Tensor, suppress: list[int] | None,
                 capacity: int, like: torch.Tensor):
        super().__init__(capacity)
        self.talker = talker
        self.eos = talker.config.codec_eos_token_id
        self.groups = talker.config.num_code_groups
        self.pad = pad_embed.reshape(1, 1, -1)
        self.codec_embedding = talker.get_input_embeddings()
        self.predictor = Predictor(talker.code_predictor, capacity, like)
        self.blocked = blocked_codes(talker.config.vocab_size, suppress, like.device)
        self.state: dict[str, Any] = {}
        self._k = (1, 1)

    # ---- rows in ---------------------------------------------------------------------------------
    def admit(self, rows: list[Row]) -> None:
        """Prefill `rows` together (left-padded), choose their frame-0 codes and merge them in."""
        if len(rows) > self.free:
            raise ValueError(f"{len(rows)} rows do not fit the {self.free} free rows")
        n, device = len(rows), self.pad.device
        start = prefill_rows(self.talker, rows, self.pad)
        # one pad column at least: frames past every text
        text = rows_text(rows, self.pad, max(r.text.shape[0] for r in rows) + 1)
        sampling = rows_sampling(rows, device)
        new = {
            "cache": start.cache,  # kept across frames: each step appends its position once
            "mask": start.mask, "deltas": start.deltas, "hidden": start.hidden, "text": text,
            "frame": torch.zeros(n, 1, dtype=torch.long, device=device),
            "seen": torch.zeros(n, self.talker.config.vocab_size, dtype=torch.bool, device=device),
            "unfinished": torch.ones(n, dtype=torch.bool, device=device),
            "history": torch.full((n, max(r.sampling.max_frames for r in rows) + 1, self.groups), self.eos,
                                  dtype=torch.long, device=device),
            "sampling": sampling,
        }
        self._k = candidates([r.sampling for r in self.rows + rows])
        new["token"] = self._choose(new)
        self._merge(new)
        self.rows.extend(rows)

    def _merge(self, new: dict) -> None:
        old = self.state
        if not old:
            self.state = new
            return
        grow = new["mask"].shape[1] - old["mask"].shape[1]  # > 0: the old rows are padded, < 0: the new ones
        for side, n in ((old, max(grow, 0)), (new, max(-grow, 0))):
            for layer in side["cache"].layers:
                layer.keys, layer.values = _left_pad(layer.keys, 2, n), _left_pad(layer.values, 2, n)
            side["mask"] = _left_pad(side["mask"], 1, n)
            side["deltas"] = side["deltas"] - n  # position of the next frame = delta + cache length
        for name in ("text", "history"):
            width = max(old[name].shape[1], new[name].shape[1])
            fill = self.pad if name == "text" else self.eos
            for side in (old, new):
                side[name] = _right_pad(side[name], 1, width - side[name].shape[1], fill)
        merged = {name: torch.cat((old[name], new[name])) for name in old if name not in ("cache", "sampling")}
        for mine, theirs in zip(old["cache"].layers, new["cache"].layers, strict=True):
            mine.keys, mine.values = torch.cat((mine.keys, theirs.keys)), torch.cat((mine.values, theirs.values))
        merged["cache"] = old["cache"]
        merged["sampling"] = SamplingTensors.stack([old["sampling"], new["sampling"]])
        self.state = merged

    # ---- a frame ---------------------------------------------------------------------------------
    def _choose(self, s: dict) -> torch.Tensor:
        """Each row's next first-codebook code, for its frame `s["frame"]`."""
        token = next_code(self.talker.codec_head(s["hidden"][:, -1]), s["sampling"], s["frame"], s["seen"],
                          s["unfinished"], self.blocked, self.eos, self._k[0])
        s["seen"].scatter_(1, token[:, None], True)
        s["unfinished"] &= token != self.eos
        return token

    def step(self) -> None:
        """One frame for every row: codes 1..15 of its last code, the talker's step, its next code."""
        s = self.state
        first = s["token"][:, None]
        rest = self.predictor(s["hidden"], self.codec_embedding(first), s["sampling"], s["frame"], self._k[1])
        codes = torch.cat((first, rest), dim=1)
        s["history"].scatter_(1, s["frame"].clamp(max=s["history"].shape[1] - 1)[:, :, None].expand(-1, 1, self.groups),
                              codes[:, None])
        at = s["frame"].clamp(max=s["text"].shape[1] - 1)  # past the row's text: a pad column
        text = s["text"].gather(1, at[:, :, None].expand(-1, 1, s["text"].shape[2]))
        x = frame_embedding(self.codec_embedding, self.predictor.embeddings, first, rest) + text
        position = (s["deltas"] + s["mask"].shape[1]).view(1, -1, 1).expand(3, -1, 1)
        s["mask"] = torch.cat((s["mask"], s["mask"].new_ones(s["mask"].shape[0], 1)), dim=1)
        out = self.talker.model(inputs_embeds=x, attention_mask=s["mask"], position_ids=position,
                                past_key_values=s["cache"], use_cache=True)
        s["hidden"] = out.last_hidden_state
        s["frame"] = s["frame"] + 1
        s["token"] = self._choose(s)

    # ---- rows out --------------------------------------------------------------------------------
    def finished(self) -> list[int]:
        """Indices of the rows that have ended (a host sync)."""
        if not self.rows:
            return []
        return (~self.state["unfinished"]).nonzero().view(-1).tolist()

    def codes(self, index: int) -> torch.Tensor:
        """Row `index`'s frames so far, [F, 16] on the CPU, up to its end code (as qwen-tts cuts)."""
        s = self.state
        made = s["history"][index, : int(s["frame"][index])].to("cpu", copy=True)  # never a view of the buffers
        return until_end(made, self.eos)

    def remove(self, indices: list[int]) -> list[Row]:
        """Take rows out (ended, or cancelled); returns them. Cache columns no row needs any more go too."""
        if not indices:
            return []
        gone = set(indices)
        keep = [i for i in range(len(self.rows)) if i not in gone]
        taken = [self.rows[i] for i in indices]
        self.rows = [self.rows[i] for i in keep]
        if not keep:
            self.state = {}
            self._k = (1, 1)
            return taken
        s = self.state
        index = torch.tensor(keep, device=s["mask"].device)
        for name, value in list(s.items()):
            if name == "cache":
                for layer in value.layers:
                    layer.keys, layer.values = layer.keys.index_select(0, index), layer.values.index_select(0, index)
            elif name == "sampling":
                s[name] = value.select(index)
            else:
                s[name] = value.index_select(0, index)
        lead = int((s["mask"].cumsum(dim=1) == 0).sum(dim=1).min())  # padding every row has on the left
        if lead:
            for layer in s["cache"].layers:
                layer.keys, layer.values = layer.keys[:, :, lead:], layer.values[:, :, lead:]
            s["mask"] = s["mask"][:, lead:]
            s["deltas"] = s["deltas"] + lead
        self._k = candidates([r.sampling for r in self.rows])
        return taken
