"""The HTTP routes (FastAPI): OpenAI's speech API, the queue worker's payload, and RunPod's health check.

    POST   /v1/audio/speech        OpenAI's speech request: the whole file, or a stream (stream_format
                                   "audio": the encoded bytes as made; "sse": speech.audio.delta events,
                                   then speech.audio.done with the usage)
    GET    /v1/models              OpenAI's model list: our variants and the OpenAI names configured
    GET    /v1/audio/voices        every voice a request may name
    POST   /v1/audio/voices        save a clone voice (multipart: name, audio_sample, ref_text)
    DELETE /v1/audio/voices/{name}
    POST   /v1/tts                 {"input": {...}}: the queue worker's job, answered as the queue worker
                                   answers it (a stream, as JSON lines, when the input asks for one)
    GET    /ping                   204 while the model loads, 200 ready, 503 unhealthy (RunPod's load balancer)

Errors are OpenAI's envelope with the status that fits (tts_runner/server/errors.py); /v1/tts's
job answers are the queue worker's {error, traceback}, with the same statuses.
"""

from __future__ import annotations

import asyncio
import base64
import contextlib
import hmac
import json
import logging
from collections.abc import AsyncIterator

from fastapi import APIRouter, FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse, Response, StreamingResponse
from starlette.exceptions import HTTPException

from tts_runner.edge.aio import Buffer, iterate_in_thread, started_pool
from tts_runner.errors import TTSError
from tts_runner.server.errors import ApiError, from_exception
from tts_runner.server.limits import BodyLimits
from tts_runner.server.openai import CONTENT_TYPES
from tts_runner.server.service import Service
from tts_runner.voice.saved import check_name

log = logging.getLogger(__name__)
routes = APIRouter()


def create_app(service: Service) -> FastAPI:
    """The app of one Service: its routes, OpenAI's error envelope for every failure, and the body limits."""
    settings = service.settings
    app = FastAPI(title="tts-runner", summary="Qwen3-TTS behind OpenAI's speech API", version="1")
    app.state.service = service
    app.state.threads = started_pool(max(32, 4 * int(service.cfg.worker.concurrency)), "request")
    app.state.ping = ping  # also served on server.health_port
    app.add_middleware(BodyLimits, max_bytes=settings.max_body_bytes, timeout_seconds=settings.body_timeout_seconds)
    app.add_exception_handler(ApiError, api_error)
    app.add_exception_handler(HTTPException, http_error)
    app.add_exception_handler(RequestValidationError, validation_error)
    app.add_exception_handler(TTSError, any_error)  # a job's own failure: answered here, not re-raised by Starlette
    app.add_exception_handler(Exception, any_error)
    app.include_router(routes)
    return app


# ---- errors -------------------------------------------------------------------------------------
async def api_error(request: Request, exc: ApiError):
    headers = {"WWW-Authenticate": "Bearer"} if exc.status == 401 else None
    return JSONResponse(exc.body(), status_code=exc.status, headers=headers)


async def http_error(request: Request, exc: HTTPException):
    message = {404: f"No route {request.method} {request.url.path}.",
               405: f"{request.method} is not allowed on {request.url.path}."}.get(exc.status_code, str(exc.detail))
    return JSONResponse(ApiError(exc.status_code, message).body(), status_code=exc.status_code)


async def validation_error(request: Request, exc: RequestValidationError):
    return JSONResponse(ApiError(400, f"Invalid request: {exc.errors()[:1]}").body(), status_code=400)


async def any_error(request: Request, exc: Exception):
    error = from_exception(exc)
    if error.status >= 500 and not isinstance(exc, TTSError):  # a job's own failure was logged by the worker
        log.error("%s %s failed", request.method, request.url.path, exc_info=exc)
    return JSONResponse(error.body(), status_code=error.status)


# ---- what every route shares ----------------------------------------------------------------------
def service_of(request: Request) -> Service:
    return request.app.state.service


def authorize(request: Request) -> Service:
    """The service, once the request's bearer key matches server.api_key (when one is set)."""
    service = service_of(request)
    key = service.settings.api_key
    if key:
        scheme, _, token = request.headers.get("authorization", "").partition(" ")
        if scheme.lower() != "bearer" or not hmac.compare_digest(token.strip().encode(), key.encode()):
            raise ApiError(401, "Missing or wrong API key: send it as 'Authorization: Bearer <key>' "
                                "(the server's TTS_RUNNER_API_KEY).", code="invalid_api_key")
    return service


async def json_body(request: Request):
    data = await request.body()
    try:
        return json.loads(data)
    except (ValueError, RecursionError) as exc:
        raise ApiError(400, f"Invalid input: the body is not JSON ({str(exc)[:80]}).", code="invalid_json") from None


async def until_disconnected(request: Request) -> None:
    while (await request.receive())["type"] != "http.disconnect":
        pass


async def cancellable(request: Request, work, ticket):
    """Run `work` on a request thread; cancel its job if the client goes away or the time runs out."""
    service, limit = service_of(request), service_of(request).settings.request_timeout_seconds
    task = asyncio.get_running_loop().run_in_executor(request.app.state.threads, work)
    gone = asyncio.ensure_future(until_disconnected(request))
    done, _ = await asyncio.wait({task, gone}, timeout=limit, return_when=asyncio.FIRST_COMPLETED)
    gone.cancel()
    if task in done:
        return task.result()
    service.cancel(ticket)
    task.add_done_callback(lambda f: f.exception())  # its JobCancelled is expected
    if gone in done:
        raise ApiError(499, "The client closed the request.", type="server_error", code="cancelled")
    raise ApiError(504, f"The audio was not made within {limit:g} s (server.request_timeout_seconds); send a "
                        "shorter text, or split it.", type="server_error", code="timeout")


def pieces_of(request: Request, make, stop) -> tuple[AsyncIterator, Buffer]:
    """A job's pieces from a request thread, as they come (`stop` when the client goes away), through
    a bounded buffer (server.stream_buffer_bytes): a client that stops reading holds at most that."""
    buffer = service_of(request).open_buffer()
    return iterate_in_thread(make, stop, request.app.state.threads, buffer), buffer


class BoundedStream(StreamingResponse):
    """A streamed answer whose client must keep reading: when sending waits longer than
    server.stream_stall_seconds (the client stopped reading, its socket is full), the request is
    dropped and its job stopped, so its rows go back; other streams never wait for it."""

    def __init__(self, content, buffer: Buffer, **kwargs):
        super().__init__(content, **kwargs)
        self.buffer = buffer

    async def stream_response(self, send) -> None:
        async def timed(message) -> None:
            await asyncio.wait_for(send(message), self.buffer.stall_seconds)

        try:
            await super().stream_response(timed)
        except TimeoutError:
            self.buffer.dropped = True
            log.warning("A stream's client read nothing for %g s (server.stream_stall_seconds): dropped, its job "
                        "stopped", self.buffer.stall_seconds)
            await self.body_iterator.aclose()  # the pieces' reader stops: the job is cancelled


async def opened(pieces):
    """The stream's first item, waited for before any header goes out, so a job refused at once (a
    full queue, a bad reference) is answered with its status, not a 200 that breaks off."""
    try:
        return await anext(pieces)
    except StopAsyncIteration:
        return None


def _event(data: dict) -> str:
    return f"data: {json.dumps(data)}\n\n"


def _status(answer: dict) -> int:
    """The status of a queue worker's {error} answer (its message says what kind it was)."""
    if answer.get("refresh_worker"):
        return 503
    message = str(answer.get("error", ""))
    if message.startswith("Worker busy"):
        return 429
    return 400 if message.startswith(("Invalid input", "Invalid setting", "Unknown")) else 500


# ---- the routes -----------------------------------------------------------------------------------
@routes.get("/ping")
def ping(request: Request):
    status, why = service_of(request).health()
    return Response(status_code=204) if status == 204 else JSONResponse({"status": why}, status_code=status)


WORD_HEADER_BYTES = 16 * 1024  # a header longer than this is one some clients and proxies refuse


def word_header(words: list[dict]) -> dict:
    """The X-Word-Timestamps header: [{word, start, end}, ...] as compact JSON (ASCII), or, when it
    would be too long for a header, a header saying so and how to ask for them in the body."""
    shown = [{k: w[k] for k in ("word", "start", "end", "aligned") if k in w} for w in words]
    value = json.dumps(shown, separators=(",", ":"))
    if len(value) > WORD_HEADER_BYTES:
        return {"X-Word-Timestamps-Omitted": f"{len(words)} words are too many for a header; ask with "
                                             "response_mode json for them in the body"}
    return {"X-Word-Timestamps": value}


def whole_json(made) -> dict:
    """A whole file and what goes with it as one JSON body: the audio as base64, its format, the
    metadata (words, segments, chapters when asked) and the subtitles, as text."""
    body = {"audio": base64.b64encode(made.data).decode("ascii"), "format": made.file.format,
            "metadata": made.metadata}
    if "subtitles" in made.files:
        data, fmt = made.files["subtitles"]
        body["subtitles"] = {"format": fmt, "text": data.decode("utf-8")}
    return body


@routes.post("/v1/audio/speech")
async def speech(request: Request):
    service = authorize(request)
    asked = service.request(await json_body(request))
    job, ticket = service.job(asked)
    headers = {"X-Seed": str(job.sampling.seed), "X-Request-Id": job.id}  # the id the server's log names it by
    if asked.stream is None:
        made = await cancellable(request, lambda: service.whole(job, ticket), ticket)
        headers["X-Audio-Duration"] = str(made.metadata["duration_seconds"])
        if asked.response_mode == "json":
            return JSONResponse(whole_json(made), headers=headers)
        if "words" in made.metadata:
            headers.update(word_header(made.metadata["words"]))
        return Response(made.data, media_type=CONTENT_TYPES[asked.response_format], headers=headers)
    pieces, buffer = pieces_of(request, lambda: service.stream(job, ticket, asked.response_format),
                               lambda: service.cancel(ticket))
    first = await opened(pieces)

    async def audio():
        async with contextlib.aclosing(pieces):
            item = first
            while item is not None:
                if item[0]:
                    yield item[0]
                item = await anext(pieces, None)

    async def events():
        async with contextlib.aclosing(pieces):
            item = first
            try:
                while item is not None:
                    data, metadata = item
                    if data:
                        yield _event({"type": "speech.audio.delta", "audio": base64.b64encode(data).decode()})
                    if metadata is not None:
                        yield _event({"type": "speech.audio.done", "usage": service.usage(job, metadata)})
                    item = await anext(pieces, None)
            except Exception as exc:  # noqa: BLE001 - the stream has begun: its end says why
                yield _event({"type": "error", **from_exception(exc).body()})

    if asked.stream == "sse":
        return BoundedStream(events(), buffer, media_type="text/event-stream",
                             headers={**headers, "Cache-Control": "no-cache"})
    return BoundedStream(audio(), buffer, media_type=CONTENT_TYPES[asked.response_format], headers=headers)


@routes.post("/v1/tts")
async def tts(request: Request):
    service = authorize(request)
    job = service.tts_job(await json_body(request))
    worker = service.worker
    ticket = worker.ticket(job)
    if isinstance(job["input"], dict) and job["input"].get("stream") is True:
        pieces, buffer = pieces_of(request, lambda: worker.stream(job, ticket), lambda: worker.cancel(ticket))
        first = await opened(pieces)
        if first is not None and "error" in first:
            return JSONResponse(first, status_code=_status(first))

        async def lines():
            async with contextlib.aclosing(pieces):
                item = first
                while item is not None:
                    yield json.dumps(item) + "\n"
                    item = await anext(pieces, None)

        return BoundedStream(lines(), buffer, media_type="application/x-ndjson")
    answer, error = await cancellable(request, lambda: worker.answer(job, ticket), ticket)
    status = 200 if error is None else from_exception(error, openai=False).status
    return JSONResponse(answer, status_code=status)


@routes.get("/stats")
def stats(request: Request):
    """What the worker holds now (memory, threads, open files, rows, queue, clone prompts, stream buffers)."""
    return authorize(request).vitals()


@routes.get("/v1/models")
def models(request: Request):
    service = authorize(request)
    names = [*service.variants, *service.settings.models]
    return {"object": "list", "data": [{"id": n, "object": "model", "created": 0, "owned_by": "tts-runner"}
                                       for n in names]}


@routes.get("/v1/audio/voices")
def voices(request: Request):
    service = authorize(request)
    worker = service.ready_worker()
    recipe = worker.edge.recipe
    speakers = worker.store.get(worker.store.catalog.default).speakers
    listed = [{"name": s.lower(), "type": "speaker"} for s in sorted(speakers)]
    listed += [{"name": a, "type": "alias", "speaker": s} for a, s in sorted(recipe.voices.aliases.items())]
    listed += [{"name": o, "type": "openai", "speaker": s} for o, s in sorted(service.settings.voices.items())]
    listed += [{"name": c, "type": "clone", "ref_text": v.text} for c, v in sorted(recipe.voices.clones.items())]
    for name in service.voices.names():
        saved = service.voices.get(name)
        if saved is not None:
            listed.append({"name": name, "type": "saved", "ref_text": saved.ref_text, "seconds": saved.seconds})
    return {"voices": listed}


@routes.post("/v1/audio/voices", status_code=201)
async def save_voice(request: Request):
    service = authorize(request)
    service.ready_worker()
    try:
        form = await request.form(max_files=1, max_fields=4)
    except Exception as exc:  # noqa: BLE001 - a malformed multipart body
        raise ApiError(400, f"Invalid input: send multipart/form-data with name, audio_sample and optional "
                            f"ref_text ({str(exc)[:80]}).") from None
    name, upload, text = form.get("name"), form.get("audio_sample"), form.get("ref_text")
    if not isinstance(name, str):
        raise ApiError(400, "Invalid input at name: give the voice's name.", param="name")
    check_name(name)
    if upload is None or isinstance(upload, str):
        raise ApiError(400, "Invalid input at audio_sample: attach the recording as a file.", param="audio_sample")
    data = await upload.read()
    ref_text = text if isinstance(text, str) and text.strip() else None
    saved = await asyncio.get_running_loop().run_in_executor(request.app.state.threads,
                                                             lambda: service.voices.save(name, data, ref_text))
    log.info("Voice '%s' saved (%.1f s)", name, saved.seconds)
    return {"name": saved.name, "type": "saved", "ref_text": saved.ref_text, "seconds": saved.seconds,
            "created": saved.created}


@routes.delete("/v1/audio/voices/{name}")
def delete_voice(name: str, request: Request):
    service = authorize(request)
    service.voices.delete(name)
    log.info("Voice '%s' deleted", name)
    return {"id": name, "object": "voice", "deleted": True}
