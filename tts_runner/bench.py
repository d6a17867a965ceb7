"""Benchmark: the same long job through the sequential path and the batched path, in one run.

    python -m tts_runner.bench --model-dir models --device cpu --chunks 64 --batch-sizes 1,16 --engines stock,fast

The job is jobs/podcast.yaml's dialogue repeated to `--chunks` segments of one chunk each, run
through the whole job graph (plan, generate, assemble, encode, sink) once per batch size with
`batching.max_batch_size` set to it; batch size 1 is the sequential path. Prints a table of wall
seconds, audio seconds, real-time factor (audio s / wall s), speed-up over the first row, peak
memory, the share of wall time spent outside model calls, and milliseconds per talker step (one
frame for every item of a batch; model time, speech-tokenizer decode included, over steps run).

Random weights: the tiny model ends chunks at varied, speech-like lengths (see tiny_model); with
`--fixed-length` every chunk runs to exactly max_new_tokens - 1 frames instead, so every row does
the same work. `--build DIR` builds the models first (`--real-size` for the 1.7B dimensions).
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


def long_job(chunks: int) -> dict:
    """The podcast dialogue repeated to `chunks` segments (each one chunk of <= 120 characters)."""
    _, spec = payload_mod.load_job_spec("podcast")
    lines = spec["segments"]
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
        "sink=base64", "sink.max_inline_bytes=1000000000000",
        "batching.min_seconds_per_char=0",
        f"batching.max_batch_chars={args.max_batch_chars}",
    ]
    if args.model_dir:
        os.environ["QWEN_TTS_MODEL_DIR"] = str(args.model_dir)
    if args.device:
        os.environ["QWEN_TTS_DEVICE"] = args.device
    cfg = payload_mod.merge(config_mod.load(overrides), long_job(args.chunks))
    started = time.perf_counter()
    store = ModelStore(cfg.models, cfg.runtime)
    engine = store.get(args.model)
    print(f"model {args.model} on {store.device} ({str(store.dtype).removeprefix('torch.')}), loaded and "
          f"warmed up in {time.perf_counter() - started:.1f} s; job: {args.chunks} chunks, "
          f"max_new_tokens {args.max_new_tokens}, {'fixed' if args.fixed_length else 'speech-like'} lengths",
          flush=True)

    rows: list[Row] = []
    runs = [(e, b) for e in args.engines for b in args.batch_sizes]
    for decode, batch_size in runs:
        engine.decode = decode
        cfg.batching.max_batch_size = batch_size
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
    parser.add_argument("--engines", type=lambda s: s.split(","), default=["stock"],
                        help="decode loops to compare, e.g. stock,fast (speed-up is against the first row)")
    parser.add_argument("--batch-sizes", type=lambda s: [int(x) for x in s.split(",")], default=[1, 8, 16])
    parser.add_argument("--max-new-tokens", type=int, default=40)
    parser.add_argument("--min-new-tokens", type=int, default=8)
    parser.add_argument("--max-batch-chars", type=int, default=100_000)
    parser.add_argument("--fixed-length", action="store_true", help="every chunk runs to max_new_tokens")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--build", action="store_true", help="build random-weight models into --model-dir first")
    parser.add_argument("--real-size", action="store_true", help="with --build: the 1.7B dimensions")
    parser.add_argument("--json", type=Path, help="also write the rows here")
    parser.add_argument("--breakdown", action="store_true",
                        help="also time the parts of one stock model call at each batch size")
    args = parser.parse_args(argv)
    if args.build:
        from tts_runner.tiny_model import VARIANTS, TinySizes, build_all

        if not args.model_dir:
            parser.error("--build needs --model-dir")
        folder = [f for f in VARIANTS if args.model.split("-")[0] in f and args.model.split("-")[1] in f]
        build_all(args.model_dir, folder, TinySizes.real_1_7b() if args.real_size else TinySizes())
    rows, engine = run(args)
    if args.breakdown:
        breakdown(engine, args.batch_sizes, args.max_new_tokens - 1)
    print()
    print(HEADER)
    for row in rows:
        print(format_row(row))
    if args.json:
        args.json.write_text(json.dumps([asdict(r) for r in rows], indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
