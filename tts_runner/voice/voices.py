"""Voices and languages: map what a job says onto what the model accepts (the `voices` group)."""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field

from tts_runner.errors import InputError, NotFound


@dataclass(frozen=True)
class SavedVoice:
    """A voice the Base models clone by name: its recording (a path relative to the repository, or
    an https:// URL; only the config sets it) and what the recording says (None: the speaker
    embedding alone)."""

    audio: str
    text: str | None = None


DESIGN_MODES = ("once", "per_chunk")
DEFAULT_SENTENCE = ("The morning light came through the window, and I read the letter slowly, one careful "
                    "line at a time.")


@dataclass(frozen=True)
class Design:
    """How a VoiceDesign job's voice is kept (`voices.design`)."""

    mode: str = "once"                 # once | per_chunk
    clone_with: str = "1.7B-Base"      # the Base variant that clones the designed reference
    sentences: Mapping[str, str] = field(default_factory=dict)  # library language -> the reference's text

    def sentence(self, language: str) -> str:
        """The reference sentence for a library language name (auto and the unlisted: English's)."""
        return self.sentences.get(language) or self.sentences.get("english") or DEFAULT_SENTENCE


@dataclass(frozen=True)
class Voices:
    aliases: Mapping[str, str]          # male_1 -> ryan, ...
    languages: Mapping[str, str]        # ISO code -> the library's language name
    clones: Mapping[str, SavedVoice]    # saved voices of the Base models
    design: Design = Design()           # VoiceDesign jobs: design once, or per chunk


def resolve_voice(voice: str, aliases: Mapping[str, str], speakers: Iterable[str], path: str = "$.voice") -> str:
    """An alias (male_1, ...) or a speaker of the model, in any case, to the model's speaker name."""
    return _resolve(voice, aliases, speakers, path, "voice",
                    lambda known: f"Available: aliases {', '.join(sorted(aliases))} and speakers {known}.")


def resolve_language(language: str, codes: Mapping[str, str], supported: Iterable[str],
                     path: str = "$.params.language") -> str:
    """An ISO code (en), a library name (english, any case) or 'auto' to the library's name."""
    return _resolve(language, codes, supported, path, "language",
                    lambda known: f"Use an ISO code ({', '.join(sorted(codes))}) or a name ({known}).")


def _resolve(value: str, names: Mapping[str, str], allowed: Iterable[str], path: str, what: str, hint) -> str:
    allowed = sorted(a.lower() for a in allowed)
    key = value.lower()
    resolved = names.get(key, key)
    if resolved not in allowed:
        error = NotFound if what == "voice" else InputError
        raise error(f"Invalid input at {path}: unknown {what} '{value}'. {hint(', '.join(allowed))}")
    return resolved
