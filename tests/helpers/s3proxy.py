"""A fault-injecting HTTP proxy on 127.0.0.1 in front of an S3 server (moto), for the sink's tests.

Each upload (a PUT) takes the next fault of the proxy's plan, and passes once the plan is spent:
  "500", "503"  the whole request is read, then an S3 error answer with that status
                (InternalError, ServiceUnavailable), and the store never sees it
  "reset"       half of the body is read, then the connection is reset (TCP RST): an upload cut off
  "slow"        the whole request is read, and no answer comes until the next upload arrives (the
                client's read timeout has passed by then); the store never sees it
Every other request (GET of a presigned URL, the bucket's listing) passes. `seen` lists what each
PUT met, in order."""

from __future__ import annotations

import http.client
import http.server
import socket
import struct
import threading
from contextlib import contextmanager

ERRORS = {500: "InternalError", 503: "ServiceUnavailable"}


class _Proxy(http.server.ThreadingHTTPServer):
    daemon_threads = True

    def __init__(self, upstream: tuple[str, int], plan: list[str]):
        super().__init__(("127.0.0.1", 0), _Relay)
        self.upstream, self.plan, self.seen = upstream, list(plan), []
        self.lock = threading.Lock()
        self.next_put = threading.Event()

    def fault(self) -> str:
        with self.lock:
            fault = self.plan.pop(0) if self.plan else "pass"
            self.seen.append(fault)
            self.next_put.set()  # a held ("slow") answer before it gives up now
            self.next_put = threading.Event()
            return fault


class _Relay(http.server.BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"  # keep-alive, and "Expect: 100-continue" answered as boto asks

    def log_message(self, *args):  # quiet
        pass

    def do_PUT(self):  # noqa: N802 - the stdlib's names
        fault = self.server.fault()
        length = int(self.headers.get("Content-Length", 0))
        if fault == "reset":
            self.rfile.read(length // 2)
            self.connection.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
            self.connection.close()
            self.close_connection = True
            return
        body = self.rfile.read(length)
        if fault in ("500", "503"):
            status = int(fault)
            answer = (f"<?xml version='1.0' encoding='UTF-8'?><Error><Code>{ERRORS[status]}</Code>"
                      "<Message>injected by the test's proxy</Message></Error>").encode()
            self._answer(status, {"Content-Type": "application/xml"}, answer)
            return
        if fault == "slow":
            self.server.next_put.wait(120)  # until the client has tried again: it gave this one up
            self.close_connection = True
            return
        self._forward(body)

    def do_GET(self):  # noqa: N802
        self._forward(b"")

    do_HEAD = do_DELETE = do_GET  # noqa: N815

    def do_POST(self):  # noqa: N802
        self._forward(self.rfile.read(int(self.headers.get("Content-Length", 0))))

    def _forward(self, body: bytes) -> None:
        upstream = http.client.HTTPConnection(*self.server.upstream, timeout=60)
        headers = {k: v for k, v in self.headers.items() if k.lower() not in ("expect", "connection")}
        upstream.request(self.command, self.path, body=body or None, headers=headers)
        response = upstream.getresponse()
        data = response.read()
        kept = {k: v for k, v in response.getheaders() if k.lower() not in ("transfer-encoding", "connection",
                                                                               "content-length")}
        upstream.close()
        self._answer(response.status, kept, b"" if self.command == "HEAD" else data)

    def _answer(self, status: int, headers: dict, body: bytes) -> None:
        self.send_response(status)
        for name, value in headers.items():
            self.send_header(name, value)
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)


@contextmanager
def faulty_s3(upstream: str, plan: list[str]):
    """A proxy to `upstream` ("http://127.0.0.1:PORT") with `plan`; yields it (its `url`, `seen`)."""
    host, port = upstream.removeprefix("http://").split(":")
    proxy = _Proxy((host, int(port)), plan)
    proxy.url = f"http://127.0.0.1:{proxy.server_address[1]}"
    thread = threading.Thread(target=proxy.serve_forever, daemon=True)
    thread.start()
    try:
        yield proxy
    finally:
        proxy.shutdown()
        proxy.server_close()
