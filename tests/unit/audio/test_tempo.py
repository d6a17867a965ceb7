"""Speed (tts_runner/audio/tempo.py): a tempo change keeps the pitch and divides the length, checked
on a real recording (espeak-ng) with librosa's pYIN pitch tracker, not with the code under test."""

from pathlib import Path

import librosa
import numpy as np
import pytest
import soundfile as sf

from tts_runner.audio.tempo import atempo_chain, change_tempo

SPEECH = Path(__file__).resolve().parents[2] / "fixtures" / "speech" / "clean.wav"


def speech() -> tuple[np.ndarray, int]:
    samples, rate = sf.read(SPEECH, dtype="float32")
    return librosa.resample(samples, orig_sr=rate, target_sr=24000), 24000


def median_pitch(samples: np.ndarray, rate: int) -> float:
    f0, voiced, _ = librosa.pyin(samples, fmin=60, fmax=400, sr=rate, frame_length=1024)
    return float(np.nanmedian(f0[voiced]))


@pytest.mark.parametrize("speed", [0.5, 1.5, 2.0])
def test_speed_divides_the_duration_and_keeps_the_pitch(speed):
    samples, rate = speech()
    faster = change_tempo(samples, rate, speed)
    assert faster.size / samples.size == pytest.approx(1 / speed, rel=0.02)
    before, after = median_pitch(samples, rate), median_pitch(faster, rate)
    assert after == pytest.approx(before, rel=0.04), (before, after)  # a resample would move it by `speed`


def test_a_resample_would_fail_the_pitch_check():
    """The check above can fail: playing the same samples 1.5x faster (a resample) moves the pitch."""
    samples, rate = speech()
    resampled = librosa.resample(samples, orig_sr=rate * 1.5, target_sr=rate)
    assert median_pitch(resampled, rate) > 1.3 * median_pitch(samples, rate)


@pytest.mark.parametrize("speed, stages", [(1.5, 1), (0.25, 2), (4.0, 2), (3.0, 2), (0.3, 2)])
def test_wide_speeds_are_chains_of_stages_within_half_to_double(speed, stages):
    chain = atempo_chain(speed)
    factors = [float(s.removeprefix("atempo=")) for s in chain.split(",")]
    assert len(factors) == stages and all(0.5 <= f <= 2.0 for f in factors)
    assert np.prod(factors) == pytest.approx(speed, rel=1e-5)


def test_speed_one_is_the_samples_unchanged():
    samples = np.ones(100, np.float32)
    assert change_tempo(samples, 24000, 1.0) is samples
