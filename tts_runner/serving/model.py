"""One loaded model and the batched calls the job graph makes on it.

`Model.generate(requests, sampling)` runs a list of chunk requests (any mix of voices and lengths)
as one left-padded batch through qwen-tts and returns one waveform per request, in order. The
model owns two seams into the library, both on this instance only:

- `talker.generate`, where the **engine** runs: `stock` (the library's Hugging Face generate),
  `fast` or `graph` (tts_runner.engines). Here the end-of-speech floor is raised to
  `min_new_tokens` (qwen-tts hard-codes 2 and forwards no argument to change it) and each request's
  frame budget reaches the loop;
- the speech tokenizer's `decode` (codes -> audio): qwen-tts decodes a batch in one call padded to
  its longest item, and the decoder runs at the full sample rate, so one long chunk made the whole
  batch pay for its length; here items are decoded in groups of similar length instead (the decoder
  is causal and the padding trails, so each item's audio is the same).

Failures: running out of memory is the caller's (the runner splits the batch); an error that may
have broken the CUDA context raises DeviceFailure (the worker exits and is replaced); anything else
in the graph or fast loop is logged and the model falls back, graph -> fast -> stock, for good.
"""

from __future__ import annotations

import contextlib
import functools
import logging
import threading
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch
from transformers.generation.stopping_criteria import StoppingCriteria, StoppingCriteriaList

from tts_runner.engines import fast
from tts_runner.engines.graph import GraphEngine
from tts_runner.errors import DeviceFailure
from tts_runner.serving.scheduler import Scheduler
from tts_runner.voice.clones import PromptCache, Reference

log = logging.getLogger(__name__)

SAMPLES_PER_FRAME = 1920  # one codec frame = 80 ms at 24 kHz
SAMPLE_RATE = 24000
DECODE_GROUP = 16          # items per speech-tokenizer call
DECODE_SPREAD = 1.25       # longest / shortest item in one call
FALLBACK = {"graph": "fast", "fast": "stock"}
SCHEDULED = ("fast", "graph")  # the engines whose loop the scheduler runs (stock keeps one batch per call)


def length_groups(lengths: list[int], size: int = DECODE_GROUP, spread: float = DECODE_SPREAD) -> list[list[int]]:
    """Indices grouped for decoding: sorted by length, at most `size` per group, and no group's
    longest item more than `spread` times its shortest (so padding wastes at most that)."""
    groups: list[list[int]] = []
    for i in sorted(range(len(lengths)), key=lengths.__getitem__):
        if groups and len(groups[-1]) < size and lengths[i] <= spread * max(1, lengths[groups[-1][0]]):
            groups[-1].append(i)
        else:
            groups.append([i])
    return groups


def device_broken(exc: BaseException) -> bool:
    """A CUDA error other than out-of-memory (illegal address, device-side assert, ...): the
    context may be unusable, so nothing should run on it again."""
    if isinstance(exc, torch.cuda.OutOfMemoryError):
        return False
    return isinstance(exc, torch.AcceleratorError) or (isinstance(exc, RuntimeError) and "CUDA error" in str(exc))


@dataclass(frozen=True)
class ChunkRequest:
    text: str
    speaker: str | None  # None for VoiceDesign
    language: str        # the library's language name
    instruct: str | None
    max_frames: int | None = None  # frame budget: the chunk ends here if it has not ended before
    seed: int | None = None        # the chunk's random stream (fast and graph: its own, whatever the batch)
    floor: int | None = None       # its own end-of-speech floor in frames (None: the call's min_new_tokens)
    clone: Any = None              # Base models: the voice clone prompt (see Model.clone_prompt)


class Model:
    """A loaded Qwen3TTSModel of one kind (custom_voice | voice_design | base); calls are serialized."""

    def __init__(self, tts: Any, kind: str, name: str, engine: str = "stock", sync_every: int = 1,
                 graph: dict | None = None, prompts: PromptCache | None = None, serving: dict | None = None):
        self.tts = tts
        self.kind = kind
        self.name = name
        self.engine = engine
        self.lock = threading.Lock()
        self._floor = 2
        self._budgets: list[int] | None = None  # per-row frame budgets of the call in progress
        self._seeds: list[int] | None = None    # per-row seeds of the call in progress
        self._steps = 0                         # talker steps the call in progress ran
        self._progress: Callable[[int, int], None] | None = None  # hears (frames, rows going) during a call
        self._sync_every = sync_every
        self.prompts = prompts or PromptCache(64, 256)  # Base models: clone prompts by reference
        talker = tts.model.talker
        self.graph: GraphEngine | None = None
        if engine == "graph":
            try:
                self.graph = GraphEngine(talker, sync_every=sync_every, **(graph or {}))
            except NotImplementedError as exc:
                self._fall_back("graph", exc)
        talker.generate = functools.partial(self._talker_generate, talker, talker.generate)
        tokenizer = tts.model.speech_tokenizer
        tokenizer.decode = functools.partial(self._decode_by_length, tokenizer.decode)
        self._capturing = False
        self.scheduler: Scheduler | None = None
        if serving and serving.get("enabled") and self.engine in SCHEDULED:
            self.scheduler = Scheduler(self, serving["max_rows"], serving["queue_limit"], sync_every)

    @contextlib.contextmanager
    def using(self, engine: str | None = None, floor: int | list[int] | None = None, budgets: list[int] | None = None,
              seeds: list[int] | None = None) -> Iterator[Model]:
        """Calls inside run on `engine` (None: the current one), with the end-of-speech `floor`
        (None: the current one; a list: one per row, which stock can only hold the batch to the
        highest of), per-row frame `budgets` and per-row `seeds` (None: drawn from torch's
        generator); what was given is restored after, a fallback inside included when `engine`
        was given. For the model's own calls and for code that calls the library directly
        (benchmarks, tests)."""
        saved = (self.engine, self.graph), self._floor, (self._budgets, self._seeds)
        self.engine = engine or self.engine
        self._floor = self._floor if floor is None else floor
        self._budgets, self._seeds = budgets, seeds
        try:
            yield self
        finally:
            self._budgets, self._seeds = saved[2]
            if floor is not None:
                self._floor = saved[1]
            if engine is not None:
                self.engine, self.graph = saved[0]

    def _fall_back(self, engine: str, exc: BaseException) -> None:
        log.warning("The %s engine failed for %s (%s: %s); using %s from now on", engine, self.name,
                    type(exc).__name__, exc, FALLBACK[engine])
        log.debug("Engine failure", exc_info=True)
        self.engine = FALLBACK[engine]
        if engine == "graph":
            self.graph = None

    def _attempt(self, engine: str, run: Callable[[], Any]) -> Any:
        """`run()` on `engine`; None when it failed and the model fell back. Out of memory and a
        broken device go to the caller."""
        try:
            return run()
        except torch.cuda.OutOfMemoryError:
            raise
        except Exception as exc:  # noqa: BLE001 - anything else: the next engine, for good
            if device_broken(exc):
                raise
            self._fall_back(engine, exc)
            return None

    def capture_graphs(self) -> float:
        """On CUDA with the graph engine: allocate the static buffers and capture one CUDA graph per
        batch bucket (part of cold start). Returns the seconds taken; 0.0 when there is nothing to
        do. A failure logs why and leaves the fast loop in charge."""
        like = self.tts.model.talker.codec_head.weight
        if self.graph is None or like.device.type != "cuda":
            return 0.0
        with self.lock, torch.inference_mode():
            seconds = self._attempt("graph", lambda: self.graph.capture(like))
        if seconds is None:
            return 0.0
        log.info("Captured CUDA graphs for %s, buckets %s, up to %d positions, in %.2f s (static buffers %.2f GiB)",
                 self.name, list(self.graph.buckets), self.graph.max_len, seconds, self.graph.buffer_bytes / 2**30)
        return seconds

    def _talker_generate(self, talker: torch.nn.Module, stock, *args, **kwargs):
        """What qwen-tts calls as talker.generate: our floor, budgets and seeds, then the engine;
        counts the steps it ran (one per entry of the result's hidden states, prefill included)."""
        if self._capturing:
            raise _Captured(kwargs)
        result = self._run_engine(talker, stock, *args, **kwargs)
        self._steps += len(result.hidden_states)
        return result

    def _run_engine(self, talker: torch.nn.Module, stock, *args, **kwargs):
        floor = self._floor if isinstance(self._floor, int) else None
        kwargs["min_new_tokens"] = max(int(kwargs.get("min_new_tokens") or 0), floor or max(self._floor))
        rows = {} if floor is not None or args else {"min_new_tokens": list(self._floor)}  # per-row floors
        rows["progress"] = self._progress
        budgets, seeds = (self._budgets, self._seeds) if not args else (None, None)
        if self.engine == "graph" and self.graph is not None and not self.graph.busy and not args:
            shape = kwargs["inputs_embeds"].shape
            if self.graph.fits(shape[0], shape[1], int(kwargs["max_new_tokens"])):
                result = self._attempt("graph", lambda: self.graph.generate(
                    **{**kwargs, **rows}, max_frames=budgets, seed=seeds))
                if result is not None:
                    return result
            else:
                log.info("Batch of %d x %d prompt positions + %s frames exceeds the graph buffers "
                         "(buckets up to %d, %d positions); this call uses the fast loop", shape[0], shape[1],
                         kwargs["max_new_tokens"], self.graph.buckets[-1], self.graph.max_len)
        if self.engine in ("fast", "graph"):
            result = self._attempt("fast", lambda: fast.generate(talker, *args, sync_every=self._sync_every,
                                                                 max_frames=budgets, seed=seeds, **{**kwargs, **rows}))
            if result is not None:
                return result
        # HF's generate pads with the end code when no pad id is given, and says so on every call.
        kwargs.setdefault("pad_token_id", kwargs.get("eos_token_id"))
        if self._progress:
            kwargs["stopping_criteria"] = StoppingCriteriaList([_Progress(self._progress)])
        if budgets is not None:  # HF generate has no per-row budget: run to the largest, end each row at its own
            kwargs["max_new_tokens"] = min(int(kwargs["max_new_tokens"]), max(budgets) + 1)
        # HF samples from torch's one generator: seeded by the first row, the batch is reproducible
        # as a whole, but a row's draws depend on the rows beside it (unlike fast and graph)
        with torch.random.fork_rng(devices=[talker.codec_head.weight.device] if talker.codec_head.weight.is_cuda else []):
            if seeds is not None:
                torch.manual_seed(seeds[0])
            result = stock(*args, **kwargs)
        if budgets is not None:
            _end_rows_at(result.hidden_states, budgets, talker.config.codec_eos_token_id)
        return result

    @staticmethod
    def _decode_by_length(batched_decode, encoded):
        """What qwen-tts calls as speech_tokenizer.decode: one call per group of similar length."""
        if not isinstance(encoded, list) or len(encoded) <= 1:
            return batched_decode(encoded)
        wavs: list = [None] * len(encoded)
        sample_rate = SAMPLE_RATE
        for group in length_groups([len(item["audio_codes"]) for item in encoded]):
            out, sample_rate = batched_decode([encoded[i] for i in group])
            for i, wav in zip(group, out, strict=True):
                wavs[i] = wav
        return wavs, sample_rate

    def clone_prompt(self, reference: Reference) -> Any:
        """The Base model's prompt for cloning `reference` (its speaker embedding, and its codes and
        transcript for in-context cloning when it has a transcript): made once per distinct
        reference, then taken from the cache."""
        def compute(ref: Reference) -> Any:
            with self.lock, torch.inference_mode():
                return self.tts.create_voice_clone_prompt(ref_audio=(ref.samples, 24000), ref_text=ref.text,
                                                          x_vector_only_mode=ref.text is None)[0]

        return self.prompts.get(reference, compute)

    def _library_generate(self, requests: list[ChunkRequest], kwargs: dict) -> tuple[list, int]:
        """The qwen-tts call that makes `requests` on this kind of model."""
        if self.kind == "voice_design":
            return self.tts.generate_voice_design(
                text=[r.text for r in requests], instruct=[r.instruct or "" for r in requests],
                language=[r.language for r in requests], **kwargs)
        if self.kind == "base":
            return self.tts.generate_voice_clone(
                text=[r.text for r in requests], language=[r.language for r in requests],
                voice_clone_prompt=[r.clone for r in requests], **kwargs)
        return self.tts.generate_custom_voice(
            text=[r.text for r in requests], speaker=[r.speaker for r in requests],
            language=[r.language for r in requests], instruct=[r.instruct or "" for r in requests], **kwargs)

    def capture(self, requests: list[ChunkRequest]) -> tuple[list[tuple[torch.Tensor, torch.Tensor]], torch.Tensor, list]:
        """What qwen-tts would hand `talker.generate` for `requests`, without generating: per request
        its prompt embeddings [P, H] (no padding) and its trailing text [T, H]; the pad embedding; the
        suppressed codes. The library builds every prompt (tokenizer, speaker, instruct, clone); the
        scheduler decodes them. Call with the lock held."""
        self._capturing = True
        try:
            self._library_generate(requests, {"max_new_tokens": 2})
        except _Captured as captured:
            kwargs = captured.kwargs
        else:
            raise RuntimeError("qwen-tts returned without calling talker.generate")
        finally:
            self._capturing = False
        embeds, mask = kwargs["inputs_embeds"], kwargs["attention_mask"]
        trailing = kwargs["trailing_text_hidden"]
        pads = (mask == 0).sum(dim=1).tolist()
        prompts = [(embeds[i, pads[i]:], trailing[i]) for i in range(len(requests))]
        return prompts, kwargs["tts_pad_embed"], list(kwargs.get("suppress_tokens") or [])

    def to_audio(self, items: list[tuple[ChunkRequest, torch.Tensor]]) -> list[np.ndarray]:
        """Codes ([F, 16] each) to waveforms, as qwen-tts does after talker.generate: a cloned voice's
        reference codes go first, as context, and their share of the audio is cut off after. Needs no
        lock: the decode loop never touches the speech tokenizer."""
        wavs: list[np.ndarray] = [np.zeros(0, dtype=np.float32)] * len(items)
        full, where = [], []
        for i, (request, codes) in enumerate(items):
            if codes.shape[0] == 0:
                continue  # nothing to decode: the runner retries an empty chunk
            ref = getattr(request.clone, "ref_code", None) if request.clone is not None else None
            full.append(codes if ref is None else torch.cat((ref.to(codes.device), codes)))
            where.append((i, 0 if ref is None else int(ref.shape[0])))
        if not full:
            return wavs
        with torch.inference_mode():
            decoded, _ = self.tts.model.speech_tokenizer.decode([{"audio_codes": c} for c in full])
        for (i, ref_len), codes, wav in zip(where, full, decoded, strict=True):
            wav = np.asarray(wav, dtype=np.float32).reshape(-1)
            cut = int(ref_len / max(int(codes.shape[0]), 1) * wav.shape[0])
            wavs[i] = wav[cut:]
        return wavs

    def row_settings(self, request: ChunkRequest, sampling: dict) -> dict:
        """A request's sampling settings as one row of the decode loop holds them (sampling.SETTINGS):
        its floor, and its frame budget capped as one call's max_new_tokens caps it."""
        kwargs = _sampling_kwargs(sampling)
        cap = kwargs.pop("max_new_tokens")
        budget = cap if request.max_frames is None else max(1, int(request.max_frames))
        return {**kwargs, "min_new_tokens": _floor(request, sampling, cap), "max_frames": min(budget, cap - 1),
                "seed": _seed(request)}

    @property
    def speakers(self) -> list[str]:
        return list(self.tts.get_supported_speakers() or [])

    @property
    def languages(self) -> list[str]:
        return list(self.tts.get_supported_languages() or [])

    def generate(self, requests: list[ChunkRequest], sampling: dict, on_steps: Callable[[int], None] | None = None,
                 progress: Callable[[int, int], None] | None = None) -> tuple[list[np.ndarray], int]:
        """Waveforms (float32, mono) for `requests`, in order, and their sample rate. `on_steps`
        hears how many talker steps the call ran; `progress`, while it runs, (frames stepped, rows
        still going) at each host check (each step for stock)."""
        kwargs = _sampling_kwargs(sampling)
        floors = [_floor(r, sampling, kwargs["max_new_tokens"]) for r in requests]
        floor = floors[0] if len(set(floors)) == 1 else floors
        budgets = [r.max_frames for r in requests]
        budgets = ([kwargs["max_new_tokens"] if b is None else max(1, int(b)) for b in budgets]
                   if any(b is not None for b in budgets) else None)
        seeds = [_seed(r) for r in requests]
        with self.lock, torch.inference_mode(), self.using(floor=floor, budgets=budgets, seeds=seeds):
            self._steps, self._progress = 0, progress
            try:
                wavs, sr = self._library_generate(requests, kwargs)
            except Exception as exc:
                if device_broken(exc):
                    raise DeviceFailure(f"The GPU failed ({type(exc).__name__}: {exc}); this worker stops "
                                        "and a fresh one takes its place. Send the job again.") from exc
                raise
            finally:
                self._progress = None
            if on_steps:
                on_steps(self._steps)
        return [np.asarray(w, dtype=np.float32).reshape(-1) for w in wavs], int(sr)


class _Captured(Exception):  # noqa: N818 - not an error: how a capture leaves the library's call
    """Raised from the talker.generate seam while capturing: carries the call's arguments."""

    def __init__(self, kwargs: dict):
        super().__init__("prompt captured")
        self.kwargs = kwargs


class _Progress(StoppingCriteria):
    """Hugging Face asks its stopping criteria once a step: tell the caller how far the stock
    engine has come (every row counts as going: HF does not say which have ended). Never stops."""

    def __init__(self, progress: Callable[[int, int], None]):
        self.progress = progress

    def __call__(self, input_ids: torch.Tensor, scores, **kwargs) -> torch.Tensor:
        self.progress(input_ids.shape[1], input_ids.shape[0])
        return torch.zeros(input_ids.shape[0], dtype=torch.bool, device=input_ids.device)


def _end_rows_at(steps: list, budgets: list[int], eos: int) -> None:
    """End each row of a stock result at its frame budget: from frame `budget` on, its first code
    is end-of-speech (qwen-tts cuts every item at its first one)."""
    frames = [codes for _, codes in steps if codes is not None]
    limit = torch.tensor(budgets, device=frames[0].device) if frames else None
    for frame, codes in enumerate(frames):
        codes[:, 0] = torch.where(limit > frame, codes[:, 0], eos)


def _floor(request: ChunkRequest, sampling: dict, cap: int) -> int:
    """A request's end-of-speech floor in frames: its own, else the call's min_new_tokens; at least
    qwen-tts's 2, at most the cap."""
    floor = sampling.get("min_new_tokens", 2) if request.floor is None else request.floor
    return max(2, min(int(floor or 2), cap))


def _seed(request: ChunkRequest) -> int:
    """A request's seed, or one drawn from torch's generator (reproducible under torch.manual_seed)."""
    return request.seed if request.seed is not None else int(torch.randint(2**31, ()))


def _sampling_kwargs(sampling: dict) -> dict:
    keys = (
        "temperature", "top_k", "top_p", "repetition_penalty", "max_new_tokens",
        "subtalker_temperature", "subtalker_top_k", "subtalker_top_p",
    )
    kwargs = {k: sampling[k] for k in keys if sampling.get(k) is not None}
    kwargs["max_new_tokens"] = int(kwargs.get("max_new_tokens", 1024))
    do_sample = bool(sampling.get("do_sample", True))
    kwargs["do_sample"] = do_sample
    kwargs["subtalker_dosample"] = bool(sampling.get("subtalker_dosample", do_sample))
    return kwargs
