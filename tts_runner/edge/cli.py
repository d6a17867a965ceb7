"""Command line: `python -m tts_runner +job=jobs/podcast.yaml [key=value ...]`, `-m` for sweeps.

Runs the job in-process, stage by stage, and writes into the Hydra run directory: the audio (file sink)
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
import yaml
from hydra.core.hydra_config import HydraConfig
from omegaconf import DictConfig, OmegaConf

from tts_runner.edge import build, payload
from tts_runner.edge import config as config_mod
from tts_runner.edge.jobs import Edge, as_config
from tts_runner.edge.redact import protect, redact
from tts_runner.errors import TTSError
from tts_runner.job.spec import Job
from tts_runner.sweeps import runs as sweeps

log = logging.getLogger("tts_runner")
_STORES: dict = {}  # one ModelStore per process and settings: multirun jobs reuse loaded models


def resolve_job(cfg: DictConfig, cli_overrides: list[str], keep: Path | None = None, sweep: bool = False) -> Job:
    """The job of the command line: the job spec (+job=...) with the command-line overrides over it,
    checked as far as it can be before a model is loaded (the settings, the sink, the job, the model's
    folder). Errors name what the user typed: the job spec's fields, or config keys. `keep`: the run
    folder (the file sink writes there, and a failed delivery keeps the audio there). In a `sweep`
    each run scores its voice's consistency unless the spec or the command line says otherwise
    (the report has a column for it)."""
    pins = config_mod.pinned_overrides(cfg, cli_overrides)
    edge = Edge(cfg, keep)
    if sweep:  # a default of sweeps: over the config's, under the spec's and the command line's
        edge.defaults["score_consistency"] = True
    name, spec = payload.load_job_spec(str(cfg.job)) if cfg.get("job") else (None, None)
    job = edge.cli_job(spec, name, pins)
    build.catalog(cfg.models).check(job.model)
    return job


def _store(cfg: DictConfig):
    """The process's model store for these settings (multirun jobs reuse loaded models)."""
    key = "\n".join(OmegaConf.to_yaml(cfg[group]) for group in ("models", "runtime", "scheduler", "cloning"))
    key += f"\nmax_batch_size: {cfg.batching.max_batch_size}"
    if key not in _STORES:
        _STORES[key] = build.model_store(cfg)  # the model code loads only when a job runs
    return _STORES[key]


@hydra.main(version_base="1.3", config_path=str(config_mod.CONF_DIR), config_name="cli")
def main(cfg: DictConfig) -> None:
    hydra_cfg = HydraConfig.get()
    out_dir = Path(hydra_cfg.runtime.output_dir)
    secrets = protect([cfg.sink.get("access_key"), cfg.sink.get("secret_key")])
    try:
        job = resolve_job(cfg, list(hydra_cfg.overrides.task), keep=out_dir,
                          sweep=str(hydra_cfg.mode) == "RunMode.MULTIRUN")
        # what Hydra saved is the config before the job was read: save the job that runs instead
        saved = out_dir / hydra_cfg.output_subdir / "config.yaml" if hydra_cfg.output_subdir else None
        if saved and saved.parent.is_dir():
            saved.write_text(yaml.safe_dump(as_config(cfg, job, resolve=False), sort_keys=False))
        model = _store(cfg).get(job.model)
    except TTSError as exc:
        log.error("%s", redact(str(exc), secrets))
        _drop_if_empty(out_dir)
        raise SystemExit(2) from None
    if batched(cfg, hydra_cfg) and model.scheduler is not None:
        # a sweep's runs share the model's rows: this run starts with the others once Hydra has
        # launched them all (tts_runner.sweeps.runs), and the sweep's end waits for them
        sweeps.submit(run, job, cfg, model, out_dir, secrets, scheduler=model.scheduler)
        return
    if not run(job, cfg, model, out_dir, secrets):
        raise SystemExit(2)


def batched(cfg: DictConfig, hydra_cfg) -> bool:
    """Is this a run of a sweep whose runs share the model (multirun.batched, Hydra's basic launcher:
    every run in this process)? Launchers that run jobs elsewhere (joblib, submitit) run each whole."""
    launcher = str(OmegaConf.select(hydra_cfg, "launcher._target_") or "")
    return (str(hydra_cfg.mode) == "RunMode.MULTIRUN" and bool(OmegaConf.select(cfg, "multirun.batched"))
            and launcher.endswith("BasicLauncher"))


def run(job: Job, cfg: DictConfig, model, out_dir: Path, secrets: list[str]) -> bool:
    """Run the job, write result.json, say where; False (and the error logged) when it failed."""
    from tts_runner.job.run import run_job

    try:
        response, _ = run_job(job, model)
    except TTSError as exc:
        log.error("%s", redact(str(exc), secrets))
        _drop_if_empty(out_dir)
        return False
    record = {**response, "config": as_config(cfg, job)}
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
    for path in sorted(payload.JOBS_DIR.glob("*.yaml")):
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
    """`--cfg job`: the config with the job spec and the command line in it, as it would run."""
    resolve = "--resolve" in argv
    skip = {"--cfg", "-c", "job", "--cfg=job", "--resolve"}
    overrides = [a for a in argv if a not in skip and not a.startswith("-")]
    cfg = config_mod.load(overrides, config_name="cli")
    print(yaml.safe_dump(as_config(cfg, resolve_job(cfg, overrides), resolve=resolve), sort_keys=False), end="")


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

