"""A job's input (a RunPod payload, or a job spec), checked: payload.schema.json with the limits of
the `limits` group filled in, and the rules a schema cannot say. Each error names the JSON path of
the offending field and what is allowed, without echoing large values back.

`FIELDS` says where each field of the input sits in the config (conf defaults, environment, command
line): the edge reads a job's defaults from there (`defaults`), lays the payload and the command
line's values over them, and names config keys in the command line's errors (`config_key`).
"""

from __future__ import annotations

import json
import math
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import yaml
from jsonschema import Draft202012Validator
from jsonschema.exceptions import ValidationError, relevance
from omegaconf import DictConfig, OmegaConf

from tts_runner.audio.formats import MP3_MAX_KBPS_BELOW_32K, OPUS_RATES
from tts_runner.edge.config import plain
from tts_runner.errors import InputError, PayloadError

SCHEMA_PATH = Path(__file__).with_name("payload.schema.json")
REPO_ROOT = Path(__file__).resolve().parents[2]
JOBS_DIR = REPO_ROOT / "jobs"

MAX_DEPTH = 8  # a valid payload nests 3 levels (input.segments[i].text)

# Each field of a job's input and the config key that holds its default; params.* not listed here
# sit in the `sampling` group under their own name.
FIELDS = {
    "text": "input.text", "segments": "input.segments", "voice": "input.voice", "model": "input.model",
    "output_format": "input.output_format", "ref_audio": "input.ref_audio", "ref_text": "input.ref_text",
    "stream": "input.stream", "sample_rate": "audio.sample_rate", "mp3_bitrate": "audio.mp3_bitrate",
    "loudness_lufs": "audio.loudness_lufs", "speed": "audio.speed", "params.language": "input.language", "params.instruct": "input.instruct",
    "timestamps": "input.timestamps", "subtitles": "input.subtitles", "chapters": "input.chapters",
    "clone_mode": "cloning.mode", "design": "voices.design.mode", "save_voice": "input.save_voice",
    "score_consistency": "input.score_consistency",
}
SAMPLING_GROUP = "sampling"


def build_validator(cfg: DictConfig) -> Draft202012Validator:
    """The payload validator, with limits and model names taken from the config."""
    values = dict(OmegaConf.to_container(cfg.limits, resolve=True))
    values["model_names"] = sorted(cfg.models.variants)

    def fill(node: Any) -> Any:
        if isinstance(node, dict):
            return {k: fill(v) for k, v in node.items()}
        if isinstance(node, list):
            return [fill(v) for v in node]
        if isinstance(node, str) and node.startswith("LIMIT "):
            return values[node.removeprefix("LIMIT ")]
        return node

    schema = fill(json.loads(SCHEMA_PATH.read_text()))
    Draft202012Validator.check_schema(schema)
    return Draft202012Validator(schema)


def validate(payload: Any, validator: Draft202012Validator, max_total_chars: int) -> dict:
    """Check one job input; return it unchanged or raise InputError with one clear message."""
    if not isinstance(payload, dict):
        raise PayloadError("$", f"the job input must be a JSON object with 'text' or 'segments', "
                                f"got {_json_type(payload)}.")
    _check_structure(payload, "$")
    has_text, has_segments = payload.get("text") is not None, payload.get("segments") is not None
    if has_text == has_segments:
        raise PayloadError("$", "give exactly one of 'text' (a string) or 'segments' "
                                f"(a list of {{text, voice}}); got {'both' if has_text else 'neither'}.")
    error = min(validator.iter_errors(payload), key=_priority, default=None)
    if error is not None:
        raise PayloadError(error.json_path, _describe(error))
    texts = [payload["text"]] if has_text else [s["text"] for s in payload["segments"]]
    rate = payload.get("sample_rate", 24000)
    if payload.get("output_format") == "opus" and rate not in OPUS_RATES:
        raise PayloadError("$.sample_rate", f"output_format 'opus' takes {', '.join(map(str, OPUS_RATES))} Hz; "
                                            f"got {rate}.")
    if payload.get("output_format") == "mp3" and rate < 32000 and payload.get("mp3_bitrate", 0) > MP3_MAX_KBPS_BELOW_32K:
        raise PayloadError("$.mp3_bitrate", f"MP3 at {rate} Hz goes up to {MP3_MAX_KBPS_BELOW_32K} kbps; got "
                                            f"{payload['mp3_bitrate']} (ask for sample_rate 44100 or 48000 for more).")
    params = payload.get("params") or {}
    floor, cap = params.get("min_new_tokens"), params.get("max_new_tokens")
    if floor is not None and cap is not None and floor > cap:
        raise PayloadError("$.params.min_new_tokens", f"the end-of-speech floor, {floor} frames, is above "
                                                      f"max_new_tokens, {cap}: no chunk could end before its cap. "
                                                      "Lower min_new_tokens (the default floor is "
                                                      "QWEN_TTS_MIN_NEW_TOKENS) or raise max_new_tokens.")
    total = sum(len(t) for t in texts)
    if total > max_total_chars:
        raise PayloadError("$", f"the job has {total} characters of text; the limit is {max_total_chars} per "
                                "job. Split it into several jobs.")
    return payload


def config_key(path: str) -> str | None:
    """The config key behind a payload path ($.params.top_k -> sampling.top_k), for messages on the
    command line, where the user typed config keys; None for the payload as a whole ($)."""
    if path == "$":
        return None
    key = path.removeprefix("$.")
    head, rest = _split_head(key)
    if head == "params":
        name, rest = _split_head(rest.removeprefix("."))
        return FIELDS.get(f"params.{name}", f"{SAMPLING_GROUP}.{name}") + rest
    return (FIELDS.get(head) or f"input.{head}") + rest


def _split_head(key: str) -> tuple[str, str]:
    """("segments", "[0].voice") for "segments[0].voice"; ("params", ".top_k") for "params.top_k"."""
    cut = min([i for i in (key.find("."), key.find("[")) if i >= 0], default=len(key))
    return key[:cut], key[cut:]


def defaults(cfg: DictConfig) -> dict:
    """A job's input as the config alone gives it (conf defaults, environment, command line): the
    fields it sets, in the payload's shape."""
    payload: dict[str, Any] = {}
    params: dict[str, Any] = {}
    for field, key in FIELDS.items():
        value = plain(OmegaConf.select(cfg, key))
        if value is not None:
            (params if field.startswith("params.") else payload)[field.removeprefix("params.")] = value
    for name, value in OmegaConf.to_container(cfg[SAMPLING_GROUP], resolve=True).items():
        if value is not None:
            params[name] = value
    return {**payload, "params": params}


def from_config_keys(values: Mapping[str, Any]) -> dict:
    """The job-input fields among config keys and their values (the command line's), in the payload's
    shape; other keys are left out."""
    keys = {key: field for field, key in FIELDS.items()}
    payload: dict[str, Any] = {}
    params: dict[str, Any] = {}
    for key, value in _flat(values):
        field = keys.get(key) or (f"params.{key.removeprefix(SAMPLING_GROUP + '.')}"
                                  if key.startswith(SAMPLING_GROUP + ".") else None)
        if field is not None:
            (params if field.startswith("params.") else payload)[field.removeprefix("params.")] = value
    return {**payload, "params": params} if params else payload


def as_config(payload: Mapping[str, Any]) -> dict:
    """A job's input in the config's shape: {"input": {...}, "sampling": {...}, "audio": {...}}."""
    out: dict[str, dict] = {}
    fields = {**{k: v for k, v in payload.items() if k != "params"},
              **{f"params.{k}": v for k, v in payload.get("params", {}).items()}}
    for field, value in fields.items():
        *groups, name = (FIELDS.get(field) or f"{SAMPLING_GROUP}.{field.removeprefix('params.')}").split(".")
        node = out
        for group in groups:  # voices.design.mode -> {"voices": {"design": {"mode": ...}}}
            node = node.setdefault(group, {})
        node[name] = value
    return out


def _flat(values: Mapping[str, Any], prefix: str = ""):
    for key, value in values.items():
        if isinstance(value, Mapping) and f"{prefix}{key}" not in FIELDS.values():
            yield from _flat(value, f"{prefix}{key}.")
        else:
            yield f"{prefix}{key}", value


def load_job_spec(ref: str, cwd: Path | None = None) -> tuple[str, dict]:
    """Read a job spec given as `podcast`, `jobs/podcast.yaml` or a path; return (name, payload)."""
    cwd = cwd or Path.cwd()
    candidates = [cwd / ref, REPO_ROOT / ref]
    if not ref.endswith((".yaml", ".yml")):
        candidates += [cwd / "jobs" / f"{ref}.yaml", JOBS_DIR / f"{ref}.yaml"]
    path = next((p for p in candidates if p.is_file()), None)
    if path is None:
        known = ", ".join(sorted(p.stem for p in JOBS_DIR.glob("*.yaml")))
        raise InputError(f"Job spec '{ref}' not found (looked in {cwd} and {JOBS_DIR}). Known jobs: {known}.")
    try:
        data = yaml.safe_load(path.read_text())
    except yaml.YAMLError as exc:
        raise InputError(f"Job spec {path} is not valid YAML: {exc}") from None
    return path.stem, data


def _priority(error: ValidationError):
    # Prefer the deepest error, then jsonschema's own relevance ordering.
    return (-len(error.absolute_path), relevance(error))


def _json_type(value: Any) -> str:
    if value is None:
        return "null"
    if isinstance(value, bool):
        return "boolean"
    if isinstance(value, (int, float)):
        return "number"
    if isinstance(value, str):
        return "string"
    if isinstance(value, list):
        return "array"
    if isinstance(value, dict):
        return "object"
    return type(value).__name__


def _describe(error: ValidationError) -> str:
    v, inst = error.validator_value, error.instance
    match error.validator:
        case "type":
            expected = " or ".join(v) if isinstance(v, list) else v
            return f"must be of type {expected}, got {_json_type(inst)}."
        case "enum":
            return f"{_short(inst)} is not allowed; allowed: {', '.join('null' if x is None else str(x) for x in v)}."
        case "additionalProperties":
            allowed = sorted(error.schema.get("properties", {}))
            unknown = sorted(k for k in inst if k not in allowed)
            return f"unknown field(s) {', '.join(map(repr, unknown))}; allowed: {', '.join(allowed)}."
        case "required":
            return error.message + "."
        case "minLength":
            return "must not be empty."
        case "maxLength":
            return f"is {len(inst)} characters long; the limit is {v}."
        case "minItems":
            return f"has {len(inst)} items; at least {v} required."
        case "maxItems":
            return f"has {len(inst)} items; the limit is {v}."
        case "minimum" | "maximum" | "exclusiveMinimum" | "exclusiveMaximum":
            bounds = _bounds(error.schema)
            return f"must be {bounds}, got {inst}."
        case "pattern" if v == "\\S":
            return "must contain some non-whitespace text."
        case "pattern":
            return (f"{_short(inst)} is not a voice name: use letters, digits, '_' or '-' "
                    "(at most 64), e.g. male_1 or ryan.")
    return error.message[:300]


def _bounds(schema: dict) -> str:
    parts = []
    if "minimum" in schema:
        parts.append(f">= {schema['minimum']}")
    if "exclusiveMinimum" in schema:
        parts.append(f"> {schema['exclusiveMinimum']}")
    if "maximum" in schema:
        parts.append(f"<= {schema['maximum']}")
    if "exclusiveMaximum" in schema:
        parts.append(f"< {schema['exclusiveMaximum']}")
    return " and ".join(parts)


def _short(value: Any, limit: int = 60) -> str:
    text = repr(value)
    return text if len(text) <= limit else text[:limit] + "...'"


def _check_structure(root: Any, root_path: str) -> None:
    """Reject non-finite numbers and nesting deeper than MAX_DEPTH. Iterative, so deeply nested
    junk cannot exhaust the recursion limit here (nor later, in jsonschema's messages)."""
    stack = [(root, root_path, 0)]
    while stack:
        node, path, depth = stack.pop()
        if isinstance(node, float) and not math.isfinite(node):
            raise PayloadError(path, f"must be a finite number, got {node}.")
        if isinstance(node, (dict, list)) and depth >= MAX_DEPTH:
            raise PayloadError(_short(path, 80), f"nested more than {MAX_DEPTH} levels deep.")
        if isinstance(node, dict):
            stack.extend((v, f"{path}.{k}", depth + 1) for k, v in node.items())
        elif isinstance(node, list):
            stack.extend((v, f"{path}[{i}]", depth + 1) for i, v in enumerate(node))
