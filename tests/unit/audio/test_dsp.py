"""Signal processing (tts_runner/audio/dsp.py): crossfades, joins, resampling, trimming, loudness under a true-peak ceiling."""


import numpy as np
import pytest

from tests.helpers.media import tone
from tts_runner.audio import dsp


def test_crossfade_length_arithmetic():
    sr = 1000
    pieces = [np.ones(500, np.float32), np.ones(300, np.float32), np.ones(200, np.float32)]
    out = dsp.crossfade_concat(pieces, sr, crossfade_ms=50)  # 50 samples of overlap
    assert out.size == 500 + 300 + 200 - 2 * 50
    assert np.allclose(out, 1.0)  # a constant stays constant across the joins


def test_crossfade_ramps_linearly_between_pieces():
    out = dsp.crossfade_concat([np.ones(100, np.float32), np.zeros(100, np.float32)], 1000, 10)
    ramp = out[90:100]
    assert out.size == 190 and np.all(np.diff(ramp) < 0) and 0 < ramp.min() and ramp.max() < 1
    assert np.all(out[:90] == 1) and np.all(out[100:] == 0)


def test_crossfade_shortens_for_short_pieces_and_handles_edge_cases():
    out = dsp.crossfade_concat([np.ones(10, np.float32), np.ones(4, np.float32)], 1000, 50)
    assert out.size == 10  # overlap limited to the 4-sample piece
    assert dsp.crossfade_concat([], 24000, 40).size == 0
    assert dsp.crossfade_concat([np.ones(7)], 24000, 40).size == 7
    assert dsp.crossfade_concat([np.ones(5), np.ones(5)], 24000, 0).size == 10


def test_segments_are_joined_in_order_with_a_gap_and_their_places_are_returned():
    out, spans = dsp.join_segments([np.full(10, 0.5), np.full(20, -0.5)], 1000, gap_ms=5)
    assert out.size == 35
    assert np.all(out[:10] == 0.5) and np.all(out[10:15] == 0) and np.all(out[15:] == -0.5)
    assert spans == [(0.0, 0.01), (0.015, 0.035)]


@pytest.mark.parametrize("to", [16000, 22050, 44100, 48000])
def test_resampling_keeps_duration_and_pitch(to):
    out = dsp.resample(tone(1.0, hz=1000.0), 24000, to)
    assert out.size == to
    spectrum = np.abs(np.fft.rfft(out))
    assert np.argmax(spectrum) * to / out.size == pytest.approx(1000.0, abs=1.0)
    assert dsp.resample(tone(1.0), 24000, 24000).size == 24000


def test_trimming_cuts_silent_edges_and_keeps_a_margin():
    rate = 24000
    chunk = np.concatenate([np.zeros(int(0.3 * rate)), 1e-4 * np.ones(int(0.2 * rate)), tone(1.0),
                            np.zeros(int(0.5 * rate))]).astype(np.float32)  # -80 dBFS hum, then a tone
    out = dsp.trim_silence(chunk, rate, threshold_db=-50, keep_ms=30)
    assert out.size == pytest.approx(int(1.06 * rate), abs=int(0.011 * rate))  # the tone and 30 ms each side
    loud = np.nonzero(np.abs(out) > 0.01)[0]
    assert loud[0] == pytest.approx(0.03 * rate, abs=0.011 * rate)
    assert out.size - loud[-1] == pytest.approx(0.03 * rate, abs=0.011 * rate)
    silent = np.zeros(rate, np.float32)
    assert dsp.trim_silence(silent, rate, -50, 30) is silent  # nothing loud: nothing cut


def integrated(samples: np.ndarray, rate: int = 24000) -> float:
    import pyloudnorm

    return pyloudnorm.Meter(rate).integrated_loudness(samples.astype(np.float64))


@pytest.mark.parametrize("rate", [16000, 24000, 48000])
def test_our_loudness_is_pyloudnorms(rate):
    rng = np.random.default_rng(rate)
    for seconds, level in [(0.45, 0.1), (3.3, 0.02), (7.0, 0.3)]:
        x = (level * rng.standard_normal(int(seconds * rate)) * np.abs(np.sin(np.linspace(0, 30, int(seconds * rate)))))
        assert dsp.loudness(x.astype(np.float32), rate) == pytest.approx(integrated(x, rate), abs=0.01)
    x = np.zeros(rate)
    x[: rate // 10] = 0.5  # one loud tenth, then silence: the gates at work
    assert dsp.loudness(x, rate) == pytest.approx(integrated(x, rate), abs=0.01)
    assert dsp.loudness(np.zeros(rate), rate) == float("-inf") and dsp.loudness(np.ones(100), rate) == float("-inf")


def test_two_voices_12_db_apart_end_at_the_same_loudness():
    rng = np.random.default_rng(0)
    speech = lambda level: (level * rng.standard_normal(24000 * 3) * np.abs(np.sin(np.linspace(0, 40, 24000 * 3))))  # noqa: E731
    quiet, loud = speech(0.02).astype(np.float32), speech(0.08).astype(np.float32)  # 12 dB apart
    assert integrated(loud) - integrated(quiet) == pytest.approx(12.04, abs=0.1)
    out = [integrated(dsp.match_loudness(x, 24000, -16.0, -1.0)) for x in (quiet, loud)]
    assert abs(out[0] - out[1]) < 1 and all(abs(v + 16) < 1 for v in out)
    assert dsp.match_loudness(quiet, 24000, None, -1.0) is quiet  # null: levels left as made


def test_true_peak_is_that_of_4x_oversampling():
    from scipy.signal import resample_poly

    rng = np.random.default_rng(4)
    for level in (0.05, 0.2, 0.5):
        x = (level * rng.standard_normal(24000)).astype(np.float32)
        reference = np.abs(resample_poly(x.astype(np.float64), 4, 1)).max()
        assert dsp.true_peak(x) == pytest.approx(reference, rel=0.01) and dsp.true_peak(x) >= np.abs(x).max()


def test_peaky_audio_reaches_the_target_under_the_true_peak_ceiling():
    rng = np.random.default_rng(1)
    peaky = (0.01 * rng.standard_normal(24000 * 3)).astype(np.float32)
    peaky[::2400] = 0.6  # clicks 10 times a second on a quiet bed: a plain gain to -16 LUFS would clip them
    out = dsp.match_loudness(peaky, 24000, -16.0, -1.0)
    assert dsp.true_peak(out) <= 10 ** (-1 / 20) + 1e-6
    assert abs(integrated(out) + 16) < 1  # the limiter held the peaks; the gain reached the target
    applied = out / np.where(np.abs(peaky) > 1e-3, peaky, np.nan)  # the gain each sample got
    steps = np.abs(np.diff(applied))
    assert np.nanmax(steps[np.isfinite(steps)]) < 0.05 * np.nanmax(applied)  # a smooth gain: no clicks of its own


@pytest.mark.parametrize("lengths", [[300, 200, 400], [30, 500, 20, 100], [1000]])
def test_crossfade_spans_say_where_each_piece_lies_in_the_joined_audio(lengths):
    """Each piece a run of its own value: outside the overlaps, the joined audio holds that value
    exactly where crossfade_spans puts the piece."""
    pieces = [np.full(n, float(i + 1), np.float32) for i, n in enumerate(lengths)]
    out = dsp.crossfade_concat(pieces, 1000, crossfade_ms=50)
    spans = dsp.crossfade_spans(lengths, 1000, crossfade_ms=50)
    assert spans[0][0] == 0 and spans[-1][1] == out.size
    for i, (start, end) in enumerate(spans):
        assert end - start == lengths[i]
        inner_start = max([start] + [e for _, e in spans[:i]])  # past every fade from the pieces before
        inner_end = min([end] + [s for s, _ in spans[i + 1:]])  # before any fade into the pieces after
        assert np.all(out[inner_start:inner_end] == i + 1)
    assert all(np.any(out == i + 1) for i in (1, 3) if len(lengths) == 4)  # the long ones show through
