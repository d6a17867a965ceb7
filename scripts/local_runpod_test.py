"""Send one job to the worker without RunPod, print the answer, optionally save the audio.

In-process (loads the model here, as a warm worker would):
    python scripts/local_runpod_test.py --text "Hello there." --voice female_1 --save hello.wav
Against a running local API (`python handler.py --rp_serve_api`): /runsync, or with --async
/run and then /status/<id> until the job is done, as a RunPod client polls:
    python scripts/local_runpod_test.py --url http://127.0.0.1:8000 --payload test_input.json
    python scripts/local_runpod_test.py --url http://127.0.0.1:8000 --async --text "Hello there."
Segments as JSON, inline or in a file:
    python scripts/local_runpod_test.py --segments '[{"text": "Hi.", "voice": "male_1"}]' --format mp3
"""

from __future__ import annotations

import argparse
import base64
import json
import sys
import time
import urllib.request
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))


def build_payload(args: argparse.Namespace) -> dict:
    if args.payload:
        payload = json.loads(Path(args.payload).read_text())
        job_input = payload.get("input", payload)
    elif args.segments:
        source = Path(args.segments)
        segments = json.loads(source.read_text() if source.is_file() else args.segments)
        job_input = {"segments": segments}
    elif args.text:
        job_input = {"text": args.text}
    else:
        raise SystemExit("give --text, --segments or --payload")
    if args.voice:
        job_input["voice"] = args.voice
    if args.format:
        job_input["output_format"] = args.format
    return {"input": job_input}


def run_local(payload: dict) -> dict:
    from tts_runner.edge.worker import Worker

    worker = Worker.from_env()
    return worker.handle({"id": "local-test", **payload})


def post(url: str, body: dict | None = None, timeout: float = 3600) -> dict:
    """The local API answers POST only (RunPod's hosted API also takes GET for /status)."""
    request = urllib.request.Request(url, data=json.dumps(body or {}).encode(),
                                     headers={"Content-Type": "application/json"}, method="POST")
    with urllib.request.urlopen(request, timeout=timeout) as response:
        return json.load(response)


def outcome(answer: dict) -> dict:
    if answer.get("status") == "FAILED":
        return {"error": answer.get("error")}
    return answer.get("output", answer)


def run_remote(url: str, payload: dict) -> dict:
    return outcome(post(f"{url.rstrip('/')}/runsync", payload))


def run_async(url: str, payload: dict, poll_seconds: float = 0.5, timeout: float = 3600) -> dict:
    """POST /run, then POST /status/<id> until the job is COMPLETED or FAILED."""
    base = url.rstrip("/")
    job_id = post(f"{base}/run", payload)["id"]
    print(f"job {job_id} queued", flush=True)
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        answer = post(f"{base}/status/{job_id}")
        status = answer.get("status")
        if status in ("COMPLETED", "FAILED", "CANCELLED", "TIMED_OUT"):
            print(f"job {job_id} {status.lower()}", flush=True)
            return outcome(answer)
        time.sleep(poll_seconds)
    raise SystemExit(f"job {job_id} did not finish within {timeout:.0f} s")


def save_audio(result: dict, path: Path) -> None:
    if "audio_base64" in result:
        path.write_bytes(base64.b64decode(result["audio_base64"]))
    elif "audio_url" in result:
        with urllib.request.urlopen(result["audio_url"], timeout=600) as response:
            path.write_bytes(response.read())
    else:
        raise SystemExit("the result has no audio to save")
    print(f"saved {path} ({path.stat().st_size} bytes)")


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description="Send one job to the tts-runner worker.")
    parser.add_argument("--text", help="text to speak")
    parser.add_argument("--voice", help="voice for the text, or default voice for segments")
    parser.add_argument("--segments", help="JSON list of {text, voice}, inline or a file")
    parser.add_argument("--payload", help="a JSON file: a whole payload {\"input\": {...}} or just the input")
    parser.add_argument("--format", choices=["wav", "mp3", "flac", "opus", "pcm"], help="output_format")
    parser.add_argument("--save", type=Path, help="write the audio here")
    parser.add_argument("--url", help="base URL of a local RunPod API (else run in-process)")
    parser.add_argument("--async", dest="asynchronous", action="store_true",
                        help="with --url: POST /run and poll POST /status/<id> instead of /runsync")
    args = parser.parse_args(argv)
    if args.asynchronous and not args.url:
        parser.error("--async needs --url")

    payload = build_payload(args)
    started = time.perf_counter()
    if args.url:
        result = (run_async if args.asynchronous else run_remote)(args.url, payload)
    else:
        result = run_local(payload)
    elapsed = time.perf_counter() - started
    shown = {k: (f"<{len(v)} base64 characters>" if k == "audio_base64" else v) for k, v in result.items()}
    print(json.dumps(shown, indent=2))
    print(f"round trip {elapsed:.2f} s")
    if "error" in result:
        return 1
    if args.save:
        save_audio(result, args.save)
    return 0


if __name__ == "__main__":
    sys.exit(main())
