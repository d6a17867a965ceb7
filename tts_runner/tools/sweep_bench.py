"""Sweep benchmark: a batched sweep against one batched job of the same chunks, and against its runs
one after another.

    python -m tts_runner.tools.sweep_bench --model-dir /tmp/models --device cpu --settings 8

A sweep of N temperatures over one job spec (`sampling.seed` fixed), measured two ways in one go:

1. **In one process, on one loaded model** (what the sweep's runs cost once Hydra has launched them),
   three things, in turns, `--repeats` times each (the medians are printed):
   - *one batched job*: the sweep's own chunk requests (the same texts, voices, seeds and each run's
     settings, so the same frames) handed to the model's scheduler together as one job, and decoded;
   - *the batched sweep*: each run handed to `tts_runner.sweeps.runs` exactly as `python -m tts_runner -m`
     hands it (`multirun.batched=true`), all started together, each planning, generating, assembling,
     encoding and writing its files; timed from the start to the last run's end;
   - *one after another*: the same runs, each waiting for the last (`multirun.batched=false`).
2. **The whole command line** (`--cli`, the default): `python -m tts_runner +job=JOB -m
   sampling.temperature=...` with `multirun.batched=true`, then `false`: process start, model load,
   Hydra's launches, the runs and the report with its scores, as a user runs it.

A one-job reference made of *other* chunks (a job whose segments repeat the text, say) would not do:
each chunk's seed and temperature decide how long it runs, and a batch lasts as long as its longest row.
"""

from __future__ import annotations

import argparse
import contextlib
import io
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from concurrent.futures import FIRST_COMPLETED, wait
from pathlib import Path

from tts_runner.tools.setup import point_at

REPO = Path(__file__).resolve().parents[2]


def settings(count: int) -> list[str]:
    return [f"{0.2 + 0.1 * i:.1f}" for i in range(count)]


def run_configs(job: str, values: list[str], seed: int) -> list:
    """The composed config and the job of each run of the sweep, as the command line makes them."""
    from tts_runner.edge import config as config_mod
    from tts_runner.edge.cli import resolve_job

    runs = []
    for value in values:
        overrides = [f"+job={job}", f"sampling.temperature={value}", f"sampling.seed={seed}"]
        cfg = config_mod.load(overrides, config_name="cli")
        runs.append((cfg, resolve_job(cfg, overrides)))
    return runs


class InProcess:
    """The three ways of running the sweep's work on one loaded model."""

    def __init__(self, runs: list, folder: Path):
        from tts_runner.edge import build
        from tts_runner.edge.redact import protect

        cfg, job = runs[0]
        self.model = build.model_store(cfg).get(job.model)
        if self.model.scheduler is None:
            raise SystemExit(f"engine {self.model.engine!r} runs no scheduler: batched sweeps need fast or graph")
        self.runs, self.folder = runs, folder
        self.secrets = protect()
        self.count = 0

    def one_job(self) -> tuple[float, float]:
        """Seconds for the sweep's chunks as one job (handed over together, generated, decoded as they
        end), and the seconds of audio they make (before trimming)."""
        from tts_runner.audio.codec import SAMPLE_RATE
        from tts_runner.job.plan import plan, seeded
        from tts_runner.serving.ticket import Ticket

        started = time.perf_counter()
        items = []
        for _, job in self.runs:
            for chunk in plan(job, self.model).chunks:
                request = seeded(chunk, job.sampling.seed)
                items.append((request, self.model.row_sampling(request, job.sampling), None))
        scheduler = self.model.scheduler
        waiting = dict(zip(scheduler.submit(Ticket("one-job"), items), items, strict=True))
        samples = 0
        while waiting:  # decoded as they end, as a job's thread does (tts_runner/job/generate.py)
            done, _ = wait(waiting, return_when=FIRST_COMPLETED)
            wavs = scheduler.decode([(waiting.pop(future)[0], future.result()) for future in done])
            samples += sum(w.size for w in wavs)
        return time.perf_counter() - started, samples / SAMPLE_RATE

    def sweep(self, batched: bool) -> float:
        """Seconds for the sweep's runs, started together (batched) or one after another, each run
        whole: plan, generate, assemble, encode, write its audio and result.json."""
        from dataclasses import replace

        from tts_runner.edge.cli import run
        from tts_runner.sweeps import runs as sweeps

        self.count += 1
        started = time.perf_counter()
        ok = True
        with contextlib.redirect_stdout(io.StringIO()):  # each run says where it wrote
            for i, (cfg, job) in enumerate(self.runs):
                out = self.folder / f"{self.count}-{'batched' if batched else 'serial'}" / str(i)
                out.mkdir(parents=True)
                job = replace(job, recipe=replace(job.recipe, sink=replace(job.recipe.sink, dir=out, keep=out)))
                if batched:
                    sweeps.submit(run, job, cfg, self.model, out, self.secrets, scheduler=self.model.scheduler)
                else:
                    ok &= run(job, cfg, self.model, out, self.secrets)
            failed = sweeps.wait() if batched else int(not ok)
        if failed:
            raise RuntimeError(f"{failed} run(s) of the sweep failed")
        return time.perf_counter() - started


def cli_sweep(job: str, values: list[str], batched: bool, env: dict, folder: Path) -> float:
    """The whole command's wall seconds."""
    started = time.perf_counter()
    done = subprocess.run([sys.executable, "-m", "tts_runner", f"+job={job}", "-m",
                           f"sampling.temperature={','.join(values)}", f"multirun.batched={str(batched).lower()}",
                           "sampling.seed=3", f"hydra.sweep.dir={folder}"],
                          cwd=REPO, env=env, capture_output=True, text=True, timeout=1800)
    if done.returncode != 0:
        raise RuntimeError(done.stderr[-2000:])
    return time.perf_counter() - started


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model-dir", type=Path, help="QWEN_TTS_MODEL_DIR (default: the environment's)")
    parser.add_argument("--device", help="QWEN_TTS_DEVICE: auto, cpu, cuda:0")
    parser.add_argument("--job", default="hello")
    parser.add_argument("--settings", type=int, default=8, help="temperatures in the sweep")
    parser.add_argument("--repeats", type=int, default=3, help="turns of the in-process measures (medians)")
    parser.add_argument("--cli", action=argparse.BooleanOptionalAction, default=True,
                        help="also time the whole command line both ways")
    parser.add_argument("--json", type=Path)
    args = parser.parse_args(argv)
    point_at(args.model_dir, args.device)
    values = settings(args.settings)
    times: dict[str, list[float]] = {"one_job": [], "batched": [], "serial": []}
    with tempfile.TemporaryDirectory() as tmp:
        bench = InProcess(run_configs(args.job, values, 3), Path(tmp))
        for turn in range(args.repeats):
            for what in ("one_job", "batched", "serial")[turn % 3:] + ("one_job", "batched", "serial")[:turn % 3]:
                if what == "one_job":
                    seconds, audio_seconds = bench.one_job()
                else:
                    seconds = bench.sweep(what == "batched")
                times[what].append(seconds)
        whole = {}
        env = {**os.environ, "TQDM_DISABLE": "1"}
        if args.cli:
            for batched in (True, False):
                whole[batched] = cli_sweep(args.job, values, batched, env, Path(tmp, f"cli-{batched}"))
    one, shared, serial = (statistics.median(times[k]) for k in ("one_job", "batched", "serial"))
    print(f"sweep of {args.settings} temperatures over +job={args.job} ({bench.model.name}, engine "
          f"{bench.model.engine}, {args.repeats} turn{'s' * (args.repeats != 1)}, medians; {audio_seconds:.1f} s of audio in all):")
    print(f"  one batched job of the sweep's chunks  {one:6.2f} s")
    print(f"  the batched sweep                      {shared:6.2f} s   ({shared / one:.2f}x the one job)")
    print(f"  its runs one after another             {serial:6.2f} s   ({serial / one:.2f}x the one job, "
          f"{serial / shared:.2f}x the batched sweep)")
    if whole:
        print(f"  whole command (start, model load, launches, runs, report): batched {whole[True]:.2f} s, "
              f"one after another {whole[False]:.2f} s: {whole[False] / whole[True]:.2f}x")
    if args.json:
        result = {"job": args.job, "settings": args.settings, "model": bench.model.name,
                  "engine": bench.model.engine, "repeats": args.repeats, "audio_seconds": round(audio_seconds, 2),
                  "one_job_s": round(one, 3), "batched_sweep_s": round(shared, 3), "serial_sweep_s": round(serial, 3),
                  "batched_over_one_job": round(shared / one, 2), "serial_over_one_job": round(serial / one, 2),
                  "serial_over_batched": round(serial / shared, 2),
                  "all_turns_s": {k: [round(v, 3) for v in vs] for k, vs in times.items()}}
        if whole:
            result.update({"cli_batched_s": round(whole[True], 2), "cli_serial_s": round(whole[False], 2),
                           "cli_ratio": round(whole[False] / whole[True], 2)})
        args.json.write_text(json.dumps(result, indent=2) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
