"""Objects built at the root from the config: each group of conf/ becomes the typed value its
consumer takes, checked here once (one clear error per bad setting), and the model store is built
here and nowhere else. Code below the edge takes these values, never a DictConfig.

| group | value | read by |
|---|---|---|
| chunking, batching, audio, stream | `Recipe` parts | tts_runner/job/ (plan, generate, check, assemble, stream) |
| voices, cloning | `Voices`, `Cloning` | tts_runner/voice/ |
| sink | `Sink` | tts_runner/audio/sinks.py |
| models, runtime, scheduler (and cloning.cache) | `Catalog`, `Runtime`, `Serving` | tts_runner/serving/store.py |
"""

from __future__ import annotations

import functools
import logging
from pathlib import Path
from types import MappingProxyType

from omegaconf import DictConfig

from tts_runner.audio import sinks
from tts_runner.audio.sinks import Sink
from tts_runner.edge.config import plain
from tts_runner.errors import SettingError
from tts_runner.job.spec import Batching, Chunking, FrameBudget, Mastering, Pacing, Recipe, Trim
from tts_runner.server.settings import ServerSettings
from tts_runner.serving import sizing
from tts_runner.serving.device import resolve_dtype
from tts_runner.serving.store import Catalog, ModelStore, Runtime, Serving, Variant
from tts_runner.voice.clones import CLONE_MODES, Cloning
from tts_runner.voice.fetch import FetchRules
from tts_runner.voice.saved import StoreBounds, VoiceStore
from tts_runner.voice.voices import DESIGN_MODES, Design, SavedVoice, Voices

log = logging.getLogger(__name__)


def _number(path: str, value, low: float, high: float, nullable: bool = False) -> None:
    if value is None and nullable:
        return
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not low <= value <= high:
        allowed = f"a number from {low} to {high}" + (" or null" if nullable else "")
        raise SettingError(f"Invalid setting {path}={value!r}: use {allowed}.")


def batch_size(cfg: DictConfig) -> int:
    """batching.max_batch_size as a number: as given, or for `auto` the rows this device runs
    (tts_runner/serving/sizing.py), worked out once per process for the same device and model, and
    logged with its reasons."""
    value = plain(cfg.batching.max_batch_size)
    if value != "auto":
        if isinstance(value, bool) or not isinstance(value, int) or not 1 <= value <= 1024:
            raise SettingError(f"Invalid setting batching.max_batch_size={value!r}: use auto or an integer from 1 to 1024.")
        return value
    run = runtime(cfg.runtime)
    return _auto_batch_size(str(run.device), str(run.dtype), run.graph_max_len,
                            str(catalog(cfg.models).folder(str(cfg.models.default))))


@functools.cache
def _auto_batch_size(device: str, dtype: str, max_len: int, folder: str) -> int:
    if device in ("", "None", "auto"):
        device = "cuda:0" if _cuda_here() else "cpu"
    free = total = None
    if device.startswith("cuda"):
        import torch

        if torch.cuda.is_available():
            dtype = str(resolve_dtype(None if dtype == "None" else dtype, device)).removeprefix("torch.")
            free, total = torch.cuda.mem_get_info(torch.device(device))
        else:
            device = "cpu"  # the model store refuses an explicit cuda:N here with its own clear error
    choice = sizing.choose_for(device, Path(folder), dtype, max_len, free, total)
    log.info("batching.max_batch_size=auto: %s", choice.reason)
    return choice.rows


def _cuda_here() -> bool:
    """Is CUDA available? Without an NVIDIA device node the answer is no, known without importing
    torch (so checking a job stays quick); with one, torch says."""
    if not any(Path("/dev").glob("nvidia[0-9]*")):
        return False
    import torch

    return torch.cuda.is_available()


def batching(node: DictConfig, max_batch_size: int) -> Batching:
    if node.runaway not in ("retry", "keep"):
        raise SettingError(f"Invalid setting batching.runaway={node.runaway!r}: use retry or keep.")
    budget = node.get("frame_budget")
    if budget is not None:
        _number("batching.frame_budget.seconds_per_char", budget.seconds_per_char, 0.001, 10, nullable=True)
        _number("batching.frame_budget.factor", budget.factor, 0.1, 100)
        _number("batching.frame_budget.margin_seconds", budget.margin_seconds, 0, 600)
    frames = (None if budget is None or budget.seconds_per_char is None else
              FrameBudget(float(budget.seconds_per_char), float(budget.factor), float(budget.margin_seconds)))
    return Batching(max_batch_size=max_batch_size, max_batch_chars=int(node.max_batch_chars),
                    retries=int(node.retries), min_seconds_per_char=float(node.min_seconds_per_char),
                    frame_budget=frames, runaway=str(node.runaway))


def mastering(node: DictConfig) -> Mastering:
    trim = node.trim
    _number("audio.trim.threshold_db", trim.threshold_db, -120, 0, nullable=True)
    _number("audio.trim.keep_ms", trim.keep_ms, 0, 1000)
    _number("audio.true_peak_dbtp", node.true_peak_dbtp, -20, 0)
    return Mastering(trim=None if trim.threshold_db is None else Trim(float(trim.threshold_db), float(trim.keep_ms)),
                     true_peak_dbtp=float(node.true_peak_dbtp))


def pacing(node: DictConfig | None) -> Pacing:
    node = plain(node) or {}
    left = node.get("left_context_frames", Pacing.left_context_frames)
    schedule = str(node.get("schedule", Pacing.schedule))
    if schedule not in ("adaptive", "fixed"):
        raise SettingError(f"Invalid setting stream.schedule: '{schedule}'; use adaptive or fixed.")
    return Pacing(first_piece_frames=int(node.get("first_piece_frames") or 1), piece_frames=int(node.get("piece_frames") or 1),
                  left_context_frames=None if left is None else int(left), schedule=schedule,
                  low_water_seconds=float(node.get("low_water_seconds", Pacing.low_water_seconds)))


def voices(node: DictConfig, variants: dict[str, str] | None = None) -> Voices:
    """The `voices` group; `variants` (name -> kind) checks what designed voices are cloned with."""
    clones = {name: SavedVoice(str(v.audio), v.get("text") or None) for name, v in (node.get("clones") or {}).items()}
    return Voices(aliases=MappingProxyType(plain(node.aliases)), languages=MappingProxyType(plain(node.languages)),
                  clones=MappingProxyType(clones), design=design(node.get("design"), variants))


def design(node: DictConfig | None, variants: dict[str, str] | None = None) -> Design:
    """voices.design: a mode that exists, a Base variant to clone with, sentences as text."""
    values = plain(node) or {}
    mode, clone_with = str(values.get("mode", Design.mode)), str(values.get("clone_with", Design.clone_with))
    if mode not in DESIGN_MODES:
        raise SettingError(f"Invalid setting voices.design.mode={mode!r}: use {' or '.join(DESIGN_MODES)}.")
    if variants is not None and variants.get(clone_with) != "base":
        bases = ", ".join(sorted(name for name, kind in variants.items() if kind == "base")) or "none configured"
        raise SettingError(f"Invalid setting voices.design.clone_with={clone_with!r}: use a Base variant of "
                           f"models.variants ({bases}).")
    sentences = {str(k).lower(): str(v) for k, v in (values.get("sentences") or {}).items() if v and str(v).strip()}
    return Design(mode=mode, clone_with=clone_with, sentences=MappingProxyType(sentences))


def cloning(node: DictConfig) -> Cloning:
    rules = node.fetch
    mode = str(node.get("mode", Cloning.mode))
    if mode not in CLONE_MODES:
        raise SettingError(f"Invalid setting cloning.mode={mode!r}: use {' or '.join(CLONE_MODES)}.")
    return Cloning(mode=mode, min_seconds=float(node.min_seconds), max_seconds=float(node.max_seconds),
                   max_bytes=int(node.max_bytes), silence_dbfs=float(node.silence_dbfs),
                   fetch=FetchRules(allow_http=bool(rules.allow_http), timeout_seconds=float(rules.timeout_seconds),
                                    max_redirects=int(rules.max_redirects),
                                    allowed_hosts=tuple(str(h) for h in rules.allowed_hosts)))


def sink(node: DictConfig, keep: Path | None = None) -> Sink:
    """The sink, checked before any audio is made (a kind that exists, S3 with what it needs); a file
    sink without a folder writes into `keep` when given (the command line's run folder), and a
    delivery that fails keeps the audio there."""
    values = plain(node)
    folder = values.get("dir")
    keep = keep or (Path(str(values["keep_dir"])) if values.get("keep_dir") else None)
    made = Sink(kind=str(values["kind"]), max_inline_bytes=int(values.get("max_inline_bytes", Sink.max_inline_bytes)),
                bucket=values.get("bucket"), access_key=values.get("access_key"), secret_key=values.get("secret_key"),
                endpoint_url=values.get("endpoint_url"), region=values.get("region"),
                prefix=str(values.get("prefix", Sink.prefix)),
                url_expiry_seconds=int(values.get("url_expiry_seconds", Sink.url_expiry_seconds)),
                upload_attempts=int(values.get("upload_attempts", Sink.upload_attempts)),
                upload_backoff_seconds=float(values.get("upload_backoff_seconds", Sink.upload_backoff_seconds)),
                timeout_seconds=float(values.get("timeout_seconds", Sink.timeout_seconds)),
                dir=Path(folder) if folder else keep, keep=keep)
    sinks.check(made)
    return made


def recipe(cfg: DictConfig, keep: Path | None = None) -> Recipe:
    """How the config makes every job (SettingError or SinkError on a bad setting)."""
    chunking, limits = cfg.chunking, cloning(cfg.cloning)
    return Recipe(chunking=Chunking(int(chunking.max_chars), float(chunking.crossfade_ms), float(chunking.segment_gap_ms)),
                  batching=batching(cfg.batching, batch_size(cfg)), mastering=mastering(cfg.audio), pacing=pacing(cfg.get("stream")),
                  voices=voices(cfg.voices, {str(k): str(v.kind) for k, v in cfg.models.variants.items()}), cloning=limits, sink=sink(cfg.sink, keep),
                  saved=saved_voices(cfg.voices, limits))


def saved_voices(node: DictConfig, limits: Cloning, folder: Path | None = None,
                 reserved: set[str] = frozenset()) -> VoiceStore | None:
    """The voices saved at run time (`folder`, else voices.saved_dir; null: none), checked as
    references are, within voices.saved_max_voices and saved_max_megabytes."""
    folder = folder or node.get("saved_dir")
    if not folder:
        return None
    voices, megabytes = node.get("saved_max_voices", StoreBounds.max_voices), \
        node.get("saved_max_megabytes", StoreBounds.max_megabytes)
    _number("voices.saved_max_voices", voices, 1, 1_000_000)
    _number("voices.saved_max_megabytes", megabytes, 1, 1_048_576)
    return VoiceStore(Path(str(folder)), limits, reserved, StoreBounds(int(voices), float(megabytes)))


def job_time_limit(node: DictConfig) -> float:
    """worker.job_timeout_seconds as seconds (SettingError unless a number from 0.001 to a week)."""
    value = plain(node).get("job_timeout_seconds", 900)
    _number("worker.job_timeout_seconds", value, 0.001, 604_800)
    return float(value)


def malloc_arenas(node: DictConfig) -> int | None:
    """runtime.malloc_arenas: a count from 1 to 64, or None (SettingError otherwise)."""
    value = plain(node).get("malloc_arenas")
    _number("runtime.malloc_arenas", value, 1, 64, nullable=True)
    return None if value is None else int(value)


def vitals_every(node: DictConfig) -> float:
    """worker.vitals_every_seconds as seconds, 0 for never (SettingError unless from 0 to a day)."""
    value = plain(node).get("vitals_every_seconds", 60)
    _number("worker.vitals_every_seconds", value, 0, 86_400)
    return float(value)


def server(node: DictConfig, variants: list[str]) -> ServerSettings:
    """The `server` group (SettingError on an alias to a variant that does not exist)."""
    values = plain(node)
    models = {str(k): str(v) for k, v in (values.get("models") or {}).items()}
    for alias, variant in [*models.items(), ("server.clone_model", str(values["clone_model"]))]:
        if variant not in variants:
            raise SettingError(f"Invalid setting server.models.{alias}: '{variant}' is not a model of conf/models "
                               f"({', '.join(sorted(variants))}).")
    health = values.get("health_port")
    key = values.get("api_key")
    return ServerSettings(host=str(values["host"]), port=int(values["port"]),
                          health_port=None if health in (None, "") else int(health), api_key=str(key) if key else None,
                          max_body_bytes=int(values["max_body_bytes"]),
                          body_timeout_seconds=float(values["body_timeout_seconds"]),
                          request_timeout_seconds=float(values["request_timeout_seconds"]),
                          shutdown_grace_seconds=float(values["shutdown_grace_seconds"]),
                          stream_buffer_bytes=int(values["stream_buffer_bytes"]),
                          stream_stall_seconds=float(values["stream_stall_seconds"]),
                          max_input_chars=int(values["max_input_chars"]), voices_dir=Path(str(values["voices_dir"])),
                          clone_model=str(values["clone_model"]), default_format=str(values["default_format"]),
                          models=MappingProxyType(models),
                          voices=MappingProxyType({str(k).lower(): str(v) for k, v in (values.get("voices") or {}).items()}))


def catalog(models: DictConfig) -> Catalog:
    variants = {name: Variant(str(v.folder), str(v.kind), str(v.repo)) for name, v in models.variants.items()}
    return Catalog(dir=str(models.dir), default=str(models.default), download=bool(models.get("download")),
                   variants=MappingProxyType(variants))


def runtime(node: DictConfig) -> Runtime:
    graph = plain(node.get("graph")) or {}
    buckets = graph.get("buckets", Runtime.graph_buckets)
    return Runtime(device=node.device, dtype=node.dtype, attention=node.attention, engine=node.engine,
                   sync_every=plain(node.get("sync_every", "auto")),
                   graph_buckets=tuple(buckets) if isinstance(buckets, list) else buckets,
                   graph_max_len=graph.get("max_len", Runtime.graph_max_len),
                   graph_self_check=bool(graph.get("self_check", Runtime.graph_self_check)),
                   graph_candidates=graph.get("candidates", Runtime.graph_candidates),
                   compile=bool(node.get("compile", False)),
                   torch_threads=plain(node.get("torch_threads", "auto")), warmup=bool(node.get("warmup", True)))


def serving(scheduler: DictConfig, cloning: DictConfig, max_batch_size: int) -> Serving:
    """The scheduler's settings; its max_rows follows batching.max_batch_size (conf: an interpolation)
    unless set on its own, and `auto` there is the same number as the batch's."""
    cache = cloning.cache
    rows = plain(scheduler.max_rows)
    return Serving(enabled=bool(scheduler.enabled), max_rows=max_batch_size if rows == "auto" else int(rows),
                   queue_limit=int(scheduler.queue_limit), prompt_cache_entries=int(cache.max_entries),
                   prompt_cache_megabytes=float(cache.max_megabytes))


def model_store(cfg: DictConfig) -> ModelStore:
    """The model store of a composed config: its catalog, runtime, largest batch, and what each model
    serves with (a config with scheduler.enabled=false runs each job's own batches)."""
    rows = batch_size(cfg)
    return ModelStore(catalog(cfg.models), runtime(cfg.runtime), max_batch=rows,
                      serving=serving(cfg.scheduler, cfg.cloning, rows))
