"""The runs of a batched sweep: each on a thread of its own, so they share the model's rows through
its scheduler. Hydra launches the runs one after another; a run handed over here waits until the
launcher is done (the sweep's end: tts_runner.sweeps.report.ReportCallback) or `START_AT` runs are waiting,
then they all start at once, under a hold on their scheduler's admission (Scheduler.held) until each
has handed its chunks over (or ended first), so that their chunks meet in the same prefill and the
same batches from the first frame. A module of its own, so that `python -m tts_runner` (run as
__main__) and the callback see the same lists."""

from __future__ import annotations

import contextlib
import time
from collections.abc import Callable
from concurrent.futures import Future, ThreadPoolExecutor
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from tts_runner.serving.scheduler import Scheduler

START_AT = 64  # runs waiting to start: enough to fill the scheduler's rows
HAND_OVER_SECONDS = 30.0  # the longest a hold waits for the runs to hand their chunks over

_RUNS = ThreadPoolExecutor(max_workers=START_AT, thread_name_prefix="sweep-run")
_WAITING: list[tuple[Callable[..., bool], tuple, Scheduler | None]] = []
_STARTED: list[Future] = []


def submit(run: Callable[..., bool], *args, scheduler: Scheduler | None = None) -> None:
    """Hand over a run (`run(*args)` returns False when it failed, having said why) that will hand
    its chunks to `scheduler`."""
    _WAITING.append((run, args, scheduler))
    if len(_WAITING) >= START_AT:
        _start()


def _start() -> None:
    runs, _WAITING[:] = list(_WAITING), []
    schedulers = list({id(s): s for _, _, s in runs if s is not None}.values())
    with contextlib.ExitStack() as holds:
        for scheduler in schedulers:
            holds.enter_context(scheduler.held())
        futures = [_RUNS.submit(run, *args) for run, args, _ in runs]
        _STARTED.extend(futures)
        if schedulers:
            _handed_over(futures, schedulers)


def _handed_over(futures: list[Future], schedulers: list[Scheduler]) -> None:
    """Wait until every run has handed its chunks over (its job waits in a scheduler) or has ended."""
    deadline = time.monotonic() + HAND_OVER_SECONDS
    while time.monotonic() < deadline:
        if sum(s.jobs_waiting for s in schedulers) + sum(f.done() for f in futures) >= len(futures):
            return
        time.sleep(0.002)


def wait() -> int:
    """Start the runs still waiting, wait for every run; returns how many failed."""
    _start()
    failed = 0
    while _STARTED:
        failed += not _STARTED.pop(0).result()
    return failed
