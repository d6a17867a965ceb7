"""Sweep benchmark: one sweep's runs sharing the model's rows, against the same runs one after another.

    python -m tts_runner.tools.sweep_bench --model-dir /tmp/models --device cpu --settings 8

Runs the command line twice, as a user would, in one go: `python -m tts_runner +job=JOB -m
sampling.temperature=<N values>` with `multirun.batched=true` (the runs hand their chunks to the
scheduler together) and `multirun.batched=false` (each run waits for the last), and prints the wall
time of each whole sweep (process start, model load and report included), the time its runs spent
generating (batched: first start to last end; one after another: their sum), and the ratios; and,
for what "one batched job" costs, the generation time of one job whose segments are the same text
as many times as the sweep has settings.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[2]


def sweep(job: str, values: list[str], batched: bool, env: dict, folder: Path) -> tuple[float, float]:
    """The whole command's wall seconds, and the seconds its runs spent generating (batched: from the
    first run's start to the last run's end; one after another: their sum)."""
    started = time.perf_counter()
    done = subprocess.run([sys.executable, "-m", "tts_runner", f"+job={job}", "-m",
                           f"sampling.temperature={','.join(values)}", f"multirun.batched={str(batched).lower()}",
                           "sampling.seed=3", f"hydra.sweep.dir={folder}"],
                          cwd=REPO, env=env, capture_output=True, text=True, timeout=1800)
    if done.returncode != 0:
        raise RuntimeError(done.stderr[-2000:])
    wall = time.perf_counter() - started
    spans = []
    for result in folder.glob("*/result.json"):
        end = result.stat().st_mtime
        spans.append((end - json.loads(result.read_text())["metadata"]["generation_time_seconds"], end))
    generating = (max(e for _, e in spans) - min(s for s, _ in spans)) if batched else sum(e - s for s, e in spans)
    return wall, generating


def one_job(job: str, copies: int, env: dict, folder: Path) -> tuple[float, float]:
    """The same text `copies` times as the segments of one job (one batch of as many chunks): its
    wall seconds and its generation seconds."""
    import yaml

    from tts_runner import payload as payload_mod

    _, spec = payload_mod.load_job_spec(job)
    text = spec.get("text") or spec["segments"][0]["text"]
    path = folder / "one-job.yaml"
    folder.mkdir(parents=True, exist_ok=True)
    path.write_text(yaml.safe_dump({"segments": [{"text": text, "voice": spec.get("voice", "male_1")}] * copies,
                                    "output_format": "wav", "params": {"seed": 3}}))
    started = time.perf_counter()
    done = subprocess.run([sys.executable, "-m", "tts_runner", f"+job={path}", f"hydra.run.dir={folder / 'run'}"],
                          cwd=REPO, env=env, capture_output=True, text=True, timeout=1800)
    if done.returncode != 0:
        raise RuntimeError(done.stderr[-2000:])
    wall = time.perf_counter() - started
    return wall, json.loads((folder / "run" / "result.json").read_text())["metadata"]["generation_time_seconds"]


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model-dir", type=Path, help="QWEN_TTS_MODEL_DIR (default: the environment's)")
    parser.add_argument("--device", help="QWEN_TTS_DEVICE: auto, cpu, cuda:0")
    parser.add_argument("--job", default="hello")
    parser.add_argument("--settings", type=int, default=8, help="temperatures in the sweep")
    parser.add_argument("--json", type=Path)
    args = parser.parse_args(argv)
    env = {**os.environ, "TQDM_DISABLE": "1"}
    if args.model_dir:
        env["QWEN_TTS_MODEL_DIR"] = str(args.model_dir)
    if args.device:
        env["QWEN_TTS_DEVICE"] = args.device
    values = [f"{0.2 + 0.1 * i:.1f}" for i in range(args.settings)]
    with tempfile.TemporaryDirectory() as tmp:
        shared, shared_gen = sweep(args.job, values, True, env, Path(tmp, "batched"))
        serial, serial_gen = sweep(args.job, values, False, env, Path(tmp, "serial"))
        single, single_gen = one_job(args.job, args.settings, env, Path(tmp, "one"))
    print(f"sweep of {args.settings} settings over +job={args.job}:")
    print(f"  whole command (start, model load, runs, report): batched {shared:.2f} s, one after another "
          f"{serial:.2f} s: {serial / shared:.2f}x")
    print(f"  generating: batched {shared_gen:.2f} s, one after another {serial_gen:.2f} s: "
          f"{serial_gen / shared_gen:.2f}x; one job of the same {args.settings} chunks {single_gen:.2f} s "
          f"(the batched sweep costs {shared_gen / single_gen:.2f} of it)")
    if args.json:
        args.json.write_text(json.dumps({"job": args.job, "settings": args.settings, "batched_s": round(shared, 3),
                                         "serial_s": round(serial, 3), "ratio": round(serial / shared, 2),
                                         "batched_generating_s": round(shared_gen, 3),
                                         "serial_generating_s": round(serial_gen, 3),
                                         "generating_ratio": round(serial_gen / shared_gen, 2),
                                         "one_job_generating_s": round(single_gen, 3),
                                         "batched_over_one_job": round(shared_gen / single_gen, 2)}, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
