"""One frame of the graph engine, timed at several batch buckets: the figure two revisions compare.

    python tts_runner/tools/frame_bench.py --model-dir /tmp/models --device cuda:0 --buckets 1,64,128,256 \
        [--compile] [--label new] [--json rows.json]

Loads the model through the project's own path (conf/ composed, the model store, the graph engine
captured at load on CUDA), then for each bucket: the captured frame replayed `--frames` times from
position 0 (CUDA events; on the CPU the frame runs eagerly, timed by the clock) as ms per step; the
kernels (CUDA) or top-level operators (CPU) one eager frame runs; and, once, the capture's seconds,
the static buffers' GiB and the peak GiB. A step here is the frame alone: no host check, prefill or
speech decode (bench.py's rows count those too).

It runs as a file, so that another revision's package can be put first on PYTHONPATH (the revision
before the lean frame: `git archive REV tts_runner conf jobs | tar -x -C .old`, then
`PYTHONPATH=.old python tts_runner/tools/frame_bench.py ...`): it uses only what both revisions have
(edge.config.load, edge.build.model_store, GraphEngine.run_scratch, capture_seconds, buffer_bytes),
and config keys the older one lacks are left out. `--compile` sets runtime.compile (where it exists).
"""

from __future__ import annotations

import argparse
import collections
import json
import os
import sys
import time
from pathlib import Path


def overrides(buckets: list[int], max_len: int, dtype: str | None, compiled: bool) -> list[str]:
    """The graph engine alone (no scheduler, no warm-up), captured at `buckets`; keys this revision's
    conf/ lacks are dropped (runtime.graph.self_check, runtime.compile came after the lean frame's base)."""
    from tts_runner.edge import config as config_mod

    known = config_mod.load([])
    wanted = ["scheduler.enabled=false", f"batching.max_batch_size={max(buckets)}", "runtime.engine=graph",
              f"runtime.graph.buckets=[{','.join(map(str, buckets))}]", f"runtime.graph.max_len={max_len}",
              "runtime.warmup=false"]
    if "self_check" in known.runtime.graph:
        wanted.append("runtime.graph.self_check=false")  # a timing needs no second opinion
    if dtype:
        wanted.append(f"runtime.dtype={dtype}")
    if compiled:
        if "compile" not in known.runtime:
            raise SystemExit("this revision has no runtime.compile")
        wanted.append("runtime.compile=true")
    return wanted


def per_frame(graph, bucket: int, frames: int, cuda: bool) -> float:
    """Milliseconds per frame of `bucket`, over `frames` frames from position 0 (after 3 to warm)."""
    import torch

    graph.run_scratch(bucket, 3)
    if not cuda:
        started = time.perf_counter()
        graph.run_scratch(bucket, frames)
        return 1000 * (time.perf_counter() - started) / frames
    torch.cuda.synchronize()
    start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
    start.record()
    graph.run_scratch(bucket, frames)
    end.record()
    torch.cuda.synchronize()
    return start.elapsed_time(end) / frames


def launched(events) -> tuple[collections.Counter, int]:
    """What a profiler's events launched: the dispatcher's top-level aten operators by name, and the
    CUDA kernels run (0 on the CPU)."""
    import torch

    ops = collections.Counter(e.name for e in events if e.name.startswith("aten::") and e.cpu_parent is None)
    return ops, sum(1 for e in events if e.device_type == torch.autograd.DeviceType.CUDA)


def launches(graph, bucket: int, cuda: bool) -> int:
    """The CUDA kernels (on the CPU: the top-level aten operators) one eager frame of `bucket` runs."""
    import torch
    from torch.profiler import ProfilerActivity, profile

    activities = [ProfilerActivity.CPU, *([ProfilerActivity.CUDA] if cuda else [])]
    with profile(activities=activities) as prof:
        graph.run_scratch(bucket, 1, eager=True)
        if cuda:
            torch.cuda.synchronize()
    ops, kernels = launched(prof.events())
    return kernels if cuda else ops.total()


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", default="1.7B-CustomVoice")
    parser.add_argument("--model-dir", type=Path, required=True)
    parser.add_argument("--device", default="cuda:0")
    parser.add_argument("--buckets", type=lambda s: [int(x) for x in s.split(",")], default=[1, 64, 128])
    parser.add_argument("--frames", type=int, default=50, help="frames timed per bucket")
    parser.add_argument("--max-len", type=int, default=256, help="runtime.graph.max_len (the frames run at length <= 128)")
    parser.add_argument("--dtype", choices=["float32", "bfloat16", "float16"])
    parser.add_argument("--compile", action="store_true", help="runtime.compile=true (torch.compile inside the graphs)")
    parser.add_argument("--label", default="", help="names the revision in each row")
    parser.add_argument("--json", type=Path, help="write the rows here")
    args = parser.parse_args(argv)
    os.environ["QWEN_TTS_MODEL_DIR"], os.environ["QWEN_TTS_DEVICE"] = str(args.model_dir), args.device

    import torch

    from tts_runner.edge import build
    from tts_runner.edge import config as config_mod

    cfg = config_mod.load(overrides(args.buckets, args.max_len, args.dtype, args.compile))
    started = time.perf_counter()
    store = build.model_store(cfg)
    model = store.get(args.model)
    loaded = time.perf_counter() - started
    graph, cuda = model.graph, str(store.device).startswith("cuda")
    if graph is None:
        print("the graph engine did not start (see the log)", file=sys.stderr)
        return 1
    if graph.state is None:  # on the CPU nothing is captured: the buffers come with the first frame
        graph.allocate(model.like)
    name = torch.cuda.get_device_name(0) if cuda else "cpu"
    rows = []
    with torch.inference_mode():
        for bucket in args.buckets:
            ms = per_frame(graph, bucket, args.frames, cuda)
            rows.append({"device": name, "label": args.label, "compile": args.compile, "bucket": bucket,
                         "ms_per_step": round(ms, 3), "rtf_at_bucket": round(bucket * 80 / ms, 1),
                         ("kernels_per_step" if cuda else "ops_per_step"): launches(graph, bucket, cuda)})
    peak = torch.cuda.max_memory_allocated() / 2**30 if cuda else 0.0
    for r in rows:
        r.update(capture_s=round(graph.capture_seconds, 2), graphs=len(graph.graphs), load_s=round(loaded, 2),
                 buffers_gib=round(graph.buffer_bytes / 2**30, 2), peak_gib=round(peak, 2))
        print(json.dumps(r), flush=True)
    if args.json:
        args.json.write_text(json.dumps(rows, indent=2))
    return 0


if __name__ == "__main__":
    code = main()
    sys.stdout.flush()
    os._exit(code)  # as bench.py: teardown with captured graphs has hung
