"""Assembly and encoding: chunks -> segment (crossfaded) -> job (joined) -> WAV or MP3 bytes."""

from __future__ import annotations

import functools
import io
import shutil
import subprocess
import warnings

import numpy as np
import soundfile as sf

from tts_runner.errors import SinkError

FORMATS = ("wav", "mp3")
MP3_BITRATE = "128k"


def crossfade_concat(pieces: list[np.ndarray], sample_rate: int, crossfade_ms: float) -> np.ndarray:
    """Concatenate pieces, overlapping each pair by a linear crossfade of `crossfade_ms`.

    The result has sum(len) - n * (len(pieces) - 1) samples, where n is the overlap (shortened
    where a piece is shorter than the crossfade). A constant signal stays constant across a join.
    """
    if not pieces:
        return np.zeros(0, dtype=np.float32)
    out = np.asarray(pieces[0], dtype=np.float32)
    wanted = int(round(sample_rate * crossfade_ms / 1000.0))
    for piece in pieces[1:]:
        piece = np.asarray(piece, dtype=np.float32)
        n = min(wanted, len(out), len(piece))
        if n == 0:
            out = np.concatenate([out, piece])
            continue
        fade_in = np.linspace(0.0, 1.0, n + 2, dtype=np.float32)[1:-1]
        mixed = out[-n:] * (1.0 - fade_in) + piece[:n] * fade_in
        out = np.concatenate([out[:-n], mixed, piece[n:]])
    return out


def join_segments(segments: list[np.ndarray], sample_rate: int, gap_ms: float) -> np.ndarray:
    """Concatenate segments in order with `gap_ms` of silence between them."""
    gap = np.zeros(int(round(sample_rate * gap_ms / 1000.0)), dtype=np.float32)
    parts: list[np.ndarray] = []
    for i, segment in enumerate(segments):
        if i:
            parts.append(gap)
        parts.append(np.asarray(segment, dtype=np.float32))
    return np.concatenate(parts) if parts else np.zeros(0, dtype=np.float32)


def encode(audio: np.ndarray, sample_rate: int, fmt: str) -> bytes:
    """WAV: 16-bit PCM mono. MP3: through pydub and ffmpeg, mono at MP3_BITRATE."""
    pcm = np.clip(np.nan_to_num(audio), -1.0, 1.0)
    buf = io.BytesIO()
    sf.write(buf, pcm, sample_rate, format="WAV", subtype="PCM_16")
    if fmt == "wav":
        return buf.getvalue()
    if fmt == "mp3":
        with warnings.catch_warnings():  # pydub warns at import when ffmpeg is not on PATH
            warnings.simplefilter("ignore", RuntimeWarning)
            from pydub import AudioSegment
        AudioSegment.converter = ffmpeg_path()
        segment = AudioSegment.from_wav(io.BytesIO(buf.getvalue()))
        out = io.BytesIO()
        segment.export(out, format="mp3", bitrate=MP3_BITRATE)
        return out.getvalue()
    raise ValueError(f"unknown format {fmt!r}; allowed: {', '.join(FORMATS)}")


def decode(data: bytes, fmt: str) -> tuple[np.ndarray, int]:
    """Decode encoded audio back to float samples (MP3 through ffmpeg)."""
    if fmt == "mp3":
        proc = subprocess.run(
            [ffmpeg_path(), "-hide_banner", "-loglevel", "error", "-f", "mp3", "-i", "pipe:0",
             "-f", "wav", "-acodec", "pcm_s16le", "pipe:1"],
            input=data, capture_output=True, check=False,
        )
        if proc.returncode != 0:
            raise SinkError(f"ffmpeg could not decode the MP3: {proc.stderr.decode(errors='replace')[:300]}")
        data = proc.stdout
    samples, sample_rate = sf.read(io.BytesIO(data), dtype="float32", always_2d=False)
    return samples, sample_rate


def duration_seconds(data: bytes, fmt: str) -> float:
    """Duration of the encoded file's audio, read by libsndfile (for MP3 it honours the encoder's
    delay and padding written in the file, as a gapless player does)."""
    info = sf.info(io.BytesIO(data))
    return round(info.frames / info.samplerate, 3)


@functools.cache
def ffmpeg_path() -> str:
    """ffmpeg from PATH, else the binary the imageio-ffmpeg package bundles."""
    found = shutil.which("ffmpeg")
    if found:
        return found
    try:
        import imageio_ffmpeg

        return imageio_ffmpeg.get_ffmpeg_exe()
    except Exception as exc:  # noqa: BLE001 - any failure means: no ffmpeg
        raise SinkError(
            "MP3 needs ffmpeg: install it (apt-get install ffmpeg) or the imageio-ffmpeg package."
        ) from exc
