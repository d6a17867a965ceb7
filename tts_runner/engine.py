"""One loaded model and the batched calls the job graph makes on it.

`Engine.generate(requests, sampling)` runs a list of chunk requests (any mix of voices and
lengths) as one left-padded batch through qwen_tts and returns one waveform per request, in
order. It also enforces the `min_new_tokens` floor: qwen_tts hard-codes `min_new_tokens=2` for
the talker and forwards no argument to change it, so the engine wraps this instance's
`talker.generate` and raises the floor there (HF's MinNewTokensLengthLogitsProcessor then keeps
the end-of-speech code suppressed until that many frames exist).

qwen_tts decodes a batch's codes to audio in one call that pads every item to the longest; the
decoder runs at the full sample rate, so one long chunk makes the whole batch pay for its length
(6 GiB of activations at batch 64 on the tiny model). The engine wraps this instance's
`speech_tokenizer.decode` to decode items in groups of similar length instead; the decoder is
causal and the padding trails, so each item's audio is the same.

The talker seam also selects the decode loop: `stock` is qwen_tts's own (HF generate per frame), `fast`
is tts_runner.fast_decode's lean loop. If the fast loop fails for a reason other than running
out of memory, the engine logs why, falls back to stock for good, and redoes the call.
"""

from __future__ import annotations

import functools
import logging
import threading
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch

from tts_runner.fast_decode import lean_talker_generate
from tts_runner.graph_decode import GraphDecoder

log = logging.getLogger(__name__)

SAMPLES_PER_FRAME = 1920  # one codec frame = 80 ms at 24 kHz
SAMPLE_RATE = 24000
DECODE_GROUP = 16          # items per speech-tokenizer call
DECODE_SPREAD = 1.25       # longest / shortest item in one call


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
    speaker: str | None  # None for VoiceDesign
    language: str        # the library's language name
    instruct: str | None
    max_frames: int | None = None  # frame budget: the chunk ends here if it has not ended before


class Engine:
    """A loaded Qwen3TTSModel of one kind (custom_voice | voice_design); calls are serialized."""

    def __init__(self, tts: Any, kind: str, name: str, decode: str = "stock", sync_every: int = 1,
                 graph: dict | None = None):
        self.tts = tts
        self.kind = kind
        self.name = name
        self.decode = decode
        self.lock = threading.Lock()
        self._floor = 2
        self._budgets: list[int] | None = None  # per-row frame budgets of the call in progress
        self._sync_every = sync_every
        talker = tts.model.talker
        self.graph: GraphDecoder | None = None
        if decode == "graph":
            try:
                self.graph = GraphDecoder(talker, sync_every=sync_every, **(graph or {}))
            except NotImplementedError as exc:
                self._give_up_graph(exc)
        talker.generate = functools.partial(self._talker_generate, talker, talker.generate)
        tokenizer = tts.model.speech_tokenizer
        tokenizer.decode = functools.partial(self._decode_by_length, tokenizer.decode)

    def _give_up_graph(self, exc: BaseException) -> None:
        log.warning("Graph decode unavailable for %s (%s: %s); using the fast loop",
                    self.name, type(exc).__name__, exc)
        self.decode, self.graph = "fast", None

    def capture_graphs(self) -> float:
        """On CUDA with `engine: graph`: allocate the static buffers and capture one CUDA graph per
        batch bucket (part of cold start). Returns the seconds taken; 0.0 when there is nothing to do.
        A failure logs why and leaves the fast loop in charge."""
        if self.graph is None or not torch.cuda.is_available():
            return 0.0
        like = self.tts.model.talker.codec_head.weight
        if like.device.type != "cuda":
            return 0.0
        try:
            with self.lock, torch.inference_mode():
                seconds = self.graph.capture(like)
        except torch.cuda.OutOfMemoryError:
            raise
        except Exception as exc:  # noqa: BLE001 - any capture failure: the fast loop
            self._give_up_graph(exc)
            return 0.0
        log.info("Captured CUDA graphs for %s, buckets %s, up to %d positions, in %.2f s (static buffers %.2f GiB)",
                 self.name, list(self.graph.buckets), self.graph.max_len, seconds, self.graph.buffer_bytes / 2**30)
        return seconds

    def _talker_generate(self, talker: torch.nn.Module, stock, *args, **kwargs):
        """What qwen_tts calls as talker.generate: our floor and budgets, then the graph, fast or stock loop."""
        kwargs["min_new_tokens"] = max(int(kwargs.get("min_new_tokens") or 0), self._floor)
        budgets = self._budgets if self._budgets is not None and not args else None
        if self.decode == "graph" and self.graph is not None and not args:
            shape = kwargs["inputs_embeds"].shape
            if self.graph.fits(shape[0], shape[1], int(kwargs["max_new_tokens"])):
                try:
                    return self.graph.generate(**kwargs, max_frames=budgets)
                except torch.cuda.OutOfMemoryError:
                    raise
                except Exception as exc:  # noqa: BLE001 - any other failure: the fast loop from now on
                    log.debug("Graph decode failure", exc_info=True)
                    self._give_up_graph(exc)
            else:
                log.info("Batch of %d x %d prompt positions + %s frames exceeds the graph buffers "
                         "(buckets up to %d, %d positions); this call uses the fast loop", shape[0], shape[1],
                         kwargs["max_new_tokens"], self.graph.buckets[-1], self.graph.max_len)
        if self.decode in ("fast", "graph"):
            try:
                return lean_talker_generate(talker, *args, sync_every=self._sync_every, max_frames=budgets, **kwargs)
            except torch.cuda.OutOfMemoryError:
                raise
            except Exception as exc:  # noqa: BLE001 - any other failure: stock from now on
                log.warning("Fast decode failed for %s (%s: %s); falling back to stock for good",
                            self.name, type(exc).__name__, exc)
                self.decode = "stock"
        # HF's generate pads with the end code when no pad id is given, and says so on every call.
        kwargs.setdefault("pad_token_id", kwargs.get("eos_token_id"))
        if budgets is None:
            return stock(*args, **kwargs)
        # HF generate has no per-row budget: run to the largest, then end each row at its own.
        kwargs["max_new_tokens"] = min(int(kwargs["max_new_tokens"]), max(budgets) + 1)
        result = stock(*args, **kwargs)
        _end_rows_at(result.hidden_states, budgets, talker.config.codec_eos_token_id)
        return result

    @staticmethod
    def _decode_by_length(batched_decode, encoded):
        """What qwen_tts calls as speech_tokenizer.decode: one call per group of similar length."""
        if not isinstance(encoded, list) or len(encoded) <= 1:
            return batched_decode(encoded)
        wavs: list = [None] * len(encoded)
        sample_rate = SAMPLE_RATE
        for group in length_groups([len(item["audio_codes"]) for item in encoded]):
            out, sample_rate = batched_decode([encoded[i] for i in group])
            for i, wav in zip(group, out, strict=True):
                wavs[i] = wav
        return wavs, sample_rate

    @property
    def speakers(self) -> list[str]:
        return list(self.tts.get_supported_speakers() or [])

    @property
    def languages(self) -> list[str]:
        return list(self.tts.get_supported_languages() or [])

    def generate(self, requests: list[ChunkRequest], sampling: dict) -> tuple[list[np.ndarray], int]:
        """Waveforms (float32, mono) for `requests`, in order, and their sample rate."""
        kwargs = _sampling_kwargs(sampling)
        texts = [r.text for r in requests]
        languages = [r.language for r in requests]
        instructs = [r.instruct or "" for r in requests]
        budgets = [r.max_frames for r in requests]
        with self.lock, torch.inference_mode():
            self._floor = max(2, min(int(sampling.get("min_new_tokens", 2)), kwargs["max_new_tokens"]))
            self._budgets = ([kwargs["max_new_tokens"] if b is None else max(1, int(b)) for b in budgets]
                             if any(b is not None for b in budgets) else None)
            try:
                if self.kind == "voice_design":
                    wavs, sr = self.tts.generate_voice_design(
                        text=texts, instruct=instructs, language=languages, **kwargs
                    )
                else:
                    wavs, sr = self.tts.generate_custom_voice(
                        text=texts, speaker=[r.speaker for r in requests], language=languages,
                        instruct=instructs, **kwargs,
                    )
            finally:
                self._budgets = None
        return [np.asarray(w, dtype=np.float32).reshape(-1) for w in wavs], int(sr)


def _end_rows_at(steps: list, budgets: list[int], eos: int) -> None:
    """End each row of a stock result at its frame budget: from frame `budget` on, its first code
    is end-of-speech (qwen_tts cuts every item at its first one)."""
    frames = [codes for _, codes in steps if codes is not None]
    limit = torch.tensor(budgets, device=frames[0].device) if frames else None
    for frame, codes in enumerate(frames):
        codes[:, 0] = torch.where(limit > frame, codes[:, 0], eos)


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
