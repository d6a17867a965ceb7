"""Benchmark: the same long job through the sequential path and the batched path, in one run.

    python -m tts_runner.tools.bench --model-dir models --device cpu --chunks 64 --batch-sizes 1,16 --engines stock,fast

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

`--text-sized` sizes every chunk by its text instead: each chunk runs to a frame budget of 15
characters a second (`batching.frame_budget`), and the model is built never to end on its own, so
every engine and batch size makes the same audio from the same job (a real voice varies around
that length; its long tail is not modelled). `--one-stream N` adds rows for the first N lines of the
job at batch 1 through stock and every engine listed; `--stock-sample N` adds the seed's path (stock, one chunk at a
time) on N chunks spread over the job, and prints that path's time for the whole job extrapolated
from the sample, so the job's speed-up over it is a ratio measured in the same run.

`--scheduler` runs the job through the model's scheduler (what a worker does), loaded with the
configuration a user gets: engine, buckets, buffers and rows all `auto` unless `--batch-sizes` names
rows (then the scheduler holds the largest, with graph buckets up to it, and runs the job at each);
its rows' `ms per step` is the loop's frame steps (rounds x sync_every) over the job's model time, and
`--engines` names only the engines of --agreement and --ops there (the job runs the model's own).

`--serve` runs the serving benchmark instead (tts_runner/tools/serve_bench.py: many one-sentence
requests at once, the scheduler against one job at a time).

`--engines` may name stock, fast and graph. With graph in the list the model is loaded with
`runtime.engine=graph`, buckets at the powers of two up to the largest batch size (and the batch
sizes) and buffers long enough for the job; on CUDA its graphs are captured at load and the capture
time is printed (it adds to cold start). `--agreement FRAMES` also compares each engine's greedy
codes with stock's over that many frames, 8 items. `--profile B` times the captured graph frame at
bucket B and lists the CUDA kernels of one frame by GPU time (CUDA only). `--json FILE` writes the
rows, each with the device's name and the job it belongs to (agreement goes to FILE-agreement.json).
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import resource
import sys
import time
from dataclasses import asdict, dataclass, replace
from pathlib import Path

import torch

from tts_runner.edge import build, payload
from tts_runner.edge import config as config_mod
from tts_runner.edge.jobs import Edge
from tts_runner.engines.sampling import Sampling
from tts_runner.job.plan import chunk_seed
from tts_runner.job.run import run_job
from tts_runner.job.spec import Job
from tts_runner.serving.device import device_name
from tts_runner.serving.model import ChunkRequest, Model
from tts_runner.serving.store import ModelStore
from tts_runner.tools.setup import CHARS_PER_SECOND, point_at, text_sized
from tts_runner.tools.texts import AGREEMENT_TEXTS


@dataclass
class Row:
    device: str
    job: str
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
    capture_s: float = 0.0  # graph rows on CUDA: the capture at load (cold start), not in wall_s
    frame_steps: int = 0    # talker steps the engine ran, all calls together
    runaways: int = 0       # chunk attempts that reached their frame budget without ending


def long_job(chunks: int, minutes: float = 0.0) -> dict:
    """The podcast dialogue repeated to `chunks` segments (each one chunk of <= 120 characters), or
    to `minutes` of read speech when given."""
    _, spec = payload.load_job_spec("podcast")
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


def load(args: argparse.Namespace) -> tuple:
    """The composed config and the loaded model, once for every row: the batch path (each job its
    own batches, no scheduler), sized for the largest batch; with --scheduler, the scheduler with the
    default configuration (its rows auto, or the largest of --batch-sizes when given)."""
    if args.scheduler:
        sized = [f"batching.max_batch_size={max(args.batch_sizes)}"] if args.batch_sizes else []
    else:
        sized = ["scheduler.enabled=false",
                 f"batching.max_batch_size={max([*args.batch_sizes, 8 if args.agreement else 1, *(args.ops or [])])}"]
    overrides = [
        *sized,
        f"input.model={args.model}",
        f"sampling.max_new_tokens={args.max_new_tokens}",
        f"sampling.min_new_tokens={args.max_new_tokens if args.fixed_length else args.min_new_tokens}",
        *(["sink=file", f"sink.dir={args.out}"] if args.out else ["sink=base64", "sink.max_inline_bytes=1000000000000"]),
        "batching.min_seconds_per_char=0",
        f"batching.max_batch_chars={args.max_batch_chars}",
    ]
    if args.text_sized:
        overrides += text_sized()
    if args.batch_sizes and ("graph" in args.engines or args.scheduler):
        top = max(args.batch_sizes)  # powers of two up to the largest batch, so batches shrink as chunks end
        buckets = sorted({*(2**i for i in range(top.bit_length()) if 2**i <= top), *args.batch_sizes})
        if args.agreement:
            buckets = sorted({*buckets, 8})
        if args.ops:  # a bucket of each size counted
            buckets = sorted({*buckets, *args.ops})
        overrides += [f"runtime.graph.buckets=[{','.join(map(str, buckets))}]",
                      f"runtime.graph.max_len={args.max_new_tokens + 256}"]
        if not args.scheduler:
            overrides.append("runtime.engine=graph")
    if args.dtype:
        overrides.append(f"runtime.dtype={args.dtype}")
    point_at(args.model_dir, args.device)
    cfg = config_mod.load(overrides)
    started = time.perf_counter()
    store = build.model_store(cfg)
    model = store.get(args.model)
    rows = f", scheduler with {model.scheduler.max_rows} rows" if model.scheduler is not None else ""
    print(f"model {args.model} on {store.device} ({device_name(store.device)}, "
          f"{str(store.dtype).removeprefix('torch.')}, engine {model.engine}{rows}), loaded and warmed up in "
          f"{time.perf_counter() - started:.1f} s; "
          f"max_new_tokens {args.max_new_tokens}, "
          f"{'fixed' if args.fixed_length else 'text-sized' if args.text_sized else 'speech-like'} lengths", flush=True)
    if "graph" in args.engines or model.engine == "graph":
        if model.graph is None:
            print("graph engine unavailable (see the log); its rows run the fast loop", flush=True)
        elif model.graph.capture_seconds:
            print(f"graph capture: buckets {list(model.graph.buckets)}, {model.graph.max_len} positions, "
                  f"{model.graph.capture_seconds:.2f} s (part of cold start), static buffers "
                  f"{model.graph.buffer_bytes / 2**30:.2f} GiB", flush=True)
        else:
            print("graph engine on the CPU: the static frame runs eagerly (no capture)", flush=True)
    return cfg, store, model


def batched(job: Job, batch_size: int, name: str, frame_budget: bool = True) -> Job:
    """`job` run in batches of `batch_size`, named `name` (its file), with its runaway guard or none."""
    batching = replace(job.recipe.batching, max_batch_size=batch_size,
                       frame_budget=job.recipe.batching.frame_budget if frame_budget else None)
    return replace(job, name=name, recipe=replace(job.recipe, batching=batching))


def run(args: argparse.Namespace, cfg, store: ModelStore, model: Model, job: dict, label: str,
        runs: list[tuple[str, int]], done: list[Row], frame_budget: bool = True) -> list[Row]:
    """One row per (engine, batch size): `job` through every stage. Each row is also added to `done`
    and, with --json, written at once (a run cut short keeps the rows it made)."""
    spec = Edge(cfg).job(job, id="bench")
    print(f"\njob {label}: {len(job['segments'])} segments, {spec.text_length} characters", flush=True)
    rows: list[Row] = []
    for engine, batch_size in runs:
        if engine == "graph" and model.graph is None:
            continue
        this = batched(spec, batch_size, f"bench-{label}-{engine}-b{batch_size}", frame_budget)
        torch.manual_seed(args.seed)
        if store.device.startswith("cuda"):
            torch.cuda.synchronize()
            torch.cuda.reset_peak_memory_stats()
        scheduler = model.scheduler
        if scheduler is not None:  # the job alone on the scheduler, at most batch_size rows at once
            scheduler.rows, rounds = batch_size, scheduler.rounds
        started = time.perf_counter()
        try:
            with model.using(engine=engine) if scheduler is None else contextlib.nullcontext():
                response, result = run_job(this, model)
        finally:  # a failed job leaves the scheduler its full width for the rows after it
            if scheduler is not None:
                scheduler.rows = scheduler.max_rows
        wall = time.perf_counter() - started
        if scheduler is not None:
            result.stats.frame_steps = (scheduler.rounds - rounds) * scheduler.sync_every  # loop steps, not row-frames
        audio = result.duration_seconds
        base = rows[0].rtf if rows else audio / wall
        capture = model.graph.capture_seconds if engine == "graph" and model.graph else 0.0
        rows.append(Row(device_name(store.device), label, engine, batch_size, round(wall, 2), round(audio, 1),
                        round(audio / wall, 2), round((audio / wall) / base, 2), round(peak_memory_gib(store.device), 2),
                        round(100 * (wall - result.stats.model_seconds) / wall, 2),
                        round(1000 * result.stats.model_seconds / max(1, result.stats.frame_steps), 1),
                        result.stats.calls, result.metadata["num_chunks"], round(capture, 2), result.stats.frame_steps,
                        result.stats.runaways))
        print(format_row(rows[-1]), flush=True)
        done.append(rows[-1])
        if args.json:
            args.json.write_text(json.dumps([asdict(r) for r in done], indent=2))
        if args.out:
            print(f"  audio file: {response['audio_path']}", flush=True)
    return rows


@contextlib.contextmanager
def forced_runaway(model: Model, job_seed: int, index: int, max_new_tokens: int):
    """Fault injection through the model's public generate(): the first attempt at chunk `index`
    gets an end-of-speech floor at max_new_tokens, so its speech cannot end (as a runaway chunk's
    does not); later attempts (other seeds) are left alone."""
    target = chunk_seed(job_seed, index, 0)
    generate = model.generate

    def generate_with_a_runaway(requests, sampling, **kwargs):
        requests = [replace(r, floor=max_new_tokens) if r.seed == target else r for r in requests]
        return generate(requests, sampling, **kwargs)

    model.generate = generate_with_a_runaway
    try:
        yield
    finally:
        del model.generate  # the class's method again


def runaway(args: argparse.Namespace, cfg, store: ModelStore, model: Model, job: dict, label: str,
            done: list[Row]) -> None:
    """The job with one chunk whose speech never ends on its first attempt, with the runaway guard
    (its frame budget stops it, the other rows go on, it is retried with a fresh seed) and without
    (the batch steps to max_new_tokens and the babble stays in the audio), side by side."""
    engine, batch = args.engines[0], args.batch_sizes[0]
    job = {**job, "params": {**job.get("params", {}), "seed": args.seed}}
    index = len(job["segments"]) // 2
    print(f"\nforced runaway: chunk {index + 1} of the job's {len(job['segments'])}, first attempt", flush=True)
    for guard in ("guard", "no-guard"):
        with forced_runaway(model, args.seed, index, args.max_new_tokens):
            row, = run(args, cfg, store, model, job, f"{label}-forced-runaway-{guard}", [(engine, batch)], done,
                       frame_budget=guard == "guard")
        print(f"  {guard}: {row.wall_s} s for {row.audio_s} s of audio, {row.frame_steps} talker steps "
              f"({row.ms_per_step} ms each), {row.runaways} runaway(s), {row.model_calls} model calls", flush=True)


def spread(job: dict, n: int) -> dict:
    """`n` segments spread evenly over `job` (a sample of its chunks)."""
    segments = job["segments"]
    step = max(1, len(segments) // max(1, n))
    return {**job, "segments": segments[::step][:n]}


def extrapolate(sample: Row, rows: list[Row]) -> list[str]:
    """The seed's path for the whole job, extrapolated from the sample at its real-time factor, and
    each of the job's rows against it."""
    lines = []
    for row in rows:
        seed_wall = row.audio_s / sample.rtf
        lines.append(f"| {row.engine} | {row.batch_size} | {row.wall_s} | {row.audio_s} | {seed_wall:.0f} "
                     f"(extrapolated) | {seed_wall / row.wall_s:.1f}x |")
    return lines


def breakdown(model: Model, batch_sizes: list[int], frames: int) -> None:
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

    predictor, tokenizer = model.tts.model.talker.code_predictor, model.tts.model.speech_tokenizer
    speech_decode = tokenizer.decode
    predictor.generate = timed("predictor", predictor.generate)
    tokenizer.decode = timed("decode", speech_decode)
    sampling = Sampling(max_new_tokens=frames + 1, min_new_tokens=frames + 1)
    print(f"\nstock model call, {frames} frames per item: | batch | whole call s | code predictor s | "
          "speech-tokenizer decode s | talker and sampling s |")
    for size in batch_sizes:
        spent.update(predictor=0.0, decode=0.0)
        requests = [ChunkRequest(f"Sentence number {i} says something rather different from the others.",
                                 "ryan", "english", None) for i in range(size)]
        started = time.perf_counter()
        with model.using(engine="stock"):
            model.generate(requests, sampling)
        whole = time.perf_counter() - started
        print(f"| {size} | {whole:.2f} | {spent['predictor']:.2f} | {spent['decode']:.2f} | "
              f"{whole - spent['predictor'] - spent['decode']:.2f} |", flush=True)
    del predictor.generate  # back to the class's method
    tokenizer.decode = speech_decode


def greedy_codes(model: Model, engine: str, frames: int, batch: int) -> list[torch.Tensor]:
    """Greedy codes of `batch` texts, all held to `frames` frames, through one engine."""
    tts = model.tts
    texts = [AGREEMENT_TEXTS[i % len(AGREEMENT_TEXTS)] for i in range(batch)]
    speakers = [model.speakers[i % len(model.speakers)] for i in range(batch)]
    with torch.inference_mode(), model.using(engine=engine, floor=frames + 1):
        out, _ = tts.model.generate(
            input_ids=tts._tokenize_texts([tts._build_assistant_text(t) for t in texts]),
            instruct_ids=[None] * batch, languages=["english"] * batch, speakers=speakers,
            non_streaming_mode=True, do_sample=False, subtalker_dosample=False, repetition_penalty=1.05,
            max_new_tokens=frames + 1)
    return out


def agreement(model: Model, engines: list[str], frames: int, batch: int) -> list[dict]:
    """Greedy codes of each engine against stock's over the first `frames` frames: the share of
    codes equal, and the first frame at which each item differs (bf16 kernels may differ)."""
    reference = greedy_codes(model, "stock", frames, batch)
    print(f"\ngreedy agreement with stock, {batch} items x {frames} frames x 16 codes: "
          "| engine | codes equal % | first-codebook equal % | first differing frame per item |")
    found = []
    for engine in [e for e in engines if e != "stock"]:
        if engine == "graph" and model.graph is None:
            continue
        other = greedy_codes(model, engine, frames, batch)
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
        found.append({"engine": engine, "items": batch, "frames": frames,
                      "codes_equal_pct": round(100 * equal / max(1, 16 * total), 2),
                      "first_codebook_equal_pct": round(100 * first / max(1, total), 2),
                      "first_differing_frame": differs,
                      "dtype": str(model.tts.model.talker.codec_head.weight.dtype).removeprefix("torch.")})
        print(f"| {engine} | {found[-1]['codes_equal_pct']:.2f} | {found[-1]['first_codebook_equal_pct']:.2f} | "
              f"{', '.join('-' if d is None else str(d) for d in differs)} |", flush=True)
    return found


def ops_per_step(model: Model, engine: str, batch: int, short: int = 10, long: int = 30) -> dict:
    """What one frame step launches, through `engine` at `batch` rows: the operators called (the
    dispatcher's top-level aten calls; on CUDA also the kernels run), counted by torch.profiler over a
    greedy call of `long` frames less one of `short` frames, divided by the difference (so the
    prefill and each call's fixed costs cancel out)."""
    from torch.profiler import ProfilerActivity
    from torch.profiler import profile as torch_profile

    from tts_runner.tools.frame_bench import launched

    cuda = model.like.device.type == "cuda"
    activities = [ProfilerActivity.CPU, *([ProfilerActivity.CUDA] if cuda else [])]
    counts = []
    for frames in (short, long):
        greedy_codes(model, engine, frames, batch)  # warm: the first call of a shape allocates
        with torch_profile(activities=activities) as prof:
            greedy_codes(model, engine, frames, batch)
            if cuda:
                torch.cuda.synchronize()
        counts.append(launched(prof.events()))
    steps = long - short
    per_op = {name: (counts[1][0][name] - counts[0][0][name]) / steps for name in counts[1][0]}
    found = {"engine": engine, "batch": batch,
             "ops_per_step": round((counts[1][0].total() - counts[0][0].total()) / steps),
             "top_ops": {name: round(n, 1) for name, n in sorted(per_op.items(), key=lambda kv: -kv[1])[:12]}}
    if cuda:
        found["kernels_per_step"] = round((counts[1][1] - counts[0][1]) / steps)
    return found


def profile(model: Model, bucket: int, out: Path | None) -> None:
    """Where a graph frame's time goes at `bucket` rows: the captured frame's replay time, the CUDA
    kernels of one (eager) frame by GPU time, and their sum against the replay (the rest is gaps)."""
    graph = model.graph
    if graph is None or bucket not in {b for b, *_ in graph.graphs}:
        print(f"\nprofile: no captured graph for bucket {bucket}", flush=True)
        return
    from torch.profiler import ProfilerActivity
    from torch.profiler import profile as torch_profile

    from tts_runner.tools.frame_bench import per_frame

    frames = 20
    with torch.inference_mode():
        replay_ms = per_frame(graph, bucket, frames, cuda=True)  # scratch frames over the last call's buffers
        with torch_profile(activities=[ProfilerActivity.CPU, ProfilerActivity.CUDA]) as prof:
            graph.run_scratch(bucket, eager=True)
            torch.cuda.synchronize()
    events = prof.key_averages()
    kernel_us = sum(e.self_device_time_total for e in events if e.device_type == torch.autograd.DeviceType.CUDA)
    launches = sum(e.count for e in events if e.device_type == torch.autograd.DeviceType.CUDA)
    table = events.table(sort_by="self_cuda_time_total", row_limit=15, max_name_column_width=60)
    text = (f"graph frame at bucket {bucket}: replay {replay_ms:.2f} ms per frame (mean of {frames}); "
            f"one eager frame runs {launches} kernels taking {kernel_us / 1000:.2f} ms of GPU time, so "
            f"{100 * kernel_us / 1000 / replay_ms:.0f} % of the replay is kernel time and the rest gaps between kernels\n"
            f"{table}")
    print("\n" + text, flush=True)
    if out:
        out.write_text(text)


HEADER = ("| job | engine | batch | wall s | audio s | RTF (audio s / wall s) | speed-up | peak GiB | outside model % | "
          "ms per step | model calls | capture s |\n|---|---|---|---|---|---|---|---|---|---|---|---|")


def format_row(r: Row) -> str:
    return (f"| {r.job} | {r.engine} | {r.batch_size} | {r.wall_s} | {r.audio_s} | {r.rtf} | {r.speedup}x | "
            f"{r.peak_gib} | {r.outside_model_pct} | {r.ms_per_step} | {r.model_calls} | {r.capture_s} |")


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    if "--serve" in argv:  # many short requests at once: tts_runner/tools/serve_bench.py
        from tts_runner.tools import serve_bench

        return serve_bench.main([a for a in argv if a != "--serve"])
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", default="1.7B-CustomVoice")
    parser.add_argument("--model-dir", type=Path, help="QWEN_TTS_MODEL_DIR (default: the environment's)")
    parser.add_argument("--device", help="QWEN_TTS_DEVICE: auto, cpu, cuda:0")
    parser.add_argument("--chunks", type=int, default=64)
    parser.add_argument("--minutes", type=float, default=0.0,
                        help="instead of --chunks: a podcast this many minutes long when read aloud")
    parser.add_argument("--out", type=Path, help="write each run's audio file here (default: held inline)")
    parser.add_argument("--engines", type=lambda s: s.split(","), default=["stock"],
                        help="engines to compare: stock, fast, graph (speed-up is against the first row)")
    parser.add_argument("--batch-sizes", type=lambda s: [int(x) for x in s.split(",")], default=None,
                        help="batch sizes (default 1,8,16; with --scheduler: the scheduler's auto rows)")
    parser.add_argument("--scheduler", action="store_true",
                        help="run the job through the scheduler, the configuration a user gets (see above)")
    parser.add_argument("--max-new-tokens", type=int, default=40)
    parser.add_argument("--min-new-tokens", type=int, default=8)
    parser.add_argument("--max-batch-chars", type=int, default=100_000)
    parser.add_argument("--fixed-length", action="store_true", help="every chunk runs to max_new_tokens")
    parser.add_argument("--text-sized", action="store_true",
                        help="every chunk runs to a frame budget of 15 characters a second (model never ends)")
    parser.add_argument("--one-stream", type=int, default=0, metavar="N",
                        help="also: the job's first N lines at batch 1 through stock and every engine listed")
    parser.add_argument("--stock-sample", type=int, default=0, metavar="N",
                        help="also: the seed's path (stock, batch 1) on N chunks spread over the job")
    parser.add_argument("--runaway", action="store_true",
                        help="also: the job with one chunk whose speech never ends (first attempt), with and "
                             "without the runaway guard (first engine and batch size)")
    parser.add_argument("--profile", type=int, default=0, metavar="BUCKET",
                        help="also: time the captured graph frame at this bucket and list its kernels (CUDA)")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--build", action="store_true", help="build random-weight models into --model-dir first")
    parser.add_argument("--real-size", action="store_true", help="with --build: the 1.7B dimensions")
    parser.add_argument("--real-depth", action="store_true",
                        help="with --build: the tiny widths with the 1.7B layer counts (operators as the real model's)")
    parser.add_argument("--json", type=Path, help="also write the rows here")
    parser.add_argument("--agreement", type=int, default=0, metavar="FRAMES",
                        help="also compare each engine's greedy codes with stock's over this many frames")
    parser.add_argument("--dtype", choices=["float32", "bfloat16", "float16"],
                        help="the models' dtype (runtime.dtype; default: auto, float32 on the CPU)")
    parser.add_argument("--ops", type=lambda s: [int(x) for x in s.split(",")], default=None, metavar="B,B",
                        help="also count the operators (and CUDA kernels) one frame step launches, for each engine "
                             "but stock at these batch sizes (e.g. 1,64); written as FILE-ops.json")
    parser.add_argument("--ops-engines", type=lambda s: s.split(","), default=None,
                        help="the engines --ops counts (default: --engines)")
    parser.add_argument("--breakdown", action="store_true",
                        help="also time the parts of one stock model call at each batch size")
    args = parser.parse_args(argv)
    if args.scheduler and (args.stock_sample or args.runaway):
        parser.error("--stock-sample and --runaway run the batch path (one job's own batches): leave --scheduler out")
    if args.batch_sizes is None and not args.scheduler:
        args.batch_sizes = [1, 8, 16]
    if args.build:
        from tts_runner.tools.tiny_model import VARIANTS, TinySizes, build_all, real_depth

        if not args.model_dir:
            parser.error("--build needs --model-dir")
        folder = [f for f in VARIANTS if args.model.split("-")[0] in f and args.model.split("-")[1] in f]
        sizes = TinySizes.real_1_7b() if args.real_size else real_depth() if args.real_depth else TinySizes()
        started = time.perf_counter()
        # Fixed and text-sized lengths never stop early: skip the stop-bias calibration (a generation).
        build_all(args.model_dir, folder, sizes, stop_bias=0.0 if args.fixed_length or args.text_sized else None,
                  dtype=torch.bfloat16 if args.real_size else torch.float32)
        print(f"built {folder[0]} ({'real' if args.real_size else 'real-depth' if args.real_depth else 'tiny'} size) in {time.perf_counter() - started:.1f} s",
              flush=True)
    cfg, store, model = load(args)
    job = long_job(args.chunks, args.minutes)
    label = f"podcast-{args.minutes:g}min" if args.minutes else f"{args.chunks}-chunks"
    rows: list[Row] = []
    if args.scheduler and model.scheduler is None:
        print(f"the {model.engine} engine has no scheduler: --scheduler needs fast or graph", file=sys.stderr)
        return 1
    # Before any job: once the scheduler has rows, it holds the graph engine's buffers (a library call runs fast)
    found = agreement(model, args.engines, args.agreement, 8) if args.agreement else []
    if args.json and found:
        args.json.with_name(args.json.stem + "-agreement.json").write_text(json.dumps(found, indent=2))
    if args.ops:
        counted = [ops_per_step(model, e, b) for e in args.ops_engines or args.engines if e != "stock" for b in args.ops
                   if e != "graph" or model.graph is not None]
        print("\nper frame step | engine | batch | operators | CUDA kernels |\n|---|---|---|---|")
        for c in counted:
            print(f"| {c['engine']} | {c['batch']} | {c['ops_per_step']} | {c.get('kernels_per_step', '-')} |", flush=True)
        if args.json:
            args.json.with_name(args.json.stem + "-ops.json").write_text(json.dumps(counted, indent=2))
    if args.scheduler:  # the model's own engine, through its scheduler
        label, runs = f"{label}-scheduler", [(model.engine, b) for b in args.batch_sizes or [model.scheduler.max_rows]]
        one_stream = [(model.engine, 1)]
    else:
        runs = [(e, b) for e in args.engines for b in args.batch_sizes]
        one_stream = [(e, 1) for e in ["stock", *(e for e in args.engines if e != "stock")]]  # always against stock
    if args.one_stream:
        one = {**job, "segments": job["segments"][:args.one_stream]}
        run(args, cfg, store, model, one, "one-stream", one_stream, rows)
    main_rows = run(args, cfg, store, model, job, label, runs, rows)
    if args.runaway:
        runaway(args, cfg, store, model, job, label, rows)
    if args.stock_sample:
        sample = run(args, cfg, store, model, spread(job, args.stock_sample), "stock-sequential-sample",
                     [("stock", 1)], rows)
        print(f"\nthe seed's path (stock, one chunk at a time) for the whole {label} job, extrapolated from "
              f"{sample[0].chunks} chunks at RTF {sample[0].rtf}:\n| engine | batch | wall s | audio s | seed's path s "
              f"| speed-up over it |\n|---|---|---|---|---|---|")
        print("\n".join(extrapolate(sample[0], main_rows)), flush=True)
    if args.breakdown:
        breakdown(model, args.batch_sizes or [1, 8, 16], args.max_new_tokens - 1)
    if args.profile:
        profile(model, args.profile, args.json.with_name(args.json.stem + "-profile.txt") if args.json else None)
    print()
    print(HEADER)
    for row in rows:
        print(format_row(row))
    return 0


if __name__ == "__main__":
    code = main()
    sys.stdout.flush()
    sys.stderr.flush()
    os._exit(code)  # skip interpreter teardown: with CUDA graphs and a large model it has hung for ~40 s
