"""One loaded model and the calls the job's stages make on it.

`Model.generate(requests, sampling)` runs a list of chunk requests (any mix of voices and lengths)
as one left-padded batch through qwen-tts and returns one waveform per request, in order. The
model owns two seams into the library, both on this instance only:

- `talker.generate`, where the **engine** runs: `stock` (the library's Hugging Face generate,
  tts_runner/engines/stock.py), or the call's rows through the `fast` or `graph` loop
  (tts_runner/engines/loop.py). Here the end-of-speech floor is raised to `min_new_tokens`
  (qwen-tts hard-codes 2 and forwards no argument to change it) and each request's frame budget
  and seed reach the loop. The same seam hands the scheduler its prompts (`prompts`): the library
  builds every prompt (tokenizer, speaker, instruct, clone), and the call stops there;
- the speech tokenizer's `decode` (codes -> audio): qwen-tts decodes a batch in one call padded to
  its longest item, and the decoder runs at the full sample rate, so one long chunk made the whole
  batch pay for its length; here items are decoded in groups of similar length instead (the decoder
  is causal and the padding trails, so each item's audio is the same).

Words: a **model** is a loaded Qwen3-TTS variant; an **engine** is the loop that generates its
frames; to **decode** is what the speech decoder does, frames to audio.

Failures: running out of memory is the caller's (the job splits its batch); an error that may have
broken the CUDA context raises DeviceFailure (the worker exits and is replaced); anything else in
the graph or fast loop is logged and the model falls back, graph -> fast -> stock, for good.
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

from tts_runner.audio.codec import SAMPLE_RATE
from tts_runner.engines import loop, stock
from tts_runner.engines.core import RowBatch
from tts_runner.engines.graph import GraphEngine, GraphRows
from tts_runner.engines.running import RunningBatch
from tts_runner.engines.sampling import SEED_RANGE, Sampling
from tts_runner.errors import DeviceFailure
from tts_runner.serving.device import device_broken
from tts_runner.voice.clones import PromptCache, Reference

log = logging.getLogger(__name__)

DECODE_GROUP = 16          # items per speech-tokenizer call
DECODE_SPREAD = 1.25       # longest / shortest item in one call
FALLBACK = {"graph": "fast", "fast": "stock"}
SCHEDULED = ("fast", "graph")  # the engines whose loops a scheduler runs (stock keeps one batch per call)


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


@dataclass(frozen=True)
class ChunkRequest:
    text: str
    speaker: str | None  # None for VoiceDesign and the Base models
    language: str        # the library's language name
    instruct: str | None
    max_frames: int | None = None  # frame budget: the chunk ends here if it has not ended before
    seed: int | None = None        # the chunk's random stream (fast and graph: its own, whatever the batch)
    floor: int | None = None       # its own end-of-speech floor in frames (None: the job's min_new_tokens)
    clone: Any = None              # Base models: the voice clone prompt (see Model.clone_prompt)


@dataclass
class _Call:
    """The rows of the library call in progress, as the talker.generate seam needs them."""

    floors: int | list[int]          # one floor for every row, or one each
    budgets: list[int] | None = None  # per-row frame budgets (None: the call's cap)
    seeds: list[int] | None = None    # per-row seeds (None: drawn from torch's generator)
    progress: Callable[[int, int], None] | None = None  # hears (steps, rows going) during the call
    steps: int = 0                    # talker steps the call ran


class _Captured(Exception):  # noqa: N818 - not an error: how a prompt capture leaves the library's call
    """Raised from the talker.generate seam while building prompts: carries the call's arguments."""

    def __init__(self, kwargs: dict):
        super().__init__("prompt captured")
        self.kwargs = kwargs


class Model:
    """A loaded Qwen3TTSModel of one kind (custom_voice | voice_design | base); calls are serialized
    (`lock`). The model store builds it, and its scheduler when it has one."""

    def __init__(self, tts: Any, kind: str, name: str, engine: str = "stock", sync_every: int = 1,
                 graph: GraphEngine | None = None, clone_prompts: PromptCache | None = None):
        self.tts = tts
        self.kind = kind
        self.name = name
        self.engine = engine
        self.graph = graph
        self.sync_every = sync_every
        self.lock = threading.Lock()
        self.clone_prompts = clone_prompts or PromptCache(64, 256)  # Base models: clone prompts by reference
        self.scheduler = None  # the store's: tts_runner.serving.scheduler.Scheduler
        self.random_weights = False  # built by tools/tiny_model (the store reads its marker): audio is noise
        self.siblings: Callable[[str], Model | None] | None = None  # the store's: another variant, or None
        self._call = _Call(floors=2)
        self._capturing = False
        talker = tts.model.talker
        talker.generate = functools.partial(self._talker_generate, talker.generate)
        tokenizer = tts.model.speech_tokenizer
        tokenizer.decode = functools.partial(self._decode_by_length, tokenizer.decode)

    @property
    def like(self) -> torch.Tensor:
        """A tensor of the model's device and dtype."""
        return self.tts.model.talker.codec_head.weight

    # ---- the engine --------------------------------------------------------------------------
    @contextlib.contextmanager
    def using(self, engine: str | None = None, floor: int | list[int] | None = None, budgets: list[int] | None = None,
              seeds: list[int] | None = None) -> Iterator[Model]:
        """Calls inside run on `engine` (None: the current one), with the end-of-speech `floor`
        (None: the current one; a list: one per row, which stock can only hold the batch to the
        highest of), per-row frame `budgets` and per-row `seeds` (None: drawn from torch's
        generator); what was given is restored after, a fallback inside included when `engine`
        was given. For the model's own calls and for code that calls the library directly
        (benchmarks, tests)."""
        saved = (self.engine, self.graph), self._call
        self.engine = engine or self.engine
        self._call = _Call(floors=self._call.floors if floor is None else floor, budgets=budgets, seeds=seeds)
        try:
            yield self
        finally:
            self._call = saved[1]
            if engine is not None:
                self.engine, self.graph = saved[0]

    def _fall_back(self, engine: str, exc: BaseException) -> None:
        log.warning("The %s engine failed for %s (%s: %s); using %s from now on", engine, self.name,
                    type(exc).__name__, exc, FALLBACK[engine])
        log.debug("Engine failure", exc_info=True)
        self.engine = FALLBACK[engine]
        if engine == "graph":
            self.graph = None

    def disable_graph(self, reason: str) -> None:
        """Run the fast loop from now on instead of the graph engine (`reason`: why, for the log)."""
        if self.engine == "graph":
            log.warning("The graph engine is off for %s (%s); using fast from now on", self.name, reason)
            self.engine = "fast"
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
        batch bucket x attention-length bucket (part of cold start). Returns the seconds taken; 0.0 when there is nothing to
        do. A failure logs why and leaves the fast loop in charge."""
        if self.graph is None or self.like.device.type != "cuda":
            return 0.0
        with self.lock, torch.inference_mode():
            seconds = self._attempt("graph", lambda: self.graph.capture(self.like))
        if seconds is None:
            return 0.0
        log.info("Captured %d CUDA graphs for %s, batch buckets %s x attention lengths %s, in %.2f s (static buffers "
                 "%.2f GiB)", len(self.graph.graphs), self.name, list(self.graph.buckets), list(self.graph.lengths),
                 seconds, self.graph.buffer_bytes / 2**30)
        return seconds

    def new_batches(self, pad: torch.Tensor, suppress: list[int] | None, capacity: int) -> list[RowBatch]:
        """Running batches for rows of this model, in the order rows are placed: the graph engine's
        slots when it runs and they are free, then the fast loop (which takes any row)."""
        talker = self.tts.model.talker
        batches: list[RowBatch] = []
        if self.engine == "graph" and self.graph is not None and not self.graph.busy:
            batches.append(GraphRows(self.graph, pad, suppress, self.like))
        batches.append(RunningBatch(talker, pad, suppress, capacity, self.like))
        return batches

    def _talker_generate(self, library_generate, *args, **kwargs):
        """What qwen-tts calls as talker.generate: our floor, budgets and seeds, then the engine;
        counts the steps it ran (one per entry of the result's hidden states, prefill included)."""
        if self._capturing:
            raise _Captured(kwargs)
        while self.engine in SCHEDULED and not args:
            result = self._attempt(self.engine, lambda: self._run_rows(kwargs))
            if result is not None:
                break
        else:
            call = self._call
            floor = call.floors if isinstance(call.floors, int) else max(call.floors)
            result = stock.generate(library_generate, self.like.device, floor, call.budgets,
                                    call.seeds[0] if call.seeds else None, call.progress, *args, **kwargs)
        self._call.steps += len(result.hidden_states)
        return result

    def _run_rows(self, kwargs: dict) -> loop.TalkerResult:
        """The call's rows through this model's loops, every row to its end."""
        call, n = self._call, kwargs["inputs_embeds"].shape[0]
        floors = [call.floors] * n if isinstance(call.floors, int) else list(call.floors)
        seeds = call.seeds or torch.randint(SEED_RANGE, (n,)).tolist()  # reproducible under torch.manual_seed
        rows = loop.call_rows(kwargs, loop.call_sampling(kwargs, floors, call.budgets or [None] * n, seeds))
        batches = self.new_batches(kwargs["tts_pad_embed"], kwargs.get("suppress_tokens"), n)
        try:
            codes, steps = loop.run_to_end(batches, rows, self.sync_every, call.progress)
        finally:
            for batch in batches:
                batch.close()
        return loop.talker_result(codes, steps, self.tts.model.talker.config.codec_eos_token_id, self.like)

    # ---- the library's calls -----------------------------------------------------------------
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

    def prompts(self, requests: list[ChunkRequest]) -> tuple[list[tuple[torch.Tensor, torch.Tensor]], torch.Tensor, list]:
        """What qwen-tts would hand `talker.generate` for `requests`, without generating: per request
        its prompt embeddings [P, H] (no padding) and its trailing text [T, H]; the pad embedding; the
        suppressed codes. The library builds every prompt (tokenizer, speaker, instruct, clone); the
        scheduler runs them. Call with the lock held."""
        self._capturing = True
        try:
            self._library_generate(requests, {"max_new_tokens": 2})
        except _Captured as captured:
            kwargs = captured.kwargs
        else:
            raise RuntimeError("qwen-tts returned without calling talker.generate")
        finally:
            self._capturing = False
        return loop.call_prompts(kwargs), kwargs["tts_pad_embed"], list(kwargs.get("suppress_tokens") or [])

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

    def decode(self, items: list[tuple[ChunkRequest, torch.Tensor]]) -> list[np.ndarray]:
        """Codes ([F, 16] each) to waveforms, as qwen-tts does after talker.generate: a cloned voice's
        reference codes go first, as context, and their share of the audio is cut off after. Needs no
        lock: the loops never touch the speech tokenizer."""
        wavs: list[np.ndarray] = [np.zeros(0, dtype=np.float32)] * len(items)
        full, where = [], []
        for i, (request, codes) in enumerate(items):
            if codes.shape[0] == 0:
                continue  # nothing to decode: the job retries an empty chunk
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

    def clone_prompt(self, reference: Reference) -> Any:
        """The Base model's prompt for cloning `reference` (its speaker embedding, and its codes and
        transcript for in-context cloning when it has a transcript): made once per distinct
        reference, then taken from the cache."""
        def compute(ref: Reference) -> Any:
            with self.lock, torch.inference_mode():
                return self.tts.create_voice_clone_prompt(ref_audio=(ref.samples, SAMPLE_RATE), ref_text=ref.text,
                                                          x_vector_only_mode=ref.text is None)[0]

        return self.clone_prompts.get(reference, compute)

    def row_sampling(self, request: ChunkRequest, sampling: Sampling) -> Sampling:
        """A request's row in a loop: the job's sampling with the request's floor, frame budget and
        seed (Sampling.for_row)."""
        return sampling.for_row(request.floor, request.max_frames, _seed(request))

    @property
    def speakers(self) -> list[str]:
        return list(self.tts.get_supported_speakers() or [])

    @property
    def languages(self) -> list[str]:
        return list(self.tts.get_supported_languages() or [])

    def generate(self, requests: list[ChunkRequest], sampling: Sampling, on_steps: Callable[[int], None] | None = None,
                 progress: Callable[[int, int], None] | None = None) -> tuple[list[np.ndarray], int]:
        """Waveforms (float32, mono) for `requests`, in order, and their sample rate. `on_steps`
        hears how many talker steps the call ran; `progress`, while it runs, (steps run, rows
        still going) at each host check (each step for stock)."""
        rows = [self.row_sampling(r, sampling) for r in requests]
        floors = [row.min_new_tokens for row in rows]
        budgets = ([row.max_frames for row in rows] if any(r.max_frames is not None for r in requests) else None)
        with self.lock, torch.inference_mode(), self.using(floor=floors[0] if len(set(floors)) == 1 else floors,
                                                             budgets=budgets, seeds=[row.seed for row in rows]):
            self._call.progress = progress
            try:
                wavs, sr = self._library_generate(requests, sampling.library_kwargs())
            except Exception as exc:
                if device_broken(exc):
                    raise DeviceFailure(f"The GPU failed ({type(exc).__name__}: {exc}); this worker stops "
                                        "and a fresh one takes its place. Send the job again.") from exc
                raise
            if on_steps:
                on_steps(self._call.steps)
        return [np.asarray(w, dtype=np.float32).reshape(-1) for w in wavs], int(sr)


def _seed(request: ChunkRequest) -> int:
    """A request's seed, or one drawn from torch's generator (reproducible under torch.manual_seed)."""
    return request.seed if request.seed is not None else int(torch.randint(SEED_RANGE, ()))
