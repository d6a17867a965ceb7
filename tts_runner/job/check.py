"""The check stage: is a chunk's audio one to keep, or must it be made again?

Audio that is empty, not finite, or too short for its text is made again; so is a chunk that ran to
its frame budget without ending (a runaway), unless `batching.runaway` is `keep`.
"""

from __future__ import annotations

import numpy as np

from tts_runner.audio.codec import FRAMES_PER_SECOND, SAMPLE_RATE, SAMPLES_PER_FRAME
from tts_runner.engines.sampling import Sampling
from tts_runner.job.plan import Chunk
from tts_runner.job.spec import Batching


def check_audio(wav: np.ndarray, text: str, sampling: Sampling, batching: Batching,
                max_frames: int | None = None) -> str | None:
    """Why this chunk's audio must be generated again, or None when it is fine."""
    if wav.size == 0:
        return "the model returned empty audio"
    if not np.isfinite(wav).all():
        return "the model returned non-finite samples (NaN or inf)"
    frame_s = SAMPLES_PER_FRAME / SAMPLE_RATE
    # qwen_tts returns at most max_new_tokens - 1 frames; the floor is enforced by the model.
    ceiling = (sampling.max_new_tokens - 1 if max_frames is None else max_frames) * frame_s
    floor = sampling.min_new_tokens * frame_s
    expected = min(max(len(text) * batching.min_seconds_per_char, floor), ceiling)
    seconds = wav.size / SAMPLE_RATE
    if seconds + 1e-6 < expected:
        return f"the audio is too short ({seconds:.2f} s for {len(text)} characters; expected at least {expected:.2f} s)"
    return None


def ran_away(chunk: Chunk, wav: np.ndarray, floor: int) -> bool:
    """Did the chunk reach its frame budget without ending? Not when the floor left it no frame to
    end on (a floor at the budget forces the length)."""
    budget = chunk.request.max_frames
    floor = floor if chunk.request.floor is None else chunk.request.floor
    return budget is not None and budget > floor and wav.size // SAMPLES_PER_FRAME >= budget


def judge(chunk: Chunk, wav: np.ndarray, sampling: Sampling, batching: Batching) -> tuple[str | None, bool]:
    """(why the chunk's audio must be made again or None, whether it ran away)."""
    problem = check_audio(wav, chunk.request.text, sampling, batching, chunk.request.max_frames)
    runaway = problem is None and ran_away(chunk, wav, sampling.min_new_tokens)
    if runaway and batching.runaway == "retry":
        problem = (f"speech did not end within {chunk.request.max_frames / FRAMES_PER_SECOND:.1f} s "
                   f"for {len(chunk.request.text)} characters")
    return problem, runaway
