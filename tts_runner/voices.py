"""Voices and languages: map what a job says onto what the model accepts."""

from __future__ import annotations

from collections.abc import Iterable, Mapping

from tts_runner.errors import InputError


def resolve_voice(voice: str, aliases: Mapping[str, str], speakers: Iterable[str], path: str = "$.voice") -> str:
    """An alias (male_1, ...) or a speaker of the model, in any case, to the model's speaker name."""
    speakers = sorted(s.lower() for s in speakers)
    key = voice.lower()
    speaker = aliases.get(key, key)
    if speaker not in speakers:
        raise InputError(
            f"Invalid input at {path}: unknown voice '{voice}'. Available: aliases {', '.join(sorted(aliases))} "
            f"and speakers {', '.join(speakers)}."
        )
    return speaker


def resolve_language(language: str, codes: Mapping[str, str], supported: Iterable[str],
                     path: str = "$.params.language") -> str:
    """An ISO code (en), a library name (english, any case) or 'auto' to the library's name."""
    supported = sorted(s.lower() for s in supported)
    key = language.lower()
    name = codes.get(key, key)
    if name not in supported:
        raise InputError(
            f"Invalid input at {path}: unknown language '{language}'. Use an ISO code ({', '.join(sorted(codes))}), "
            f"or a name ({', '.join(supported)})."
        )
    return name
