"""The one edge: (composed config, payload or job spec, command-line values) -> a typed, immutable Job.

The worker, the command line and sweeps all build their jobs here. A job's input comes in three
layers, lowest first: what the config gives (conf defaults, then the environment, as composed),
the payload or job spec, and the values typed on the command line. The given input is checked
alone (so an error names what was given), then all three together (so a payload and the worker's
own settings make sense as a whole: an opus request against an operator's 44.1 kHz output, say),
and the result becomes a Job once: its sampling, its output, its segments, and the worker's
recipe. Nothing is merged into the config and read back: payload strings never meet OmegaConf's
interpolation (a text that reads `${oc.env:S3_SECRET_KEY}` is spoken as written).
"""

from __future__ import annotations

import random
from collections.abc import Mapping
from dataclasses import replace
from pathlib import Path
from typing import Any

from omegaconf import DictConfig, OmegaConf

from tts_runner.captions import align
from tts_runner.edge import build, payload
from tts_runner.engines.sampling import SEED_RANGE, Sampling
from tts_runner.errors import InputError, PayloadError
from tts_runner.job.spec import Captions, Job, Output, Recipe, Segment

REQUIRED = ("voice", "model", "output_format", "sample_rate", "mp3_bitrate")


def overlay(base: Mapping[str, Any], top: Mapping[str, Any]) -> dict:
    """`top`'s fields over `base`'s (params field by field); a text replaces segments and the reverse."""
    merged = {**base, **{k: v for k, v in top.items() if k != "params"}}
    merged["params"] = {**base.get("params", {}), **top.get("params", {})}
    if top.get("text") is not None:
        merged.pop("segments", None)
    if top.get("segments") is not None:
        merged.pop("text", None)
    return {k: v for k, v in merged.items() if not (k in ("text", "segments") and v is None)}


class Edge:
    """Jobs of one composed config: its validator, its defaults and its recipe, built once."""

    def __init__(self, cfg: DictConfig, keep: Path | None = None):
        """`keep`: where the file sink writes when it names no folder, and where the audio is kept
        when delivery fails (the command line's run folder). SettingError or SinkError on a bad setting."""
        self.recipe: Recipe = build.recipe(cfg, keep)
        self.validator = payload.build_validator(cfg)
        self.max_total_chars = int(cfg.limits.max_total_chars)
        self.defaults = payload.defaults(cfg)
        self.name = str(cfg.input.get("name") or "tts")
        self.kinds = {str(name): str(v.kind) for name, v in cfg.models.variants.items()}

    def validate(self, given: Any) -> dict:
        return payload.validate(given, self.validator, self.max_total_chars)

    def job(self, given: Any, id: str = "local") -> Job:
        """The Job of a payload (a RunPod job's input); errors name the payload's fields."""
        request = overlay(self.defaults, self.validate(given))
        self.validate(request)
        return self._build(request, id=id, name=self.name)

    def cli_job(self, spec: dict | None, name: str | None, pins: Mapping[str, Any]) -> Job:
        """The Job of the command line: a job spec (`spec`, read from jobs/`name`.yaml; None: the config's
        input alone) with the values typed on the command line (`pins`, by config key) over it.
        Errors name the spec's fields by the spec's name, and the rest by config key."""
        if spec is not None:
            try:
                self.validate(spec)
            except PayloadError as exc:
                raise InputError(f"Invalid job spec '{name}' at {exc.path}: {exc.detail}") from None
        request = overlay(overlay(self.defaults, spec or {}), payload.from_config_keys(pins))
        try:
            self.validate(request)
        except PayloadError as exc:
            key = payload.config_key(exc.path)
            raise InputError(f"Invalid setting {key}: {exc.detail}" if key else str(exc)) from None
        name = str(pins.get("input.name") or name or self.name)
        return self._build(request, id=name, name=name)

    def _build(self, request: dict, id: str, name: str) -> Job:
        missing = [f for f in REQUIRED if request.get(f) is None]
        if missing:
            raise InputError(f"Invalid setting {payload.config_key('$.' + missing[0])}: it must be set.")
        params = dict(request.get("params", {}))
        language, instruct = params.pop("language", "auto"), params.pop("instruct", None)
        if params.get("seed") is None:
            params["seed"] = random.randrange(SEED_RANGE)  # returned in the metadata, so the job can be repeated
        sampling = Sampling(**{k: params[k] for k in Sampling.names() if k in params})
        if "text" in request:
            segments: tuple[Segment, ...] = (Segment(request["text"]),)
        else:
            segments = tuple(Segment(s["text"], s.get("voice"), s.get("instruct"), s.get("ref_audio"),
                                     s.get("ref_text"), s.get("chapter"), s.get("clone_mode")) for s in request["segments"])
        output = Output(format=request["output_format"], sample_rate=int(request["sample_rate"]),
                        mp3_bitrate=int(request["mp3_bitrate"]), loudness_lufs=request.get("loudness_lufs"),
                        speed=float(request.get("speed", 1.0)))
        stream = bool(request.get("stream", False))
        job = Job(id=id, name=name, model=request["model"], segments=segments, as_text="text" in request,
                  voice=request["voice"], language=str(language), instruct=instruct or None,
                  ref_audio=request.get("ref_audio"), ref_text=request.get("ref_text"), sampling=sampling,
                  output=output, stream=stream, recipe=self.recipe,
                  captions=captions(request, str(language), stream),
                  clone_mode=str(request.get("clone_mode") or self.recipe.cloning.mode),
                  design=str(request.get("design") or self.recipe.voices.design.mode),
                  save_voice=request.get("save_voice") or None,
                  score_consistency=bool(request.get("score_consistency", False)))
        if job.save_voice:
            self._check_save(job)
        if job.stream and job.score_consistency:
            raise PayloadError("$.score_consistency", "a voice's consistency is scored on each segment's whole audio, "
                                                      "so it does not come with a stream; ask without 'stream'.")
        return job

    def _check_save(self, job: Job) -> None:
        """save_voice keeps one designed voice under a name that is free, where voices are saved."""
        def refuse(why: str):
            raise PayloadError("$.save_voice", why)

        if self.kinds.get(job.model) != "voice_design" or job.design != "once":
            refuse(f"it keeps a voice designed once (a VoiceDesign model with design 'once'); this job "
                   f"{'designs per chunk' if self.kinds.get(job.model) == 'voice_design' else f'runs on {job.model!r}'}.")
        instructs = {s.instruct or job.instruct for s in job.segments}
        if len(instructs) > 1:
            refuse(f"it keeps one designed voice; this job designs {len(instructs)} (its segments' instructs differ). "
                   "Save each from a job of its own.")
        store = self.recipe.saved
        if store is None:
            refuse("no folder is set for saved voices (voices.saved_dir, TTS_RUNNER_VOICES_DIR).")
        if job.save_voice in self.recipe.voices.clones or store.get(job.save_voice) is not None:
            refuse(f"a voice '{job.save_voice}' is saved already; pick another name or delete it first.")
        store.check_room()  # a full store refuses the job before anything runs


def captions(request: dict, language: str, stream: bool) -> Captions:
    """What the job asks to know beside its audio, checked against what can be measured: word times
    need a language the aligner speaks; none of it comes with a stream (it needs the whole file)."""
    made = Captions(timestamps=request.get("timestamps"), subtitles=request.get("subtitles"),
                    chapters=bool(request.get("chapters", False)))
    asked = [name for name, on in (("timestamps", made.timestamps), ("subtitles", made.subtitles),
                                   ("chapters", made.chapters)) if on]
    if stream and asked:
        raise PayloadError(f"$.{asked[0]}", "word and segment times, subtitles and chapters are made from the "
                                            "whole file, so they do not come with a stream; ask without 'stream'.")
    if made.timestamps == "word" and not align.speaks(language):
        raise PayloadError("$.timestamps", "word times are found by forced alignment, which speaks English "
                                           f"only (language {' or '.join(repr(x) for x in align.LANGUAGES)}); the "
                                           f"job's language is '{language}'. Ask for 'segment' times, which work "
                                           "in every language.")
    words = made.timestamps == "word" or (made.subtitles is not None and align.speaks(language))
    return replace(made, align_words=words)


def as_payload(job: Job) -> dict:
    """A job's input in the payload's shape (its seed as drawn): what a record or a display shows."""
    segments = [{k: v for k, v in (("text", s.text), ("voice", s.voice), ("instruct", s.instruct),
                                   ("ref_audio", s.ref_audio), ("ref_text", s.ref_text), ("chapter", s.chapter),
                                   ("clone_mode", s.clone_mode))
                 if v is not None}
                for s in job.segments]
    sampling = {k: getattr(job.sampling, k) for k in Sampling.names() if k not in ("max_frames", "subtalker_dosample")}
    fields = {"voice": job.voice, "model": job.model, "output_format": job.output.format, "ref_audio": job.ref_audio,
              "ref_text": job.ref_text, "stream": job.stream, "sample_rate": job.output.sample_rate,
              "mp3_bitrate": job.output.mp3_bitrate, "loudness_lufs": job.output.loudness_lufs,
              "speed": job.output.speed, "timestamps": job.captions.timestamps,
              "subtitles": job.captions.subtitles, "chapters": job.captions.chapters or None,
              "clone_mode": job.clone_mode, "design": job.design, "save_voice": job.save_voice,
              "score_consistency": job.score_consistency or None}
    given = {"text": job.segments[0].text} if job.as_text else {"segments": segments}
    fields = {k: v for k, v in fields.items() if v is not None or k == "loudness_lufs"}  # null: levels as made
    return {**given, **fields, "params": {**sampling, "language": job.language, "instruct": job.instruct}}


def as_config(cfg: DictConfig, job: Job, resolve: bool = True) -> dict:
    """The config as the job runs: the composed config with the job's input in its input, sampling
    and audio groups (the text or the segments, the other null) and its name: for the command line's
    `--cfg job`, its saved config and result.json."""
    out = OmegaConf.to_container(cfg, resolve=resolve)
    groups = payload.as_config(as_payload(job))
    groups["input"] = {"text": None, "segments": None, **groups["input"], "name": job.name}
    for group, values in groups.items():
        out[group] = _laid_over(out.get(group, {}), values)
    return out


def _laid_over(base: dict, top: dict) -> dict:
    """`top`'s keys over `base`'s, nested dicts key by key (voices.design.mode keeps voices.design's sentences)."""
    merged = dict(base)
    for key, value in top.items():
        merged[key] = _laid_over(merged[key], value) if isinstance(value, dict) and isinstance(merged.get(key), dict) \
            else value
    return merged
