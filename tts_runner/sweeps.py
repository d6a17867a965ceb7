"""The runs of a batched sweep: handed to a thread each, so they share the model's rows through its
scheduler; the sweep's end (tts_runner.report.ReportCallback) waits for them. A module of its own,
so that `python -m tts_runner` (run as __main__) and the callback see the same list."""

from __future__ import annotations

from collections.abc import Callable
from concurrent.futures import Future, ThreadPoolExecutor

_RUNS = ThreadPoolExecutor(max_workers=64, thread_name_prefix="sweep-run")
_PENDING: list[Future] = []


def submit(run: Callable[..., bool], *args) -> None:
    """Start a run (`run(*args)` returns False when it failed, having said why)."""
    _PENDING.append(_RUNS.submit(run, *args))


def wait() -> int:
    """Wait for every run started; returns how many failed."""
    failed = 0
    while _PENDING:
        failed += not _PENDING.pop(0).result()
    return failed
