"""The soak's workload (tts_runner/tools/soak.py): what each job is, how it is sent to a target, and
how its answer is checked with other code than the worker's (tts_runner/tools/decoded.py: ffmpeg,
`wave`, byte counts).

A job is drawn from a seeded mix: short and long texts, segments with several voices, every output
format, streams, clones from a reference (inline and saved), jobs the client abandons part-way,
hostile payloads (a fixed share), and bursts of long jobs past the queue limit. Its outcome is one
of OUTCOMES; `bad` (an answer that fails its check) and `lost` (no answer within the job's time
limit, a connection refused or cut) are the ones that fail a soak.
"""

from __future__ import annotations

import base64
import json
import random
import re
from dataclasses import dataclass, field
from pathlib import Path

from tts_runner.audio.formats import FORMATS
from tts_runner.audio.streams import STREAM_FORMATS
from tts_runner.tools.decoded import file_seconds, lengths_agree

OUTCOMES = ("ok", "busy", "refused", "abandoned", "timed_out", "failed", "bad", "lost")
# "failed": a good job's generation failed and its error names the part (the tiny models' noise may
# run on past the runaway guard; a stream cannot take back what it sent, so it ends with that error)
NAMES_THE_PART = re.compile(r"segment \d+ of \d+, chunk \d+ of \d+")
# a stream's joined pieces of these formats carry no gapless information: their decoded length is
# the audio's within a codec frame or two (an Opus or AAC frame, an MP3 frame), not to the sample
LOOSE_SECONDS = 0.2
MIX = {"short": 30, "long": 8, "segments": 10, "stream": 16, "clone_inline": 7, "clone_saved": 7, "abandon": 7}
VOICES = ("male_1", "male_2", "female_1", "female_2")
OPENAI_VOICES = ("alloy", "nova", "echo", "shimmer")
REFERENCE = Path(__file__).resolve().parents[2] / "jobs" / "voices" / "anna.wav"
REFERENCE_SAYS = "Hello, I am Anna, and this is how I sound when I read the news."
SAVED = "soak_voice"  # the HTTP target's uploaded voice (the queue target's saved voice is conf's `anna`)


class Failed(Exception):
    """An answer that fails its check (outcome `bad`)."""


@dataclass
class Work:
    index: int
    kind: str          # a MIX key, "hostile" or "burst"
    text: str = ""
    segments: list = field(default_factory=list)
    fmt: str = "wav"
    voice: str = "male_1"
    hostile: int = 0   # which hostile payload
    abandon_after: float = 0.0  # seconds (queue: the client's timeout) or bytes read (HTTP: then it leaves)
    seed: int = 0


class Mix:
    """Seeded jobs: `next()` is the next one (thread-safe through the caller's lock)."""

    def __init__(self, sentences: list[str], seed: int, hostile_share: float, hostile_count: int):
        self.sentences, self.rng = sentences, random.Random(seed)
        self.hostile_share, self.hostile_count = hostile_share, hostile_count
        self.count = 0

    def long_text(self, low: int = 4, high: int = 8) -> str:
        return " ".join(self.rng.choice(self.sentences) for _ in range(self.rng.randint(low, high)))

    def next(self, kind: str | None = None) -> Work:
        rng, self.count = self.rng, self.count + 1
        if kind is None:
            kind = ("hostile" if rng.random() < self.hostile_share else
                    rng.choices(list(MIX), weights=list(MIX.values()))[0])
        work = Work(self.count, kind, text=rng.choice(self.sentences), fmt=rng.choice(FORMATS),
                    voice=rng.choice(VOICES), seed=rng.randrange(2**31))
        if kind in ("long", "burst"):
            work.text = self.long_text()
        elif kind == "segments":
            work.segments = [{"text": rng.choice(self.sentences), "voice": rng.choice(VOICES)}
                             for _ in range(rng.randint(2, 4))]
        elif kind == "stream":
            work.fmt = rng.choice(STREAM_FORMATS)
        elif kind == "hostile":
            work.hostile = rng.randrange(self.hostile_count)
        elif kind == "abandon":
            work.text, work.abandon_after = self.long_text(2, 4), rng.uniform(0.3, 3.0)
        return work


def _reference() -> str:
    return base64.b64encode(REFERENCE.read_bytes()).decode("ascii")


def check_audio(data: bytes, fmt: str, seconds: float | None, exact: bool = True) -> float:
    """The decoded length of `data`; Failed unless it decodes, is not empty, and (given `seconds`)
    agrees with it: to the millisecond (AAC: its priming and padding frames), or, not `exact`,
    within LOOSE_SECONDS."""
    if fmt == "wav" and data[4:8] == b"\xff\xff\xff\xff":  # a streamed WAV: its header says "unknown length"
        data, fmt = data[44:], "pcm"
    try:
        found = file_seconds(data, fmt)
    except Exception as exc:  # noqa: BLE001 - whatever the decoder says, the answer is bad
        raise Failed(f"{fmt} audio of {len(data)} bytes does not decode: {str(exc)[-200:]}") from None
    if found <= 0:
        raise Failed(f"{fmt} audio decodes to nothing ({len(data)} bytes)")
    if seconds is not None:
        if exact and not lengths_agree(found, fmt, seconds):
            raise Failed(f"{fmt} audio decodes to {found:.4f} s, its metadata says {seconds:.4f} s")
        if not exact and abs(found - seconds) > LOOSE_SECONDS:
            raise Failed(f"{fmt} stream decodes to {found:.4f} s, its metadata says {seconds:.4f} s")
    return found


# ---- the queue worker (handler.py --rp_serve_api, RunPod's local API) --------------------------------
QUEUE_HOSTILE = [  # (input, a word its error must name)
    ({"text": 5}, "$.text"),
    ({"text": "Hi.", "voice": "../../etc/passwd"}, "voice"),
    ({"text": "x" * 20001}, "$.text"),
    ({"text": "Hi.", "output_format": "exe"}, "output_format"),
    ({"text": "Hi.", "params": {"temperature": -1}}, "temperature"),
    ({"segments": []}, "segments"),
    ({"text": "Hi.", "params": {"top_k": "many"}}, "top_k"),
    ({"text": "Hi.", "ref_audio": "bm90IGF1ZGlv"}, "ref_audio"),
]


class QueueTarget:
    name = "queue"
    hostile = QUEUE_HOSTILE

    def __init__(self, url: str):
        self.url = url

    def session(self):
        import requests

        return requests.Session()

    def payload(self, work: Work) -> dict:
        job = {"params": {"seed": work.seed}, "output_format": work.fmt, "voice": work.voice}
        if work.segments:
            job["segments"] = work.segments
        else:
            job["text"] = work.text
        if work.kind == "clone_inline":
            job.update(model="1.7B-Base", ref_audio=_reference(), ref_text=REFERENCE_SAYS)
            del job["voice"]
        elif work.kind == "clone_saved":
            job.update(model="1.7B-Base", voice="anna")
        return job

    def send(self, session, work: Work, timeout: float) -> str:
        import requests

        if work.kind == "hostile":
            body, word = self.hostile[work.hostile]
            answer = session.post(f"{self.url}/runsync", json={"input": body}, timeout=timeout).json()
            return _clear(answer_error(answer), word)
        job = self.payload(work)
        if work.kind == "stream":
            job["stream"] = True  # the queue worker streams MP3 frames for an mp3 job, raw PCM16 for any other
            job["output_format"] = work.fmt if work.fmt in ("mp3", "pcm") else "pcm"
            started = session.post(f"{self.url}/run", json={"input": job}, timeout=timeout).json()
            answer = session.post(f"{self.url}/stream/{started['id']}", timeout=timeout).json()
            return self._stream(answer, work)
        try:
            answer = session.post(f"{self.url}/runsync", json={"input": job},
                                  timeout=work.abandon_after or timeout).json()
        except requests.Timeout:
            if work.abandon_after:
                return "abandoned"  # the client left; the worker makes the job and drops its answer
            raise
        return self._whole(answer, work)

    def _whole(self, answer: dict, work: Work) -> str:
        error = answer_error(answer)
        if error is not None:
            return _expected(error)
        out = answer["output"][0]
        check_audio(base64.b64decode(out["audio_base64"]), work.fmt, out["metadata"]["duration_seconds"])
        return "ok"

    def _stream(self, answer: dict, work: Work) -> str:
        pieces = [p["output"] for p in answer.get("stream", [])]
        error = answer.get("error") or next((p["error"] for p in pieces if "error" in p), None)
        if error is not None:
            return _expected(error)
        if not pieces or "metadata" not in pieces[-1]:
            raise Failed(f"a stream of {len(pieces)} pieces without its metadata at the end")
        data = b"".join(base64.b64decode(p["audio_base64"]) for p in pieces)
        check_audio(data, pieces[0]["format"], pieces[-1]["metadata"]["duration_seconds"],
                    exact=pieces[0]["format"] in ("pcm", "wav"))
        return "ok"

    def burst(self, session, work: Work, timeout: float) -> str:
        answer = session.post(f"{self.url}/runsync", json={"input": self.payload(work)}, timeout=timeout).json()
        return self._whole(answer, work)


def answer_error(answer: dict) -> str | None:
    """The error of a local-API answer (top level, or the generator handler's one item), or None."""
    if answer.get("error"):
        return str(answer["error"])
    output = answer.get("output")
    if isinstance(output, list) and output and isinstance(output[0], dict) and "error" in output[0]:
        return str(output[0]["error"])
    if not isinstance(output, list) or not output:
        raise Failed(f"an answer with neither audio nor an error: {json.dumps(answer)[:300]}")
    return None


def _expected(error: str) -> str:
    """The outcome of an error answer to a good job: busy and the time limit are clear errors a
    loaded worker may give; anything else is bad."""
    if error.startswith("Worker busy"):
        return "busy"
    if "ran past its time limit" in error:
        return "timed_out"
    if error.startswith("Generation failed") and NAMES_THE_PART.search(error):
        return "failed"
    raise Failed(f"a good job was answered with an error: {error[:300]}")


def _clear(error: str | None, word: str) -> str:
    if not error:
        raise Failed(f"a hostile payload was answered without an error (its field: {word})")
    if word not in error:
        raise Failed(f"the error for a bad {word} does not name it: {error[:300]}")
    return "refused"


# ---- the HTTP server (python -m tts_runner.serve) -----------------------------------------------------
HTTP_HOSTILE = [  # (raw body, the status and the param its error must have)
    (b'{"input": "Hi.", "voice": ', 400, None),
    (json.dumps({"input": 5, "voice": "alloy"}).encode(), 400, "input"),
    (json.dumps({"input": "Hi.", "voice": "../../etc/passwd"}).encode(), 400, "voice"),
    (json.dumps({"input": "x" * 20001, "voice": "alloy"}).encode(), 400, "input"),
    (json.dumps({"input": "Hi.", "voice": "alloy", "response_format": "exe"}).encode(), 400, "response_format"),
    (json.dumps({"input": "Hi.", "voice": "alloy", "speed": 10}).encode(), 400, "speed"),
    (json.dumps({"input": "Hi.", "voice": "alloy", "model": "gpt-9"}).encode(), 404, "model"),
    (json.dumps([1, 2, 3]).encode(), 400, None),
]


class HttpTarget:
    name = "http"
    hostile = HTTP_HOSTILE

    def __init__(self, url: str, log: Path | None = None):
        self.url, self.log = url, log

    def session(self):
        import httpx

        return httpx.Client(timeout=None)

    def prepare(self) -> None:
        """Upload the saved voice the clone_saved jobs use (replacing one of a run before)."""
        import httpx

        httpx.delete(f"{self.url}/v1/audio/voices/{SAVED}", timeout=60)
        saved = httpx.post(f"{self.url}/v1/audio/voices", data={"name": SAVED, "ref_text": REFERENCE_SAYS},
                           files={"audio_sample": ("anna.wav", REFERENCE.read_bytes(), "audio/wav")}, timeout=120)
        if saved.status_code != 201:
            raise RuntimeError(f"could not save the soak's voice: {saved.status_code} {saved.text[:300]}")

    def body(self, work: Work) -> dict:
        body = {"input": work.text, "voice": OPENAI_VOICES[work.index % len(OPENAI_VOICES)], "response_format": work.fmt,
                "seed": work.seed}
        if work.kind == "segments":  # OpenAI's body has one voice: the segments go through /v1/tts instead
            body["input"] = " ".join(s["text"] for s in work.segments)
        if work.kind == "clone_inline":
            body.update(ref_audio=_reference(), ref_text=REFERENCE_SAYS)
            del body["voice"]
        elif work.kind == "clone_saved":
            body.update(model="tts-1", voice=SAVED)
        return body

    def send(self, session, work: Work, timeout: float) -> str:
        if work.kind == "hostile":
            raw, status, param = self.hostile[work.hostile]
            r = session.post(f"{self.url}/v1/audio/speech", content=raw, timeout=timeout,
                             headers={"Content-Type": "application/json"})
            return _refused(r, status, param)
        if work.kind == "segments":
            return self._tts(session, work, timeout)
        if work.kind in ("stream", "abandon"):
            return self._stream(session, work, timeout)
        return self.whole(session, work, timeout)

    def whole(self, session, work: Work, timeout: float) -> str:
        r = session.post(f"{self.url}/v1/audio/speech", json=self.body(work), timeout=timeout)
        if r.status_code != 200:
            return _http_error(r)
        check_audio(r.content, self.body(work)["response_format"], float(r.headers["x-audio-duration"]))
        return "ok"

    burst = whole

    def _tts(self, session, work: Work, timeout: float) -> str:
        """Segments with several voices, as the queue worker takes them, on /v1/tts."""
        job = {"segments": work.segments, "output_format": work.fmt, "params": {"seed": work.seed}}
        r = session.post(f"{self.url}/v1/tts", json={"input": job}, timeout=timeout)
        answer = r.json()  # the queue worker's answer, as it gives it
        if "error" in answer:
            return _expected(str(answer["error"]))
        check_audio(base64.b64decode(answer["audio_base64"]), work.fmt, answer["metadata"]["duration_seconds"])
        return "ok"

    def _stream(self, session, work: Work, timeout: float) -> str:
        """A raw audio stream (or SSE for every other one); an `abandon` job leaves after its first bytes."""
        sse = work.kind == "stream" and work.index % 2 == 0
        fmt = "pcm" if sse or work.kind == "abandon" else work.fmt
        body = {**self.body(work), "response_format": fmt, "stream_format": "sse" if sse else "audio"}
        data, done = bytearray(), False
        with session.stream("POST", f"{self.url}/v1/audio/speech", json=body, timeout=timeout) as r:
            if r.status_code != 200:
                r.read()
                return _http_error(r)
            if sse:
                for line in r.iter_lines():
                    if not line.startswith("data: "):
                        continue
                    event = json.loads(line[6:])
                    if event.get("type") == "speech.audio.delta":
                        data += base64.b64decode(event["audio"])
                    elif event.get("type") == "speech.audio.done":
                        done = event["usage"]["output_tokens"] > 0
                    elif event.get("type") == "error":
                        return _expected(str(event.get("error", {}).get("message", event)))
                if not done:
                    raise Failed("an SSE stream without its speech.audio.done event")
            else:
                try:
                    for piece in r.iter_bytes():
                        data += piece
                        if work.kind == "abandon" and len(data) >= 4800 * work.abandon_after:
                            return "abandoned"  # the client leaves: the stream's rows go back at the next check
                except Exception:  # noqa: BLE001 - cut off: a failure the log names, or a lost stream
                    return self._cut_off(r.headers.get("x-request-id", ""))
        check_audio(bytes(data), fmt, None)
        return "ok"


    def _cut_off(self, request_id: str) -> str:
        """A raw audio stream that broke off: `failed` when the server's log gives the job's error
        naming the part (a raw stream's only way to say it failed is to end without its last chunk)."""
        if request_id and self.log is not None:
            for line in self.log.read_text(errors="replace").splitlines():
                if f"Job {request_id} failed: " in line:
                    return _expected(line.split(f"Job {request_id} failed: ", 1)[1])
        raise ConnectionError(f"the raw audio stream {request_id or '(no X-Request-Id)'} broke off and the "
                              "server's log gives no error for it")


def _refused(r, status: int, param: str | None) -> str:
    try:
        error = r.json()["error"]
    except Exception:  # noqa: BLE001
        raise Failed(f"a hostile request got {r.status_code} without OpenAI's error envelope: {r.text[:200]}") from None
    if r.status_code != status or (param is not None and error.get("param") != param) or not error.get("message"):
        raise Failed(f"a hostile request (param {param}) got {r.status_code} {json.dumps(error)[:300]}; "
                     f"expected {status} naming it")
    return "refused"


def _http_error(r) -> str:
    try:
        error = r.json()["error"]
    except Exception:  # noqa: BLE001
        raise Failed(f"status {r.status_code} without OpenAI's error envelope: {r.text[:200]}") from None
    if r.status_code == 429 and error.get("code") == "queue_full":
        return "busy"
    if r.status_code == 504 and error.get("code") == "timeout":
        return "timed_out"
    if r.status_code == 500 and error.get("code") == "generation_failed":
        return _expected(str(error.get("message")))
    raise Failed(f"a good request got {r.status_code}: {json.dumps(error)[:300]}")
