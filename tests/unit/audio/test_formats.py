"""Audio files (tts_runner/audio/formats.py): each format encodes what it should and reads back, by
other code too, to the duration it reports."""

import io

import numpy as np
import pytest
import soundfile as sf
from mutagen.mp3 import MP3

from tests.helpers.media import agrees, file_seconds, tone
from tts_runner.audio import formats


def test_wav_is_16_bit_pcm_24k_mono():
    samples = (0.5 * np.sin(np.linspace(0, 200, 24000))).astype(np.float32)
    data = formats.encode(samples, 24000, "wav")
    info = sf.info(io.BytesIO(data))
    assert (info.samplerate, info.channels, info.subtype, info.frames) == (24000, 1, "PCM_16", 24000)


def test_encode_clips_and_replaces_non_finite_samples():
    data = formats.encode(np.array([2.0, -3.0, np.nan, 0.25], np.float32), 24000, "wav")
    back, _ = sf.read(io.BytesIO(data), dtype="float32")
    assert np.allclose(back, [1.0, -1.0, 0.0, 0.25], atol=1e-4)


def test_mp3_round_trip_keeps_the_duration():
    samples = (0.3 * np.sin(np.linspace(0, 4000, 24000 * 3))).astype(np.float32)
    data = formats.encode(samples, 24000, "mp3")
    assert data[:3] == b"ID3" or data[0] == 0xFF
    decoded, sr = formats.read(data, "mp3")
    assert sr == 24000
    # MP3 adds encoder delay and padding: a few frames of 1152 samples at most.
    assert abs(decoded.size - samples.size) <= 3 * 1152
    assert file_seconds(data, "mp3") == 3.0  # read gapless: the encoder's delay and padding removed


def test_unknown_format_is_refused():
    with pytest.raises(ValueError, match="allowed: wav, mp3, flac, opus, aac, pcm"):
        formats.encode(np.zeros(10, np.float32), 24000, "ogg")


@pytest.mark.parametrize("fmt", formats.FORMATS)
@pytest.mark.parametrize("rate", [16000, 24000, 48000])
def test_every_format_decodes_back_to_the_duration_it_reports(fmt, rate):
    samples = tone(2.37, rate)
    data = formats.encode(samples, rate, fmt)
    assert agrees(data, fmt, 2.37, rate)  # read back by other code (wave, ffmpeg)
    if fmt in ("wav", "flac", "pcm"):  # lossless: the samples themselves come back
        back = (np.frombuffer(data, "<i2") / 32768 if fmt == "pcm" else sf.read(io.BytesIO(data))[0])
        assert np.abs(back - samples).max() < 1e-4


@pytest.mark.parametrize("rate, kbps", [(24000, 64), (24000, 160), (48000, 320), (16000, 32)])
def test_mp3_bitrate_is_the_one_asked_for(rate, kbps):
    info = MP3(io.BytesIO(formats.encode(tone(2.0, rate), rate, "mp3", kbps))).info
    assert (info.sample_rate, info.bitrate) == (rate, kbps * 1000)


def test_opus_refuses_a_rate_it_cannot_code():
    with pytest.raises(ValueError, match="Opus codes 8000, 12000, 16000, 24000, 48000 Hz, not 44100"):
        formats.encode(tone(0.5, 44100), 44100, "opus")
