"""An app served on a thread of this process, on 127.0.0.1 only: for tests and benchmarks."""

from __future__ import annotations

import socket
import subprocess
import time
from contextlib import contextmanager
from pathlib import Path


def free_port() -> int:
    """A port nothing listens on now, on 127.0.0.1 (for a server a test or tool starts)."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def wait_for_port(port: int, proc: subprocess.Popen, log: Path, timeout: float = 120) -> None:
    """Wait until a server process listens on 127.0.0.1:port; raise with its log's tail if it exits
    first or does not open the port within timeout seconds."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise RuntimeError(f"server exited with {proc.returncode}:\n{log.read_text()[-3000:]}")
        with socket.socket() as s:
            if s.connect_ex(("127.0.0.1", port)) == 0:
                return
        time.sleep(0.25)
    raise RuntimeError(f"server did not open port {port} in {timeout} s:\n{log.read_text()[-3000:]}")


@contextmanager
def in_process(app):
    """An ASGI app served by uvicorn on a thread of this process, on 127.0.0.1 (a port of its own):
    yields its base URL, and stops it on exit."""
    import threading

    import uvicorn

    sock = socket.socket()
    sock.bind(("127.0.0.1", 0))
    server = uvicorn.Server(uvicorn.Config(app, log_level="warning", lifespan="off"))
    started = threading.Event()
    original = server.startup

    async def startup(sockets=None):
        await original(sockets=sockets)
        started.set()

    server.startup = startup
    thread = threading.Thread(target=server.run, kwargs={"sockets": [sock]}, daemon=True)
    thread.start()
    try:
        assert started.wait(60), "the server did not start"
        yield f"http://127.0.0.1:{sock.getsockname()[1]}"
    finally:
        server.should_exit = True
        thread.join(30)
        sock.close()
        threads = getattr(app.state, "threads", None)  # the server's request threads (tts_runner.server.app)
        if threads is not None:
            threads.shutdown(wait=False)
