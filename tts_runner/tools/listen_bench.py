"""Streams heard in real time: time to first audio and underruns per stream, for each stream schedule
(stream.schedule fixed against adaptive), through the queue worker in-process and the HTTP server
(SSE and raw audio), at several concurrencies, in one run.

    python -m tts_runner.tools.listen_bench --model-dir /tmp/models --device cpu --concurrency 1,4,16 \
        [--step-ms 30] [--json out.json]

Each stream has a listener that starts playing at its first byte and plays in real time: an underrun
is any moment it has nothing to play (counted, and its seconds summed), until the stream's last
piece. `--step-ms` holds each decode step of the scheduler to at least that many milliseconds per
frame, to stand for a slower device (30 ms a step: rows made at ~2.7x real time, as a GPU at batch
64 makes them); 0 runs at the machine's own speed. Requests are sentences of jobs/podcast.yaml, sent
by c clients at once for each concurrency c, each client sending its next when its last has ended.
"""

from __future__ import annotations

import argparse
import base64
import contextlib
import json
import logging
import time
from dataclasses import asdict, dataclass
from pathlib import Path

from tts_runner.audio.codec import SAMPLE_RATE
from tts_runner.tools.serve_bench import drive, heard, percentile, sentences
from tts_runner.tools.setup import point_at


@dataclass
class Row:
    schedule: str
    via: str
    concurrency: int
    streams: int
    failed: int
    p50_first_audio_s: float
    p95_first_audio_s: float
    underruns_per_stream: float
    underrun_s_per_stream: float
    streams_with_underruns: int
    of_them_first_wave: int     # how many of those were among the first `concurrency` streams, sent at once
    audio_s_per_stream: float
    realtime_per_stream: float  # seconds of audio made per second, per stream running: below 1, no schedule can keep up


def pace(step_ms: float) -> None:
    """Hold every scheduler round to at least step_ms per frame (a slower device)."""
    if step_ms <= 0:
        return
    from tts_runner.serving import scheduler

    original = scheduler.step

    def slow(batches, frames):
        began = time.perf_counter()
        result = original(batches, frames)
        time.sleep(max(0.0, frames * step_ms / 1000 - (time.perf_counter() - began)))
        return result

    scheduler.step = slow


def queue_stream(worker, text: str, seed: int) -> list[tuple[float, float]]:
    arrivals = []
    for piece in worker.stream({"id": f"listen-{seed}", "input": {"text": text, "stream": True, "output_format": "pcm",
                                                                   "params": {"seed": seed}}}):
        if "error" in piece:
            raise RuntimeError(piece["error"])
        arrivals.append((time.perf_counter(), len(base64.b64decode(piece["audio_base64"])) / 2 / SAMPLE_RATE))
    return arrivals


def http_stream(url: str, kind: str, text: str, seed: int) -> list[tuple[float, float]]:
    import httpx

    body = {"input": text, "voice": "alloy", "response_format": "pcm", "stream_format": kind, "seed": seed}
    arrivals = []
    with httpx.Client(timeout=600) as client, client.stream("POST", f"{url}/v1/audio/speech", json=body) as r:
        r.raise_for_status()
        if kind == "audio":
            odd = 0  # a PCM16 sample may be split across two reads
            for data in r.iter_raw():
                arrivals.append((time.perf_counter(), (len(data) + odd) // 2 / SAMPLE_RATE))
                odd = (len(data) + odd) % 2
        else:
            for line in r.iter_lines():
                if line.startswith("data: "):
                    event = json.loads(line[6:])
                    if event["type"] == "speech.audio.delta":
                        arrivals.append((time.perf_counter(), len(base64.b64decode(event["audio"])) / 2 / SAMPLE_RATE))
                    elif event["type"] == "error":
                        raise RuntimeError(event["error"]["message"])
    return arrivals


def measure(send, texts: list[str], concurrency: int) -> tuple[list[tuple[float, int, float, float, int]], int, float]:
    """Each text streamed by `send(text, seed)` with `concurrency` clients (serve_bench's drive), heard by
    a listener: (time to first audio, underruns, underrun seconds, audio seconds, the order it was sent
    in) per stream, the number that failed, and the wall seconds."""
    def one(i: int, text: str) -> tuple[float, int, float, float, int]:
        started = time.perf_counter()
        arrivals = send(text, 1000 + i)
        return (*heard(started, arrivals), sum(s for _, s in arrivals), i)

    wall, results, failed = drive(one, texts, concurrency)
    return results, failed, wall


def row(schedule: str, via: str, concurrency: int, results, failed: int, wall: float) -> Row:
    n = max(1, len(results))
    return Row(schedule, via, concurrency, len(results), failed,
               round(percentile([r[0] for r in results], 0.5), 3), round(percentile([r[0] for r in results], 0.95), 3),
               round(sum(r[1] for r in results) / n, 2), round(sum(r[2] for r in results) / n, 3),
               sum(1 for r in results if r[1]), sum(1 for r in results if r[1] and r[4] < concurrency),
               round(sum(r[3] for r in results) / n, 2),
               round(sum(r[3] for r in results) / wall / concurrency, 2))


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model-dir", type=Path, help="QWEN_TTS_MODEL_DIR (default: the environment's)")
    parser.add_argument("--device", help="QWEN_TTS_DEVICE: auto, cpu, cuda:0")
    parser.add_argument("--concurrency", type=lambda s: [int(x) for x in s.split(",")], default=[1, 4, 16])
    parser.add_argument("--streams", type=int, default=0, help="streams per concurrency (default: 2 x c, at least 8)")
    parser.add_argument("--step-ms", type=float, default=0.0, help="hold each decode step to this many ms (a slower device)")
    parser.add_argument("--via", default="queue,sse,audio", help="which of queue, sse, audio to measure")
    parser.add_argument("--max-new-tokens", type=int, default=96, help="frames per chunk at most (the tiny model)")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--json", type=Path)
    parser.add_argument("overrides", nargs="*", help="config overrides for both workers")
    args = parser.parse_args(argv)
    point_at(args.model_dir, args.device)
    logging.basicConfig(level=logging.WARNING)
    from tts_runner.edge import build
    from tts_runner.edge import config as config_mod
    from tts_runner.edge.worker import Worker
    from tts_runner.server.app import create_app
    from tts_runner.server.local import in_process
    from tts_runner.server.service import Service

    pace(args.step_ms)
    vias = args.via.split(",")
    # chunks of 24 to max_new_tokens frames, each kept as made (the tiny model's lengths are not speech's)
    base = [f"sampling.max_new_tokens={args.max_new_tokens}", "sampling.min_new_tokens=24",
            "batching.min_seconds_per_char=0", "batching.runaway=keep", *args.overrides]
    rows: list[Row] = []
    for schedule in ("fixed", "adaptive"):
        cfg = config_mod.load([*base, f"stream.schedule={schedule}"])
        worker = Worker(cfg)
        if worker.startup_error:
            raise SystemExit(worker.startup_error)
        service = Service(cfg, build.server(cfg.server, list(cfg.models.variants)))
        service.load(worker)
        with contextlib.ExitStack() as stack:
            url = stack.enter_context(in_process(create_app(service))) if {"sse", "audio"} & set(vias) else None
            for c in args.concurrency:
                texts = sentences(args.streams or max(8, 2 * c), args.seed)
                for via in vias:
                    send = ((lambda t, s, worker=worker: queue_stream(worker, t, s)) if via == "queue"
                            else (lambda t, s, via=via, url=url: http_stream(url, via, t, s)))
                    results, failed, wall = measure(send, texts, c)
                    rows.append(row(schedule, via, c, results, failed, wall))
                    print(json.dumps(asdict(rows[-1])), flush=True)
    print(f"\n{'schedule':9} {'via':6} {'c':>3} {'n':>3} {'fail':>4} {'TTFA p50':>9} {'p95':>6} "
          f"{'underruns/stream':>17} {'underrun s/stream':>18} {'streams w/ underrun':>20} {'first wave':>10} {'audio s/stream':>15} "
          f"{'x real time/stream':>19}")
    for r in rows:
        print(f"{r.schedule:9} {r.via:6} {r.concurrency:>3} {r.streams:>3} {r.failed:>4} {r.p50_first_audio_s:>9.3f} "
              f"{r.p95_first_audio_s:>6.3f} {r.underruns_per_stream:>17.2f} {r.underrun_s_per_stream:>18.3f} "
              f"{r.streams_with_underruns:>20} {r.of_them_first_wave:>10} {r.audio_s_per_stream:>15.2f} {r.realtime_per_stream:>19.2f}")
    if args.json:
        args.json.write_text(json.dumps({"step_ms": args.step_ms, "rows": [asdict(r) for r in rows]}, indent=2))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
