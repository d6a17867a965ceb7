"""Where the encoded audio goes: inline base64, an S3 presigned URL, or a file.

Takes the `sink` config group as a `Sink`. `auto` picks S3 when a bucket and both credentials are set, and
base64 otherwise. `check()` says what is missing before any audio is made. An upload that fails for
a reason that may pass (no connection, a timeout, a 5xx, throttling) is tried again, a bounded
number of times with growing pauses; a refusal (bad credentials, no such bucket) is not. Object
keys are built here (prefix + job id + random suffix), never from user text. Error messages never
contain credentials.
"""

from __future__ import annotations

import base64
import logging
import os
import re
import secrets
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path

from tts_runner.errors import SinkError

log = logging.getLogger(__name__)

CONTENT_TYPES = {"wav": "audio/wav", "mp3": "audio/mpeg", "flac": "audio/flac", "opus": "audio/ogg",
                 "aac": "audio/aac", "pcm": "application/octet-stream", "srt": "application/x-subrip",
                 "vtt": "text/vtt", "json": "application/json"}
KINDS = ("auto", "base64", "s3", "file")
# S3 error codes worth another try: the service or the way to it, not the request, was at fault
PASSING = {"RequestTimeout", "RequestTimeTooSkewed", "SlowDown", "ServiceUnavailable", "InternalError", "Throttling"}


@dataclass(frozen=True)
class Sink:
    """Where a job's audio goes, and what each kind needs (credentials never in a repr)."""

    kind: str = "auto"                 # auto | base64 | s3 | file
    max_inline_bytes: int = 15_000_000  # base64: the largest answer
    bucket: str | None = None
    access_key: str | None = field(default=None, repr=False)
    secret_key: str | None = field(default=None, repr=False)
    endpoint_url: str | None = None
    region: str | None = "us-east-1"
    prefix: str = "tts-output/"
    url_expiry_seconds: int = 3600
    upload_attempts: int = 4
    upload_backoff_seconds: float = 0.5
    timeout_seconds: float = 60.0      # one attempt's connect and read timeouts
    dir: Path | None = None            # file: the folder (None: ./outputs)
    keep: Path | None = None           # where the audio is written when delivery fails (None: nowhere)


def resolve_kind(sink: Sink) -> str:
    if sink.kind != "auto":
        return sink.kind
    return "s3" if s3_configured(sink) else "base64"


def s3_configured(sink: Sink) -> bool:
    return bool(sink.bucket and sink.access_key and sink.secret_key)


def check(sink: Sink) -> None:
    """What can be known before any audio is made: the kind exists, and S3 has what it needs."""
    if sink.kind not in KINDS:
        raise SinkError(f"Unknown sink kind '{sink.kind}'; use auto, base64, s3 or file.")
    if sink.kind == "s3" and not s3_configured(sink):
        raise SinkError("The s3 sink needs S3_BUCKET, S3_ACCESS_KEY and S3_SECRET_KEY to be set.")


def deliver(data: bytes, fmt: str, sink: Sink, job_id: str, name: str = "tts", field: str = "audio") -> dict:
    """Send the audio (or a file that goes with it: `field` names the answer's fields); return the
    response fields that point to it. When it fails and the sink says where to keep the audio, it
    is written there and the error says so."""
    try:
        return _send(data, fmt, sink, job_id, name, field)
    except SinkError as exc:
        if sink.keep is None:
            raise
        try:
            kept = write_file(data, fmt, sink.keep, name)
        except SinkError as also:
            raise SinkError(f"{exc} Keeping the audio in {sink.keep} failed too: {also}") from None
        raise SinkError(f"{exc} The audio is kept at {kept}.") from None


def _send(data: bytes, fmt: str, sink: Sink, job_id: str, name: str, field: str = "audio") -> dict:
    kind = resolve_kind(sink)
    if kind == "base64":
        return {f"{field}_base64": inline(data, fmt, sink.max_inline_bytes)}
    if kind == "s3":
        return {f"{field}_url": upload_s3(data, fmt, sink, job_id)}
    if kind == "file":
        return {f"{field}_path": str(write_file(data, fmt, Path(sink.dir or "outputs"), name))}
    raise SinkError(f"Unknown sink kind '{kind}'; use auto, base64, s3 or file.")


def inline(data: bytes, fmt: str, max_inline_bytes: int) -> str:
    encoded = base64.b64encode(data).decode("ascii")
    if len(encoded) > max_inline_bytes:
        hint = "configure S3 (S3_BUCKET, S3_ACCESS_KEY, S3_SECRET_KEY) to receive a URL instead"
        if fmt == "wav":
            hint += ", or ask for output_format 'mp3' (about 6x smaller)"
        raise SinkError(
            f"The {fmt} result is {len(encoded)} bytes as base64, over the inline limit of "
            f"{max_inline_bytes} bytes (sink.max_inline_bytes): {hint}."
        )
    return encoded


def object_key(prefix: str, job_id: str, fmt: str) -> str:
    safe_id = re.sub(r"[^A-Za-z0-9_-]", "", str(job_id))[:64] or "job"
    return f"{prefix}{safe_id}-{secrets.token_hex(8)}.{fmt}"


def upload_s3(data: bytes, fmt: str, sink: Sink, job_id: str) -> str:
    """Upload, then return a presigned GET URL valid for sink.url_expiry_seconds."""
    if not s3_configured(sink):
        raise SinkError("The s3 sink needs S3_BUCKET, S3_ACCESS_KEY and S3_SECRET_KEY to be set.")
    import boto3
    from botocore.config import Config
    from botocore.exceptions import BotoCoreError, ClientError

    client = boto3.client(
        "s3",
        endpoint_url=sink.endpoint_url or None,
        region_name=sink.region or "us-east-1",
        aws_access_key_id=sink.access_key,
        aws_secret_access_key=sink.secret_key,
        config=Config(connect_timeout=min(5.0, sink.timeout_seconds), read_timeout=sink.timeout_seconds,
                      retries={"total_max_attempts": 1, "mode": "standard"},  # one try per attempt: the
                      signature_version="s3v4"),  # attempts are ours (upload_attempts); botocore's legacy
                                                  # "max_attempts": 1 was one more retry of its own
    )
    key = object_key(sink.prefix, job_id, fmt)
    where = f"bucket '{sink.bucket}'" + (f" at {sink.endpoint_url}" if sink.endpoint_url else "")
    attempts = max(1, int(sink.upload_attempts))
    for attempt in range(1, attempts + 1):
        try:
            client.put_object(Bucket=sink.bucket, Key=key, Body=data, ContentType=CONTENT_TYPES[fmt])
            return client.generate_presigned_url(
                "get_object", Params={"Bucket": sink.bucket, "Key": key},
                ExpiresIn=int(sink.url_expiry_seconds),
            )
        except ClientError as exc:
            err = exc.response.get("Error", {})
            status = exc.response.get("ResponseMetadata", {}).get("HTTPStatusCode", 0)
            problem = f"{err.get('Code', 'error')}: {err.get('Message', 'no message')}"
            passing = err.get("Code") in PASSING or status >= 500
        except BotoCoreError as exc:
            problem, passing = f"{type(exc).__name__}: {exc}", True
        if not passing or attempt == attempts:
            break
        pause = float(sink.upload_backoff_seconds) * 2 ** (attempt - 1)
        log.warning("S3 upload to %s failed (attempt %d of %d: %s); trying again in %.1f s", where, attempt,
                    attempts, problem, pause)
        time.sleep(pause)
    tried = f" after {attempt} attempts" if attempt > 1 else ""
    raise SinkError(f"S3 upload to {where} failed{tried}: {problem}")


def write_file(data: bytes, fmt: str, directory: Path, name: str) -> Path:
    """Write the file under a temporary name beside its own, then rename it into place: a reader
    never sees part of one, and a write that fails (a full disk) leaves nothing under the name."""
    path = directory / f"{re.sub(r'[^A-Za-z0-9_.-]', '_', name) or 'tts'}.{fmt}"
    staging = None
    try:
        directory.mkdir(parents=True, exist_ok=True)
        with tempfile.NamedTemporaryFile(dir=directory, prefix=f".{path.name}.", suffix=".part", delete=False) as out:
            staging = Path(out.name)
            out.write(data)
            out.flush()
            os.fsync(out.fileno())
        os.replace(staging, path)
    except OSError as exc:
        if staging is not None:
            staging.unlink(missing_ok=True)
        raise SinkError(f"Could not write {path}: {exc.strerror or exc}") from None
    return path
