"""Errors as OpenAI writes them, {"error": {"message", "type", "param", "code"}}, with the status
that fits. The messages are the queue worker's own (tts_runner.errors); `param` names the request's
field in the request's own terms (OpenAI's `input`, not the payload's `$.text`)."""

from __future__ import annotations

from tts_runner.errors import (
    DeviceFailure,
    InputError,
    JobCancelled,
    ModelError,
    NotFound,
    PayloadError,
    ShuttingDown,
    StoreFull,
    TimedOut,
    TTSError,
    WorkerBusy,
)

# our errors past the request's own fields -> (status, OpenAI's type, code); a subclass before its parent
STATUSES = [
    (WorkerBusy, 429, "rate_limit_error", "queue_full"),
    (DeviceFailure, 503, "server_error", "worker_unhealthy"),
    (ModelError, 503, "server_error", "model_unavailable"),
    (ShuttingDown, 503, "server_error", "shutting_down"),
    (StoreFull, 507, "server_error", "voice_store_full"),
    (TimedOut, 504, "server_error", "timeout"),
    (JobCancelled, 499, "server_error", "cancelled"),
    (TTSError, 500, "server_error", "generation_failed"),
]

# payload path -> the speech request's field
PARAM_OF_PATH = {"$.text": "input", "$.voice": "voice", "$.model": "model", "$.output_format": "response_format",
                 "$.speed": "speed", "$.ref_audio": "ref_audio", "$.ref_text": "ref_text",
                 "$.params.instruct": "instructions", "$.params.language": "language"}


class ApiError(Exception):
    def __init__(self, status: int, message: str, type: str = "invalid_request_error", param: str | None = None,
                 code: str | None = None):
        super().__init__(message)
        self.status, self.message, self.type, self.param, self.code = status, message, type, param, code

    def body(self) -> dict:
        return {"error": {"message": self.message, "type": self.type, "param": self.param, "code": self.code}}


def param_of(path: str | None, openai: bool = True) -> str | None:
    if path is None or path == "$":
        return None
    if not openai:
        return path
    if path in PARAM_OF_PATH:
        return PARAM_OF_PATH[path]
    if path.startswith("$.params."):
        return path.removeprefix("$.params.")
    return path.removeprefix("$.")


def from_exception(exc: BaseException, openai: bool = True) -> ApiError:
    """The envelope for what a request raised (anything not a TTSError is an internal error)."""
    if isinstance(exc, ApiError):
        return exc
    message = str(exc)
    if isinstance(exc, PayloadError):
        return ApiError(400, message, param=param_of(exc.path, openai), code="invalid_value")
    if isinstance(exc, NotFound):
        field = "model" if "model" in message.split(":")[0].lower() or message.startswith("Unknown model") else "voice"
        return ApiError(404, message, param=field, code=f"{field}_not_found")
    if isinstance(exc, InputError):
        path = message.removeprefix("Invalid input at ").split(":")[0] if message.startswith("Invalid input at ") else None
        return ApiError(400, message, param=param_of(path, openai), code="invalid_value")
    for kind, status, type_, code in STATUSES:
        if isinstance(exc, kind):
            return ApiError(status, message, type=type_, code=code)
    return ApiError(500, f"Internal error: {type(exc).__name__}: {exc}", type="server_error", code="internal_error")
