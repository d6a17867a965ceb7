"""Reading the files the worker makes with other code than the worker's own (tts_runner.audio
measures with libsndfile and encodes with libsndfile and ffmpeg): the standard library's `wave` for
WAV, mutagen for MP3 (its frame count), FLAC and Ogg Opus, and the byte count for raw PCM."""

from __future__ import annotations

import io
import wave

from mutagen.flac import FLAC
from mutagen.mp3 import MP3
from mutagen.oggopus import OggOpus

# An MP3 holds whole frames of 1152 samples, and the encoder adds its delay and padding (which a
# gapless player removes, and a frame count keeps): at 24 kHz, up to about 0.1 s more.
MP3_SLACK_SECONDS = 0.1


def file_seconds(data: bytes, fmt: str, rate: int = 24000) -> float:
    """The file's length, checking it is mono at `rate`: exact for WAV, FLAC, Opus and PCM; for MP3,
    its frames' length (a little above the audio's). Ogg Opus always decodes at 48 kHz."""
    if fmt == "pcm":
        assert len(data) % 2 == 0
        return len(data) / 2 / rate
    if fmt == "wav":
        with wave.open(io.BytesIO(data)) as w:
            assert (w.getframerate(), w.getnchannels(), w.getsampwidth()) == (rate, 1, 2)
            return w.getnframes() / w.getframerate()
    info = {"mp3": MP3, "flac": FLAC, "opus": OggOpus}[fmt](io.BytesIO(data)).info
    assert info.channels == 1 and (fmt == "opus" or info.sample_rate == rate)
    return info.length


def agrees(data: bytes, fmt: str, seconds: float, rate: int = 24000) -> bool:
    """Does a duration the worker reported agree with the file?"""
    length = file_seconds(data, fmt, rate)
    if fmt == "mp3":
        return seconds <= length + 0.0005 <= seconds + MP3_SLACK_SECONDS
    return abs(seconds - length) < 0.0015
