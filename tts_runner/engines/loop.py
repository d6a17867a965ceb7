"""One talker call's rows through the loops: admit every row, step until all end.

Where qwen-tts calls `talker.generate` (a job's batch on the `fast` or `graph` engine, a benchmark,
a test), its arguments become rows (`call_rows`), the rows go into the model's running batches
(`place`: the graph engine's slots when they fit, else the fast loop beside them, as the scheduler
places them too), and the batches step until every row has ended (`run_to_end`); the codes go back
to the library in the shape it reads (`talker_result`). The scheduler drives the same batches with
rows that come and go; there is no third loop.
"""

from __future__ import annotations

import logging
from collections.abc import Callable

import torch

from tts_runner.engines.core import Row, RowBatch, TalkerResult
from tts_runner.engines.sampling import Sampling

log = logging.getLogger(__name__)


def call_prompts(kwargs: dict) -> list[tuple[torch.Tensor, torch.Tensor]]:
    """Each row's prompt embeddings [P, H] (its left padding taken off) and trailing text [T, H], from
    the arguments qwen-tts hands `talker.generate`."""
    embeds, mask, trailing = kwargs["inputs_embeds"], kwargs["attention_mask"], kwargs["trailing_text_hidden"]
    pads = (mask == 0).sum(dim=1).tolist()
    return [(embeds[i, pads[i]:], trailing[i]) for i in range(embeds.shape[0])]


def call_sampling(kwargs: dict, floors: list[int], budgets: list[int | None], seeds: list[int]) -> list[Sampling]:
    """Each row's Sampling from a `talker.generate` call's arguments (one value for the call, or a
    list with one per row) and its rows' floors, budgets and seeds."""
    def at(name: str, i: int):
        value = kwargs[name]
        return value[i] if isinstance(value, (list, tuple)) else value

    cap = int(kwargs["max_new_tokens"])
    return [Sampling(do_sample=bool(at("do_sample", i)), temperature=float(at("temperature", i)),
                     top_k=int(at("top_k", i)), top_p=float(at("top_p", i)),
                     repetition_penalty=float(at("repetition_penalty", i)),
                     subtalker_dosample=bool(at("subtalker_dosample", i)),
                     subtalker_temperature=float(at("subtalker_temperature", i)),
                     subtalker_top_k=int(at("subtalker_top_k", i)), subtalker_top_p=float(at("subtalker_top_p", i)),
                     max_new_tokens=cap).for_row(floors[i], budgets[i], seeds[i]) for i in range(len(floors))]


def call_rows(kwargs: dict, sampling: list[Sampling]) -> list[Row]:
    """The call's rows, tagged by their place in the call."""
    return [Row(prompt, text, row, tag=i) for i, ((prompt, text), row) in enumerate(zip(call_prompts(kwargs), sampling,
                                                                                          strict=True))]


def place(batches: list[RowBatch], rows: list[Row]) -> list[Row]:
    """Admit `rows` into the first batch that has room and holds them (graph slots take a row whose
    prompt and frame budget fit the buffers), the rest into the last (the fast loop, which takes
    any); returns the rows the first batch did not take when there are two."""
    first = batches[0]
    taken: list[Row] = []
    rest: list[Row] = []
    for row in rows:
        (taken if len(taken) < first.free and first.fits(row) else rest).append(row)
    if len(batches) == 1:
        taken, rest = taken + rest, []
    if taken:
        first.admit(taken)
    if rest:
        batches[-1].admit(rest)
    return rest


def step(batches: list[RowBatch], frames: int) -> None:
    """`frames` frames for every row of every batch (the frames between two host checks)."""
    for _ in range(frames):
        for batch in batches:
            if len(batch):
                batch.step()


def run_to_end(batches: list[RowBatch], rows: list[Row], sync_every: int,
               progress: Callable[[int, int], None] | None = None) -> tuple[list[torch.Tensor], int]:
    """Admit every row, step `sync_every` frames between host checks until all have ended: each row's
    codes ([F, 16] on the CPU, in the order of `rows`) and the talker steps run (the prefill's
    included). `progress` hears (steps so far, rows still going) at every check."""
    beside = place(batches, rows)
    if beside and len(batches) > 1:
        log.info("%d of this call's %d rows exceed the graph buffers (their prompt and frames, or the rows "
                 "beyond its largest bucket); they use the fast loop beside them", len(beside), len(rows))
    made: dict[int, torch.Tensor] = {}
    steps = 1
    while any(len(batch) for batch in batches):
        step(batches, sync_every)
        steps += sync_every
        for batch in batches:
            ended = batch.finished()
            made.update((batch.rows[i].tag, batch.codes(i)) for i in ended)
            batch.remove(ended)
        if progress:
            progress(steps, sum(len(batch) for batch in batches))
    return [made[row.tag] for row in rows], steps


def talker_result(codes: list[torch.Tensor], steps: int, eos: int, like: torch.Tensor) -> TalkerResult:
    """What qwen-tts reads from `talker.generate`: one entry per step run, each frame's codes for
    every row (a row that has ended gives end codes, where qwen-tts cuts it)."""
    frames = torch.full((len(codes), steps - 1, codes[0].shape[1] if codes else 16), eos, dtype=torch.long)
    for i, made in enumerate(codes):
        frames[i, : made.shape[0]] = made
    frames = frames.to(like.device)
    empty = like.new_zeros(len(codes), 1, 1)  # callers of talker.generate ignore the hidden states
    return TalkerResult(hidden_states=[((empty,), None)] + [((empty,), frames[:, t]) for t in range(steps - 1)])
