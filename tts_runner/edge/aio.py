"""A blocking iterator run on a thread and read from asyncio: the RunPod stream handler and the HTTP
server's streams both hand a job's pieces to the event loop this way. With a `Buffer`, what waits
for a slow reader is bounded: the thread waits for room, and a reader that makes none within the
buffer's stall time ends the stream (its job is stopped, so its rows go back)."""

from __future__ import annotations

import asyncio
import threading
from collections.abc import AsyncIterator, Callable, Iterator
from concurrent.futures import Executor, ThreadPoolExecutor
from dataclasses import dataclass
from typing import TypeVar

from tts_runner.errors import SlowReader

T = TypeVar("T")
_DONE = object()


def started_pool(size: int, name: str) -> ThreadPoolExecutor:
    """A pool of `size` threads, every one started now: its thread count never changes while it
    serves (a lazily grown pool rises with each new peak of requests, and a soak could not tell that
    from a leak), and a burst does not wait for threads to start."""
    pool = ThreadPoolExecutor(max_workers=size, thread_name_prefix=name)
    met = threading.Barrier(size + 1, timeout=120)
    for _ in range(size):  # none is idle until all have met: each task starts a thread of its own
        pool.submit(met.wait)
    met.wait()
    return pool


class _Raised:
    def __init__(self, error: BaseException):
        self.error = error


@dataclass(eq=False)
class Buffer:
    """The bytes a stream holds for its reader: at most `limit` (an item larger than the limit still
    goes, alone); when there is no room for `stall_seconds`, SlowReader. `held` and `peak` say how
    much it holds now and held at most."""

    limit: int
    stall_seconds: float
    held: int = 0
    peak: int = 0
    dropped: bool = False
    on_end: Callable[[Buffer], None] | None = None  # called once the stream has ended, however it ended


def size_of(item) -> int:
    """A piece's bytes: (bytes, metadata) from a job's stream, or a queue worker's answer (a dict)."""
    if isinstance(item, tuple) and item and isinstance(item[0], bytes | bytearray):
        return len(item[0])
    if isinstance(item, dict):
        return len(item.get("audio_base64", ""))
    return 0


def split(item, most: int):
    """A (bytes, metadata) piece as pieces of at most `most` bytes (the metadata with the last): the
    buffer's bound holds for a piece of any size. Anything else goes whole."""
    if not (isinstance(item, tuple) and len(item) == 2 and isinstance(item[0], bytes) and len(item[0]) > most):
        return (item,)
    data, metadata = item
    starts = range(0, len(data), most)
    return tuple((data[i:i + most], metadata if i == starts[-1] else None) for i in starts)


async def iterate_in_thread(make: Callable[[], Iterator[T]], on_stop: Callable[[], None],
                            executor: Executor | None = None, buffer: Buffer | None = None) -> AsyncIterator[T]:
    """Yield what `make()` yields, as it yields it, from a thread of `executor`; if the reader stops
    early (cancelled, closed: its client went away), `on_stop()` is called so the work ends too."""
    loop = asyncio.get_running_loop()
    items: asyncio.Queue = asyncio.Queue()
    room = threading.Condition()
    gone = [False]  # the reader has stopped

    def hand(item) -> None:
        try:
            loop.call_soon_threadsafe(items.put_nowait, item)
        except RuntimeError:  # the loop has closed: nobody is reading any more
            pass

    def wait_for_room(n: int) -> bool:
        """False once the reader has gone; SlowReader when it made no room in time."""
        with room:
            fits = room.wait_for(lambda: gone[0] or buffer.held == 0 or buffer.held + n <= buffer.limit,
                                 timeout=buffer.stall_seconds)
            if gone[0]:
                return False
            if not fits:
                buffer.dropped = True
                raise SlowReader(f"The client read nothing for {buffer.stall_seconds:g} s while {buffer.held} bytes "
                                 f"waited for it (server.stream_buffer_bytes {buffer.limit}, "
                                 "server.stream_stall_seconds): the stream was dropped and its job stopped.")
            buffer.held += n
            buffer.peak = max(buffer.peak, buffer.held)
            return True

    def produce() -> None:
        made = make()
        try:
            for item in made:
                for part in (split(item, max(1, buffer.limit // 4)) if buffer is not None else (item,)):
                    if buffer is not None and not wait_for_room(size_of(part)):
                        return
                    hand(part)
        except BaseException as exc:  # noqa: BLE001 - raised on the reader's side
            hand(_Raised(exc))
        finally:
            close = getattr(made, "close", None)
            if close is not None:
                close()  # a generator's own finally runs now: its job's rows go back
            hand(_DONE)

    producer = loop.run_in_executor(executor, produce)
    finished = False
    try:
        while (item := await items.get()) is not _DONE:
            if isinstance(item, _Raised):
                finished = True
                raise item.error
            if buffer is not None:
                with room:
                    buffer.held -= size_of(item)
                    room.notify_all()
            yield item
        finished = True
        await producer
    finally:
        with room:
            gone[0] = True
            room.notify_all()
        if not finished:
            on_stop()
        if buffer is not None and buffer.on_end is not None:
            buffer.on_end(buffer)
