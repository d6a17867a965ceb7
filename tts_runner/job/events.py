"""What a running job tells whoever runs it, as one object: each hook optional."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    import numpy as np
    import torch

    from tts_runner.job.plan import Chunk
    from tts_runner.serving.model import ChunkRequest

    Decode = tuple[ChunkRequest, torch.Tensor]  # what the speech decoder is given


def _nothing(*args: Any) -> None:
    return None


@dataclass(frozen=True)
class Events:
    # (chunks done, chunks in all, seconds of audio made so far): after each chunk or batch, and while
    # a batch runs at every host check of the engine (the seconds then estimated from the frames stepped)
    progress: Callable[[int, int, float], None] = _nothing
    # a chunk's accepted audio, as soon as it is made
    result: Callable[[Chunk, np.ndarray], None] = _nothing
    # (chunk, problem, where) for each chunk made again; may refuse it by raising (a stream that sent part of it)
    retry: Callable[[Chunk, str, str], None] = _nothing
    # a chunk about to run: a callable that hears its codes so far at every host check (streaming), or None
    listener: Callable[[Chunk], Callable[[torch.Tensor], None] | None] = _nothing
    # a finished chunk about to be decoded, (chunk, request, codes): None to decode it whole, or (what to
    # decode instead, what makes the chunk's audio of its output): a stream that has decoded the chunk's
    # opening asks for the rest only
    tail: Callable[[Chunk, ChunkRequest, torch.Tensor], tuple[Decode, Callable[[np.ndarray], np.ndarray]] | None] = \
        _nothing
