"""SIGTERM for the queue worker: the worker's drain runs first, whoever else handles the signal.

RunPod's SDK (its job loop, and the local API's uvicorn) installs its own SIGTERM handler when it
starts, and waits for the jobs running without a bound. `drain_first(stop)` makes every SIGTERM
handler installed from then on call `stop()` (the worker's bounded drain) before its own work, and
makes the process exit 0 once the SDK has finished (uvicorn re-raises the signal after its shutdown).
"""

from __future__ import annotations

import signal
import sys
from collections.abc import Callable


def drain_first(stop: Callable[[], object]) -> None:
    install = signal.signal

    def chained(signum, handler):
        if signum == signal.SIGTERM and callable(handler) and not getattr(handler, "drains_first", False):
            inner = handler

            def handler(sig, frame):
                stop()
                inner(sig, frame)

            handler.drains_first = True
        return install(signum, handler)

    signal.signal = chained  # the SDK's and uvicorn's calls to signal.signal come through here
    signal.signal(signal.SIGTERM, _exit_quietly)  # what runs last, after the SDK's shutdown


def _exit_quietly(sig, frame) -> None:
    sys.exit(0)
