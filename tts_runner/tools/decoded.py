"""Reading the files the worker makes with other code than the worker's (it writes them with
libsndfile and ffmpeg's encoders, and counts their duration from the samples it made): the
standard library's `wave` for WAV, ffmpeg's decoder for MP3, FLAC, Ogg Opus and AAC, and the byte
count for raw PCM. The tests and the soak (tts_runner/tools/soak.py) check answers with it."""

from __future__ import annotations

import io
import subprocess
import tempfile
import wave

from tts_runner.audio.formats import ffmpeg_path


def file_seconds(data: bytes, fmt: str, rate: int = 24000) -> float:
    """The file's length, checking it is mono at `rate` where the format says."""
    if fmt == "pcm":
        if len(data) % 2:
            raise ValueError(f"raw 16-bit PCM of an odd length ({len(data)} bytes)")
        return len(data) / 2 / rate
    if fmt == "wav":
        with wave.open(io.BytesIO(data)) as w:
            if (w.getframerate(), w.getnchannels(), w.getsampwidth()) != (rate, 1, 2):
                raise ValueError(f"a WAV of {w.getframerate()} Hz, {w.getnchannels()} channels, "
                                 f"{8 * w.getsampwidth()} bits; expected {rate} Hz mono 16-bit")
            return w.getnframes() / w.getframerate()
    # ffmpeg decodes to raw 16-bit mono at `rate` (an Ogg Opus stream decodes at 48 kHz first); from a
    # file (not a pipe: it seeks) it honours the encoder delay and padding an MP3 records, as a
    # gapless player does
    with tempfile.NamedTemporaryFile(suffix=f".{fmt}") as file:
        file.write(data)
        file.flush()
        proc = subprocess.run([ffmpeg_path(), "-hide_banner", "-loglevel", "error", "-i", file.name, "-f", "s16le",
                               "-ac", "1", "-ar", str(rate), "pipe:1"], capture_output=True, check=True)
    return len(proc.stdout) / 2 / rate


AAC_FRAME = 1024  # samples; ADTS records no encoder delay or padding, so a decoder plays both


def agrees(data: bytes, fmt: str, seconds: float, rate: int = 24000) -> bool:
    """Does a duration the worker reported agree with the file (to the millisecond it reports; for
    AAC in ADTS, which keeps no gapless information, the file is longer by its priming frame and the
    last frame's padding, less than two frames)?"""
    return lengths_agree(file_seconds(data, fmt, rate), fmt, seconds, rate)


def lengths_agree(found: float, fmt: str, seconds: float, rate: int = 24000) -> bool:
    """agrees() for a file already decoded to `found` seconds."""
    if fmt == "aac":
        return 0 <= found - seconds < 2 * AAC_FRAME / rate + 0.0015
    return abs(seconds - found) < 0.0015
