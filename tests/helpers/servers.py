"""Real server processes on 127.0.0.1 for end-to-end tests: the RunPod local API (handler.py)
and a moto S3 server."""

from __future__ import annotations

import os
import subprocess
import sys
import time
from contextlib import contextmanager
from pathlib import Path

import requests

# free_port and in_process (an ASGI app on a thread of this process) are re-exported for the tests
from tts_runner.server.local import free_port, in_process, wait_for_port  # noqa: F401

REPO = Path(__file__).resolve().parents[2]


@contextmanager
def process(args: list[str], port: int, log: Path, env: dict | None = None):
    with open(log, "wb") as out:
        proc = subprocess.Popen(args, cwd=REPO, stdout=out, stderr=subprocess.STDOUT,
                                env={**os.environ, **(env or {})})
    try:
        wait_for_port(port, proc, log)
        yield proc
    finally:
        proc.terminate()
        try:
            proc.wait(timeout=10)
        except subprocess.TimeoutExpired:
            proc.kill()


@contextmanager
def runpod_api(log: Path, env: dict | None = None):
    """`python handler.py --rp_serve_api` on a free port; yields a function posting to /runsync."""
    port = free_port()
    args = [sys.executable, "handler.py", "--rp_serve_api", "--rp_api_host", "127.0.0.1",
            "--rp_api_port", str(port)]
    with process(args, port, log, env) as proc:
        def runsync(job_input, timeout: float = 300) -> dict:
            body = job_input if isinstance(job_input, (bytes, str)) else None
            response = requests.post(f"http://127.0.0.1:{port}/runsync", timeout=timeout,
                                     **({"data": body, "headers": {"Content-Type": "application/json"}}
                                        if body is not None else {"json": {"input": job_input}}))
            return {"http_status": response.status_code, **response.json()}

        runsync.proc = proc
        runsync.port = port
        yield runsync


@contextmanager
def moto_s3(log: Path):
    port = free_port()
    args = [sys.executable, "-m", "moto.server", "-H", "127.0.0.1", "-p", str(port)]
    with process(args, port, log):
        yield f"http://127.0.0.1:{port}"


@contextmanager
def audio_server(recording: bytes):
    """A plain-HTTP server on 127.0.0.1 for the fetch tests: /voice.wav, redirects (to itself, to a
    loopback name, in a loop), a body too big, a body that trickles, a body that is not audio.
    Yields its "host:port"; only a test config lets tts-runner fetch from it."""
    import http.server
    import threading

    class Handler(http.server.BaseHTTPRequestHandler):
        def log_message(self, *args):  # quiet
            pass

        def do_GET(self):  # noqa: N802 - the stdlib's name
            port = self.server.server_address[1]
            routes = {
                "/voice.wav": lambda: self.send(recording, "audio/wav"),
                "/moved": lambda: self.redirect("/voice.wav"),
                "/to-localhost": lambda: self.redirect(f"http://localhost:{port}/voice.wav"),
                "/to-metadata": lambda: self.redirect("http://169.254.169.254/latest/meta-data/"),
                "/loop": lambda: self.redirect("/loop"),
                "/big": lambda: self.send(b"\0" * (3 * 2**20), "audio/wav", length=False),
                "/trickle": self.trickle,
                "/text": lambda: self.send(b"<html>not audio at all</html>" * 100, "text/html"),
            }
            routes.get(self.path, lambda: self.send_error(404))()

        def send(self, body: bytes, kind: str, length: bool = True):
            self.send_response(200)
            self.send_header("Content-Type", kind)
            if length:
                self.send_header("Content-Length", str(len(body)))
            self.end_headers()
            self.wfile.write(body)

        def redirect(self, where: str):
            self.send_response(302)
            self.send_header("Location", where)
            self.end_headers()

        def trickle(self):
            self.send_response(200)
            self.send_header("Content-Type", "audio/wav")
            self.end_headers()
            for _ in range(40):
                self.wfile.write(recording[:64])
                self.wfile.flush()
                time.sleep(0.1)

    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield f"127.0.0.1:{server.server_address[1]}"
    finally:
        server.shutdown()
        server.server_close()
