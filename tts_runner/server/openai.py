"""OpenAI's speech request, mapped onto a job payload: POST /v1/audio/speech's body in, the payload
the one edge (tts_runner/edge/jobs.py) validates and makes a Job of, out.

OpenAI's fields: `model` (ours, or an OpenAI name of `server.models`), `input`, `voice` (a string,
or {"id": ...}; ours, an OpenAI name of `server.voices`, or a saved voice), `instructions`,
`response_format`, `speed`, `stream_format`. Extensions, by the names vLLM-Omni gives them where
it has them: `language`, `seed`, `ref_audio`, `ref_text`, `stream` (true: stream raw audio, as
stream_format "audio"), the sampling parameters of our payload's `params`, and `loudness_lufs`,
`sample_rate`, `mp3_bitrate`; and for voices kept across chunks `clone_mode` (or vLLM-Omni's
`x_vector_only_mode`), `design`, `save_voice`, `score_consistency`. Anything else is refused by name (a typo never silently does nothing).

Times beside the audio (our payload's fields, and vLLM-Omni's `word_timestamps: true` for
`timestamps: "word"`): `timestamps` ("word" | "segment"), `subtitles` ("srt" | "vtt"), `chapters`.
The answer is the audio with its word times in the `X-Word-Timestamps` header (a JSON list of
{word, start, end}), or, with `response_mode: "json"`, one JSON body: the audio as base64 and the
metadata (words, segments, chapters) and subtitles beside it. Subtitles come in the JSON body only.
"""

from __future__ import annotations

import base64
import math
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from tts_runner.audio.streams import STREAM_FORMATS
from tts_runner.audio.tempo import MAX_SPEED, MIN_SPEED
from tts_runner.errors import NotFound
from tts_runner.server.errors import ApiError
from tts_runner.server.settings import ServerSettings
from tts_runner.voice.saved import VoiceStore

RESPONSE_FORMATS = ("mp3", "opus", "aac", "flac", "wav", "pcm")
STREAM_KINDS = ("audio", "sse")
SAMPLING = ("do_sample", "temperature", "top_k", "top_p", "repetition_penalty", "max_new_tokens", "min_new_tokens",
            "subtalker_temperature", "subtalker_top_k", "subtalker_top_p", "seed", "language")
TOP_LEVEL = ("ref_audio", "ref_text", "loudness_lufs", "sample_rate", "mp3_bitrate", "clone_mode", "design",
             "save_voice", "score_consistency")
CAPTIONS = ("timestamps", "subtitles", "chapters")
FIELDS = ("model", "input", "voice", "instructions", "response_format", "speed", "stream_format", "stream",
          *SAMPLING, *TOP_LEVEL, *CAPTIONS, "word_timestamps", "response_mode", "x_vector_only_mode")
RESPONSE_MODES = ("audio", "json")
CONTENT_TYPES = {"mp3": "audio/mpeg", "opus": "audio/ogg", "aac": "audio/aac", "flac": "audio/flac",
                 "wav": "audio/wav", "pcm": "audio/pcm"}


@dataclass(frozen=True)
class SpeechRequest:
    payload: dict            # for the edge
    response_format: str
    stream: str | None       # None: the whole file; "audio": its bytes as made; "sse": OpenAI's events
    voice: str               # as asked
    response_mode: str = "audio"  # the whole file: "audio" (word times in a header) | "json" (one JSON body)


def bad(param: str, message: str, code: str = "invalid_value") -> ApiError:
    return ApiError(400, f"Invalid input at {param}: {message}", param=param, code=code)


def speech_request(body: Any, settings: ServerSettings, voices: VoiceStore, variants: Mapping[str, str],
                   clones: Mapping[str, Any], default_model: str, default_voice: str) -> SpeechRequest:
    """`body` (parsed JSON) as a payload. `variants`: our model names and their kinds; `clones`: the
    config's saved voices (voices.clones). Raises ApiError (400, 404) naming the field."""
    if not isinstance(body, dict):
        raise ApiError(400, "Invalid input: the body must be a JSON object with 'input' (the text) and 'voice'.",
                       code="invalid_json")
    unknown = sorted(k for k in body if k not in FIELDS)
    if unknown:
        raise bad(str(unknown[0]), f"unknown field(s) {', '.join(map(repr, unknown))}; allowed: {', '.join(FIELDS)}.",
                  code="unknown_parameter")
    text = body.get("input")
    if not isinstance(text, str) or not text.strip():
        raise bad("input", "give the text to speak as a non-empty string.", code="missing_required_parameter"
                  if text is None else "invalid_value")
    if len(text) > settings.max_input_chars:
        raise bad("input", f"the text is {len(text)} characters; the limit is {settings.max_input_chars} "
                           "(server.max_input_chars). Split it, or send it as segments to POST /v1/tts.")
    fmt = body.get("response_format", settings.default_format)
    if fmt not in RESPONSE_FORMATS:
        raise bad("response_format", f"{_shown(fmt)} is not a format; use one of {', '.join(RESPONSE_FORMATS)}.")
    speed = body.get("speed", 1.0)
    if isinstance(speed, bool) or not isinstance(speed, (int, float)) or not math.isfinite(speed) \
            or not MIN_SPEED <= speed <= MAX_SPEED:
        raise bad("speed", f"{_shown(speed)} is not a speed; give a number from {MIN_SPEED} to {MAX_SPEED}.")
    stream = _stream_kind(body, fmt)
    model, asked_alias = _model(body.get("model"), settings, variants, default_model)
    voice = _voice_name(body.get("voice", default_voice))
    payload: dict[str, Any] = {"text": text, "output_format": fmt, "speed": float(speed)}
    params = {k: body[k] for k in SAMPLING if k in body}
    if body.get("instructions") is not None:
        params["instruct"] = body["instructions"]
    payload.update({k: body[k] for k in TOP_LEVEL if k in body})
    _clone_mode(body, payload)
    saved = voices.get(voice)
    if voice.lower() in settings.voices and voice not in clones and saved is None:
        payload["voice"] = settings.voices[voice.lower()]
    elif saved is not None:
        if "ref_audio" in body:
            raise bad("ref_audio", f"voice '{voice}' is a saved voice, which brings its own recording; give one "
                                   "of the two.")
        payload["ref_audio"] = base64.b64encode(saved.recording()).decode("ascii")
        if saved.ref_text and "ref_text" not in body:
            payload["ref_text"] = saved.ref_text
        payload["voice"] = default_voice
    else:
        payload["voice"] = voice
    clones_voice = saved is not None or voice in clones or "ref_audio" in payload
    if clones_voice and variants.get(model) != "base":
        if not asked_alias:
            raise bad("model", f"model '{model}' speaks with its own speakers; voice '{voice}' is cloned from a "
                               "recording, which the Base models do: ask for one (e.g. "
                               f"'{settings.clone_model}') or an OpenAI model name.")
        model = settings.clone_model
    payload["model"] = model
    if params:
        payload["params"] = params
    mode = _captions(body, payload, stream)
    return SpeechRequest(payload, fmt, stream, voice, mode)


def _clone_mode(body: dict, payload: dict) -> None:
    """vLLM-Omni's x_vector_only_mode (true: xvector, false: icl) as our clone_mode; not both."""
    flag = body.get("x_vector_only_mode")
    if flag is None:
        return
    if not isinstance(flag, bool):
        raise bad("x_vector_only_mode", "true or false.")
    mode = "xvector" if flag else "icl"
    if body.get("clone_mode") not in (None, mode):
        raise bad("x_vector_only_mode", f"it asks for clone_mode '{mode}', but clone_mode is "
                                        f"{_shown(body['clone_mode'])}; give one of the two.")
    payload["clone_mode"] = mode


def _captions(body: dict, payload: dict, stream: str | None) -> str:
    """The caption fields into the payload (the edge checks their values); the response mode."""
    words = body.get("word_timestamps")
    if words is not None and not isinstance(words, bool):
        raise bad("word_timestamps", "true or false.")
    if words and body.get("timestamps") not in (None, "word"):
        raise bad("word_timestamps", f"word_timestamps asks for word times, but timestamps is "
                                     f"{_shown(body['timestamps'])}; give one of the two.")
    payload.update({k: body[k] for k in CAPTIONS if k in body})
    if words:
        payload["timestamps"] = "word"
    asked = [k for k in CAPTIONS if payload.get(k)]
    if stream is not None and asked:
        raise bad(asked[0], "word and segment times, subtitles and chapters are made from the whole file, so they "
                            "do not come with a stream; leave out stream_format (and stream).")
    mode = body.get("response_mode", "audio")
    if mode not in RESPONSE_MODES:
        raise bad("response_mode", f"{_shown(mode)} is not a response mode; use 'audio' (the file, word times in "
                                   "the X-Word-Timestamps header) or 'json' (one JSON body).")
    if stream is not None and mode == "json":
        raise bad("response_mode", "a stream sends audio as it is made; 'json' answers with the whole file. "
                                   "Leave out stream_format for 'json'.")
    if payload.get("subtitles") and mode != "json":
        raise bad("subtitles", "subtitles come beside the audio in a JSON body: add \"response_mode\": \"json\".")
    return mode


def _stream_kind(body: dict, fmt: str) -> str | None:
    kind = body.get("stream_format")
    if kind is not None and kind not in STREAM_KINDS:
        raise bad("stream_format", f"{_shown(kind)} is not a stream format; use 'audio' or 'sse'.")
    flag = body.get("stream")
    if flag is not None and not isinstance(flag, bool):
        raise bad("stream", "true or false.")
    if kind is None and flag:
        kind = "audio"
    if kind is not None and fmt not in STREAM_FORMATS:
        raise bad("response_format", f"'{fmt}' cannot be streamed (a FLAC file is written whole); stream one of "
                                     f"{', '.join(STREAM_FORMATS)}, or leave stream_format out for the whole file.")
    return kind


def _model(value: Any, settings: ServerSettings, variants: Mapping[str, str], default: str) -> tuple[str, bool]:
    """Our variant, and whether the request named it by an OpenAI name (or not at all)."""
    if value is None:
        return default, True
    if not isinstance(value, str):
        raise bad("model", f"give a model name (a string), not {_shown(value)}.")
    if value in settings.models:
        return settings.models[value], True
    if value in variants:
        return value, False
    known = sorted([*settings.models, *variants])
    raise NotFound(f"Unknown model '{_shown(value, quote=False)}'. Available: {', '.join(known)}.")


def _voice_name(value: Any) -> str:
    if isinstance(value, dict) and set(value) == {"id"}:
        value = value["id"]
    if not isinstance(value, str) or not value.strip() or len(value) > 200:
        raise bad("voice", "give a voice name: a speaker, one of OpenAI's voice names, or a saved voice "
                           "(GET /v1/audio/voices lists them).")
    return value


def _shown(value: Any, quote: bool = True) -> str:
    text = value if isinstance(value, str) else repr(value)
    text = text if len(text) <= 60 else text[:60] + "..."
    return repr(text) if quote and isinstance(value, str) else text
