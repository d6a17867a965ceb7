"""Voice cloning with the Base models: the reference recording and its clone prompt.

A reference comes from a payload (`ref_audio`: base64 of a WAV, FLAC, MP3 or OGG file, or an
https:// URL, fetched under tts_runner.voice.fetch's rules) or from a saved voice of the config
(`voices.clones.<name>`: a path or URL only the config sets). Either way it is checked against the
`cloning` limits (decodable, at least 1 s, at most 30 s, at most 10 MB, not silent), each refusal
naming where it came from, and brought to mono at 24 kHz. Its clone prompt (the speaker embedding,
and in-context codes when a transcript is given) is computed once per distinct reference and
loaded model and kept in a bounded least-recently-used cache.
"""

from __future__ import annotations

import base64
import binascii
import hashlib
import io
import threading
from collections import OrderedDict
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import soundfile as sf

from tts_runner.audio.codec import SAMPLE_RATE
from tts_runner.audio.dsp import resample
from tts_runner.errors import InputError
from tts_runner.voice.fetch import FetchError, FetchRules, fetch
from tts_runner.voice.voices import SavedVoice

REPO_ROOT = Path(__file__).resolve().parents[2]


CLONE_MODES = ("xvector", "icl")


@dataclass(frozen=True)
class Cloning:
    """How a reference recording is cloned, its limits, and how one is fetched (the `cloning` group)."""

    mode: str = "xvector"   # xvector: the speaker embedding alone; icl: with the recording's codes and transcript
    min_seconds: float = 1.0
    max_seconds: float = 30.0
    max_bytes: int = 10_000_000
    silence_dbfs: float = -60.0
    fetch: FetchRules = FetchRules()


@dataclass(frozen=True, eq=False)
class Reference:
    samples: np.ndarray   # mono float32 at 24 kHz
    text: str | None      # its transcript, for in-context cloning; None: the speaker embedding alone
    digest: str           # sha256 of the samples and the transcript: the cache key
    source: str           # for the metadata: "clone:<name>" or "reference:<first 12 of the digest>"
    where: str = field(default="")  # where it came from, for messages


def read_recording(data: bytes, where: str, limits: Cloning) -> np.ndarray:
    """The recording as mono float32 at 24 kHz, or one clear error naming `where` and the limit."""
    if len(data) > limits.max_bytes:
        raise InputError(f"Invalid input at {where}: the recording is {len(data)} bytes, over the limit of "
                         f"{limits.max_bytes}.")
    try:
        samples, rate = sf.read(io.BytesIO(data), dtype="float32", always_2d=True)
    except (sf.LibsndfileError, RuntimeError, TypeError) as exc:
        raise InputError(f"Invalid input at {where}: not audio in a format read here (WAV, FLAC, MP3, OGG): "
                         f"{str(exc).splitlines()[0][:120]}") from None
    samples = samples.mean(axis=1) if samples.size else np.zeros(0, np.float32)
    seconds = samples.size / rate if rate else 0.0
    if seconds < limits.min_seconds:
        raise InputError(f"Invalid input at {where}: the recording is {seconds:.2f} s long; at least "
                         f"{limits.min_seconds:g} s is needed.")
    if seconds > limits.max_seconds:
        raise InputError(f"Invalid input at {where}: the recording is {seconds:.1f} s long; at most "
                         f"{limits.max_seconds:g} s is taken (cloning.max_seconds).")
    level = 20 * np.log10(max(float(np.sqrt(np.mean(np.square(samples, dtype=np.float64)))), 1e-12))
    if level < limits.silence_dbfs:
        raise InputError(f"Invalid input at {where}: the recording is silent ({level:.0f} dBFS; at least "
                         f"{limits.silence_dbfs:g} dBFS is needed).")
    return resample(samples.astype(np.float32), rate, SAMPLE_RATE)


def payload_bytes(value: str, where: str, cloning: Cloning) -> bytes:
    """A payload's ref_audio: fetched when it is a URL, decoded when it is base64."""
    if "://" in value[:16] or value.lower().startswith(("data:", "file:")):
        return fetched(value, where, cloning)
    try:
        return base64.b64decode(value, validate=True)
    except (binascii.Error, ValueError):
        raise InputError(f"Invalid input at {where}: neither base64 nor an https:// URL.") from None


def fetched(url: str, where: str, cloning: Cloning) -> bytes:
    rules = cloning.fetch
    try:
        return fetch(url, cloning.max_bytes, rules.timeout_seconds, rules.allow_http, rules.allowed_hosts,
                     rules.max_redirects)
    except FetchError as exc:
        raise InputError(f"Invalid input at {where}: {exc}.") from None


def saved_bytes(name: str, clone: SavedVoice, cloning: Cloning) -> bytes:
    """A saved voice's recording: a path (relative to the repository) or a URL, from the config."""
    where = f"voices.clones.{name}.audio"
    source = str(clone.audio)
    if "://" in source:
        return fetched(source, where, cloning)
    path = Path(source) if Path(source).is_absolute() else REPO_ROOT / source
    try:
        return path.read_bytes()
    except OSError as exc:
        raise InputError(f"Invalid setting {where}: {path} cannot be read ({exc.strerror}).") from None


def reference(data: bytes, text: str | None, where: str, cloning: Cloning, name: str | None = None) -> Reference:
    samples = read_recording(data, where, cloning)
    text = text or None
    digest = hashlib.sha256(samples.tobytes() + b"\0" + (text or "").encode()).hexdigest()
    return Reference(samples, text, digest, f"clone:{name}" if name else f"reference:{digest[:12]}", where)


class PromptCache:
    """Clone prompts by reference digest, least recently used out first, bounded in entries and in
    megabytes (what a prompt holds: its in-context codes and its speaker embedding). Thread-safe."""

    def __init__(self, max_entries: int, max_megabytes: float):
        self.max_entries, self.max_bytes = int(max_entries), int(max_megabytes * 2**20)
        self.entries: OrderedDict[str, tuple[Any, int]] = OrderedDict()
        self.lock = threading.Lock()
        self.computed = 0  # prompts made, all time (a hit makes none)

    def usage(self) -> tuple[int, int]:
        """(prompts held, their bytes)."""
        with self.lock:
            return len(self.entries), sum(s for _, s in self.entries.values())

    def get(self, ref: Reference, compute: Callable[[Reference], Any]) -> Any:
        with self.lock:
            if ref.digest in self.entries:
                self.entries.move_to_end(ref.digest)
                return self.entries[ref.digest][0]
        prompt = compute(ref)
        size = sum(t.numel() * t.element_size() for t in (prompt.ref_code, prompt.ref_spk_embedding) if t is not None)
        with self.lock:
            self.computed += 1
            self.entries[ref.digest] = (prompt, size)
            self.entries.move_to_end(ref.digest)
            while len(self.entries) > self.max_entries or (
                    len(self.entries) > 1 and sum(s for _, s in self.entries.values()) > self.max_bytes):
                self.entries.popitem(last=False)
        return prompt
