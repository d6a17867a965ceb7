"""Keep secrets out of everything the worker returns or logs.

A secret is the value of any environment variable whose name contains KEY, SECRET, TOKEN or
PASSWORD (S3_SECRET_KEY, S3_ACCESS_KEY, RUNPOD_AI_API_KEY, ...), plus values given explicitly.
"""

from __future__ import annotations

import logging
import os
import re
from collections.abc import Iterable
from typing import Any

_SECRET_NAME = re.compile(r"KEY|SECRET|TOKEN|PASSWORD", re.IGNORECASE)
MASK = "[REDACTED]"
_MIN_LEN = 4  # shorter values would mask ordinary words


def secret_values(extra: Iterable[str | None] = ()) -> list[str]:
    values = {v for k, v in os.environ.items() if _SECRET_NAME.search(k)}
    values.update(v for v in extra if v)
    return sorted((v for v in values if len(v) >= _MIN_LEN), key=len, reverse=True)


def redact(value: Any, secrets: list[str]) -> Any:
    """`value` with every secret replaced by [REDACTED], recursively through dicts and lists."""
    if isinstance(value, str):
        for secret in secrets:
            value = value.replace(secret, MASK)
        return value
    if isinstance(value, dict):
        return {k: redact(v, secrets) for k, v in value.items()}
    if isinstance(value, list):
        return [redact(v, secrets) for v in value]
    return value


class RedactingFilter(logging.Filter):
    """A logging filter that masks secrets in every record's final message."""

    def __init__(self, secrets: list[str]):
        super().__init__()
        self.secrets = secrets

    def filter(self, record: logging.LogRecord) -> bool:
        message = record.getMessage()
        masked = redact(message, self.secrets)
        if masked != message or record.exc_info:
            record.msg, record.args = masked, None
            if record.exc_info:
                import traceback

                record.msg += "\n" + redact("".join(traceback.format_exception(*record.exc_info)), self.secrets)
                record.exc_info = None
        return True


def install_log_filter(secrets: list[str]) -> None:
    """Mask secrets in every handler attached to the root logger now, replacing the filter an
    earlier call installed (each worker or multirun job calls this once)."""
    log_filter = RedactingFilter(secrets)
    root = logging.getLogger()
    if not root.handlers:
        logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    for handler in root.handlers:
        for old in [f for f in handler.filters if isinstance(f, RedactingFilter)]:
            handler.removeFilter(old)
        handler.addFilter(log_filter)


def protect(credentials: Iterable[str | None] = ()) -> list[str]:
    """The secrets to mask (the environment's plus `credentials`, e.g. the sink's keys), with
    logging masked too."""
    secrets = secret_values(credentials)
    install_log_filter(secrets)
    return secrets
