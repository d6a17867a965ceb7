"""Soak: hours of mixed load on one worker process, and what it holds over time.

    python -m tts_runner.tools.soak --minutes 30 --concurrency 16 --target http --model-dir /tmp/models --device cpu

Starts the target on 127.0.0.1 as a child process, as a user runs it: `--target queue` is the queue
worker (handler.py --rp_serve_api, RunPod's local API, its handler a generator so jobs may stream),
`--target http` the HTTP server (python -m tts_runner.serve). `--concurrency` clients then send it a
seeded mix (tts_runner/tools/soak_work.py: short and long texts, segments with several voices, every
format, streams, clones inline and saved, jobs abandoned part-way, a share of hostile payloads) and,
every `--burst-every` jobs, a burst of long jobs past the queue limit (`--queue-limit` chunks). Every
answer is checked with other code (ffmpeg, `wave`): it decodes, to the duration its metadata says; a
hostile payload's error names its field; a good job's error is only "busy" or its time limit.

First `--warmup` jobs (a burst among them), then `--minutes` of load. Every `--sample-every` jobs the
child's RSS, threads and open file descriptors are read from /proc/<pid> (not from the worker), with
the worker's own report of its rows, queue and clone-prompt cache (the server's GET /stats; the queue
worker's "Vitals:" log line). Idle samples are taken after the warm-up and at the end, once the
worker reports nothing running and the clients' connections are closed.

The goals, judged at the end (exit 1 when one is missed; `--json` and `--plot` keep the figures):
0 jobs lost (no answer within `--job-timeout`, a connection refused or cut), 0 bad answers, 0 worker
deaths; threads and file descriptors when idle back to the warm-up's; RSS growth < 50 MB per 1,000
jobs and none in the last half (judged from 500 jobs on); p95 latency of short jobs in the last tenth
within 1.25x the first tenth's (judged from 20 short jobs a tenth on).
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import subprocess
import sys
import tempfile
import threading
import time
from collections import Counter, defaultdict
from dataclasses import asdict, dataclass
from pathlib import Path

from tts_runner.server.local import free_port
from tts_runner.serving import vitals
from tts_runner.tools.serve_bench import percentile, sentences
from tts_runner.tools.soak_work import Failed, HttpTarget, Mix, QueueTarget, Work

REPO = Path(__file__).resolve().parents[2]
RSS_MB_PER_1000_JOBS = 50.0
RSS_LAST_HALF_MB = 16.0   # "none in the last half": its highest sample within this of the first half's highest
P95_RATIO = 1.25
JUDGE_RSS_FROM_JOBS = 500
JUDGE_P95_FROM = 20       # short jobs in each tenth


@dataclass
class Done:
    index: int
    kind: str
    outcome: str
    sent: float     # seconds since the run began
    latency: float
    phase: str      # warmup or load
    detail: str = ""


@dataclass
class Goal:
    name: str
    value: float | str
    limit: str
    met: bool | None  # None: not judged (too few jobs), and why is in `limit`


# ---- the child process ---------------------------------------------------------------------------------
def child_env(model_dir: Path | None, device: str | None, voices: Path, overrides: list[str]) -> dict:
    env = {k: v for k, v in os.environ.items() if not k.startswith("S3_")}  # answers inline, never uploaded
    env.update(TTS_RUNNER_VOICES_DIR=str(voices), TTS_RUNNER_STREAMING="true", PYTHONUNBUFFERED="1",
               TTS_RUNNER_OVERRIDES=" ".join(overrides))
    if model_dir:
        env["QWEN_TTS_MODEL_DIR"] = str(model_dir)
    if device:
        env["QWEN_TTS_DEVICE"] = device
    return env


def start(target: str, env: dict, log: Path, timeout: float = 300):
    """The target on a free 127.0.0.1 port, ready (its model loaded); returns (process, url)."""
    import requests

    port = free_port()
    if target == "queue":
        args = [sys.executable, "handler.py", "--rp_serve_api", "--rp_api_host", "127.0.0.1", "--rp_api_port", str(port)]
    else:
        args = [sys.executable, "-m", "tts_runner.serve", "--host", "127.0.0.1", "--port", str(port)]
    with open(log, "wb") as out:
        proc = subprocess.Popen(args, cwd=REPO, env=env, stdout=out, stderr=subprocess.STDOUT)
    url, deadline = f"http://127.0.0.1:{port}", time.monotonic() + timeout
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise RuntimeError(f"the {target} target exited with {proc.returncode}: {log.read_text()[-2000:]}")
        with contextlib.suppress(requests.RequestException):
            if target == "http":  # /ping: 204 while the model loads, 200 once ready
                if requests.get(f"{url}/ping", timeout=5).status_code == 200:
                    return proc, url
            elif "Vitals: " in log.read_text(errors="replace"):  # the queue worker listens once loaded
                requests.post(f"{url}/status/none", timeout=5)
                return proc, url
        time.sleep(0.5)
    proc.kill()
    raise RuntimeError(f"the {target} target was not ready in {timeout:g} s: {log.read_text()[-2000:]}")


def reported(target: str, url: str, log: Path) -> dict:
    """The worker's own report: GET /stats, or the queue worker's last "Vitals:" log line."""
    if target == "http":
        import requests

        return requests.get(f"{url}/stats", timeout=30).json()
    with open(log, "rb") as f:
        f.seek(max(0, f.seek(0, 2) - 262_144))
        lines = [ln for ln in f.read().decode(errors="replace").splitlines() if "Vitals: " in ln]
    return json.loads(lines[-1].split("Vitals: ", 1)[1]) if lines else {}


def sample(proc, target: str, url: str, log: Path, jobs: int, began: float, files: bool = False) -> dict:
    """The child's RSS, threads and open files (from /proc, read before the /stats request this
    makes is open), then the worker's own report."""
    process = vitals.of_process(proc.pid)
    if files:
        process["open_files"] = vitals.open_files(proc.pid)
    own = reported(target, url, log)
    models = own.get("models", {})
    return {**process, "python_threads": own.get("python_threads"), "jobs": jobs, "t": round(time.monotonic() - began, 1),
            "jobs_running": own.get("jobs_running"),
            "rows": sum(m["rows"] for m in models.values()), "queued": sum(m["queued"] for m in models.values()),
            "clone_prompts": sum(m["clone_prompts"] for m in models.values()),
            "clone_prompt_bytes": sum(m["clone_prompt_bytes"] for m in models.values()),
            "stream_buffered_bytes": own.get("streams", {}).get("buffered_bytes")}


def idle_sample(proc, target: str, url: str, log: Path, jobs: int, began: float, timeout: float = 300) -> dict:
    """A sample once the worker reports no job running and no rows or queue (abandoned jobs end first)
    and its threads and open files have settled (the same in two samples in a row: a connection the
    clients closed a moment ago is let go)."""
    deadline, last = time.monotonic() + timeout, None
    while True:
        time.sleep(1.5)  # the queue worker's report is a second old at most
        now = sample(proc, target, url, log, jobs, began, files=True)
        now["idle"] = now["jobs_running"] == 0 and now["rows"] == 0 and now["queued"] == 0
        settled = last is not None and (last["threads"], last["fds"]) == (now["threads"], now["fds"])
        if (now["idle"] and settled) or time.monotonic() > deadline:
            return now
        last = now if now["idle"] else None


# ---- the load ---------------------------------------------------------------------------------------------
class Load:
    def __init__(self, target, mix: Mix, concurrency: int, job_timeout: float, began: float):
        self.target, self.mix, self.concurrency, self.job_timeout = target, mix, concurrency, job_timeout
        self.began, self.lock = began, threading.Lock()
        self.done: list[Done] = []
        self.changed = threading.Condition(self.lock)

    def one(self, session, work: Work, phase: str, burst: bool = False) -> None:
        sent = time.monotonic()
        detail = ""
        try:
            outcome = (self.target.burst if burst else self.target.send)(session, work, self.job_timeout)
        except Failed as exc:
            outcome, detail = "bad", str(exc)
        except Exception as exc:  # noqa: BLE001 - no answer in time, a connection refused or cut
            outcome, detail = "lost", f"{type(exc).__name__}: {str(exc)[:300]}"
        with self.changed:
            self.done.append(Done(work.index, "burst" if burst else work.kind, outcome, round(sent - self.began, 3),
                                  round(time.monotonic() - sent, 3), phase, detail))
            self.changed.notify_all()

    def run(self, phase: str, until, burst_every: int, burst_size: int, first_burst: int) -> None:
        """`concurrency` clients send jobs until `until(jobs sent in this phase)` is true; a burst of
        `burst_size` long jobs goes at once after `first_burst` jobs and every `burst_every` after it."""
        sent = [0]
        next_burst = [first_burst]
        bursts: list[threading.Thread] = []

        def client() -> None:
            with contextlib.closing(self.target.session()) as session:
                while True:
                    with self.lock:
                        if until(sent[0]):
                            return
                        sent[0] += 1
                        work = self.mix.next()
                        fire = burst_every and sent[0] >= next_burst[0]
                        if fire:
                            next_burst[0] += burst_every
                            burst = [self.mix.next("burst") for _ in range(burst_size)]
                    if fire:
                        bursts.extend(self._burst(burst, phase))
                    self.one(session, work, phase)

        clients = [threading.Thread(target=client, name=f"soak-client-{i}") for i in range(self.concurrency)]
        for t in clients:
            t.start()
        for t in clients:
            t.join()
        for t in bursts:
            t.join()

    def _burst(self, works: list[Work], phase: str) -> list[threading.Thread]:
        def send(work: Work) -> None:
            with contextlib.closing(self.target.session()) as session:
                self.one(session, work, phase, burst=True)

        threads = [threading.Thread(target=send, args=(w,), name="soak-burst") for w in works]
        for t in threads:
            t.start()
        return threads


def sampler(load: Load, proc, target: str, url: str, log: Path, every: int, stop: threading.Event,
            samples: list) -> threading.Thread:
    def run() -> None:
        taken = 0
        while not stop.is_set():
            with load.changed:
                load.changed.wait_for(lambda due=taken + every: len(load.done) >= due or stop.is_set(), timeout=5)
                count = len(load.done)
            if count >= taken + every and proc.poll() is None:
                taken = count
                with contextlib.suppress(Exception):
                    samples.append(sample(proc, target, url, log, count, load.began))

    thread = threading.Thread(target=run, name="soak-sampler", daemon=True)
    thread.start()
    return thread


# ---- the goals -------------------------------------------------------------------------------------------------
def judge(done: list[Done], samples: list[dict], baseline: dict, final: dict, died: bool) -> list[Goal]:
    """The soak's goals from what it saw (pure: the unit tests give it made-up runs)."""
    load = [d for d in done if d.phase == "load"]
    outcomes = Counter(d.outcome for d in done)
    goals = [Goal("jobs lost", outcomes["lost"], "0", outcomes["lost"] == 0),
             Goal("bad answers", outcomes["bad"], "0", outcomes["bad"] == 0),
             Goal("worker deaths", int(died), "0", not died)]
    for key, name in (("threads", "threads when idle"), ("fds", "open files when idle")):
        goals.append(Goal(name, f"{final.get(key)} (warm-up {baseline.get(key)})", "<= the warm-up's",
                          bool(final.get("idle")) and final.get(key, 1e9) <= baseline.get(key, -1)))
    jobs = len(load)
    if jobs >= JUDGE_RSS_FROM_JOBS and "rss_mb" in final:
        growth = (final["rss_mb"] - baseline["rss_mb"]) / jobs * 1000
        goals.append(Goal("RSS growth, MB per 1,000 jobs", round(growth, 1), f"< {RSS_MB_PER_1000_JOBS:g}",
                          growth < RSS_MB_PER_1000_JOBS))
        after = [s for s in samples if s["jobs"] > baseline.get("jobs", 0)]
        half = len(after) // 2
        if half:
            first, last = max(s["rss_mb"] for s in after[:half]), max(s["rss_mb"] for s in after[half:])
            goals.append(Goal("RSS growth in the last half, MB", round(last - first, 1), f"<= {RSS_LAST_HALF_MB:g}",
                              last - first <= RSS_LAST_HALF_MB))
    else:
        goals.append(Goal("RSS growth, MB per 1,000 jobs", "-", f"not judged: {jobs} jobs (< {JUDGE_RSS_FROM_JOBS})",
                          None))
    short = sorted((d for d in load if d.kind == "short" and d.outcome == "ok"), key=lambda d: d.sent)
    tenth = len(short) // 10
    if tenth >= JUDGE_P95_FROM:
        first = percentile([d.latency for d in short[:tenth]], 0.95)
        last = percentile([d.latency for d in short[-tenth:]], 0.95)
        goals.append(Goal("p95 latency of short jobs, last tenth / first", round(last / first, 3),
                          f"<= {P95_RATIO:g} ({last:.2f} s / {first:.2f} s)", last <= P95_RATIO * first))
    else:
        goals.append(Goal("p95 latency of short jobs, last tenth / first", "-",
                          f"not judged: {tenth} short jobs a tenth (< {JUDGE_P95_FROM})", None))
    return goals


def plot(samples: list[dict], baseline: dict, path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    jobs = [s["jobs"] for s in samples]
    fig, axes = plt.subplots(2, 2, figsize=(10, 6), sharex=True)
    for ax, (keys, title) in zip(axes.flat, ((["rss_mb"], "RSS, MB"), (["threads"], "threads"),
                                             (["fds"], "open file descriptors"),
                                             (["rows", "queued", "clone_prompts"], "rows, queued chunks, clone prompts")), strict=True):
        for key in keys:
            ax.plot(jobs, [s.get(key) or 0 for s in samples], label=key)
        ax.axvline(baseline.get("jobs", 0), color="grey", linestyle=":", linewidth=1)
        ax.set_title(title, fontsize=9)
        if len(keys) > 1:
            ax.legend(fontsize=7)
    for ax in axes[1]:
        ax.set_xlabel("jobs answered")
    fig.tight_layout()
    fig.savefig(path, dpi=90)
    plt.close(fig)


def summary(done: list[Done]) -> dict:
    table: dict = defaultdict(Counter)
    for d in done:
        table[d.kind][d.outcome] += 1
    return {kind: dict(c) for kind, c in sorted(table.items())}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--minutes", type=float, default=30.0, help="how long the load runs after the warm-up")
    parser.add_argument("--max-jobs", type=int, default=0, help="also stop after this many jobs of load (0: no bound)")
    parser.add_argument("--concurrency", type=int, default=16)
    parser.add_argument("--target", choices=("queue", "http"), default="http")
    parser.add_argument("--model-dir", type=Path, help="QWEN_TTS_MODEL_DIR (default: the environment's)")
    parser.add_argument("--device", help="QWEN_TTS_DEVICE: auto, cpu, cuda:0")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--warmup", type=int, default=100, help="jobs before the idle baseline")
    parser.add_argument("--sample-every", type=int, default=25, help="jobs between samples")
    parser.add_argument("--hostile-share", type=float, default=0.05)
    parser.add_argument("--burst-every", type=int, default=250, help="jobs between bursts (0: none)")
    parser.add_argument("--burst-size", type=int, default=40, help="long jobs sent at once in a burst")
    parser.add_argument("--queue-limit", type=int, default=48, help="the worker's scheduler.queue_limit (chunks)")
    parser.add_argument("--job-timeout", type=float, default=600.0, help="a job not answered within this is lost")
    parser.add_argument("--json", type=Path, help="write the run's figures here")
    parser.add_argument("--plot", type=Path, help="write a plot of the samples here (PNG)")
    parser.add_argument("--keep-log", type=Path, help="copy the worker's log here")
    parser.add_argument("overrides", nargs="*", help="more config overrides for the worker (key=value)")
    args = parser.parse_args(argv)

    with tempfile.TemporaryDirectory(prefix="soak-") as tmp:
        log = Path(tmp) / "worker.log"
        overrides = [f"scheduler.queue_limit={args.queue_limit}", "worker.vitals_every_seconds=1",
                     "worker.progress_updates=false", f"worker.job_timeout_seconds={max(1.0, args.job_timeout - 30):g}",
                     *args.overrides]
        env = child_env(args.model_dir, args.device, Path(tmp) / "voices", overrides)
        started = time.monotonic()
        proc, url = start(args.target, env, log)
        print(f"soak: {args.target} worker ready in {time.monotonic() - started:.1f} s at {url} (pid {proc.pid}); "
              f"{args.warmup} jobs of warm-up, then {args.minutes:g} min at concurrency {args.concurrency}", flush=True)
        target = QueueTarget(url) if args.target == "queue" else HttpTarget(url, log)
        try:
            if isinstance(target, HttpTarget):
                target.prepare()
            began = time.monotonic()
            load = Load(target, Mix(sentences(400, args.seed), args.seed, args.hostile_share, len(target.hostile)),
                        args.concurrency, args.job_timeout, began)
            samples: list[dict] = []
            stop = threading.Event()
            sampling = sampler(load, proc, args.target, url, log, args.sample_every, stop, samples)
            load.run("warmup", lambda n: n >= args.warmup, args.burst_every, args.burst_size,
                     first_burst=max(1, args.warmup // 2))
            baseline = idle_sample(proc, args.target, url, log, len(load.done), began)
            samples.append(baseline)
            print(f"soak: warm-up done, {len(load.done)} jobs; idle: {json.dumps(baseline)}", flush=True)
            ends = time.monotonic() + args.minutes * 60
            load.run("load", lambda n: time.monotonic() >= ends or proc.poll() is not None
                     or (args.max_jobs and n >= args.max_jobs), args.burst_every, args.burst_size,
                     first_burst=args.burst_every)
            died = proc.poll() is not None
            final = {} if died else idle_sample(proc, args.target, url, log, len(load.done), began)
            stop.set()
            sampling.join(timeout=30)
            if final:
                samples.append(final)
        finally:
            if args.keep_log:
                args.keep_log.write_bytes(log.read_bytes())
            proc.terminate()
            try:
                proc.wait(timeout=60)
            except subprocess.TimeoutExpired:
                proc.kill()
        goals = judge(load.done, samples, baseline, final, died)
        passed = all(g.met is not False for g in goals)
        report = {"command": "python -m tts_runner.tools.soak " + " ".join(argv if argv is not None else sys.argv[1:]),
                  "target": args.target, "minutes": args.minutes, "concurrency": args.concurrency, "seed": args.seed,
                  "wall_s": round(time.monotonic() - began, 1), "jobs": len(load.done),
                  "load_jobs": sum(d.phase == "load" for d in load.done), "outcomes": summary(load.done),
                  "baseline": baseline, "final": final, "exit_status": proc.returncode,
                  "goals": [asdict(g) for g in goals], "passed": passed, "samples": samples,
                  "problems": [asdict(d) for d in load.done if d.outcome in ("bad", "lost")][:50]}
    for kind, outcomes in report["outcomes"].items():
        print(f"  {kind:<13} " + ", ".join(f"{k} {v}" for k, v in sorted(outcomes.items())))
    for problem in report["problems"][:10]:
        print(f"  {problem['outcome']}: job {problem['index']} ({problem['kind']}): {problem['detail']}")
    for g in goals:
        verdict = {True: "met", False: "MISSED", None: "-"}[g.met]
        print(f"  {verdict:<6} {g.name}: {g.value} ({g.limit})")
    if args.json:
        args.json.write_text(json.dumps(report, indent=1))
    if args.plot and samples:
        plot(samples, baseline, args.plot)
    print(f"soak: {len(load.done)} jobs in {report['wall_s']:.0f} s; {'passed' if passed else 'FAILED'}")
    return 0 if passed else 1


if __name__ == "__main__":
    sys.exit(main())
