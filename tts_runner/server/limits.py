"""Bounds on a request before any route sees it (pure ASGI): a body larger than server.max_body_bytes
is refused with 413 (by its Content-Length at once, or as soon as it grows past the limit), and a
body that has not all arrived within server.body_timeout_seconds (a slow sender holding a
connection) with 408. The body is read here once and handed on whole."""

from __future__ import annotations

import asyncio
import json


class BodyLimits:
    def __init__(self, app, max_bytes: int, timeout_seconds: float):
        self.app, self.max_bytes, self.timeout = app, int(max_bytes), float(timeout_seconds)

    async def __call__(self, scope, receive, send):
        if scope["type"] != "http" or scope["method"] in ("GET", "HEAD", "OPTIONS", "DELETE"):
            return await self.app(scope, receive, send)
        length = dict(scope.get("headers") or []).get(b"content-length")
        if length is not None and (not length.isdigit() or int(length) > self.max_bytes):
            return await _refuse(send, 413, f"The request body is {length.decode(errors='replace')[:20]} bytes; the "
                                            f"limit is {self.max_bytes} (server.max_body_bytes).", "body_too_large")
        body, more = bytearray(), True
        deadline = asyncio.get_running_loop().time() + self.timeout
        while more:
            left = deadline - asyncio.get_running_loop().time()
            try:
                message = await asyncio.wait_for(receive(), max(left, 0.001))
            except TimeoutError:
                return await _refuse(send, 408, f"The request body did not arrive within {self.timeout:g} s "
                                                "(server.body_timeout_seconds).", "body_timeout")
            if message["type"] == "http.disconnect":
                return None
            body += message.get("body", b"")
            if len(body) > self.max_bytes:
                return await _refuse(send, 413, f"The request body is over the limit of {self.max_bytes} bytes "
                                                "(server.max_body_bytes).", "body_too_large")
            more = message.get("more_body", False)
        handed = False

        async def replay():
            nonlocal handed
            if not handed:
                handed = True
                return {"type": "http.request", "body": bytes(body), "more_body": False}
            return await receive()  # after the body: the client's disconnect

        return await self.app(scope, replay, send)


async def _refuse(send, status: int, message: str, code: str) -> None:
    data = json.dumps({"error": {"message": message, "type": "invalid_request_error", "param": None,
                                 "code": code}}).encode()
    await send({"type": "http.response.start", "status": status,
                "headers": [(b"content-type", b"application/json"), (b"content-length", str(len(data)).encode()),
                            (b"connection", b"close")]})
    await send({"type": "http.response.body", "body": data})
