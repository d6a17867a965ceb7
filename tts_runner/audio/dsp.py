"""Signal processing on float samples: trimming silence, crossfading chunks, joining segments,
loudness (ITU-R BS.1770) under a true-peak ceiling, resampling. Pure functions of arrays; the job's
assemble stage (tts_runner/job/assemble.py) decides what to apply."""

from __future__ import annotations

import functools

import numpy as np

WINDOW_MS = 10  # trimming looks at the level of 10 ms windows


def loud_span(samples: np.ndarray, sample_rate: int, threshold_db: float, keep_ms: float) -> tuple[int, int] | None:
    """(start, end) in samples from `keep_ms` before the first 10 ms window whose RMS level reaches
    `threshold_db` (dBFS) to `keep_ms` after the last one; None when no window is that loud."""
    window = max(1, int(sample_rate * WINDOW_MS / 1000))
    n = samples.size // window
    rms = np.sqrt(np.mean(np.square(samples[: n * window].reshape(n, window), dtype=np.float64), axis=1))
    loud = np.nonzero(rms >= 10 ** (threshold_db / 20))[0]
    if loud.size == 0:
        return None
    keep = int(sample_rate * keep_ms / 1000)
    return max(0, loud[0] * window - keep), min(samples.size, (loud[-1] + 1) * window + keep)


def trim_silence(samples: np.ndarray, sample_rate: int, threshold_db: float, keep_ms: float) -> np.ndarray:
    """Cut leading and trailing silence: everything before the first and after the last 10 ms window
    whose RMS level reaches `threshold_db` (dBFS), keeping `keep_ms` beside the sound. Audio with no
    window that loud is returned as it is."""
    span = loud_span(samples, sample_rate, threshold_db, keep_ms)
    return samples if span is None else samples[span[0]:span[1]]


def _interpolators(taps: int = 32) -> np.ndarray:
    """Kaiser-windowed sinc kernels for the values a quarter, half and three quarters of the way
    from sample n to n+1 (4x oversampling, as a BS.1770 true-peak meter does), over samples
    n - taps/2 + 1 .. n + taps/2."""
    k = np.arange(-taps // 2 + 1, taps // 2 + 1)
    kernels = []
    for phase in (0.25, 0.5, 0.75):
        h = np.sinc(k - phase) * np.kaiser(taps, 8.0)
        kernels.append(h / h.sum())
    return np.array(kernels)


_KERNELS = _interpolators()


def _peaks(samples: np.ndarray, floor: float = 0.0) -> np.ndarray:
    """Each sample's true-peak magnitude: the largest of |x[n]| and the three 4x-oversampled values
    after it, so peaks between samples count. The oversampled values are computed only where x[n] or
    x[n+1] reaches `floor` (a peak between two samples is at most a few dB above both): elsewhere
    the sample's own magnitude stands."""
    peaks = np.abs(samples, dtype=np.float32)
    loud = peaks >= floor
    loud[:-1] |= loud[1:]  # a loud sample, and the one before it (the peak may lie between them)
    at = np.nonzero(loud)[0]
    if at.size == 0:
        return peaks
    half = _KERNELS.shape[1] // 2
    padded = np.pad(samples.astype(np.float32), (half, half))
    window = padded[at[:, None] + np.arange(1, 2 * half + 1)]  # x[n - half + 1 .. n + half]
    between = np.abs(window @ _KERNELS.T.astype(np.float32)).max(axis=1)
    peaks[at] = np.maximum(peaks[at], between)
    return peaks


def true_peak(samples: np.ndarray) -> float:
    return float(_peaks(samples).max(initial=0.0))


def limiter_gain(peaks: np.ndarray, sample_rate: int, ceiling: float, lookahead_ms: float = 5.0) -> np.ndarray:
    """A look-ahead peak limiter's gain per sample, for audio whose true peaks are `peaks`: the gain
    each sample needs to stay under `ceiling`, spread over +-lookahead_ms by a minimum filter and
    smoothed by a moving average half as wide, so it falls before a peak and recovers after it
    without clicks; scaled down once more if the smoothing let a peak through."""
    from scipy.ndimage import minimum_filter1d, uniform_filter1d

    need = np.minimum(1.0, ceiling / np.maximum(peaks, 1e-12))
    if need.min() >= 1.0:
        return np.ones_like(need)
    reach = max(1, int(sample_rate * lookahead_ms / 1000))
    gain = uniform_filter1d(minimum_filter1d(need, size=2 * reach + 1), size=reach + 1)
    over = float((peaks * gain).max()) / ceiling
    return gain / over if over > 1 else gain


@functools.cache
def _k_weighting(sample_rate: int) -> np.ndarray:
    """The BS.1770 K-weighting filter as two second-order sections, designed by pyloudnorm's
    IIRfilter: a +4 dB high shelf at 1.5 kHz, then a high pass at 38 Hz (the standard's constants,
    as pyloudnorm's K-weighting meter uses them)."""
    from pyloudnorm import IIRfilter

    stages = (IIRfilter(4.0, 1 / np.sqrt(2), 1500.0, sample_rate, "high_shelf"),
              IIRfilter(0.0, 0.5, 38.0, sample_rate, "high_pass"))
    return np.array([np.concatenate([stage.b, stage.a]) for stage in stages])


def _k_weighted(samples: np.ndarray, sample_rate: int) -> np.ndarray:
    from scipy.signal import sosfilt

    return sosfilt(_k_weighting(sample_rate), samples.astype(np.float64))


def _gated(weighted: np.ndarray, sample_rate: int) -> float:
    """BS.1770-4 gating over a K-weighted signal: 400 ms blocks every 100 ms, -70 LUFS absolute
    and -10 LU relative gates (pyloudnorm's block arithmetic, the blocks summed by one cumulative sum)."""
    block = 0.4
    if weighted.size < int(block * sample_rate):
        return float("-inf")
    count = int(np.round((weighted.size / sample_rate - block) / (block * 0.25))) + 1
    starts = (block * 0.25 * np.arange(count) * sample_rate).astype(np.int64)
    ends = (block * (0.25 * np.arange(count) + 1) * sample_rate).astype(np.int64)
    energy = np.concatenate(([0.0], np.cumsum(np.square(weighted))))
    z = (energy[np.minimum(ends, weighted.size)] - energy[starts]) / (block * sample_rate)
    with np.errstate(divide="ignore"):
        levels = -0.691 + 10 * np.log10(z)
        gated = z[levels >= -70.0]
        if gated.size == 0:
            return float("-inf")
        relative = -0.691 + 10 * np.log10(gated.mean()) - 10
        kept = z[(levels > relative) & (levels > -70.0)]
        return float(-0.691 + 10 * np.log10(kept.mean())) if kept.size else float("-inf")


def loudness(samples: np.ndarray, sample_rate: int) -> float:
    """Integrated loudness in LUFS, ITU-R BS.1770-4, mono (tests hold it to pyloudnorm's own
    figure); -inf for silence or audio shorter than one 400 ms block."""
    return _gated(_k_weighted(samples, sample_rate), sample_rate)


def match_loudness(samples: np.ndarray, sample_rate: int, target_lufs: float | None,
                   ceiling_dbtp: float) -> np.ndarray:
    """Bring audio to `target_lufs` integrated loudness (ITU-R BS.1770 / EBU R128, see `loudness`)
    with its true peak at or under `ceiling_dbtp`: a gain, then the limiter where the gain pushes
    peaks over the ceiling, then the gain corrected once for what the limiter took. Audio shorter
    than one 400 ms block, or silent, is returned as it is; so is everything when the target is None."""
    if target_lufs is None or samples.size < int(0.4 * sample_rate):
        return samples
    weighted = _k_weighted(samples, sample_rate)
    measured = _gated(weighted, sample_rate)
    if not np.isfinite(measured):
        return samples
    ceiling = 10 ** (ceiling_dbtp / 20)
    gain = 10 ** ((target_lufs - measured) / 20)
    # true peaks where they might matter: near the ceiling at up to twice this gain (the correction
    # after limiting raises it a little)
    peaks = _peaks(samples, ceiling / (4 * gain))
    for attempt in range(2):
        if float(peaks.max()) * gain <= ceiling:
            return (samples * gain).astype(np.float32)
        curve = limiter_gain(peaks * gain, sample_rate, ceiling)
        if attempt:
            break
        # K-weighting is linear and the limiter's gain moves slowly (over 5 ms and more), so the
        # limited audio's weighted signal is the weighted signal times that gain, near enough
        reached = _gated(weighted * (gain * curve), sample_rate)
        if not np.isfinite(reached) or abs(reached - target_lufs) < 0.2:
            break
        gain *= 10 ** ((target_lufs - reached) / 20)
    return (samples * (gain * curve)).astype(np.float32)


def resample(samples: np.ndarray, rate: int, to: int) -> np.ndarray:
    """A real resampler (soxr, very high quality) when the rates differ."""
    if rate == to:
        return samples
    import soxr

    return soxr.resample(samples, rate, to, quality="VHQ").astype(np.float32)


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


def crossfade_spans(lengths: list[int], sample_rate: int, crossfade_ms: float) -> list[tuple[int, int]]:
    """Where each piece of `lengths` samples lies in crossfade_concat's result: (start, end) in
    samples, each piece from the first sample of its fade-in to its last (overlaps included)."""
    wanted = int(round(sample_rate * crossfade_ms / 1000.0))
    spans: list[tuple[int, int]] = []
    total = 0
    for length in lengths:
        start = total - min(wanted, total, length) if spans else 0
        spans.append((start, start + length))
        total = start + length
    return spans


def segment_starts(lengths: list[int], sample_rate: int, gap_ms: float) -> list[int]:
    """Where each segment of `lengths` samples starts in join_segments' result, in samples."""
    gap = int(round(sample_rate * gap_ms / 1000.0))
    starts, at = [], 0
    for i, length in enumerate(lengths):
        at += gap if i else 0
        starts.append(at)
        at += length
    return starts


def join_segments(segments: list[np.ndarray], sample_rate: int, gap_ms: float) -> tuple[np.ndarray, list[tuple]]:
    """Concatenate segments in order with `gap_ms` of silence between them. Returns the audio and
    each segment's (start, end) in seconds."""
    gap = np.zeros(int(round(sample_rate * gap_ms / 1000.0)), dtype=np.float32)
    parts: list[np.ndarray] = []
    for i, segment in enumerate(segments):
        if i:
            parts.append(gap)
        parts.append(np.asarray(segment, dtype=np.float32))
    starts = segment_starts([s.size for s in segments], sample_rate, gap_ms)
    spans = [(round(at / sample_rate, 3), round((at + s.size) / sample_rate, 3))
             for at, s in zip(starts, segments, strict=True)]
    return (np.concatenate(parts) if parts else np.zeros(0, dtype=np.float32)), spans
