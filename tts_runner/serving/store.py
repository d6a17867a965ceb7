"""Model variants: find their folders, load them once per process, keep them cached.

Reads the `models` and `runtime` config groups. A job names a variant (`1.7B-CustomVoice`); only
configured names resolve, so a payload can never become a path. torch and the model code are
imported when a model loads, so a command that only checks a job (`check_model_folder`) stays quick.
"""

from __future__ import annotations

import logging
import threading
import time
from pathlib import Path
from typing import TYPE_CHECKING

from omegaconf import DictConfig, ListConfig

from tts_runner.errors import InputError, ModelError

if TYPE_CHECKING:
    import torch

    from tts_runner.serving.model import Model

log = logging.getLogger(__name__)

# qwen_tts logs "config is None, initializing defaults" at INFO on every call.
logging.getLogger("qwen_tts").setLevel(logging.WARNING)

# A model folder holding this file has random weights (tts_runner.tools.tiny_model writes it).
RANDOM_MARKER = "RANDOM_WEIGHTS"

_DTYPES = ("bfloat16", "float16", "float32")
ENGINES = ("fast", "graph", "stock")


def model_folder(models: DictConfig, variant: str) -> Path:
    if variant not in models.variants:
        raise InputError(f"Unknown model '{variant}'. Available: {', '.join(sorted(models.variants))}.")
    return Path(models.dir) / models.variants[variant].folder


def check_model_folder(models: DictConfig, variant: str) -> None:
    """A clear error when the variant's folder is not where QWEN_TTS_MODEL_DIR says and may not be
    fetched (no loading, no network)."""
    path = model_folder(models, variant)
    if not (path / "config.json").is_file() and not models.get("download"):
        raise ModelError(
            f"Model '{variant}' not found: {path} has no config.json. Put the "
            f"{models.variants[variant].folder} folder under QWEN_TTS_MODEL_DIR (now {models.dir}), or let it be "
            f"fetched from the Hugging Face Hub ({models.variants[variant].repo}) with QWEN_TTS_DOWNLOAD=true. "
            "Without weights, build random-weight test models: python -m tts_runner.tools.tiny_model DIR."
        )


def fetch_model(models: DictConfig, variant: str) -> Path:
    """Download a missing variant's folder from the Hugging Face Hub into the model dir (resumable:
    an interrupted download goes on where it stopped; progress bars on a terminal)."""
    path = model_folder(models, variant)
    repo = models.variants[variant].repo
    log.warning("Model '%s' is not in %s: fetching %s from the Hugging Face Hub", variant, models.dir, repo)
    try:
        from huggingface_hub import snapshot_download

        snapshot_download(repo_id=repo, local_dir=str(path))
    except Exception as exc:  # noqa: BLE001 - offline, unreachable, unknown repo, disk full: all one message
        reason = " ".join(str(exc).split())[:300].rstrip(".")
        raise ModelError(
            f"Model '{variant}' not found at {path}, and fetching it from the Hugging Face Hub ({repo}) failed: "
            f"{type(exc).__name__}: {reason}. Put the {models.variants[variant].folder} folder under "
            f"QWEN_TTS_MODEL_DIR (now {models.dir}) by hand, or build random-weight test models: "
            "python -m tts_runner.tools.tiny_model DIR, then set QWEN_TTS_MODEL_DIR=DIR."
        ) from None
    if not (path / "config.json").is_file():
        raise ModelError(f"Fetched {repo} into {path}, but it holds no config.json: not a Qwen3-TTS model folder.")
    return path


def resolve_device(device: str) -> str:
    """auto -> cuda:0 when CUDA is available, else cpu; anything else as given."""
    import torch

    if device in (None, "", "auto"):
        if torch.cuda.is_available():
            return "cuda:0"
        log.warning("QWEN_TTS_DEVICE=auto and CUDA is not available: running on the CPU, far slower than a GPU.")
        return "cpu"
    if device.startswith("cuda") and not torch.cuda.is_available():
        raise ModelError(f"QWEN_TTS_DEVICE={device} but CUDA is not available on this machine; use cpu or auto.")
    if device != "cpu" and not device.startswith("cuda"):
        raise ModelError(f"QWEN_TTS_DEVICE={device!r} is not a device; use auto, cpu or cuda:N.")
    return device


def resolve_dtype(dtype: str, device: str) -> torch.dtype:
    import torch

    if dtype in (None, "", "auto"):
        return torch.bfloat16 if device.startswith("cuda") else torch.float32
    if dtype not in _DTYPES:
        raise ModelError(f"runtime.dtype={dtype!r} is not supported; use auto, {', '.join(_DTYPES)}.")
    return getattr(torch, dtype)


def resolve_engine(engine: str, device: str) -> str:
    """auto -> the engine measured fastest on the device (docs/performance.md): graph on CUDA (an
    H100: 30-minute podcast 6.4x faster than fast at batch 64, one stream 6.6x), fast on the CPU
    (where graph's frame runs eagerly and is no faster); or as given."""
    if engine in (None, "", "auto"):
        return "graph" if device.startswith("cuda") else "fast"
    if engine not in ENGINES:
        raise ModelError(f"runtime.engine={engine!r} is not an engine; use auto, {', '.join(ENGINES)}.")
    return engine


def resolve_torch_threads(value, device: str, scheduled: bool) -> int | None:
    """auto -> 1 on the CPU under the scheduler (the decode loop, and each job's own work, run on
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


def resolve_graph(graph: DictConfig | None, max_batch: int | None = None) -> dict:
    """runtime.graph as GraphDecoder arguments, checked. With the job runner's largest batch
    (batching.max_batch_size), buckets above the smallest one that holds it are dropped: they
    would never run, yet cost GPU memory for their rows and capture time at start-up."""
    graph = graph or {}
    buckets, max_len = graph.get("buckets", [1, 2, 4, 8, 16, 32, 64]), graph.get("max_len", 1280)
    if (not isinstance(buckets, (list, tuple, ListConfig)) or not buckets
            or not all(isinstance(b, int) and not isinstance(b, bool) and 1 <= b <= 1024 for b in buckets)):
        raise ModelError(f"runtime.graph.buckets={buckets!r} must be a list of batch sizes from 1 to 1024.")
    if not isinstance(max_len, int) or isinstance(max_len, bool) or not 16 <= max_len <= 32768:
        raise ModelError(f"runtime.graph.max_len={max_len!r} must be an integer from 16 to 32768.")
    buckets = sorted(set(buckets))
    if max_batch:
        if max_batch > buckets[-1]:
            log.warning("batching.max_batch_size=%d is above the largest graph bucket (%d): larger batches "
                        "run on the fast loop; add a bucket to runtime.graph.buckets", max_batch, buckets[-1])
        else:
            buckets = [b for b in buckets if b < max_batch] + [min(b for b in buckets if b >= max_batch)]
    return {"buckets": tuple(buckets), "max_len": max_len}


class ModelStore:
    """Loads each variant at most once and hands out its Model."""

    def __init__(self, models: DictConfig, runtime: DictConfig, max_batch: int | None = None,
                 cloning: DictConfig | None = None, scheduler: DictConfig | None = None):
        self.models = models
        self.runtime = runtime
        self.cache = dict(cloning.cache) if cloning is not None else {"max_entries": 64, "max_megabytes": 256}
        self.device = resolve_device(runtime.device)
        self.dtype = resolve_dtype(runtime.dtype, self.device)
        self.engine = resolve_engine(runtime.engine, self.device)
        # Only the graph engine has buckets to size (and to warn about).
        self.graph = resolve_graph(runtime.get("graph"), max_batch if self.engine == "graph" else None)
        self.serving = dict(scheduler) if scheduler is not None else None  # None: no scheduler
        threads = resolve_torch_threads(runtime.get("torch_threads"), self.device,
                                        bool(self.serving and self.serving.get("enabled")) and self.engine != "stock")
        if threads:
            import torch

            torch.set_num_threads(threads)  # for the whole process
        self._models: dict[str, Model] = {}
        self._lock = threading.Lock()

    @property
    def variant_names(self) -> list[str]:
        return sorted(self.models.variants)

    def folder(self, variant: str) -> Path:
        return model_folder(self.models, variant)

    def get(self, variant: str) -> Model:
        with self._lock:
            if variant not in self._models:
                self._models[variant] = self._load(variant)
            return self._models[variant]

    def loaded_models(self) -> list[Model]:
        with self._lock:
            return list(self._models.values())

    def loaded(self) -> list[str]:
        return sorted(self._models)

    def _load(self, variant: str) -> Model:
        check_model_folder(self.models, variant)
        path = self.folder(variant)
        if not (path / "config.json").is_file():
            fetch_model(self.models, variant)
        if (path / RANDOM_MARKER).exists():
            log.warning("Model %s at %s has RANDOM weights (built by tts_runner.tools.tiny_model): "
                        "its audio is noise. Use it for tests only.", variant, path)
        from tts_runner.engines.library import import_qwen_tts

        import_qwen_tts()  # quietly: its import-time banners say nothing about a job
        from qwen_tts import Qwen3TTSModel

        from tts_runner.serving.model import Model

        attention = self.runtime.attention
        kwargs = dict(device_map=self.device, dtype=self.dtype,
                      attn_implementation="sdpa" if attention in (None, "auto") else attention)
        started = time.perf_counter()
        try:
            tts = Qwen3TTSModel.from_pretrained(str(path), **kwargs)
        except Exception as exc:  # noqa: BLE001 - a corrupt folder can fail in many ways
            raise ModelError(f"Model '{variant}' at {path} could not be loaded: {type(exc).__name__}: {exc}") from exc
        tts.model.eval()
        from tts_runner.voice.clones import PromptCache

        model = Model(tts, kind=self.models.variants[variant].kind, name=variant,
                      engine=self.engine, graph=self.graph,
                      prompts=PromptCache(self.cache["max_entries"], self.cache["max_megabytes"]), serving=self.serving,
                      sync_every=resolve_sync_every(self.runtime.get("sync_every"), self.device))
        model.capture_graphs()  # the graph engine on CUDA; part of cold start, logged with its time
        log.info("Loaded %s from %s on %s (%s, %s engine) in %.2f s", variant, path, self.device,
                 str(self.dtype).removeprefix("torch."), model.engine, time.perf_counter() - started)
        if self.runtime.warmup:
            self._warm_up(model)
        return model

    @staticmethod
    def _warm_up(model: Model) -> None:
        """One short generation, so the first job does not pay for lazy initialisation."""
        import numpy as np

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
        model.generate([request], {"max_new_tokens": 4, "min_new_tokens": 2})
        log.info("Warmed up %s in %.2f s", model.name, time.perf_counter() - started)
