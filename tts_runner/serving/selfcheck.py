"""A start-up check of the graph engine's rows where no test can run them: under captured CUDA graphs.

The scheduler's graph rows (a row admitted into a free slot while others run, the live slots moved
down into a smaller bucket when a row ends, each row's own position in the static buffers) are
tested on the CPU, where the same frame runs eagerly; under CUDA graphs they have no test but this
one. A fault there would not raise: it would make noise that "succeeds". So when a model loads on
CUDA with captured graphs, two greedy rows run through the graph rows (the second admitted a few
frames after the first, the first ending first, so the second moves from slot 1 to slot 0 and the
bucket shrinks) and the same two, on the same schedule, through the fast loop, and their codes are
compared: equal in float32; in another dtype at least `MIN_AGREEMENT` of them (kernels picked for
other shapes may round differently). On a mismatch both are logged and the model runs the fast
loop from then on, as it does when the graph engine raises.

The prompts are the talker's own codec embeddings of fixed codes: the check is of the loop's
bookkeeping, which does not care what a prompt says, so it runs the same for every kind of model.
Its cost at start-up: docs/performance.md ("The graph rows' self-check").
"""

from __future__ import annotations

import logging
import time
from dataclasses import dataclass

import torch

from tts_runner.engines.core import Row, RowBatch
from tts_runner.engines.graph import GraphRows
from tts_runner.engines.running import RunningBatch
from tts_runner.engines.sampling import Sampling

log = logging.getLogger(__name__)

MIN_AGREEMENT = 0.9  # share of codes equal outside float32
FIRST_FRAMES = 16    # the first row's frames (it ends first)
SECOND_FRAMES = 28   # the second row's
ADMIT_AT = 4         # the frame step after which the second row joins


@dataclass(frozen=True)
class Verdict:
    passed: bool
    agreement: float   # share of codes equal, both rows
    needed: float
    seconds: float
    detail: str = ""


def check_rows(model, first: int = FIRST_FRAMES, second: int = SECOND_FRAMES, admit_at: int = ADMIT_AT) -> Verdict:
    """Run the check on `model` (its graph engine's buffers, captured or eager) and, on a mismatch,
    make it use the fast loop from now on. Call with nothing else running on the model."""
    graph = model.graph
    started = time.perf_counter()
    talker = model.tts.model.talker
    eos = talker.config.codec_eos_token_id
    embed = talker.get_input_embeddings()
    device = model.like.device

    def row(length: int, frames: int, tag: int) -> Row:
        codes = torch.arange(7 * tag, 7 * tag + length, device=device) % eos
        sampling = Sampling(do_sample=False, subtalker_dosample=False, repetition_penalty=1.05,
                            max_new_tokens=frames + 1).for_row(frames, frames, seed=tag)
        return Row(prompt=embed(codes), text=embed(codes[:3] + 1), sampling=sampling, tag=tag)

    pad = embed(torch.tensor([talker.config.codec_pad_id], device=device))[0]
    with model.lock, torch.inference_mode():
        rows = [row(11, first, 0), row(19, second, 1)]
        batch = GraphRows(graph, pad, None, model.like)
        try:
            made = drive(batch, rows, admit_at)
        finally:
            batch.close()
        reference = drive(RunningBatch(talker, pad, None, 2, model.like), rows, admit_at)
    equal = sum(int((a[: len(b)] == b[: len(a)]).sum()) for a, b in zip(made, reference, strict=True))
    total = sum(max(a.numel(), b.numel()) for a, b in zip(made, reference, strict=True))
    agreement = equal / max(1, total)
    needed = 1.0 if model.like.dtype == torch.float32 else MIN_AGREEMENT
    seconds = time.perf_counter() - started
    if agreement >= needed:
        log.info("Graph rows self-check passed for %s: 2 rows (one admitted after %d frames, one moved to a "
                 "smaller bucket), codes equal to the fast loop's %.1f %% (needed %.0f %%), %.2f s",
                 model.name, admit_at, 100 * agreement, 100 * needed, seconds)
        return Verdict(True, agreement, needed, seconds)
    detail = "; ".join(f"row {i}: graph {a[:6, 0].tolist()}... fast {b[:6, 0].tolist()}... ({a.shape[0]} / "
                       f"{b.shape[0]} frames)" for i, (a, b) in enumerate(zip(made, reference, strict=True)))
    log.error("Graph rows self-check FAILED for %s: codes equal to the fast loop's %.1f %% (needed %.0f %%): %s. "
              "The graph engine's rows are off; this model uses the fast loop from now on.",
              model.name, 100 * agreement, 100 * needed, detail)
    model.disable_graph("its rows failed the start-up self-check")
    return Verdict(False, agreement, needed, seconds, detail)


def drive(batch: RowBatch, rows: list[Row], admit_at: int) -> list[torch.Tensor]:
    """The check's schedule: the first row alone, the second admitted after `admit_at` frame steps,
    a host check after every step; each row's codes [F, 16], in order."""
    made: dict[int, torch.Tensor] = {}
    batch.admit(rows[:1])
    steps = 0
    while len(batch) or steps <= admit_at:
        if steps == admit_at:
            batch.admit(rows[1:])
        if len(batch):
            batch.step()
        steps += 1
        ended = batch.finished()
        made.update((batch.rows[i].tag, batch.codes(i)) for i in ended)
        batch.remove(ended)
    return [made[r.tag] for r in rows]
