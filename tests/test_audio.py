import io

import numpy as np
import pytest
import soundfile as sf

from tts_runner import audio


def test_crossfade_length_arithmetic():
    sr = 1000
    pieces = [np.ones(500, np.float32), np.ones(300, np.float32), np.ones(200, np.float32)]
    out = audio.crossfade_concat(pieces, sr, crossfade_ms=50)  # 50 samples of overlap
    assert out.size == 500 + 300 + 200 - 2 * 50
    assert np.allclose(out, 1.0)  # a constant stays constant across the joins


def test_crossfade_ramps_linearly_between_pieces():
    out = audio.crossfade_concat([np.ones(100, np.float32), np.zeros(100, np.float32)], 1000, 10)
    ramp = out[90:100]
    assert out.size == 190 and np.all(np.diff(ramp) < 0) and 0 < ramp.min() and ramp.max() < 1
    assert np.all(out[:90] == 1) and np.all(out[100:] == 0)


def test_crossfade_shortens_for_short_pieces_and_handles_edge_cases():
    out = audio.crossfade_concat([np.ones(10, np.float32), np.ones(4, np.float32)], 1000, 50)
    assert out.size == 10  # overlap limited to the 4-sample piece
    assert audio.crossfade_concat([], 24000, 40).size == 0
    assert audio.crossfade_concat([np.ones(7)], 24000, 40).size == 7
    assert audio.crossfade_concat([np.ones(5), np.ones(5)], 24000, 0).size == 10


def test_segments_are_joined_in_order_with_a_gap():
    out = audio.join_segments([np.full(10, 0.5), np.full(20, -0.5)], 1000, gap_ms=5)
    assert out.size == 35
    assert np.all(out[:10] == 0.5) and np.all(out[10:15] == 0) and np.all(out[15:] == -0.5)


def test_wav_is_16_bit_pcm_24k_mono():
    samples = (0.5 * np.sin(np.linspace(0, 200, 24000))).astype(np.float32)
    data = audio.encode(samples, 24000, "wav")
    info = sf.info(io.BytesIO(data))
    assert (info.samplerate, info.channels, info.subtype, info.frames) == (24000, 1, "PCM_16", 24000)
    assert audio.duration_seconds(data, "wav") == 1.0


def test_encode_clips_and_replaces_non_finite_samples():
    data = audio.encode(np.array([2.0, -3.0, np.nan, 0.25], np.float32), 24000, "wav")
    back, _ = sf.read(io.BytesIO(data), dtype="float32")
    assert np.allclose(back, [1.0, -1.0, 0.0, 0.25], atol=1e-4)


def test_mp3_round_trip_keeps_the_duration():
    samples = (0.3 * np.sin(np.linspace(0, 4000, 24000 * 3))).astype(np.float32)
    data = audio.encode(samples, 24000, "mp3")
    assert data[:3] == b"ID3" or data[0] == 0xFF
    decoded, sr = audio.decode(data, "mp3")
    assert sr == 24000
    # MP3 adds encoder delay and padding: a few frames of 1152 samples at most.
    assert abs(decoded.size - samples.size) <= 3 * 1152
    assert abs(audio.duration_seconds(data, "mp3") - 3.0) < 0.15


def test_unknown_format_is_refused():
    with pytest.raises(ValueError, match="allowed: wav, mp3"):
        audio.encode(np.zeros(10, np.float32), 24000, "ogg")
