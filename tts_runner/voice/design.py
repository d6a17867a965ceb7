"""Designed voices kept across chunks: design once, then clone (the `voices.design` group).

A VoiceDesign job describes its voice in words (`instruct`). Left to itself the model designs a
voice anew for every chunk, so a long text is read by as many similar but different speakers as it
has chunks. Qwen3-TTS's own way to keep one designed voice is to design it once, on a short
reference sentence, and to clone that recording with a Base model for every line: `mode: once` does
that for each distinct (instruct, language) of a job (tts_runner/job/design.py); `per_chunk` keeps
the model's own behaviour. This module holds what a design made; the setting is voices.Design.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from tts_runner.voice.clones import Reference


@dataclass(frozen=True, eq=False)
class Designed:
    """One voice as designed for a job: its reference recording and its clone prompt on `clone_with`."""

    instruct: str
    language: str
    sentence: str          # what the reference says
    reference: Reference   # the designed recording (source "design:<first 12 of its digest>")
    prompt: Any            # the Base model's clone prompt of it
    seconds: float


@dataclass
class Designs:
    """What a job's design step made: the model its chunks run on instead (None: the job's own, each
    chunk designed on its own), its voices by (instruct, language), and warnings for the metadata."""

    model: Any = None
    clone_with: str | None = None
    voices: dict[tuple[str, str], Designed] = field(default_factory=dict)
    warnings: list[str] = field(default_factory=list)
    saved: str | None = None  # the saved voice's name (save_voice)

    def of(self, instruct: str, language: str) -> Designed | None:
        return self.voices.get((instruct, language))

    def describe(self) -> list[dict]:
        """The metadata's `designs`: each voice, the sentence it was designed on, what clones it."""
        return [{"voice": d.reference.source, "instruct": d.instruct, "language": d.language,
                 "reference_text": d.sentence, "reference_seconds": round(d.seconds, 3),
                 "clone_with": self.clone_with, "clone_mode": "icl" if d.prompt.icl_mode else "xvector",
                 **({"saved_as": self.saved} if self.saved else {})}
                for d in self.voices.values()]
