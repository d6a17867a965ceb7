"""Composing the config, and the precedence rules between its layers.

Lowest first: conf defaults < environment (${oc.env:...} in conf/) < job (payload or job spec)
< command-line overrides. Hydra applies command-line overrides while composing, before the job
spec is known, so the command line's values are pinned (`pinned_overrides`) and laid over the job
by the edge (tts_runner/edge/jobs.py) once the spec is read.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import Any

from hydra import compose, initialize_config_dir
from hydra.core.override_parser.overrides_parser import OverridesParser
from omegaconf import DictConfig, OmegaConf

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
        pins[key] = plain(node)
    return pins


def plain(node: Any) -> Any:
    """A config node as plain Python values (interpolations resolved); anything else as it is."""
    return OmegaConf.to_container(node, resolve=True) if OmegaConf.is_config(node) else node
