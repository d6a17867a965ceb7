"""The plan stage: a job's text as chunks, each with its voice, language, frame budget and seed.

Each segment's text is split into sentence-aware chunks (tts_runner/job/chunking.py); its voice is
resolved for the model: a preset speaker (CustomVoice), an instruct (VoiceDesign), or the clone
prompt of a reference recording (Base: the segment's own, the job's, or a saved voice; each
distinct recording read once per job). Each chunk may run to a frame budget sized to its text (the
runaway guard), and each attempt at it draws from a seed of its own, a function of the job's seed
and the chunk's place in the job alone.
"""

from __future__ import annotations

import hashlib
import math
from dataclasses import dataclass, replace

from tts_runner.audio.codec import FRAMES_PER_SECOND
from tts_runner.errors import InputError
from tts_runner.job.chunking import split_text
from tts_runner.job.spec import FrameBudget, Job, Segment
from tts_runner.serving.model import ChunkRequest, Model
from tts_runner.voice import clones
from tts_runner.voice.voices import resolve_language, resolve_voice


@dataclass
class Chunk:
    index: int        # position in the job, across segments
    segment: int      # 0-based segment
    position: int     # 0-based position within its segment
    segment_chunks: int
    request: ChunkRequest
    voice: str = ""   # where the voice comes from: preset:<speaker>, clone:<name>, reference:<hash>, design
    attempts: int = 0


@dataclass
class Plan:
    chunks: list[Chunk]
    segments: int

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


def plan(job: Job, model: Model) -> Plan:
    """Split the job's text into chunks; resolve voices (presets, designed voices, or the clone
    prompts of the Base models) and the language; give each chunk its frame budget."""
    voices = job.recipe.voices
    language = resolve_language(job.language, voices.languages, model.languages)
    references = _References(job, model)
    sampling, budget = job.sampling, job.recipe.batching.frame_budget
    chunks: list[Chunk] = []
    for s, segment in enumerate(job.segments):
        speaker, clone, source, instruct = _voice(job, model, s, segment, references)
        texts = split_text(segment.text, job.recipe.chunking.max_chars)
        for p, text in enumerate(texts):
            frames = frame_budget(text, budget, sampling.max_new_tokens, sampling.min_new_tokens)
            request = ChunkRequest(text, speaker, language, instruct, clone=clone, max_frames=frames)
            chunks.append(Chunk(len(chunks), s, p, len(texts), request, voice=source))
    return Plan(chunks, len(job.segments))


def _voice(job: Job, model: Model, s: int, segment: Segment, references: _References) -> tuple:
    """(speaker, clone prompt, source, instruct) of segment `s` on this kind of model."""
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
        return speaker, None, f"preset:{speaker}", instruct
    if model.kind == "voice_design":
        if not instruct:
            where = "$.params.instruct" if job.as_text else f"{at}.instruct"
            raise InputError(f"Invalid input at {where}: model '{model.name}' designs a voice from an instruct "
                             "(params.instruct for the job, or a segment's own); describe the voice there.")
        return None, None, "design", instruct
    reference = references.of(segment, at, voice, voice_at)
    return None, model.clone_prompt(reference), reference.source, instruct


class _References:
    """The reference recording of each segment of a job on a Base model: the segment's own, the
    job's, or the saved voice its `voice` names; each distinct recording is read once per job."""

    def __init__(self, job: Job, model: Model):
        self.job, self.model = job, model
        self.read: dict[str, clones.Reference] = {}

    def of(self, segment: Segment, at: str, voice: str, voice_at: str) -> clones.Reference:
        saved = self.job.recipe.voices.clones
        if segment.ref_audio:
            return self._payload(segment.ref_audio, segment.ref_text, f"{at}.ref_audio")
        if self.job.ref_audio:
            return self._payload(self.job.ref_audio, self.job.ref_text, "$.ref_audio")
        if voice in saved:
            return self._saved(voice)
        names = ", ".join(sorted(saved)) or "none configured"
        raise InputError(f"Invalid input at {voice_at}: model '{self.model.name}' clones a voice: give ref_audio "
                         f"(for the job, or this segment) or name a saved voice (voices.clones: {names}).")

    def _payload(self, value: str, text: str | None, where: str) -> clones.Reference:
        cloning = self.job.recipe.cloning
        key = hashlib.sha256(value.encode()).hexdigest() + "\0" + (text or "")
        if key not in self.read:
            self.read[key] = clones.reference(clones.payload_bytes(value, where, cloning), text, where, cloning)
        return self.read[key]

    def _saved(self, name: str) -> clones.Reference:
        key = f"saved:{name}"
        if key not in self.read:
            cloning, saved = self.job.recipe.cloning, self.job.recipe.voices.clones[name]
            data = clones.saved_bytes(name, saved, cloning)
            self.read[key] = clones.reference(data, saved.text, f"voices.clones.{name}.audio", cloning, name)
        return self.read[key]
