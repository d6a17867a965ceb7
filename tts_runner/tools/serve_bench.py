"""Serving benchmark: many short requests at once, the scheduler against one job at a time, in one run.

    python -m tts_runner.tools.serve_bench --model-dir /tmp/models --device cpu --requests 64 --concurrency 1,4,16,64
    (also: python -m tts_runner.tools.bench --serve ...)

A load generator: `--requests` N requests, each one sentence of the podcast dialogue (jobs/podcast.yaml,
40 to 115 characters: what an endpoint mostly sees), sent by c clients at once for each concurrency c
(a client sends its next request when its last one is answered). Three workers answer them, each
loaded once, in-process (the worker's own `handle`/`stream`, as handler.py calls them):

- `serial`: one job at a time, its own batches (scheduler off; what a worker with concurrency 1 does:
  the other requests wait in RunPod's queue);
- `scheduled`: the scheduler, every request's chunks sharing the model's rows;
- `streamed`: the same, each request with "stream": true (time to first audio = its first piece), each
  heard by a listener who starts playing at the first piece and plays in real time (`heard`,
  which listen_bench shares): an underrun is a moment it has nothing to play.

For each: requests/s, seconds of audio per second, p50/p95 latency (sent -> whole answer) and p50/p95
time to first audio (the whole answer, unless streamed), underruns per stream (streamed), and the ratio
of audio/s over serial at the same concurrency (or the nearest one below where serial ran: one job at
a time makes audio at the same rate however many wait). `--one-worker` loads the model once for all
three (serial: the scheduled worker under a lock, one job at a time, as RunPod's concurrency 1 sends
them); `--serial-at 1` measures serial at those concurrencies only; `--per-client K` sends
max(8, K x c) requests at concurrency c instead of `--requests`; `--text-sized` sizes every chunk by
its text (15 characters a second, as bench --text-sized: for a model that never ends speech). `--rate R` also sends them at R a second (an open loop: arrivals do not wait for
answers; latency counts from when a request was due). `--http N` also sends N requests at the largest concurrency to `handler.py
--rp_serve_api` started on 127.0.0.1 (a child process; /runsync, bounded by `--http-timeout`), with the
scheduler and without. `--openai` also sends them, at each concurrency, to the HTTP server
(tts_runner/server/, in-process on 127.0.0.1, on the scheduled worker): OpenAI's /v1/audio/speech for
the whole file, and streamed as SSE. Streams heard by a real-time listener (underruns) are
tts_runner.tools.listen_bench's. `--json FILE` writes the rows.
"""

from __future__ import annotations

import argparse
import base64
import contextlib
import json
import logging
import os
import random
import subprocess
import sys
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from dataclasses import asdict, dataclass
from pathlib import Path

from tts_runner.audio.codec import SAMPLE_RATE
from tts_runner.tools.setup import point_at, text_sized


@dataclass
class Row:
    device: str
    worker: str
    via: str
    concurrency: int
    requests: int
    failed: int
    wall_s: float
    requests_per_s: float
    audio_per_s: float
    p50_latency_s: float
    p95_latency_s: float
    p50_first_audio_s: float
    p95_first_audio_s: float
    vs_serial: float = 0.0
    underruns_per_stream: float | None = None  # streamed rows: a real-time listener's, per stream
    streams_with_underruns: int | None = None


def sentences(n: int, seed: int) -> list[str]:
    from tts_runner.edge import payload

    _, spec = payload.load_job_spec("podcast")
    lines = [s["text"] for s in spec["segments"]]
    rng = random.Random(seed)
    return [rng.choice(lines) for _ in range(n)]


def percentile(values: list[float], q: float) -> float:
    if not values:
        return float("nan")
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, max(0, round(q * (len(ordered) - 1))))]


def drive(send, texts: list[str], concurrency: int, rate: float = 0.0) -> tuple[float, list[tuple[float, float, float]], int]:
    """Send every text with `concurrency` clients (each sends its next when the last is answered),
    or, with `rate`, one every 1/rate seconds whatever is running (an open loop, at most
    `concurrency` at once; latency counts from when a request was due); returns wall seconds,
    (latency, first audio, audio seconds) per answered request, and the number that failed."""
    if rate:
        return _open_loop(send, texts, concurrency, rate)
    queue = list(enumerate(texts))
    lock = threading.Lock()
    results: list[tuple[float, float, float]] = []
    failed = [0]

    def client() -> None:
        while True:
            with lock:
                if not queue:
                    return
                i, text = queue.pop(0)
            try:
                results.append(send(i, text))
            except Exception as exc:  # noqa: BLE001 - counted, shown once
                with lock:
                    if not failed[0]:
                        print(f"  a request failed: {exc}", file=sys.stderr)
                    failed[0] += 1

    started = time.perf_counter()
    with ThreadPoolExecutor(concurrency) as pool:
        for _ in range(concurrency):
            pool.submit(client)
    return time.perf_counter() - started, results, failed[0]


def _open_loop(send, texts: list[str], concurrency: int, rate: float) -> tuple[float, list, int]:
    results, failed = [], [0]
    started = time.perf_counter()

    def timed(i: int, text: str, due: float) -> None:
        late = time.perf_counter() - due  # waited for a free client
        try:
            latency, first, *rest = send(i, text)  # rest: audio seconds (and a stream's underruns)
            results.append((latency + late, first + late, *rest))
        except Exception as exc:  # noqa: BLE001
            if not failed[0]:
                print(f"  a request failed: {exc}", file=sys.stderr)
            failed[0] += 1

    with ThreadPoolExecutor(concurrency) as pool:
        for i, text in enumerate(texts):
            due = started + i / rate
            time.sleep(max(0.0, due - time.perf_counter()))
            pool.submit(timed, i, text, due)
    return time.perf_counter() - started, results, failed[0]


def heard(started: float, arrivals: list[tuple[float, float]], slack: float = 0.001) -> tuple[float, int, float]:
    """(time to first audio, underruns, seconds of underrun) of a listener who starts playing at the
    first arrival and plays in real time; `arrivals` are (time, seconds of audio) in order."""
    arrivals = [(t, s) for t, s in arrivals if s > 0]
    if not arrivals:
        return float("nan"), 0, 0.0
    first, seconds = arrivals[0]
    dry_at = first + seconds  # when what has come so far has been played
    count, gap = 0, 0.0
    for t, s in arrivals[1:]:
        if t > dry_at + slack:
            count, gap, dry_at = count + 1, gap + (t - dry_at), t + s
        else:
            dry_at += s
    return first - started, count, gap


def row(device: str, worker: str, via: str, concurrency: int, wall: float, results: list, failed: int) -> Row:
    """`results`: (latency, first audio, audio seconds[, underruns]) per answered request."""
    latency = [r[0] for r in results]
    first = [r[1] for r in results]
    audio = sum(r[2] for r in results)
    underruns = [r[3] for r in results if len(r) > 3]
    listened = {"underruns_per_stream": round(sum(underruns) / len(underruns), 3),
                "streams_with_underruns": sum(1 for u in underruns if u)} if underruns else {}
    return Row(device, worker, via, concurrency, len(results) + failed, failed, round(wall, 3),
               round(len(results) / wall, 3), round(audio / wall, 3), round(percentile(latency, 0.5), 3),
               round(percentile(latency, 0.95), 3), round(percentile(first, 0.5), 3), round(percentile(first, 0.95), 3),
               **listened)


def in_process(workers: dict, texts: list[str], concurrency: int, seed: int, device: str,
               rate: float = 0.0) -> list[Row]:
    rows = []
    for name, worker in workers.items():
        serial = threading.Lock() if name == "serial" else None

        def send(i: int, text: str, worker=worker, name=name, serial=serial) -> tuple:
            job = {"id": f"{name}-{i}", "input": {"text": text, "params": {"seed": seed + i}}}
            sent = time.perf_counter()
            if name == "streamed":
                job["input"].update(stream=True, output_format="pcm")
                arrivals = []
                for piece in worker.stream(job):
                    if "error" in piece:
                        raise RuntimeError(piece["error"])
                    if piece.get("audio_base64"):
                        arrivals.append((time.perf_counter(), len(base64.b64decode(piece["audio_base64"])) / 2 / SAMPLE_RATE))
                first, underruns, _ = heard(sent, arrivals)
                return time.perf_counter() - sent, first, sum(s for _, s in arrivals), underruns
            with serial or contextlib.nullcontext():
                answer = worker.handle(job)
            if "error" in answer:
                raise RuntimeError(answer["error"])
            latency = time.perf_counter() - sent
            return latency, latency, answer["metadata"]["duration_seconds"]

        wall, results, failed = drive(send, texts, concurrency, rate)
        rows.append(row(device, name, f"{rate:g}/s" if rate else "in-process", concurrency, wall, results, failed))
    return rows


def serve_api(overrides: str, log: Path):
    """Start handler.py --rp_serve_api on a free 127.0.0.1 port; returns (process, port)."""
    from tts_runner.server.local import free_port, wait_for_port

    port = free_port()
    root = Path(__file__).resolve().parents[2]
    env = {**os.environ, "TTS_RUNNER_OVERRIDES": overrides}
    with open(log, "wb") as out:
        proc = subprocess.Popen([sys.executable, "handler.py", "--rp_serve_api", "--rp_api_host", "127.0.0.1",
                                 "--rp_api_port", str(port)], cwd=root, stdout=out, stderr=subprocess.STDOUT, env=env)
    try:
        wait_for_port(port, proc, log)
    except RuntimeError:
        proc.kill()
        raise
    return proc, port


def http_rows(texts: list[str], concurrency: int, seed: int, device: str, timeout: float) -> list[Row]:
    import tempfile

    import requests

    rows = []
    for name, overrides in (("serial", "scheduler.enabled=false worker.concurrency=1"), ("scheduled", "")):
        with tempfile.TemporaryDirectory() as tmp:
            proc, port = serve_api(overrides, Path(tmp) / "api.log")
            try:
                serial = threading.Lock() if name == "serial" else None

                def send(i: int, text: str, port=port, serial=serial) -> tuple[float, float, float]:
                    sent = time.perf_counter()
                    with serial or contextlib.nullcontext():  # the local API runs every request at once; RunPod would queue them
                        answer = requests.post(f"http://127.0.0.1:{port}/runsync", timeout=timeout,
                                               json={"input": {"text": text, "params": {"seed": seed + i}}}).json()
                    if "output" not in answer or "metadata" not in answer["output"]:
                        raise RuntimeError(str(answer)[:300])
                    latency = time.perf_counter() - sent
                    return latency, latency, answer["output"]["metadata"]["duration_seconds"]

                wall, results, failed = drive(send, texts, concurrency)
                rows.append(row(device, name, "http", concurrency, wall, results, failed))
            finally:
                proc.terminate()
                proc.wait(timeout=10)
    return rows


def openai_rows(worker, texts: list[str], concurrency: int, seed: int, device: str, timeout: float) -> list[Row]:
    """The HTTP server (tts_runner/server/, in-process on 127.0.0.1) on the scheduled worker: OpenAI's
    /v1/audio/speech for the whole file (wav), and streamed as SSE (time to first audio = first delta)."""
    import base64

    import httpx

    from tts_runner.edge import build
    from tts_runner.server.app import create_app
    from tts_runner.server.local import in_process as serve
    from tts_runner.server.service import Service

    service = Service(worker.cfg, build.server(worker.cfg.server, list(worker.cfg.models.variants)))
    service.load(worker)
    rows = []
    with serve(create_app(service)) as url, httpx.Client(timeout=timeout, limits=httpx.Limits(max_connections=256)) as http:
        def whole(i: int, text: str) -> tuple[float, float, float]:
            sent = time.perf_counter()
            r = http.post(f"{url}/v1/audio/speech", json={"input": text, "voice": "alloy", "response_format": "wav",
                                                          "seed": seed + i})
            r.raise_for_status()
            latency = time.perf_counter() - sent
            return latency, latency, float(r.headers["x-audio-duration"])

        def sse(i: int, text: str) -> tuple[float, float, float]:
            sent, first, samples = time.perf_counter(), None, 0
            with http.stream("POST", f"{url}/v1/audio/speech", json={
                    "input": text, "voice": "alloy", "response_format": "pcm", "stream_format": "sse",
                    "seed": seed + i}) as r:
                r.raise_for_status()
                for line in r.iter_lines():
                    if line.startswith("data: ") and '"speech.audio.delta"' in line:
                        first = first if first is not None else time.perf_counter() - sent
                        samples += len(base64.b64decode(json.loads(line[6:])["audio"])) // 2
            return time.perf_counter() - sent, first, samples / 24000

        for via, send in (("openai", whole), ("openai-sse", sse)):
            wall, results, failed = drive(send, texts, concurrency)
            rows.append(row(device, "scheduled", via, concurrency, wall, results, failed))
    return rows


def against_serial(rows: list[Row], serial: Row | None = None) -> list[Row]:
    """Each row's audio per second over the serial worker's (the first row named serial, or `serial`)."""
    serial = next((r for r in rows if r.worker == "serial"), serial)
    if serial is None:
        return rows
    for r in rows:
        r.vs_serial = round(r.audio_per_s / serial.audio_per_s, 2) if serial.audio_per_s else 0.0
    return rows


def print_rows(rows: list[Row]) -> None:
    print(f"{'worker':<10} {'via':<10} {'conc':>4} {'req':>4} {'fail':>4} {'wall s':>7} {'req/s':>6} {'audio/s':>8} "
          f"{'x serial':>8} {'p50 lat':>7} {'p95 lat':>7} {'p50 TTFA':>8} {'p95 TTFA':>8} {'underruns':>9}")
    for r in rows:
        listened = "-" if r.underruns_per_stream is None else f"{r.underruns_per_stream:.2f}/{r.streams_with_underruns}"
        print(f"{r.worker:<10} {r.via:<10} {r.concurrency:>4} {r.requests:>4} {r.failed:>4} {r.wall_s:>7.2f} "
              f"{r.requests_per_s:>6.2f} {r.audio_per_s:>8.2f} {r.vs_serial:>8.2f} {r.p50_latency_s:>7.3f} "
              f"{r.p95_latency_s:>7.3f} {r.p50_first_audio_s:>8.3f} {r.p95_first_audio_s:>8.3f} {listened:>9}", flush=True)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", default="1.7B-CustomVoice")
    parser.add_argument("--model-dir", type=Path, help="QWEN_TTS_MODEL_DIR (default: the environment's)")
    parser.add_argument("--device", help="QWEN_TTS_DEVICE: auto, cpu, cuda:0")
    parser.add_argument("--requests", type=int, default=64)
    parser.add_argument("--concurrency", type=lambda s: [int(x) for x in s.split(",")], default=[1, 4, 16, 64])
    parser.add_argument("--max-batch-size", type=int, default=64,
                        help="rows the scheduler decodes at once (0: the config's auto)")
    parser.add_argument("--per-client", type=int, default=0, metavar="K",
                        help="send max(8, K x c) requests at concurrency c (default: --requests at each)")
    parser.add_argument("--serial-at", type=lambda s: [int(x) for x in s.split(",")], default=None, metavar="C,C",
                        help="measure the serial worker at these concurrencies only (default: every one)")
    parser.add_argument("--one-worker", action="store_true",
                        help="one worker (one model load) for all three; serial: it, under a lock")
    parser.add_argument("--text-sized", action="store_true",
                        help="every chunk runs to a frame budget of 15 characters a second (a model that never ends)")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--rate", type=float, default=0.0, metavar="R",
                        help="also send the requests at R a second (an open loop, at most the largest concurrency at once)")
    parser.add_argument("--http", type=int, default=0, metavar="N",
                        help="also send N requests over HTTP to handler.py --rp_serve_api (127.0.0.1)")
    parser.add_argument("--http-timeout", type=float, default=600.0)
    parser.add_argument("--openai", action="store_true",
                        help="also send the requests at each concurrency to the HTTP server (/v1/audio/speech, whole and SSE)")
    parser.add_argument("--torch-threads", type=int, default=0,
                        help="torch's intra-op threads (runtime.torch_threads; 0: the config's)")
    parser.add_argument("--json", type=Path, help="also write the rows here")
    args = parser.parse_args(argv)
    point_at(args.model_dir, args.device)
    from tts_runner.edge.worker import Worker
    from tts_runner.serving.device import device_name

    logging.basicConfig(level=logging.WARNING)
    logging.getLogger("tts_runner").setLevel(logging.WARNING)  # a line per job would bury the table

    common = [*([f"runtime.torch_threads={args.torch_threads}"] if args.torch_threads else []), f"input.model={args.model}", f"models.default={args.model}", "sink=base64",
              *([f"batching.max_batch_size={args.max_batch_size}"] if args.max_batch_size else []),
              "worker.progress_updates=false"]
    if args.text_sized:  # as bench --text-sized
        common += [*text_sized(), "batching.min_seconds_per_char=0"]
    started = time.perf_counter()
    if args.one_worker:
        one = Worker.from_env([*common, "worker.streaming=true"])
        workers = {"serial": one, "scheduled": one, "streamed": one}
    else:
        workers = {
            "serial": Worker.from_env([*common, "scheduler.enabled=false", "worker.concurrency=1"]),
            "scheduled": Worker.from_env(common),
            "streamed": Worker.from_env([*common, "worker.streaming=true"]),
        }
    for name, worker in workers.items():
        if worker.startup_error:
            print(f"{name} worker failed to start: {worker.startup_error}", file=sys.stderr)
            return 1
    device = workers["scheduled"].store.device
    model = workers["scheduled"].store.get(args.model)
    rows_at_once = model.scheduler.max_rows if model.scheduler is not None else "-"
    print(f"{args.model} on {device} ({device_name(device)}), engine {model.engine}, scheduler rows {rows_at_once}, "
          f"{len(set(map(id, workers.values())))} worker(s) loaded in {time.perf_counter() - started:.1f} s; "
          f"requests of one sentence each", flush=True)

    def measured_at(concurrency: int | None) -> dict:
        """The workers measured at `concurrency` (None: the open loop): serial only where --serial-at allows."""
        return {k: w for k, w in workers.items()
                if k != "serial" or args.serial_at is None or (concurrency is not None and concurrency in args.serial_at)}

    rows: list[Row] = []
    serial: Row | None = None
    for concurrency in args.concurrency:
        texts = sentences(max(8, args.per_client * concurrency) if args.per_client else args.requests, args.seed)
        these = measured_at(concurrency)
        measured = in_process(these, texts, concurrency, args.seed, device_name(device))
        if args.openai:
            measured += openai_rows(workers["scheduled"], texts, concurrency, args.seed, device_name(device),
                                    args.http_timeout)
        measured = against_serial(measured, serial)
        serial = next((r for r in measured if r.worker == "serial"), serial)
        print_rows(measured)
        rows += measured
        if args.json:  # after each concurrency: a run cut short keeps the rows it made
            args.json.write_text(json.dumps([asdict(r) for r in rows], indent=2))
    if args.rate:
        these = measured_at(None)
        measured = against_serial(in_process(these, sentences(args.requests, args.seed), max(args.concurrency),
                                             args.seed, device_name(device), args.rate), serial)
        print_rows(measured)
        rows += measured
    if args.http:
        top = max(args.concurrency)
        measured = against_serial(http_rows(sentences(args.http, args.seed), min(top, args.http), args.seed, device_name(device),
                                            args.http_timeout))
        print_rows(measured)
        rows += measured
    if args.json:
        args.json.write_text(json.dumps([asdict(r) for r in rows], indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
