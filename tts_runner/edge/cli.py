"""Command line: `python -m tts_runner +job=jobs/podcast.yaml [key=value ...]`, `-m` for sweeps.

Runs the job graph in-process and writes into the Hydra run directory: the audio (file sink)
and result.json with the metadata and the resolved config. `--help` and `--cfg job` are answered
here, quickly (no model code is imported for them); everything else goes to Hydra.
"""

from __future__ import annotations

import json
import logging
import shutil
import sys
from pathlib import Path

import hydra
from hydra.core.hydra_config import HydraConfig
from omegaconf import DictConfig, OmegaConf

from tts_runner.audio import sinks
from tts_runner.edge import config as config_mod
from tts_runner.edge import payload as payload_mod
from tts_runner.edge.redact import protect, redact
from tts_runner.errors import InputError, PayloadError, TTSError
from tts_runner.serving.store import check_model_folder
from tts_runner.sweeps import runs as sweeps

log = logging.getLogger("tts_runner")
_STORES: dict = {}  # one ModelStore per process and settings: multirun jobs reuse loaded models


def resolve_job(cfg: DictConfig, cli_overrides: list[str]) -> DictConfig:
    """Merge the job spec (+job=...), re-apply command-line overrides on top, and check everything
    that can be checked before a model is loaded: the job spec, the resulting job, the settings,
    the sink. Errors name what the user typed: the job spec's fields, or config keys."""
    pins = config_mod.pinned_overrides(cfg, cli_overrides)
    validator = payload_mod.build_validator(cfg)
    if cfg.get("job"):
        name, spec = payload_mod.load_job_spec(str(cfg.job))
        try:
            payload_mod.validate(spec, validator, cfg.limits.max_total_chars)
        except PayloadError as exc:
            raise InputError(f"Invalid job spec '{name}' at {exc.path}: {exc.detail}") from None
        cfg = payload_mod.merge(cfg, spec)
        cfg.input.name = name
    cfg = config_mod.apply_pins(cfg, pins)
    config_mod.check(cfg)
    try:
        payload_mod.validate(payload_mod.from_config(cfg), validator, cfg.limits.max_total_chars)
    except PayloadError as exc:
        key = payload_mod.config_key(exc.path)
        raise InputError(f"Invalid setting {key}: {exc.detail}" if key else str(exc)) from None
    sinks.check(cfg.sink)
    check_model_folder(cfg.models, cfg.input.model)
    return cfg


@hydra.main(version_base="1.3", config_path="../../conf", config_name="cli")
def main(cfg: DictConfig) -> None:
    hydra_cfg = HydraConfig.get()
    out_dir = Path(hydra_cfg.runtime.output_dir)
    secrets = protect(cfg.sink)
    try:
        cfg = resolve_job(cfg, list(hydra_cfg.overrides.task))
        # what Hydra saved is the config before the job was merged: save the job that runs instead
        saved = out_dir / hydra_cfg.output_subdir / "config.yaml" if hydra_cfg.output_subdir else None
        if saved and saved.parent.is_dir():
            saved.write_text(OmegaConf.to_yaml(cfg))
        from tts_runner.serving.store import ModelStore  # the model code loads only when a job runs

        max_batch = int(cfg.batching.max_batch_size)
        key = OmegaConf.to_yaml(cfg.models) + OmegaConf.to_yaml(cfg.runtime) + OmegaConf.to_yaml(cfg.scheduler)
        if key not in _STORES:
            _STORES[key] = ModelStore(cfg.models, cfg.runtime, max_batch=max_batch, cloning=cfg.cloning,
                                    scheduler=cfg.scheduler)
        model = _STORES[key].get(cfg.input.model)
    except TTSError as exc:
        log.error("%s", redact(str(exc), secrets))
        _drop_if_empty(out_dir)
        raise SystemExit(2) from None
    if batched(cfg, hydra_cfg) and model.scheduler is not None:
        # a sweep's runs share the model's rows: this run starts with the others once Hydra has
        # launched them all (tts_runner.sweeps.runs), and the sweep's end waits for them
        sweeps.submit(_run, cfg, model, out_dir, secrets, scheduler=model.scheduler)
        return
    if not _run(cfg, model, out_dir, secrets):
        raise SystemExit(2)


def batched(cfg: DictConfig, hydra_cfg) -> bool:
    """Is this a run of a sweep whose runs share the model (multirun.batched, Hydra's basic launcher:
    every run in this process)? Launchers that run jobs elsewhere (joblib, submitit) run each whole."""
    launcher = str(OmegaConf.select(hydra_cfg, "launcher._target_") or "")
    return (str(hydra_cfg.mode) == "RunMode.MULTIRUN" and bool(OmegaConf.select(cfg, "multirun.batched"))
            and launcher.endswith("BasicLauncher"))


def _run(cfg: DictConfig, model, out_dir: Path, secrets) -> bool:
    """Run the job, write result.json, say where; False (and the error logged) when it failed."""
    from tts_runner.job.run import run_job

    try:
        response, _ = run_job(cfg, model, job_id=cfg.input.name, out_dir=out_dir, keep=out_dir)
    except TTSError as exc:
        log.error("%s", redact(str(exc), secrets))
        _drop_if_empty(out_dir)
        return False
    record = {**response, "config": OmegaConf.to_container(cfg, resolve=True)}
    if "audio_base64" in record:
        record["audio_base64_length"] = len(record.pop("audio_base64"))
    result_path = out_dir / "result.json"
    result_path.write_text(json.dumps(redact(record, secrets), indent=2))
    meta = response["metadata"]
    where = response.get("audio_path") or response.get("audio_url") or str(result_path)
    chunks = meta["num_chunks"]
    print(f"wrote {where} ({meta['duration_seconds']} s of audio, {chunks} chunk{'s' * (chunks != 1)}, "
          f"{meta['generation_time_seconds']} s) and {result_path}", flush=True)
    return True


def _drop_if_empty(out_dir: Path) -> None:
    """A run that made nothing leaves no folder behind (Hydra's own files and log aside)."""
    if out_dir.is_dir() and not any(p.suffix not in ("", ".log", ".yaml") for p in out_dir.rglob("*") if p.is_file()):
        shutil.rmtree(out_dir, ignore_errors=True)


def help_text() -> str:
    """Our --help: the jobs, the config groups and their options, examples."""
    jobs = []
    for path in sorted(payload_mod.JOBS_DIR.glob("*.yaml")):
        first = next((line.lstrip("# ").strip() for line in path.read_text().splitlines() if line.startswith("#")), "")
        jobs.append(f"  {path.stem:<10} {first}")
    groups = []
    for folder in sorted({p.parent for p in config_mod.CONF_DIR.rglob("*.yaml")} - {config_mod.CONF_DIR}):
        name = folder.relative_to(config_mod.CONF_DIR).as_posix()
        options = ", ".join(sorted(f.stem for f in folder.glob("*.yaml")))
        hint = {"sweep": "  (+sweep=NAME: a named multirun)",
                "hydra/launcher": "  (and Hydra's basic, joblib, submitit_local, submitit_slurm)"}.get(name, "")
        groups.append(f"  {name:<10} {options}{hint}")
    return "\n".join([
        "tts-runner: text to speech with Qwen3-TTS, as a job (a text, or segments of a dialogue).",
        "",
        "usage: python -m tts_runner +job=NAME [KEY=VALUE ...]        run a job spec from jobs/",
        "       python -m tts_runner input.text='Hello there.' [KEY=VALUE ...]",
        "       python -m tts_runner +job=NAME -m KEY=A,B             a sweep: one run per value",
        "       python -m tts_runner +job=NAME --cfg job              print the job that would run, and stop",
        "",
        "jobs (jobs/*.yaml: the fields of a RunPod payload's input):",
        *jobs,
        "",
        "config groups (conf/; pick an option with GROUP=OPTION):",
        *groups,
        "",
        "any key of the config can be set: input.output_format=mp3, sampling.temperature=0.5,",
        "batching.max_batch_size=32, audio.sample_rate=48000, runtime.engine=fast, sink=file ...",
        "(python -m tts_runner +job=hello --cfg job shows them all).",
        "",
        "examples:",
        "  python -m tts_runner +job=podcast",
        "  python -m tts_runner +job=hello input.output_format=mp3 sampling.seed=7",
        "",
        "Output goes to outputs/<date>/<time>/ (the audio and result.json). The environment sets the",
        "model folder and device (QWEN_TTS_MODEL_DIR, QWEN_TTS_DEVICE); see README.md.",
        "Hydra's own options: --hydra-help.",
    ])


def _flags_first(argv: list[str]) -> list[str]:
    """Hydra's parser wants -m/--multirun before the overrides; accept it anywhere."""
    flags = [a for a in argv if a in ("-m", "--multirun")]
    return flags + [a for a in argv if a not in flags]


def print_job(argv: list[str]) -> None:
    """`--cfg job`: the config with the job spec and the command line merged, as it would run."""
    resolve = "--resolve" in argv
    skip = {"--cfg", "-c", "job", "--cfg=job", "--resolve"}
    overrides = [a for a in argv if a not in skip and not a.startswith("-")]
    cfg = resolve_job(config_mod.load(overrides, config_name="cli"), overrides)
    print(OmegaConf.to_yaml(cfg, resolve=resolve), end="")


def cli(argv: list[str]) -> int:
    if any(a in ("-h", "--help") for a in argv):
        print(help_text())
        return 0
    if "--cfg=job" in argv or any(a in ("--cfg", "-c") and b == "job" for a, b in zip(argv, argv[1:], strict=False)):
        try:
            print_job(argv)
        except TTSError as exc:
            print(f"error: {exc}", file=sys.stderr)
            return 2
        return 0
    sys.argv[1:] = _flags_first(argv)
    main()
    return 0

