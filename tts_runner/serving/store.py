"""Model variants: find their folders, load each once per process, and build what serves it.

Reads the `models` group (`Catalog`), the `runtime` group (`Runtime`) and the `scheduler` group
(`Serving`), as the edge builds them (tts_runner/edge/build.py). A job names a variant
(`1.7B-CustomVoice`); only configured names resolve, so a payload can never become a path. torch
and the model code are imported when a model loads, so a command that only checks a job
(`Catalog.check`) stays quick. Loading a variant builds its Model, its graph engine's buffers
(captured on CUDA), its scheduler, and warms it up.
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

from tts_runner.errors import ModelError, NotFound
from tts_runner.serving.device import resolve_device, resolve_dtype

if TYPE_CHECKING:
    from tts_runner.serving.model import Model

log = logging.getLogger(__name__)

# A model folder holding this file has random weights (tts_runner.tools.tiny_model writes it).
RANDOM_MARKER = "RANDOM_WEIGHTS"

ENGINES = ("fast", "graph", "stock")


@dataclass(frozen=True)
class Variant:
    folder: str  # under the model dir
    kind: str    # custom_voice | voice_design | base
    repo: str    # on the Hugging Face Hub


@dataclass(frozen=True)
class Catalog:
    """The model variants a job may name (the `models` group)."""

    dir: str
    default: str
    download: bool  # fetch a missing variant from the Hub
    variants: Mapping[str, Variant]

    @property
    def names(self) -> list[str]:
        return sorted(self.variants)

    def folder(self, variant: str) -> Path:
        if variant not in self.variants:
            raise NotFound(f"Unknown model '{variant}'. Available: {', '.join(self.names)}.")
        return Path(self.dir) / self.variants[variant].folder

    def check(self, variant: str) -> None:
        """A clear error when the variant's folder is not where QWEN_TTS_MODEL_DIR says and may not be
        fetched (no loading, no network)."""
        path = self.folder(variant)
        if not (path / "config.json").is_file() and not self.download:
            raise ModelError(
                f"Model '{variant}' not found: {path} has no config.json. Put the "
                f"{self.variants[variant].folder} folder under QWEN_TTS_MODEL_DIR (now {self.dir}), or let it be "
                f"fetched from the Hugging Face Hub ({self.variants[variant].repo}) with QWEN_TTS_DOWNLOAD=true. "
                "Without weights, build random-weight test models: python -m tts_runner.tools.tiny_model DIR."
            )

    def fetch(self, variant: str) -> Path:
        """Download a missing variant's folder from the Hugging Face Hub into the model dir (resumable:
        an interrupted download goes on where it stopped; progress bars on a terminal)."""
        path = self.folder(variant)
        repo = self.variants[variant].repo
        log.warning("Model '%s' is not in %s: fetching %s from the Hugging Face Hub", variant, self.dir, repo)
        try:
            from huggingface_hub import snapshot_download

            snapshot_download(repo_id=repo, local_dir=str(path))
        except Exception as exc:  # noqa: BLE001 - offline, unreachable, unknown repo, disk full: all one message
            reason = " ".join(str(exc).split())[:300].rstrip(".")
            raise ModelError(
                f"Model '{variant}' not found at {path}, and fetching it from the Hugging Face Hub ({repo}) failed: "
                f"{type(exc).__name__}: {reason}. Put the {self.variants[variant].folder} folder under "
                f"QWEN_TTS_MODEL_DIR (now {self.dir}) by hand, or build random-weight test models: "
                "python -m tts_runner.tools.tiny_model DIR, then set QWEN_TTS_MODEL_DIR=DIR."
            ) from None
        if not (path / "config.json").is_file():
            raise ModelError(f"Fetched {repo} into {path}, but it holds no config.json: not a Qwen3-TTS model folder.")
        return path


@dataclass(frozen=True)
class Runtime:
    """Where and how models run (the `runtime` group), as configured: `auto` is resolved for the
    device when the store is built."""

    device: str | None = "auto"
    dtype: str | None = "auto"
    attention: str | None = "auto"
    engine: str | None = "auto"
    sync_every: int | str | None = "auto"
    graph_buckets: tuple[int, ...] = (1, 2, 4, 8, 16, 32, 64, 128)
    graph_max_len: int = 1280
    graph_self_check: bool = True
    graph_candidates: int | None = 64
    compile: bool = False
    torch_threads: int | str | None = "auto"
    warmup: bool = True


@dataclass(frozen=True)
class Serving:
    """What each loaded model serves with: its scheduler (the `scheduler` group; off: each job runs
    its own batches) and its cache of clone prompts (`cloning.cache`)."""

    enabled: bool = True
    max_rows: int = 16
    queue_limit: int = 4096
    prompt_cache_entries: int = 64
    prompt_cache_megabytes: float = 256


def resolve_engine(engine: str | None, device: str) -> str:
    """auto -> the engine measured fastest on the device (docs/performance.md): graph on CUDA (an
    H100: 30-minute podcast 6.4x faster than fast at batch 64, one stream 6.6x), fast on the CPU
    (where graph's frame runs eagerly and is no faster); or as given."""
    if engine in (None, "", "auto"):
        return "graph" if device.startswith("cuda") else "fast"
    if engine not in ENGINES:
        raise ModelError(f"runtime.engine={engine!r} is not an engine; use auto, {', '.join(ENGINES)}.")
    return engine


def resolve_torch_threads(value, device: str, scheduled: bool) -> int | None:
    """auto -> 1 on the CPU under the scheduler (the scheduler's loop, and each job's own work, run on
    threads of their own: two intra-op pools on two cores made every small op wait for a busy core,
    measured 1.9x slower: docs/performance.md), else torch's own default (None); or as given."""
    if value in (None, "", "auto"):
        return 1 if scheduled and not device.startswith("cuda") else None
    if not isinstance(value, int) or isinstance(value, bool) or value < 1:
        raise ModelError(f"runtime.torch_threads={value!r} must be auto or a positive integer.")
    return value


def resolve_sync_every(value, device: str) -> int:
    """auto -> 8 on CUDA (a host check stalls the GPU's queue), 1 on the CPU (it costs nothing); or as given."""
    if value in (None, "", "auto"):
        return 8 if device.startswith("cuda") else 1
    if not isinstance(value, int) or isinstance(value, bool) or not 1 <= value <= 1024:
        raise ModelError(f"runtime.sync_every={value!r} must be auto or an integer from 1 to 1024.")
    return value


def graph_buckets(buckets, max_batch: int | None = None) -> tuple[int, ...]:
    """runtime.graph.buckets, checked and sorted. With the largest batch a job runs
    (batching.max_batch_size), buckets above the smallest one that holds it are dropped: they would
    never run, yet cost GPU memory for their rows and capture time at start-up."""
    if (not isinstance(buckets, (list, tuple)) or not buckets
            or not all(isinstance(b, int) and not isinstance(b, bool) and 1 <= b <= 1024 for b in buckets)):
        raise ModelError(f"runtime.graph.buckets={list(buckets) if isinstance(buckets, tuple) else buckets!r} must be "
                         "a list of batch sizes from 1 to 1024.")
    buckets = sorted(set(buckets))
    if max_batch:
        if max_batch > buckets[-1]:
            log.warning("batching.max_batch_size=%d is above the largest graph bucket (%d): larger batches "
                        "run on the fast loop; add a bucket to runtime.graph.buckets", max_batch, buckets[-1])
        else:
            buckets = [b for b in buckets if b < max_batch] + [min(b for b in buckets if b >= max_batch)]
    return tuple(buckets)


def graph_max_len(max_len) -> int:
    if not isinstance(max_len, int) or isinstance(max_len, bool) or not 16 <= max_len <= 32768:
        raise ModelError(f"runtime.graph.max_len={max_len!r} must be an integer from 16 to 32768.")
    return max_len


def graph_candidates(value) -> int | None:
    if value is None:
        return None
    if not isinstance(value, int) or isinstance(value, bool) or not 1 <= value <= 4096:
        raise ModelError(f"runtime.graph.candidates={value!r} must be null (every draw over every code) or an "
                         "integer from 1 to 4096.")
    return value


class ModelStore:
    """Loads each variant at most once and hands out its Model (with its scheduler, when serving
    says so and the engine runs a loop)."""

    def __init__(self, catalog: Catalog, runtime: Runtime, max_batch: int | None = None,
                 serving: Serving = Serving(enabled=False)):
        self.catalog, self.runtime, self.serving = catalog, runtime, serving
        self.device = resolve_device(runtime.device)
        self.dtype = resolve_dtype(runtime.dtype, self.device)
        self.engine = resolve_engine(runtime.engine, self.device)
        # Only the graph engine has buckets to size (and to warn about).
        self.graph_buckets = graph_buckets(runtime.graph_buckets, max_batch if self.engine == "graph" else None)
        self.graph_max_len = graph_max_len(runtime.graph_max_len)
        self.graph_candidates = graph_candidates(runtime.graph_candidates)
        self.sync_every = resolve_sync_every(runtime.sync_every, self.device)
        self.scheduled = serving.enabled and self.engine != "stock"
        threads = resolve_torch_threads(runtime.torch_threads, self.device, self.scheduled)
        if threads:
            import torch

            torch.set_num_threads(threads)  # for the whole process
        self._models: dict[str, Model] = {}
        self._lock = threading.Lock()

    def get(self, variant: str) -> Model:
        with self._lock:
            if variant not in self._models:
                self._models[variant] = self._load(variant)
            return self._models[variant]

    def available(self, variant: str) -> Model | None:
        """The variant's model when its folder is here or may be fetched (models.download); None when
        it is absent and may not be (or is not configured). A failed fetch or load raises ModelError."""
        if variant not in self.catalog.variants:
            return None
        if not (self.catalog.folder(variant) / "config.json").is_file() and not self.catalog.download:
            return None
        return self.get(variant)

    def loaded_models(self) -> list[Model]:
        with self._lock:
            return list(self._models.values())

    def loaded(self) -> list[str]:
        return sorted(self._models)

    def _load(self, variant: str) -> Model:
        self.catalog.check(variant)
        path = self.catalog.folder(variant)
        if not (path / "config.json").is_file():
            self.catalog.fetch(variant)
        if (path / RANDOM_MARKER).exists():
            log.warning("Model %s at %s has RANDOM weights (built by tts_runner.tools.tiny_model): "
                        "its audio is noise. Use it for tests only.", variant, path)
        from tts_runner.engines.library import Qwen3TTSModel  # quietly: its import-time banners say nothing

        attention = self.runtime.attention
        started = time.perf_counter()
        try:
            tts = Qwen3TTSModel.from_pretrained(str(path), device_map=self.device, dtype=self.dtype,
                                                attn_implementation="sdpa" if attention in (None, "auto") else attention)
        except Exception as exc:  # noqa: BLE001 - a corrupt folder can fail in many ways
            raise ModelError(f"Model '{variant}' at {path} could not be loaded: {type(exc).__name__}: {exc}") from exc
        tts.model.eval()
        model = self._build(tts, variant)
        log.info("Loaded %s from %s on %s (%s, %s engine) in %.2f s", variant, path, self.device,
                 str(self.dtype).removeprefix("torch."), model.engine, time.perf_counter() - started)
        if self.runtime.warmup:
            _warm_up(model)
        return model

    def _build(self, tts, variant: str) -> Model:
        """The loaded library model as our Model: its engine (the graph engine's buffers captured on
        CUDA, part of cold start), its clone-prompt cache and its scheduler."""
        from tts_runner.engines.graph import GraphEngine
        from tts_runner.serving.model import SCHEDULED, Model
        from tts_runner.serving.scheduler import Scheduler
        from tts_runner.voice.clones import PromptCache

        engine, graph = self.engine, None
        if engine == "graph":
            try:
                graph = GraphEngine(tts.model.talker, buckets=self.graph_buckets, max_len=self.graph_max_len,
                                    candidates=self.graph_candidates, compiled=self.runtime.compile)
            except NotImplementedError as exc:
                log.warning("The graph engine cannot run %s (%s); using fast", variant, exc)
                engine = "fast"
        serving = self.serving
        model = Model(tts, kind=self.catalog.variants[variant].kind, name=variant, engine=engine,
                      sync_every=self.sync_every, graph=graph,
                      clone_prompts=PromptCache(serving.prompt_cache_entries, serving.prompt_cache_megabytes))
        if model.capture_graphs() and self.runtime.graph_self_check:
            from tts_runner.serving import selfcheck

            selfcheck.check_rows(model)  # under the captured graphs: where no test runs them
        model.random_weights = (self.catalog.folder(variant) / RANDOM_MARKER).exists()
        model.siblings = self.available  # another variant of this store, for a job that needs two (design, then clone)
        if self.scheduled and model.engine in SCHEDULED:
            model.scheduler = Scheduler(model, self.serving.max_rows, self.serving.queue_limit, self.sync_every)
        return model


def _warm_up(model: Model) -> None:
    """One short generation, so the first job does not pay for lazy initialisation."""
    import numpy as np

    from tts_runner.engines.sampling import Sampling
    from tts_runner.serving.model import ChunkRequest
    from tts_runner.voice.clones import Reference

    started = time.perf_counter()
    speaker = model.speakers[0] if model.speakers else None
    clone = None
    if model.kind == "base":  # a two-second tone stands in for a voice: the speaker encoder warms up too
        tone = (0.3 * np.sin(np.arange(48000) / 7.0)).astype(np.float32)
        clone = model.clone_prompt(Reference(tone, None, "warm-up", "warm-up"))
    request = ChunkRequest("Warm up.", speaker, "english" if "english" in model.languages else "auto",
                           "A calm voice." if model.kind == "voice_design" else None, clone=clone)
    model.generate([request], Sampling(max_new_tokens=4, min_new_tokens=2))
    if model.scheduler is not None:  # the decode of a stream's first piece (4 frames): the first streams' estimate
        import torch

        began = time.perf_counter()
        model.decode([(request, torch.zeros((4, 16), dtype=torch.long, device=model.like.device))])
        model.scheduler.piece_seconds = time.perf_counter() - began
    log.info("Warmed up %s in %.2f s", model.name, time.perf_counter() - started)
