"""Benchmark: the same long job through the sequential path and the batched path, in one run.

    python -m tts_runner.bench --model-dir models --device cpu --chunks 64 --batch-sizes 1,16 --engines stock,fast

The job is jobs/podcast.yaml's dialogue repeated to `--chunks` segments of one chunk each (or, with
`--minutes M`, to the length of an M-minute podcast read at 15 characters a second), run through
the whole job graph (plan, generate, assemble, encode, sink) once per engine and batch size with
`batching.max_batch_size` set to it; batch size 1 is the sequential path. `--out DIR` writes each
run's audio file there (the file sink) instead of holding it inline. Prints a table of wall
seconds, audio seconds, real-time factor (audio s / wall s), speed-up over the first row, peak
memory, the share of wall time spent outside model calls, and milliseconds per talker step (one
frame for every item of a batch; model time, speech-tokenizer decode included, over steps run).

Random weights: the tiny model ends chunks at varied, speech-like lengths (see tiny_model); with
`--fixed-length` every chunk runs to exactly max_new_tokens - 1 frames instead, so every row does
the same work. `--build DIR` builds the models first (`--real-size` for the 1.7B dimensions).

`--engines` may name stock, fast and graph. With graph in the list the model is loaded with
`runtime.engine=graph`, buckets at the powers of two up to the largest batch size (and the batch
sizes) and buffers long enough for the job; on CUDA its graphs are captured at load and the capture
time is printed (it adds to cold start). `--agreement FRAMES` also compares each engine's greedy
codes with stock's over that many frames, 8 items.
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import sys
import time
from dataclasses import asdict, dataclass
from pathlib import Path

import torch

from tts_runner import config as config_mod
from tts_runner import payload as payload_mod
from tts_runner.engine import ChunkRequest, Engine
from tts_runner.models import ModelStore
from tts_runner.runner import run_job


@dataclass
class Row:
    engine: str
    batch_size: int
    wall_s: float
    audio_s: float
    rtf: float
    speedup: float
    peak_gib: float
    outside_model_pct: float
    ms_per_step: float
    model_calls: int
    chunks: int


CHARS_PER_SECOND = 15  # read speech: ~150 words a minute


def long_job(chunks: int, minutes: float = 0.0) -> dict:
    """The podcast dialogue repeated to `chunks` segments (each one chunk of <= 120 characters), or
    to `minutes` of read speech when given."""
    _, spec = payload_mod.load_job_spec("podcast")
    lines = spec["segments"]
    segments: list[dict] = []
    if minutes:
        chars = 0
        while chars < minutes * 60 * CHARS_PER_SECOND:
            segments.append(lines[len(segments) % len(lines)])
            chars += len(segments[-1]["text"])
    else:
        segments = [lines[i % len(lines)] for i in range(chunks)]
    return {"segments": segments, "output_format": "wav"}


def peak_memory_gib(device: str) -> float:
    if device.startswith("cuda"):
        return torch.cuda.max_memory_allocated() / 2**30
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2**20  # KiB on Linux; process peak


def run(args: argparse.Namespace) -> tuple[list[Row], Engine]:
    overrides = [
        f"input.model={args.model}",
        f"sampling.max_new_tokens={args.max_new_tokens}",
        f"sampling.min_new_tokens={args.max_new_tokens if args.fixed_length else args.min_new_tokens}",
        *(["sink=file", f"sink.dir={args.out}"] if args.out else ["sink=base64", "sink.max_inline_bytes=1000000000000"]),
        "batching.min_seconds_per_char=0",
        f"batching.max_batch_chars={args.max_batch_chars}",
    ]
    if "graph" in args.engines:
        top = max(args.batch_sizes)  # powers of two up to the largest batch, so batches shrink as chunks end
        buckets = sorted({*(2**i for i in range(top.bit_length()) if 2**i <= top), *args.batch_sizes})
        overrides += ["runtime.engine=graph", f"runtime.graph.buckets=[{','.join(map(str, buckets))}]",
                      f"runtime.graph.max_len={args.max_new_tokens + 256}"]
    if args.model_dir:
        os.environ["QWEN_TTS_MODEL_DIR"] = str(args.model_dir)
    if args.device:
        os.environ["QWEN_TTS_DEVICE"] = args.device
    job = long_job(args.chunks, args.minutes)
    cfg = payload_mod.merge(config_mod.load(overrides), job)
    started = time.perf_counter()
    store = ModelStore(cfg.models, cfg.runtime)
    engine = store.get(args.model)
    print(f"model {args.model} on {store.device} ({str(store.dtype).removeprefix('torch.')}), loaded and "
          f"warmed up in {time.perf_counter() - started:.1f} s; job: {len(job['segments'])} segments, "
          f"{sum(len(s['text']) for s in job['segments'])} characters, "
          f"max_new_tokens {args.max_new_tokens}, {'fixed' if args.fixed_length else 'speech-like'} lengths",
          flush=True)
    if "graph" in args.engines:
        if engine.graph is None:
            print("graph engine unavailable (see the log); its rows run the fast loop", flush=True)
        elif engine.graph.capture_seconds:
            print(f"graph capture: buckets {list(engine.graph.buckets)}, {engine.graph.max_len} positions, "
                  f"{engine.graph.capture_seconds:.2f} s (part of cold start), static buffers "
                  f"{engine.graph.buffer_bytes / 2**30:.2f} GiB", flush=True)
        else:
            print("graph engine on the CPU: the static frame runs eagerly (no capture)", flush=True)

    rows: list[Row] = []
    runs = [(e, b) for e in args.engines for b in args.batch_sizes]
    for decode, batch_size in runs:
        engine.decode = decode
        cfg.batching.max_batch_size = batch_size
        cfg.input.name = f"bench-{decode}-b{batch_size}"
        torch.manual_seed(args.seed)
        if store.device.startswith("cuda"):
            torch.cuda.synchronize()
            torch.cuda.reset_peak_memory_stats()
        started = time.perf_counter()
        response, job = run_job(cfg, engine, job_id="bench")
        wall = time.perf_counter() - started
        audio = job.duration_seconds
        base = rows[0].rtf if rows else audio / wall
        rows.append(Row(decode, batch_size, round(wall, 2), round(audio, 1), round(audio / wall, 2),
                        round((audio / wall) / base, 2), round(peak_memory_gib(store.device), 2),
                        round(100 * (wall - job.stats.model_seconds) / wall, 2),
                        round(1000 * job.stats.model_seconds / max(1, job.stats.frame_steps), 1),
                        job.stats.calls, job.num_chunks))
        print(format_row(rows[-1]), flush=True)
        if args.out:
            print(f"  audio file: {response['audio_path']}", flush=True)
    return rows, engine


def breakdown(engine: Engine, batch_sizes: list[int], frames: int) -> None:
    """Where one stock model call spends its time, per batch size: the code predictor's
    generate(), the speech-tokenizer decode, and the rest (talker forward and sampling)."""
    spent = {"predictor": 0.0, "decode": 0.0}

    def timed(name, fn):
        def wrapper(*args, **kwargs):
            started = time.perf_counter()
            try:
                return fn(*args, **kwargs)
            finally:
                spent[name] += time.perf_counter() - started
        return wrapper

    predictor, tokenizer = engine.tts.model.talker.code_predictor, engine.tts.model.speech_tokenizer
    engine_decode, engine_loop = tokenizer.decode, engine.decode
    predictor.generate = timed("predictor", predictor.generate)
    tokenizer.decode = timed("decode", engine_decode)
    engine.decode = "stock"
    sampling = {"max_new_tokens": frames + 1, "min_new_tokens": frames + 1, "temperature": 0.3, "top_k": 50,
                "top_p": 0.85}
    print(f"\nstock model call, {frames} frames per item: | batch | whole call s | code predictor s | "
          "speech-tokenizer decode s | talker and sampling s |")
    for size in batch_sizes:
        spent.update(predictor=0.0, decode=0.0)
        requests = [ChunkRequest(f"Sentence number {i} says something rather different from the others.",
                                 "ryan", "english", None) for i in range(size)]
        started = time.perf_counter()
        engine.generate(requests, sampling)
        whole = time.perf_counter() - started
        print(f"| {size} | {whole:.2f} | {spent['predictor']:.2f} | {spent['decode']:.2f} | "
              f"{whole - spent['predictor'] - spent['decode']:.2f} |", flush=True)
    del predictor.generate  # back to the class's method
    tokenizer.decode, engine.decode = engine_decode, engine_loop


AGREEMENT_TEXTS = [
    "Welcome back to the show, where we talk about the small machines that run our lives.",
    "Today we have a guest who has spent twenty years building radios by hand.",
    "Short one.",
    "It started with a broken transistor set that my grandfather kept in the kitchen.",
    "What did you learn from taking it apart, piece by piece, on that kitchen table?",
    "Patience, mostly, and that every circuit tells you how it wants to be fixed.",
    "Numbers like 3.14 and dates like 1987 are read too.",
    "Thanks for listening, and see you next week.",
]


def greedy_codes(engine: Engine, decode: str, frames: int, batch: int) -> list[torch.Tensor]:
    """Greedy codes of `batch` texts, all held to `frames` frames, through one decode loop."""
    tts, saved = engine.tts, (engine.decode, engine._floor)
    texts = [AGREEMENT_TEXTS[i % len(AGREEMENT_TEXTS)] for i in range(batch)]
    speakers = [engine.speakers[i % len(engine.speakers)] for i in range(batch)]
    engine.decode, engine._floor = decode, frames + 1
    try:
        with torch.inference_mode():
            out, _ = tts.model.generate(
                input_ids=tts._tokenize_texts([tts._build_assistant_text(t) for t in texts]),
                instruct_ids=[None] * batch, languages=["english"] * batch, speakers=speakers,
                non_streaming_mode=True, do_sample=False, subtalker_dosample=False, repetition_penalty=1.05,
                max_new_tokens=frames + 1)
    finally:
        engine.decode, engine._floor = saved
    return out


def agreement(engine: Engine, engines: list[str], frames: int, batch: int) -> None:
    """Greedy codes of each engine against stock's over the first `frames` frames: the share of
    codes equal, and the first frame at which each item differs (bf16 kernels may differ)."""
    reference = greedy_codes(engine, "stock", frames, batch)
    print(f"\ngreedy agreement with stock, {batch} items x {frames} frames x 16 codes: "
          "| engine | codes equal % | first-codebook equal % | first differing frame per item |")
    for decode in [e for e in engines if e != "stock"]:
        if decode == "graph" and engine.graph is None:
            continue
        other = greedy_codes(engine, decode, frames, batch)
        equal = first = total = 0
        differs = []
        for a, b in zip(reference, other, strict=True):
            n = min(len(a), len(b), frames)
            same = (a[:n] == b[:n])
            equal += int(same.sum())
            first += int(same[:, 0].sum())
            total += n
            bad = (~same.all(dim=1)).nonzero()
            differs.append(int(bad[0]) if len(bad) else None)
        print(f"| {decode} | {100 * equal / max(1, 16 * total):.2f} | {100 * first / max(1, total):.2f} | "
              f"{', '.join('-' if d is None else str(d) for d in differs)} |", flush=True)


HEADER = ("| engine | batch | wall s | audio s | RTF (audio s / wall s) | speed-up | peak GiB | outside model % | "
          "ms per step | model calls |\n|---|---|---|---|---|---|---|---|---|---|")


def format_row(r: Row) -> str:
    return (f"| {r.engine} | {r.batch_size} | {r.wall_s} | {r.audio_s} | {r.rtf} | {r.speedup}x | {r.peak_gib} | "
            f"{r.outside_model_pct} | {r.ms_per_step} | {r.model_calls} |")


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", default="1.7B-CustomVoice")
    parser.add_argument("--model-dir", type=Path, help="QWEN_TTS_MODEL_DIR (default: the environment's)")
    parser.add_argument("--device", help="QWEN_TTS_DEVICE: auto, cpu, cuda:0")
    parser.add_argument("--chunks", type=int, default=64)
    parser.add_argument("--minutes", type=float, default=0.0,
                        help="instead of --chunks: a podcast this many minutes long when read aloud")
    parser.add_argument("--out", type=Path, help="write each run's audio file here (default: held inline)")
    parser.add_argument("--engines", type=lambda s: s.split(","), default=["stock"],
                        help="decode loops to compare: stock, fast, graph (speed-up is against the first row)")
    parser.add_argument("--batch-sizes", type=lambda s: [int(x) for x in s.split(",")], default=[1, 8, 16])
    parser.add_argument("--max-new-tokens", type=int, default=40)
    parser.add_argument("--min-new-tokens", type=int, default=8)
    parser.add_argument("--max-batch-chars", type=int, default=100_000)
    parser.add_argument("--fixed-length", action="store_true", help="every chunk runs to max_new_tokens")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--build", action="store_true", help="build random-weight models into --model-dir first")
    parser.add_argument("--real-size", action="store_true", help="with --build: the 1.7B dimensions")
    parser.add_argument("--json", type=Path, help="also write the rows here")
    parser.add_argument("--agreement", type=int, default=0, metavar="FRAMES",
                        help="also compare each engine's greedy codes with stock's over this many frames")
    parser.add_argument("--breakdown", action="store_true",
                        help="also time the parts of one stock model call at each batch size")
    args = parser.parse_args(argv)
    if args.build:
        from tts_runner.tiny_model import STOP_BIAS, VARIANTS, TinySizes, build_all

        if not args.model_dir:
            parser.error("--build needs --model-dir")
        folder = [f for f in VARIANTS if args.model.split("-")[0] in f and args.model.split("-")[1] in f]
        sizes = TinySizes.real_1_7b() if args.real_size else TinySizes()
        # Fixed lengths never stop early: skip the stop-bias calibration (a generation on the CPU).
        build_all(args.model_dir, folder, sizes, stop_bias=0.0 if args.fixed_length else STOP_BIAS)
    rows, engine = run(args)
    if args.breakdown:
        breakdown(engine, args.batch_sizes, args.max_new_tokens - 1)
    if args.agreement:
        agreement(engine, args.engines, args.agreement, 8)
    print()
    print(HEADER)
    for row in rows:
        print(format_row(row))
    if args.json:
        args.json.write_text(json.dumps([asdict(r) for r in rows], indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
