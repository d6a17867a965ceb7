"""How alike a segment's chunks sound: the cosine similarity of speaker embeddings.

The embeddings come from Resemblyzer's speaker encoder (a GE2E d-vector model whose weights ship in
its pip package: nothing is fetched), loaded once per process on the CPU, on first use, and run on
the assemble thread (off the decode loop). Each chunk of a segment is compared with the segment's
reference recording when it has one (a clone, or a designed voice), else with its first chunk.
On espeak-ng recordings (tests/fixtures/voices) the same voice scores ~0.9 and another voice 0.6-0.7;
close voices score close (en-us against en-gb+f3: 0.89), so the score says "the voice changed" when
it falls, not which voice it is. A random-weight model's audio is noise: its score means nothing,
and the metadata says so.
"""

from __future__ import annotations

import threading

import numpy as np

from tts_runner.audio.dsp import resample

_lock = threading.Lock()
_encoder = None


def encoder():
    """Resemblyzer's VoiceEncoder on the CPU, loaded once (it imports librosa: a second or two)."""
    global _encoder
    with _lock:
        if _encoder is None:
            from resemblyzer import VoiceEncoder

            _encoder = VoiceEncoder("cpu", verbose=False)
        return _encoder


def embedding(samples: np.ndarray, rate: int) -> np.ndarray:
    """The speaker embedding of mono float samples (unit length), the recording prepared as
    Resemblyzer prepares one: at 16 kHz, brought up to its loudness target, long silences cut (kept
    when nothing voiced is found)."""
    from resemblyzer import audio as prepare

    wav = prepare.normalize_volume(resample(np.asarray(samples, dtype=np.float32), rate, prepare.sampling_rate),
                                   prepare.audio_norm_target_dBFS, increase_only=True)
    voiced = prepare.trim_long_silences(wav)
    return encoder().embed_utterance(voiced if voiced.size >= prepare.sampling_rate // 4 else wav)


def similarity(a: np.ndarray, b: np.ndarray, rate: int) -> float:
    return float(np.dot(embedding(a, rate), embedding(b, rate)))


def consistency(chunks: list[np.ndarray], rate: int, reference: np.ndarray | None = None) -> dict | None:
    """{min, mean, against, chunks} of a segment's chunks against its reference (or its first chunk);
    None for a segment of one chunk."""
    if len(chunks) < 2:
        return None
    anchor = embedding(reference if reference is not None else chunks[0], rate)
    others = chunks if reference is not None else chunks[1:]
    scores = [float(np.dot(anchor, embedding(c, rate))) for c in others]
    return {"min": round(min(scores), 3), "mean": round(float(np.mean(scores)), 3),
            "against": "reference" if reference is not None else "first chunk", "chunks": len(chunks)}
