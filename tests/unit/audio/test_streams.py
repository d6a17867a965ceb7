"""Streamed encoding (tts_runner/audio/streams.py): the pieces joined decode, by ffmpeg, to the audio
given, at its length (divided by the speed), and bytes come out before the stream ends."""

import io
import subprocess
import threading
import wave

import numpy as np
import pytest
import soundfile as sf

from tests.helpers.media import tone
from tts_runner.audio.formats import ffmpeg_path
from tts_runner.audio.streams import STREAM_FORMATS, StreamEncoder


def decoded(data: bytes, fmt: str) -> np.ndarray:
    given = {"pcm": ["-f", "s16le", "-ar", "24000", "-ac", "1"], "aac": ["-f", "aac"]}.get(fmt, [])
    proc = subprocess.run([ffmpeg_path(), "-v", "error", *given, "-i", "pipe:0", "-ac", "1", "-ar", "24000",
                           "-f", "wav", "pipe:1"], input=data, capture_output=True, check=True)
    return sf.read(io.BytesIO(proc.stdout), dtype="float32")[0]


def streamed(fmt: str, samples: np.ndarray, speed: float = 1.0, piece: int = 2400):
    out, early = [], threading.Event()
    encoder = StreamEncoder(fmt, 24000, out.append, speed=speed)
    for i in range(0, samples.size, piece):
        encoder.encode(samples[i:i + piece])
        if i >= samples.size // 2 and out:
            early.set()
    if out:  # whatever ffmpeg had emitted while the second half was still being fed
        early.set()
    encoder.finish()
    return b"".join(out), encoder, early.is_set()


@pytest.mark.parametrize("fmt", STREAM_FORMATS)
@pytest.mark.parametrize("speed", [1.0, 1.5])
def test_pieces_joined_decode_to_the_audio_at_its_length(fmt, speed):
    samples = tone(3.0)
    data, encoder, _ = streamed(fmt, samples, speed)
    back = decoded(data, fmt)
    want = samples.size / speed
    slack = {"mp3": 3 * 1152, "aac": 2 * 1024 + 64, "opus": 960}.get(fmt, 0) + (480 if speed != 1 else 0)
    assert abs(back.size - want) <= slack, (back.size, want)
    assert encoder.seconds == pytest.approx(want / 24000, abs=0.03)
    if fmt in ("pcm", "wav") and speed == 1.0:  # lossless: the samples themselves
        assert np.abs(back - samples).max() < 1e-4


def test_wav_stream_has_an_unknown_length_header_a_reader_accepts():
    data, _, _ = streamed("wav", tone(1.0))
    assert data[4:8] == b"\xff\xff\xff\xff" and data[40:44] == b"\xff\xff\xff\xff"
    with wave.open(io.BytesIO(data)) as w:
        assert (w.getframerate(), w.getnchannels(), w.getsampwidth()) == (24000, 1, 2)


@pytest.mark.parametrize("fmt", ["mp3", "opus", "aac", "pcm"])
def test_bytes_come_out_while_the_stream_is_still_fed(fmt):
    """A stream that only gave its bytes at the end would not be a stream: 6 s fed in 0.1 s pieces,
    the encoder has emitted some before the last piece goes in."""
    out = []
    seen = threading.Event()
    encoder = StreamEncoder(fmt, 24000, lambda b: (out.append(b), seen.set()))
    samples = tone(6.0)
    for i in range(0, samples.size - 2400, 2400):
        encoder.encode(samples[i:i + 2400])
    assert seen.wait(30), "no bytes before the end"  # an event, not a timer: ffmpeg's reader thread sets it
    encoder.encode(samples[-2400:])
    encoder.finish()


def test_an_abandoned_stream_stops_its_encoder():
    encoder = StreamEncoder("aac", 24000, lambda b: None)
    encoder.encode(tone(0.5))
    encoder.close()
    assert encoder.proc.poll() is not None
