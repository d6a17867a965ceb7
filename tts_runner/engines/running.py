"""A running batch that rows join and leave between frames: the fast loop, for the scheduler.

`fast.generate` runs the rows of one call from prefill to their ends. Here rows come and go: the
scheduler (tts_runner/scheduler.py) takes finished rows out at each host check and admits waiting
ones, which are prefilled as a group and merged into the running batch. Merging left-pads the
shorter side (its cache, its attention mask, and its rope offsets, so every row keeps its own
positions). Each row counts its own frames, so its floor, budget, trailing text and random draws
are its own, exactly as when it runs alone: the greedy codes of a row do not depend on its company
(tests/test_scheduler.py).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import torch
from transformers.cache_utils import DynamicCache

from tts_runner.engines.core import Predictor, frame_embedding, prefill
from tts_runner.engines.sampling import SETTINGS, RowSettings, candidates, next_code


@dataclass
class Row:
    """One chunk's part of a talker call: what qwen-tts's prompt builder made for it."""

    prompt: torch.Tensor  # [P, H] the talker's input embeddings of its prompt, unpadded
    text: torch.Tensor    # [T, H] the text added to frames 0..T-1 (after it: the pad embedding)
    settings: dict        # sampling.SETTINGS for this row, as scalars (max_frames and seed included)
    tag: Any = None       # the scheduler's handle


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


def until_end(made: torch.Tensor, eos: int) -> torch.Tensor:
    """A row's frames [F, 16] up to (not including) its first end code, as qwen-tts cuts them."""
    ends = (made[:, 0] == eos).nonzero()
    return made[: int(ends[0])] if ends.numel() else made


def prefill_rows(talker: torch.nn.Module, rows: list[Row], pad: torch.Tensor):
    """The talker's prefill of `rows`' prompts together, left-padded to the longest (core.prefill)."""
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


def rows_settings(rows: list[Row], device: torch.device) -> RowSettings:
    """The rows' sampling settings, one row each."""
    one = torch.zeros(1, dtype=torch.long, device=device)
    return RowSettings.stack([RowSettings.from_call(r.settings, one) for r in rows])


def candidates_of(rows: list[Row]) -> tuple[int | None, int | None]:
    """How many best codes the talker's and the code predictor's draws need (see sampling.draw)."""
    def column(name: str) -> list:
        return [row.settings.get(name, SETTINGS[name][1]) for row in rows]

    return (candidates({"top_k": column("top_k"), "do_sample": column("do_sample")}),
            candidates({"subtalker_top_k": column("subtalker_top_k"),
                        "subtalker_dosample": column("subtalker_dosample")}, "subtalker_top_k", "subtalker_dosample"))


class RunningBatch:
    """The rows being decoded by one talker, at most `capacity` of them."""

    def __init__(self, talker: torch.nn.Module, pad_embed: torch.Tensor, suppress: list[int] | None,
                 capacity: int, like: torch.Tensor):
        self.talker, self.capacity = talker, capacity
        self.eos = talker.config.codec_eos_token_id
        self.groups = talker.config.num_code_groups
        self.pad = pad_embed.reshape(1, 1, -1)
        self.codec_embedding = talker.get_input_embeddings()
        self.predictor = Predictor(talker.code_predictor, capacity, like)
        self.blocked = torch.zeros(talker.config.vocab_size, dtype=torch.bool, device=like.device)
        if suppress:
            self.blocked[torch.tensor(suppress, device=like.device)] = True
        self.rows: list[Row] = []
        self.state: dict[str, Any] = {}
        self._k = (1, 1)

    def __len__(self) -> int:
        return len(self.rows)

    @property
    def free(self) -> int:
        return self.capacity - len(self.rows)

    def close(self) -> None:
        """Nothing to give back: the batch's tensors go with it."""

    # ---- rows in ---------------------------------------------------------------------------------
    def admit(self, rows: list[Row]) -> None:
        """Prefill `rows` together (left-padded), choose their frame-0 codes and merge them in."""
        if len(rows) > self.free:
            raise ValueError(f"{len(rows)} rows do not fit the {self.free} free rows")
        n, device = len(rows), self.pad.device
        start = prefill_rows(self.talker, rows, self.pad)
        # one pad column at least: frames past every text
        text = rows_text(rows, self.pad, max(r.text.shape[0] for r in rows) + 1)
        settings = rows_settings(rows, device)
        new = {
            "keys": [layer.keys for layer in start.cache.layers],
            "values": [layer.values for layer in start.cache.layers],
            "mask": start.mask, "deltas": start.deltas, "hidden": start.hidden, "text": text,
            "frame": torch.zeros(n, 1, dtype=torch.long, device=device),
            "seen": torch.zeros(n, self.talker.config.vocab_size, dtype=torch.bool, device=device),
            "unfinished": torch.ones(n, dtype=torch.bool, device=device),
            "history": torch.full((n, int(settings["max_frames"].max()) + 1, self.groups), self.eos,
                                  dtype=torch.long, device=device),
            "settings": settings,
        }
        self._k = candidates_of(self.rows + rows)
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
            side["keys"] = [_left_pad(k, 2, n) for k in side["keys"]]
            side["values"] = [_left_pad(v, 2, n) for v in side["values"]]
            side["mask"] = _left_pad(side["mask"], 1, n)
            side["deltas"] = side["deltas"] - n  # position of the next frame = delta + cache length
        for name in ("text", "history"):
            width = max(old[name].shape[1], new[name].shape[1])
            fill = self.pad if name == "text" else self.eos
            for side in (old, new):
                side[name] = _right_pad(side[name], 1, width - side[name].shape[1], fill)
        merged = {name: torch.cat((old[name], new[name])) for name in old
                  if name not in ("keys", "values", "settings")}
        merged["keys"] = [torch.cat(pair) for pair in zip(old["keys"], new["keys"], strict=True)]
        merged["values"] = [torch.cat(pair) for pair in zip(old["values"], new["values"], strict=True)]
        merged["settings"] = RowSettings.stack([old["settings"], new["settings"]])
        self.state = merged

    # ---- a frame ---------------------------------------------------------------------------------
    def _choose(self, s: dict) -> torch.Tensor:
        """Each row's next first-codebook code, for its frame `s["frame"]`."""
        token = next_code(self.talker.codec_head(s["hidden"][:, -1]), s["settings"], s["frame"], s["seen"],
                          s["unfinished"], self.blocked, self.eos, self._k[0])
        s["seen"].scatter_(1, token[:, None], True)
        s["unfinished"] &= token != self.eos
        return token

    def step(self) -> None:
        """One frame for every row: codes 1..15 of its last code, the talker's step, its next code."""
        s = self.state
        first = s["token"][:, None]
        rest = self.predictor(s["hidden"], self.codec_embedding(first), s["settings"], s["frame"], self._k[1])
        codes = torch.cat((first, rest), dim=1)
        s["history"].scatter_(1, s["frame"].clamp(max=s["history"].shape[1] - 1)[:, :, None].expand(-1, 1, self.groups),
                              codes[:, None])
        at = s["frame"].clamp(max=s["text"].shape[1] - 1)  # past the row's text: a pad column
        text = s["text"].gather(1, at[:, :, None].expand(-1, 1, s["text"].shape[2]))
        x = frame_embedding(self.codec_embedding, self.predictor.embeddings, first, rest) + text
        position = (s["deltas"] + s["mask"].shape[1]).view(1, -1, 1).expand(3, -1, 1)
        s["mask"] = torch.cat((s["mask"], s["mask"].new_ones(s["mask"].shape[0], 1)), dim=1)
        cache = DynamicCache()
        for i, (k, v) in enumerate(zip(s["keys"], s["values"], strict=True)):
            cache.update(k, v, i)
        out = self.talker.model(inputs_embeds=x, attention_mask=s["mask"], position_ids=position,
                                past_key_values=cache, use_cache=True)
        s["keys"] = [layer.keys for layer in cache.layers]
        s["values"] = [layer.values for layer in cache.layers]
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
            if name in ("keys", "values"):
                s[name] = [t.index_select(0, index) for t in value]
            elif name == "settings":
                s[name] = value.select(index)
            else:
                s[name] = value.index_select(0, index)
        lead = int((s["mask"].cumsum(dim=1) == 0).sum(dim=1).min())  # padding every row has on the left
        if lead:
            s["keys"] = [k[:, :, lead:] for k in s["keys"]]
            s["values"] = [v[:, :, lead:] for v in s["values"]]
            s["mask"] = s["mask"][:, lead:]
            s["deltas"] = s["deltas"] + lead
        self._k = candidates_of(self.rows)
        return taken
