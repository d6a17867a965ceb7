"""Voices saved at run time (the HTTP server's POST /v1/audio/voices): one folder per voice under a
directory on disk (the network volume on RunPod), so they outlive the worker.

Each voice is `<dir>/<name>/voice.wav` (the recording as checked, mono 24 kHz float) and
`<dir>/<name>/voice.json` ({"name", "ref_text", "seconds", "created"}). A name is 1 to 64 letters,
digits, '-' or '_', starting with a letter or digit: never a path. A voice is written to a temporary
folder and renamed into place, so a reader never sees half of one. The store is bounded
(voices.saved_max_voices, voices.saved_max_megabytes): a save past either bound is refused with
StoreFull, naming the bound; nothing saved is ever dropped to make room.
"""

from __future__ import annotations

import io
import json
import re
import shutil
import tempfile
import threading
import time
from dataclasses import dataclass
from pathlib import Path

import soundfile as sf

from tts_runner.audio.codec import SAMPLE_RATE
from tts_runner.errors import InputError, NotFound, StoreFull
from tts_runner.voice.clones import Cloning, read_recording

NAME = re.compile(r"[A-Za-z0-9][A-Za-z0-9_-]{0,63}")


class VoiceExists(InputError):
    """A voice of that name is saved already."""


class VoiceNotFound(NotFound):
    """No voice of that name is saved."""


@dataclass(frozen=True)
class StoredVoice:
    name: str
    ref_text: str | None
    seconds: float
    created: float
    audio: Path

    def recording(self) -> bytes:
        return self.audio.read_bytes()


def check_name(name: str, where: str = "name") -> str:
    if not isinstance(name, str) or not NAME.fullmatch(name):
        shown = name if isinstance(name, str) and len(name) <= 80 else f"{str(name)[:80]}..."
        raise InputError(f"Invalid input at {where}: {shown!r} is not a voice name: use 1 to 64 letters, digits, "
                         "'-' or '_', starting with a letter or digit.")
    return name


@dataclass(frozen=True)
class StoreBounds:
    max_voices: int = 1000
    max_megabytes: float = 2048.0


class VoiceStore:
    def __init__(self, folder: Path, cloning: Cloning, reserved: set[str] = frozenset(),
                 bounds: StoreBounds = StoreBounds()):
        """`reserved`: names taken by the config's voices (aliases, speakers, OpenAI's names), any case."""
        self.folder = Path(folder)
        self.cloning = cloning
        self.reserved = {r.lower() for r in reserved}
        self.bounds = bounds
        self.lock = threading.Lock()

    def save(self, name: str, data: bytes, ref_text: str | None) -> StoredVoice:
        """Check the recording as a payload's ref_audio is checked, and keep it under `name`."""
        check_name(name)
        if name.lower() in self.reserved:
            raise VoiceExists(f"Invalid input at name: '{name}' is a voice of the configuration; pick another name.")
        if ref_text is not None and len(ref_text) > 2000:
            raise InputError("Invalid input at ref_text: at most 2000 characters.")
        samples = read_recording(data, "audio_sample", self.cloning)
        with self.lock:
            if self._path(name).exists():
                raise VoiceExists(f"Invalid input at name: a voice '{name}' is saved already; delete it first "
                                  f"(DELETE /v1/audio/voices/{name}).")
            buffer = io.BytesIO()
            sf.write(buffer, samples, SAMPLE_RATE, format="WAV", subtype="FLOAT")
            self.check_room(buffer.getbuffer().nbytes)
            self.folder.mkdir(parents=True, exist_ok=True)
            staging = Path(tempfile.mkdtemp(prefix=f".{name}.", dir=self.folder))
            try:
                (staging / "voice.wav").write_bytes(buffer.getvalue())
                meta = {"name": name, "ref_text": ref_text or None, "seconds": round(samples.size / SAMPLE_RATE, 3),
                        "created": round(time.time(), 3)}
                (staging / "voice.json").write_text(json.dumps(meta))
                staging.rename(self._path(name))
            except BaseException:
                shutil.rmtree(staging, ignore_errors=True)
                raise
        return self.get(name)

    def get(self, name: str) -> StoredVoice | None:
        if not isinstance(name, str) or not NAME.fullmatch(name):
            return None
        path = self._path(name)
        try:
            meta = json.loads((path / "voice.json").read_text())
        except (OSError, ValueError):
            return None
        return StoredVoice(name, meta.get("ref_text"), float(meta.get("seconds", 0)), float(meta.get("created", 0)),
                           path / "voice.wav")

    def names(self) -> list[str]:
        if not self.folder.is_dir():
            return []
        return sorted(p.name for p in self.folder.iterdir() if NAME.fullmatch(p.name) and self.get(p.name))

    def delete(self, name: str) -> None:
        check_name(name)
        with self.lock:
            path = self._path(name)
            if not path.is_dir():
                raise VoiceNotFound(f"Invalid input at voice: no saved voice '{name}'.")
            trash = Path(tempfile.mkdtemp(prefix=f".{name}.deleted.", dir=self.folder))
            path.rename(trash / name)
            shutil.rmtree(trash, ignore_errors=True)

    def usage(self) -> tuple[int, int]:
        """(voices saved, bytes they take on disk)."""
        names = self.names()
        return len(names), sum(f.stat().st_size for n in names for f in self._path(n).iterdir() if f.is_file())

    def check_room(self, size: int = 0) -> None:
        """StoreFull unless one more voice of `size` bytes fits in the bounds."""
        count, used = self.usage()
        limit = int(self.bounds.max_megabytes * 1024 * 1024)
        if count >= self.bounds.max_voices:
            raise StoreFull(f"The saved-voice store is full: it holds {count} voices, its bound "
                            f"(voices.saved_max_voices {self.bounds.max_voices}); delete one first "
                            "(DELETE /v1/audio/voices/{name}).")
        if used + size > limit:
            raise StoreFull(f"The saved-voice store is full: {used / 2**20:.1f} MB saved and this voice's "
                            f"{size / 2**20:.1f} MB would pass its bound (voices.saved_max_megabytes "
                            f"{self.bounds.max_megabytes:g}); delete a voice first (DELETE /v1/audio/voices/{{name}}).")

    def _path(self, name: str) -> Path:
        return self.folder / name
