"""The runs of a batched sweep: each on a thread of its own, so they share the model's rows through
its scheduler. Hydra launches the runs one after another; a run handed over here waits until the
launcher is done (the sweep's end: tts_runner.report.ReportCallback) or `START_AT` runs are waiting,
then they all start at once, so their chunks meet in the same batches instead of trickling in. A
module of its own, so that `python -m tts_runner` (run as __main__) and the callback see the same lists."""

from __future__ import annotations

from collections.abc import Callable
from concurrent.futures import Future, ThreadPoolExecutor

START_AT = 64  # runs waiting to start: enough to fill the scheduler's rows

_RUNS = ThreadPoolExecutor(max_workers=START_AT, thread_name_prefix="sweep-run")
_WAITING: list[tuple[Callable[..., bool], tuple]] = []
_STARTED: list[Future] = []


def submit(run: Callable[..., bool], *args) -> None:
    """Hand over a run (`run(*args)` returns False when it failed, having said why)."""
    _WAITING.append((run, args))
    if len(_WAITING) >= START_AT:
        _start()


def _start() -> None:
    while _WAITING:
        run, args = _WAITING.pop(0)
        _STARTED.append(_RUNS.submit(run, *args))


def wait() -> int:
    """Start the runs still waiting, wait for every run; returns how many failed."""
    _start()
    failed = 0
    while _STARTED:
        failed += not _STARTED.pop(0).result()
    return failed
