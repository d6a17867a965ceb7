"""A blocking iterator run on a thread and read from asyncio: the RunPod stream handler and the HTTP
server's streams both hand a job's pieces to the event loop this way."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Callable, Iterator
from concurrent.futures import Executor
from typing import TypeVar

T = TypeVar("T")
_DONE = object()


class _Raised:
    def __init__(self, error: BaseException):
        self.error = error


async def iterate_in_thread(make: Callable[[], Iterator[T]], on_stop: Callable[[], None],
                            executor: Executor | None = None) -> AsyncIterator[T]:
    """Yield what `make()` yields, as it yields it, from a thread of `executor`; if the reader stops
    early (cancelled, closed: its client went away), `on_stop()` is called so the work ends too."""
    loop = asyncio.get_running_loop()
    items: asyncio.Queue = asyncio.Queue()

    def hand(item) -> None:
        try:
            loop.call_soon_threadsafe(items.put_nowait, item)
        except RuntimeError:  # the loop has closed: nobody is reading any more
            pass

    def produce() -> None:
        try:
            for item in make():
                hand(item)
        except BaseException as exc:  # noqa: BLE001 - raised on the reader's side
            hand(_Raised(exc))
        finally:
            hand(_DONE)

    producer = loop.run_in_executor(executor, produce)
    finished = False
    try:
        while (item := await items.get()) is not _DONE:
            if isinstance(item, _Raised):
                finished = True
                raise item.error
            yield item
        finished = True
        await producer
    finally:
        if not finished:
            on_stop()
