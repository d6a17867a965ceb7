"""Command line: `python -m tts_runner +job=jobs/podcast.yaml [key=value ...]`, `-m` for sweeps.

Runs the job graph in-process and writes into the Hydra run directory: the audio (file sink)
and result.json with the metadata and the resolved config.
"""

from __future__ import annotations

import json
import logging
import sys
from pathlib import Path

import hydra
from hydra.core.hydra_config import HydraConfig
from omegaconf import DictConfig, OmegaConf

from tts_runner import config as config_mod
from tts_runner import payload as payload_mod
from tts_runner.errors import TTSError
from tts_runner.model_store import ModelStore
from tts_runner.redact import protect, redact
from tts_runner.runner import check_config, run_job

log = logging.getLogger("tts_runner")
_STORES: dict[str, ModelStore] = {}  # one per process: multirun jobs reuse loaded models


def resolve_job(cfg: DictConfig, cli_overrides: list[str]) -> DictConfig:
    """Merge the job spec (+job=...) and re-apply command-line overrides on top; validate."""
    pins = config_mod.pinned_overrides(cfg, cli_overrides)
    validator = payload_mod.build_validator(cfg)
    if cfg.get("job"):
        name, spec = payload_mod.load_job_spec(str(cfg.job))
        payload_mod.validate(spec, validator, cfg.limits.max_total_chars)
        cfg = payload_mod.merge(cfg, spec)
        cfg.input.name = name
    cfg = config_mod.apply_pins(cfg, pins)
    check_config(cfg)
    payload_mod.validate(payload_mod.from_config(cfg), validator, cfg.limits.max_total_chars)
    return cfg


@hydra.main(version_base="1.3", config_path="../conf", config_name="cli")
def main(cfg: DictConfig) -> None:
    hydra_cfg = HydraConfig.get()
    out_dir = Path(hydra_cfg.runtime.output_dir)
    secrets = protect(cfg.sink)
    try:
        cfg = resolve_job(cfg, list(hydra_cfg.overrides.task))
        max_batch = int(cfg.batching.max_batch_size)
        key = OmegaConf.to_yaml(cfg.models) + OmegaConf.to_yaml(cfg.runtime) + str(max_batch)
        if key not in _STORES:
            _STORES[key] = ModelStore(cfg.models, cfg.runtime, max_batch=max_batch)
        store = _STORES[key]
        model = store.get(cfg.input.model)
        response, _ = run_job(cfg, model, job_id=cfg.input.name, out_dir=out_dir)
    except TTSError as exc:
        log.error("%s", exc)
        raise SystemExit(2) from None
    record = {**response, "config": OmegaConf.to_container(cfg, resolve=True)}
    if "audio_base64" in record:
        record["audio_base64_length"] = len(record.pop("audio_base64"))
    result_path = out_dir / "result.json"
    result_path.write_text(json.dumps(redact(record, secrets), indent=2))
    meta = response["metadata"]
    where = response.get("audio_path") or response.get("audio_url") or str(result_path)
    print(f"wrote {where} ({meta['duration_seconds']} s of audio, {meta['num_chunks']} chunks, "
          f"{meta['generation_time_seconds']} s) and {result_path}")


def _flags_first(argv: list[str]) -> list[str]:
    """Hydra's parser wants -m/--multirun before the overrides; accept it anywhere."""
    flags = [a for a in argv if a in ("-m", "--multirun")]
    return flags + [a for a in argv if a not in flags]


if __name__ == "__main__":
    sys.argv[1:] = _flags_first(sys.argv[1:])
    main()
