"""Composing the config, and the precedence rules between its layers.

Lowest first: conf defaults < environment (${oc.env:...} in conf/) < job (payload or job spec)
< command-line overrides. Hydra applies command-line overrides while composing, before the job
spec is known, so the CLI pins the values it set and puts them back after merging the job.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import Any

from hydra import compose, initialize_config_dir
from hydra.core.override_parser.overrides_parser import OverridesParser
from omegaconf import DictConfig, OmegaConf

from tts_runner.errors import InputError


class SettingError(InputError):
    """A configuration value (conf/, environment, command line) is out of range."""

CONF_DIR = Path(__file__).resolve().parents[2] / "conf"


def load(overrides: Sequence[str] = (), config_name: str = "config") -> DictConfig:
    """Compose a config from conf/ with Hydra's compose API (worker, tests, benchmark)."""
    with initialize_config_dir(version_base="1.3", config_dir=str(CONF_DIR), job_name="tts_runner"):
        return compose(config_name=config_name, overrides=list(overrides))


def pinned_overrides(cfg: DictConfig, overrides: Sequence[str]) -> dict[str, Any]:
    """The values that command-line overrides set in `cfg`, by key (hydra.* and job excluded)."""
    pins: dict[str, Any] = {}
    for override in OverridesParser.create().parse_overrides(list(overrides)):
        key = override.key_or_group
        if key == "job" or key.startswith("hydra") or override.is_delete():
            continue
        node = OmegaConf.select(cfg, key, throw_on_missing=False)
        pins[key] = OmegaConf.to_container(node) if isinstance(node, DictConfig) else node
    return pins


def apply_pins(cfg: DictConfig, pins: dict[str, Any]) -> DictConfig:
    for key, value in pins.items():
        OmegaConf.update(cfg, key, value, merge=False, force_add=True)
    return cfg


def check(cfg: DictConfig) -> None:
    """The settings of `batching` and `audio` that no payload carries: each bad one is one clear
    error at start-up (the worker) or before anything runs (the command line)."""
    def number(path: str, value, low: float, high: float, nullable: bool = False) -> None:
        if value is None and nullable:
            return
        if isinstance(value, bool) or not isinstance(value, (int, float)) or not low <= value <= high:
            allowed = f"a number from {low} to {high}" + (" or null" if nullable else "")
            raise SettingError(f"Invalid setting {path}={value!r}: use {allowed}.")

    batching, post = cfg.batching, cfg.audio
    if batching.runaway not in ("retry", "keep"):
        raise SettingError(f"Invalid setting batching.runaway={batching.runaway!r}: use retry or keep.")
    budget = batching.frame_budget
    number("batching.frame_budget.seconds_per_char", budget.seconds_per_char, 0.001, 10, nullable=True)
    number("batching.frame_budget.factor", budget.factor, 0.1, 100)
    number("batching.frame_budget.margin_seconds", budget.margin_seconds, 0, 600)
    number("audio.trim.threshold_db", post.trim.threshold_db, -120, 0, nullable=True)
    number("audio.trim.keep_ms", post.trim.keep_ms, 0, 1000)
    number("audio.true_peak_dbtp", post.true_peak_dbtp, -20, 0)
