"""The plan stage: a job's text as chunks, each with its voice, language, frame budget and seed.

Each segment's text is split into sentence-aware chunks (tts_runner/job/chunking.py); its voice is
resolved for the model: a preset speaker (CustomVoice), an instruct (VoiceDesign, or the clone
prompt of the voice the design stage made: tts_runner/job/design.py), or the clone prompt of a
reference recording (Base: the segment's own, the job's, a voice of the config or one saved at run
time; each distinct recording read once per job, cloned by the job's or segment's clone_mode). Each chunk may run to a frame budget sized to its text (the
runaway guard), and each attempt at it draws from a seed of its own, a function of the job's seed
and the chunk's place in the job alone.
"""

from __future__ import annotations

import hashlib
import math
from dataclasses import dataclass, field, replace

import numpy as np

from tts_runner.audio.codec import FRAMES_PER_SECOND
from tts_runner.errors import InputError
from tts_runner.job.chunking import split_text
from tts_runner.job.spec import FrameBudget, Job, Segment
from tts_runner.serving.model import ChunkRequest, Model
from tts_runner.voice import clones
from tts_runner.voice.design import Designs
from tts_runner.voice.voices import resolve_language, resolve_voice


@dataclass
class Chunk:
    index: int        # position in the job, across segments
    segment: int      # 0-based segment
    position: int     # 0-based position within its segment
    segment_chunks: int
    request: ChunkRequest
    voice: str = ""   # where the voice comes from: preset:<speaker>, clone:<name>, reference:<hash>, design[:<hash>]
    attempts: int = 0


@dataclass
class Plan:
    chunks: list[Chunk]
    segments: int
    model: Model | None = None   # what the chunks run on (a designed voice's Base model, or the job's own)
    designs: Designs = field(default_factory=Designs)
    references: dict[int, np.ndarray] = field(default_factory=dict)  # segment -> its voice's reference recording

    def where(self, chunk: Chunk) -> str:
        """The chunk's place, for messages: segment 2 of 3, chunk 1 of 4."""
        return (f"segment {chunk.segment + 1} of {self.segments}, "
                f"chunk {chunk.position + 1} of {chunk.segment_chunks}")


def chunk_seed(job_seed: int, index: int, attempt: int) -> int:
    """The seed of one attempt at one chunk: a function of the job's seed and the chunk's place in
    the job alone, so a chunk draws the same whichever batch it lands in, and each retry draws anew."""
    digest = hashlib.blake2b(f"{job_seed}:{index}:{attempt}".encode(), digest_size=4).digest()
    return int.from_bytes(digest, "little") & 0x7FFFFFFF


def seeded(chunk: Chunk, job_seed: int | None) -> ChunkRequest:
    """The chunk's request for its next attempt: with its own seed (chunk_seed) when the job has one."""
    if job_seed is None:
        return chunk.request
    return replace(chunk.request, seed=chunk_seed(job_seed, chunk.index, chunk.attempts))


def frame_budget(text: str, budget: FrameBudget | None, max_new_tokens: int, floor: int = 0) -> int | None:
    """The most frames a chunk of `text` may run to under `batching.frame_budget` (None: no budget):
    factor x seconds_per_char x characters + margin_seconds, and at least the floor plus the margin
    (so the model can always end after the floor), never above max_new_tokens - 1."""
    if budget is None or budget.seconds_per_char is None:
        return None
    seconds = budget.factor * budget.seconds_per_char * len(text) + budget.margin_seconds
    frames = max(math.ceil(seconds * FRAMES_PER_SECOND - 1e-9), floor + math.ceil(budget.margin_seconds * FRAMES_PER_SECOND))
    return max(1, min(frames, max_new_tokens - 1))


def plan(job: Job, model: Model, designs: Designs | None = None) -> Plan:
    """Split the job's text into chunks; resolve voices (presets, designed voices, or the clone
    prompts of the Base models) and the language; give each chunk its frame budget. `designs`: what
    the design stage made (its Base model then runs the chunks)."""
    voices, designs = job.recipe.voices, designs or Designs()
    language = resolve_language(job.language, voices.languages, model.languages)
    references = _References(job, model)
    sampling, budget = job.sampling, job.recipe.batching.frame_budget
    chunks: list[Chunk] = []
    made = Plan(chunks, len(job.segments), model=designs.model or model, designs=designs)
    for s, segment in enumerate(job.segments):
        speaker, clone, source, instruct, recording = _voice(job, model, s, segment, references, designs, language)
        if recording is not None:
            made.references[s] = recording
        texts = split_text(segment.text, job.recipe.chunking.max_chars)
        for p, text in enumerate(texts):
            frames = frame_budget(text, budget, sampling.max_new_tokens, sampling.min_new_tokens)
            request = ChunkRequest(text, speaker, language, instruct, clone=clone, max_frames=frames)
            chunks.append(Chunk(len(chunks), s, p, len(texts), request, voice=source))
    return made


def _voice(job: Job, model: Model, s: int, segment: Segment, references: _References, designs: Designs,
           language: str) -> tuple:
    """(speaker, clone prompt, source, instruct, reference recording or None) of segment `s` on this
    kind of model."""
    at = job.at(s)
    voice = segment.voice or job.voice
    voice_at = f"{at}.voice" if segment.voice else "$.voice"
    instruct = segment.instruct or job.instruct or None
    if model.kind != "base" and (segment.ref_audio or job.ref_audio):
        where = f"{at}.ref_audio" if segment.ref_audio else "$.ref_audio"
        raise InputError(f"Invalid input at {where}: model '{model.name}' does not clone voices; ref_audio is "
                         "for the Base models (1.7B-Base, 0.6B-Base).")
    if model.kind == "custom_voice":
        speaker = resolve_voice(voice, job.recipe.voices.aliases, model.speakers, voice_at)
        return speaker, None, f"preset:{speaker}", instruct, None
    if model.kind == "voice_design":
        if not instruct:
            where = "$.params.instruct" if job.as_text else f"{at}.instruct"
            raise InputError(f"Invalid input at {where}: model '{model.name}' designs a voice from an instruct "
                             "(params.instruct for the job, or a segment's own); describe the voice there.")
        designed = designs.of(instruct, language)
        if designed is None:
            return None, None, "design", instruct, None
        return None, designed.prompt, designed.reference.source, None, designed.reference.samples
    reference = references.of(segment, at, voice, voice_at)
    return None, model.clone_prompt(reference), reference.source, instruct, reference.samples


class _References:
    """The reference recording of each segment of a job on a Base model: the segment's own, the
    job's, or the saved voice its `voice` names (the config's voices.clones, then those saved at run
    time); each distinct recording read once per job. The segment's clone_mode (or the job's) says
    whether its transcript goes with it: icl needs one, xvector leaves it out."""

    def __init__(self, job: Job, model: Model):
        self.job, self.model = job, model
        self.read: dict[str, clones.Reference] = {}

    def of(self, segment: Segment, at: str, voice: str, voice_at: str) -> clones.Reference:
        saved = self.job.recipe.voices.clones
        mode = segment.clone_mode or self.job.clone_mode
        if segment.ref_audio:
            return self._payload(segment.ref_audio, self._text(segment.ref_text, mode, f"{at}.ref_text"),
                                 f"{at}.ref_audio")
        if self.job.ref_audio:
            return self._payload(self.job.ref_audio, self._text(self.job.ref_text, mode, "$.ref_text"), "$.ref_audio")
        if voice in saved:
            return self._saved(voice, mode, voice_at)
        stored = self.job.recipe.saved.get(voice) if self.job.recipe.saved is not None else None
        if stored is not None:
            return self._stored(stored, mode, voice_at)
        names = ", ".join(sorted(saved)) or "none configured"
        stored = ", ".join(self.job.recipe.saved.names()) if self.job.recipe.saved is not None else ""
        raise InputError(f"Invalid input at {voice_at}: model '{self.model.name}' clones a voice: give ref_audio "
                         f"(for the job, or this segment) or name a saved voice (voices.clones: {names}; "
                         f"saved: {stored or 'none'}).")

    @staticmethod
    def _text(text: str | None, mode: str, where: str) -> str | None:
        """The transcript that goes with a reference: in icl mode it must be there; xvector leaves it out."""
        if mode != "icl":
            return None
        if not text:
            raise InputError(f"Invalid input at {where}: clone_mode 'icl' clones in context, which needs what the "
                             "recording says; give ref_text, or use clone_mode 'xvector' (the speaker embedding alone).")
        return text

    def _payload(self, value: str, text: str | None, where: str) -> clones.Reference:
        cloning = self.job.recipe.cloning
        key = hashlib.sha256(value.encode()).hexdigest() + "\0" + (text or "")
        if key not in self.read:
            self.read[key] = clones.reference(clones.payload_bytes(value, where, cloning), text, where, cloning)
        return self.read[key]

    def _saved(self, name: str, mode: str, voice_at: str) -> clones.Reference:
        key = f"saved:{name}:{mode}"
        if key not in self.read:
            cloning, saved = self.job.recipe.cloning, self.job.recipe.voices.clones[name]
            data = clones.saved_bytes(name, saved, cloning)
            text = self._text(saved.text, mode, f"voices.clones.{name}.text (for {voice_at})")
            self.read[key] = clones.reference(data, text, f"voices.clones.{name}.audio", cloning, name)
        return self.read[key]

    def _stored(self, stored, mode: str, voice_at: str) -> clones.Reference:
        key = f"stored:{stored.name}:{mode}"
        if key not in self.read:
            text = self._text(stored.ref_text, mode, f"the ref_text of saved voice '{stored.name}' (for {voice_at})")
            self.read[key] = clones.reference(stored.recording(), text, f"saved voice '{stored.name}'",
                                              self.job.recipe.cloning, stored.name)
        return self.read[key]
