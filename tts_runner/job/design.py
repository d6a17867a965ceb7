"""The design stage (VoiceDesign jobs): design each voice once, then clone it for every chunk.

Before the plan, a job on a VoiceDesign model with `design: once` (voices.design.mode) has each
distinct (instruct, language) of its segments designed once: the VoiceDesign model reads the
language's reference sentence (voices.design.sentences) in that voice, through the generate stage
(the model's scheduler, the check stage, retries), seeded from the job's seed. The recording becomes
a clone reference for the Base variant `voices.design.clone_with`, and the job's chunks then run on
that model from its clone prompt (xvector or icl: the job's clone_mode), so the voice stays the same
from the first chunk to the last. With `save_voice` the recording is kept as a saved voice.

Without the Base model (absent, downloads off, or its fetch failed) the job runs per chunk as the
model would, and its metadata says so in `warnings`: never silently.
"""

from __future__ import annotations

import hashlib
import io
import logging
from dataclasses import dataclass

import numpy as np
import soundfile as sf

from tts_runner.audio.codec import SAMPLE_RATE
from tts_runner.errors import GenerationError, ModelError
from tts_runner.job.assemble import trimmed
from tts_runner.job.events import Events
from tts_runner.job.generate import generate
from tts_runner.job.plan import Chunk, Plan, frame_budget
from tts_runner.job.spec import Job
from tts_runner.serving.model import ChunkRequest, Model
from tts_runner.serving.ticket import Ticket
from tts_runner.voice.clones import Reference
from tts_runner.voice.design import Designed, Designs
from tts_runner.voice.voices import resolve_language

log = logging.getLogger(__name__)


@dataclass
class _References(Plan):
    """The design references as a plan of their own: its chunks named by the voice they design."""

    instructs: tuple[str, ...] = ()

    def where(self, chunk: Chunk) -> str:
        return f"the designed reference of voice {chunk.position + 1} ('{_short(self.instructs[chunk.position])}')"


def design_voices(job: Job, model: Model, ticket: Ticket | None = None) -> Designs:
    """What the job's chunks are made from when its model designs voices (nothing for other models,
    for design per_chunk, or when a segment has no instruct: the plan names that error)."""
    instructs = [segment.instruct or job.instruct for segment in job.segments]
    if model.kind != "voice_design" or not all(instructs) or (job.design != "once" and not job.save_voice):
        return Designs()
    setting = job.recipe.voices.design
    language = resolve_language(job.language, job.recipe.voices.languages, model.languages)
    wanted = tuple(dict.fromkeys(instructs))  # distinct, in order of appearance
    base, unavailable = _clone_model(model, setting.clone_with)
    designs = Designs(model=base, clone_with=setting.clone_with if base is not None else None)
    if base is None:
        designs.warnings.append(
            f"The voice may change between chunks: each chunk designed its own, because "
            f"voices.design.clone_with '{setting.clone_with}' {unavailable}. Put that Base model under "
            "QWEN_TTS_MODEL_DIR (or let it be fetched: QWEN_TTS_DOWNLOAD=true) to design once and clone it.")
        log.warning("Job %s: %s", job.id, designs.warnings[-1])
        if not job.save_voice:
            return designs
    sentence = setting.sentence(language)
    for instruct, wav in zip(wanted, _record(job, model, sentence, language, wanted, ticket), strict=True):
        digest = hashlib.sha256(wav.tobytes() + b"\0" + instruct.encode()).hexdigest()
        text = sentence if job.clone_mode == "icl" else None
        reference = Reference(wav, text, digest, f"design:{digest[:12]}", f"the voice designed as '{_short(instruct)}'")
        prompt = base.clone_prompt(reference) if base is not None else None
        designs.voices[(instruct, language)] = Designed(instruct, language, sentence, reference, prompt,
                                                        wav.size / SAMPLE_RATE)
    if job.save_voice:
        _save(job, next(iter(designs.voices.values())))
        designs.saved = job.save_voice
    if base is None:
        designs.voices.clear()  # the chunks design their own: nothing here clones
    return designs


def _clone_model(model: Model, variant: str) -> tuple[Model | None, str]:
    """The Base model that clones designed voices, or None and why not."""
    if model.siblings is None:
        return None, "is not served by this worker"
    try:
        base = model.siblings(variant)
    except ModelError as exc:
        return None, f"could not be loaded or fetched ({str(exc)[:300]})"
    if base is None:
        return None, "is not under QWEN_TTS_MODEL_DIR and models.download is off"
    if base.kind != "base":
        return None, f"is a {base.kind} model, not a Base model"
    return base, ""


def _record(job: Job, model: Model, sentence: str, language: str, instructs: tuple[str, ...],
            ticket: Ticket | None) -> list[np.ndarray]:
    """Each instruct's voice reading `sentence`, made in one go on the VoiceDesign model (trimmed)."""
    sampling, budget = job.sampling, job.recipe.batching.frame_budget
    frames = frame_budget(sentence, budget, sampling.max_new_tokens, sampling.min_new_tokens)
    chunks = [Chunk(index=-(k + 1), segment=0, position=k, segment_chunks=len(instructs),
                    request=ChunkRequest(sentence, None, language, instruct, max_frames=frames), voice="design")
              for k, instruct in enumerate(instructs)]
    made: dict[int, np.ndarray] = {}
    references = _References(chunks, 1, instructs=instructs)
    try:
        generate(model, references, job, Events(result=lambda chunk, wav: made.__setitem__(chunk.position, wav)), ticket)
    except GenerationError as exc:
        raise GenerationError(f"Designing the job's voice failed: {exc}") from None
    return [trimmed(made[k], job) for k in range(len(instructs))]


def _save(job: Job, designed: Designed) -> None:
    """Keep the designed reference as a saved voice (its transcript with it, for icl cloning later)."""
    buffer = io.BytesIO()
    sf.write(buffer, designed.reference.samples, SAMPLE_RATE, format="WAV", subtype="FLOAT")
    job.recipe.saved.save(job.save_voice, buffer.getvalue(), designed.sentence)
    log.info("Job %s: the designed voice is saved as '%s'", job.id, job.save_voice)


def _short(text: str, limit: int = 40) -> str:
    return text if len(text) <= limit else text[:limit] + "..."
