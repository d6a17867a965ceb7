"""glibc's malloc arenas. A thread that allocates while another holds an arena gets one of its own,
up to 8 per core, and an arena keeps the peak it reached: a worker with many request and job
threads, each allocating large, short-lived buffers (audio, encoded files, base64), grows by
hundreds of megabytes without leaking (the soak measured it; docs/reliability.md). Bounding the
arenas (runtime.malloc_arenas) keeps that memory in a few heaps that are reused."""

from __future__ import annotations

import ctypes
import logging
import os

log = logging.getLogger(__name__)

M_ARENA_MAX = -8  # mallopt's parameter (malloc.h)


def limit_arenas(count: int | None) -> bool:
    """At most `count` arenas from now on (None: glibc's default); the MALLOC_ARENA_MAX variable, when
    set, is the user's and wins. False where it does not apply (not glibc, or left to the variable)."""
    if count is None or os.environ.get("MALLOC_ARENA_MAX"):
        return False
    try:
        libc = ctypes.CDLL("libc.so.6")
    except OSError:  # not glibc (musl, macOS): nothing to bound
        return False
    done = bool(libc.mallopt(M_ARENA_MAX, int(count)))
    if not done:
        log.warning("mallopt(M_ARENA_MAX, %d) was refused; malloc keeps its default arenas", count)
    return done
