"""Reading the files the worker makes with other code than the worker's own (tts_runner.audio
measures with libsndfile and encodes with ffmpeg): the standard library's `wave` for WAV, and
mutagen's MP3 frame count for MP3."""

from __future__ import annotations

import io
import wave

from mutagen.mp3 import MP3

# An MP3 holds whole frames of 1152 samples, and the encoder adds its delay and padding (which a
# gapless player removes, and a frame count keeps): at 24 kHz, up to about 0.1 s more.
MP3_SLACK_SECONDS = 0.1


def file_seconds(data: bytes, fmt: str) -> float:
    """The file's length: exact for WAV; for MP3, its frames' length (a little above the audio's)."""
    if fmt == "wav":
        with wave.open(io.BytesIO(data)) as w:
            assert (w.getframerate(), w.getnchannels(), w.getsampwidth()) == (24000, 1, 2)
            return w.getnframes() / w.getframerate()
    info = MP3(io.BytesIO(data)).info
    assert info.sample_rate == 24000 and info.channels == 1
    return info.length


def agrees(data: bytes, fmt: str, seconds: float) -> bool:
    """Does a duration the worker reported agree with the file?"""
    length = file_seconds(data, fmt)
    if fmt == "wav":
        return seconds == round(length, 3)
    return seconds <= length + 0.0005 <= seconds + MP3_SLACK_SECONDS
