"""Speed: a pitch-preserving tempo change through ffmpeg's `atempo` filter (WSOLA), for a whole
waveform or, through tts_runner.audio.streams, for a stream as it is made.

A resample would change the pitch with the speed; atempo keeps the pitch and changes the length by
1/speed. One atempo stage takes 0.5 to 2.0 without artefacts of its own, so wider speeds are a chain
of stages (0.25 = 0.5 x 0.5; 4.0 = 2.0 x 2.0).
"""

from __future__ import annotations

import numpy as np

from tts_runner.audio.formats import ffmpeg

MIN_SPEED, MAX_SPEED = 0.25, 4.0


def atempo_chain(speed: float) -> str:
    """ffmpeg's filter for `speed`: atempo stages each within 0.5..2.0 whose product is `speed`."""
    if not MIN_SPEED <= speed <= MAX_SPEED:
        raise ValueError(f"speed {speed} is outside {MIN_SPEED}..{MAX_SPEED}")
    stages, rest = [], float(speed)
    while rest > 2.0:
        stages.append(2.0)
        rest /= 2.0
    while rest < 0.5:
        stages.append(0.5)
        rest /= 0.5
    stages.append(rest)
    return ",".join(f"atempo={s:.6f}" for s in stages)


def change_tempo(samples: np.ndarray, sample_rate: int, speed: float) -> np.ndarray:
    """`samples` (mono float32) spoken `speed` times as fast, at the same pitch: about
    samples.size / speed samples. Speed 1 returns them unchanged."""
    if speed == 1.0 or samples.size == 0:
        return samples
    out = ffmpeg(["-f", "f32le", "-ar", str(sample_rate), "-ac", "1", "-i", "pipe:0", "-af", atempo_chain(speed),
                  "-f", "f32le", "pipe:1"], np.ascontiguousarray(samples, dtype="<f4").tobytes(), "change the tempo")
    return np.frombuffer(out, dtype="<f4").astype(np.float32)
