"""The `server` group as typed values (built by tts_runner/edge/build.py)."""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path


@dataclass(frozen=True)
class ServerSettings:
    host: str = "127.0.0.1"
    port: int = 8000
    health_port: int | None = None           # another port where GET /ping answers too
    api_key: str | None = None               # bearer key of the /v1 routes; None: open
    max_body_bytes: int = 16_000_000
    body_timeout_seconds: float = 30.0
    request_timeout_seconds: float = 900.0
    shutdown_grace_seconds: float = 20.0     # SIGTERM: how long the requests running get to finish
    stream_buffer_bytes: int = 4_000_000     # what a stream holds for a reader slower than the audio is made
    stream_stall_seconds: float = 30.0       # a stream whose reader makes no room this long is dropped
    max_input_chars: int = 20000
    voices_dir: Path = Path("saved_voices")
    clone_model: str = "1.7B-Base"
    default_format: str = "mp3"
    models: Mapping[str, str] = None         # OpenAI model name -> our variant
    voices: Mapping[str, str] = None         # OpenAI voice name -> our speaker or alias

    def __repr__(self) -> str:  # the key never reaches a log
        return f"ServerSettings(host={self.host!r}, port={self.port}, api_key={'set' if self.api_key else None})"
