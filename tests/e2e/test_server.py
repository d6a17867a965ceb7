"""The HTTP server (tts_runner/server/) with real clients on 127.0.0.1: the `openai` SDK for speech,
streams and SSE, httpx for the rest. Audio is checked by other code (ffmpeg decodes it, durations are
compared); the server runs on the session's tiny-model worker."""

from __future__ import annotations

import base64
import json
import socket
import threading
import time
from dataclasses import replace
from pathlib import Path

import httpx
import openai
import pytest
from httpx_sse import connect_sse

from tests.helpers.media import agrees, file_seconds
from tests.helpers.servers import in_process
from tts_runner.edge import build
from tts_runner.server.app import create_app
from tts_runner.server.service import Service
from tts_runner.voice.saved import StoreBounds

SPEECH = Path(__file__).resolve().parents[1] / "fixtures" / "speech" / "clean.wav"
TEXT = "Hello there. This is a test of the speech server."


def make_service(worker, tmp_path, **changes) -> Service:
    settings = replace(build.server(worker.cfg.server, list(worker.cfg.models.variants)),
                       voices_dir=tmp_path / "voices", **changes)
    service = Service(worker.cfg, settings)
    service.load(worker)
    return service


@pytest.fixture(scope="module")
def server(worker, tmp_path_factory):
    service = make_service(worker, tmp_path_factory.mktemp("server"))
    with in_process(create_app(service)) as url:
        yield url, service


@pytest.fixture
def client(server):
    return openai.OpenAI(base_url=f"{server[0]}/v1", api_key="unused", max_retries=0, timeout=120)


def error_of(response: httpx.Response) -> dict:
    body = response.json()
    assert set(body) == {"error"} and set(body["error"]) == {"message", "type", "param", "code"}, body
    return body["error"]


@pytest.mark.parametrize("fmt", ["mp3", "opus", "aac", "flac", "wav", "pcm"])
def test_every_format_through_the_sdk_decodes_to_the_duration_it_reports(client, fmt):
    raw = client.audio.speech.with_raw_response.create(model="tts-1-hd", voice="alloy", input=TEXT,
                                                       response_format=fmt)
    data = raw.content
    assert raw.headers["content-type"].startswith("audio/")
    assert agrees(data, fmt, float(raw.headers["x-audio-duration"]))  # decoded by ffmpeg / wave


@pytest.mark.parametrize("fmt", ["pcm", "wav", "mp3", "opus", "aac"])
def test_streamed_audio_comes_in_pieces_and_decodes(client, fmt):
    pieces = []
    with client.audio.speech.with_streaming_response.create(model="tts-1-hd", voice="nova", input=TEXT,
                                                            response_format=fmt, extra_body={"stream_format": "audio"}) as r:
        assert r.headers.get("transfer-encoding") == "chunked"
        pieces = [p for p in r.iter_bytes() if p]
    data = b"".join(pieces)
    assert file_seconds(data.replace(b"\xff\xff\xff\xff", b"\x00\x00\x00\x00", 2) if fmt == "wav" else data,
                        fmt if fmt != "wav" else "pcm") > 0.5


def test_sse_sends_deltas_then_done_with_usage(server):
    url, _ = server
    with httpx.Client(timeout=120) as http, connect_sse(http, "POST", f"{url}/v1/audio/speech", json={
            "model": "gpt-4o-mini-tts", "voice": "coral", "input": TEXT, "response_format": "pcm",
            "stream_format": "sse"}) as events:
        kinds, audio, done = [], b"", None
        for event in events.iter_sse():
            data = json.loads(event.data)
            kinds.append(data["type"])
            if data["type"] == "speech.audio.delta":
                audio += base64.b64decode(data["audio"])
            else:
                done = data
    assert kinds[-1] == "speech.audio.done" and set(kinds[:-1]) == {"speech.audio.delta"}, kinds
    usage = done["usage"]
    assert usage["total_tokens"] == usage["input_tokens"] + usage["output_tokens"] and usage["input_tokens"] > 0
    seconds = file_seconds(audio, "pcm")
    assert abs(usage["output_tokens"] - seconds * 12.5) <= 1  # the codec frames of the audio sent


def test_sixteen_concurrent_requests_are_all_answered(client):
    results, errors = [], []

    def one(i):
        try:
            raw = client.audio.speech.with_raw_response.create(model="tts-1-hd", voice="echo", input=f"Request {i}. {TEXT}",
                                                               response_format="wav")
            results.append(agrees(raw.content, "wav", float(raw.headers["x-audio-duration"])))
        except Exception as exc:  # noqa: BLE001
            errors.append(exc)

    threads = [threading.Thread(target=one, args=(i,)) for i in range(16)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(300)
    assert not errors and results == [True] * 16


def test_speed_divides_the_duration(client):
    durations = {}
    for speed in (1.0, 2.0):
        raw = client.audio.speech.with_raw_response.create(model="tts-1-hd", voice="alloy", input=TEXT, speed=speed,
                                                           response_format="wav", extra_body={"seed": 5})
        durations[speed] = float(raw.headers["x-audio-duration"])
        assert agrees(raw.content, "wav", durations[speed])
    assert durations[2.0] == pytest.approx(durations[1.0] / 2, rel=0.03)


def test_a_client_that_leaves_mid_stream_gives_its_rows_back(server, monkeypatch):
    url, service = server
    cancelled = threading.Event()
    original = service.cancel
    monkeypatch.setattr(service, "cancel", lambda ticket: (original(ticket), cancelled.set()))
    long_text = " ".join(f"Sentence number {i} of a long text that keeps going." for i in range(40))
    with httpx.Client(timeout=120) as http, http.stream("POST", f"{url}/v1/audio/speech", json={
            "input": long_text, "voice": "alloy", "response_format": "pcm", "stream_format": "audio"}) as r:
        assert r.status_code == 200
        next(r.iter_bytes())  # some audio, then the client goes away
    assert cancelled.wait(60)
    scheduler = service.worker.store.get("1.7B-CustomVoice").scheduler
    assert scheduler.wait_idle(60), "the cancelled stream's chunks still hold rows"


def test_a_client_that_stops_reading_holds_a_bounded_buffer_then_is_dropped(worker, tmp_path):
    """A client that opens a long stream and never reads (its socket's receive buffer 4 KB): the
    server holds at most server.stream_buffer_bytes for it, drops it once it has made no room for
    server.stream_stall_seconds, and gives its rows back; another stream meanwhile is served whole."""
    limit = 200_000  # about two pieces of pcm (24 frames each)
    service = make_service(worker, tmp_path, stream_buffer_bytes=limit, stream_stall_seconds=1.0)
    long_text = " ".join(f"Sentence number {i} of a text that goes on for a long while." for i in range(120))
    body = json.dumps({"input": long_text, "voice": "alloy", "response_format": "pcm", "stream_format": "audio"})
    with in_process(create_app(service)) as url:
        host, port = url.removeprefix("http://").split(":")
        slow = socket.socket()
        slow.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)
        slow.connect((host, int(port)))
        slow.sendall(f"POST /v1/audio/speech HTTP/1.1\r\nHost: {host}\r\nContent-Type: application/json\r\n"
                     f"Content-Length: {len(body)}\r\n\r\n{body}".encode())
        assert slow.recv(64).startswith(b"HTTP/1.1 200")  # its stream has begun; it reads no more
        with httpx.Client(timeout=120) as http:  # another client's stream, read as it comes
            other = http.post(f"{url}/v1/audio/speech", json={"input": TEXT, "voice": "alloy", "response_format": "wav",
                                                               "stream_format": "audio"})
        assert other.status_code == 200 and file_seconds(other.content, "wav") > 0.5
        deadline = time.monotonic() + 120
        while service.stream_drops == 0:
            assert time.monotonic() < deadline, "the slow client's stream was never dropped"
            threading.Event().wait(0.05)
        assert service.worker.store.get("1.7B-CustomVoice").scheduler.wait_idle(60), "its rows were not given back"
        assert 0 < service.stream_peak_bytes <= limit and service.buffered_bytes() == 0
        slow.close()
        assert httpx.post(f"{url}/v1/audio/speech", json={"input": "Still serving.", "voice": "alloy"},
                          timeout=120).status_code == 200


@pytest.mark.parametrize("body, status, param, code", [
    ({"input": "hi", "voice": "alloy", "speed": 9}, 400, "speed", "invalid_value"),
    ({"input": "", "voice": "alloy"}, 400, "input", "invalid_value"),
    ({"voice": "alloy"}, 400, "input", "missing_required_parameter"),
    ({"input": "hi", "voice": "alloy", "response_format": "ogg"}, 400, "response_format", "invalid_value"),
    ({"input": "hi", "voice": "alloy", "temprature": 0.5}, 400, "temprature", "unknown_parameter"),
    ({"input": "hi", "voice": "alloy", "temperature": "hot"}, 400, "temperature", "invalid_value"),
    ({"input": "hi", "voice": "alloy", "response_format": "flac", "stream_format": "audio"}, 400, "response_format",
     "invalid_value"),
    ({"input": "hi", "voice": "nobody"}, 404, "voice", "voice_not_found"),
    ({"input": "hi", "voice": "../../etc/passwd"}, 400, "voice", "invalid_value"),  # never a path
    ({"input": "hi", "voice": "alloy", "model": "tts-9"}, 404, "model", "model_not_found"),
])
def test_bad_requests_get_openais_envelope_with_the_status_that_fits(server, body, status, param, code):
    response = httpx.post(f"{server[0]}/v1/audio/speech", json=body, timeout=60)
    assert response.status_code == status
    error = error_of(response)
    assert (error["param"], error["code"]) == (param, code), error


def test_the_sdk_raises_the_statuses(client):
    with pytest.raises(openai.NotFoundError):
        client.audio.speech.create(model="tts-1", voice="nobody", input="hi")
    with pytest.raises(openai.BadRequestError):
        client.audio.speech.create(model="tts-1", voice="alloy", input="hi", speed=0.1)


def test_body_limits_and_malformed_json(worker, tmp_path):
    service = make_service(worker, tmp_path, max_body_bytes=1000, body_timeout_seconds=1.0)
    with in_process(create_app(service)) as url:
        assert error_of(httpx.post(f"{url}/v1/audio/speech", content=b"{" * 10, timeout=30))["code"] == "invalid_json"
        huge = httpx.post(f"{url}/v1/audio/speech", json={"input": "x" * 5000, "voice": "alloy"}, timeout=30)
        assert huge.status_code == 413 and error_of(huge)["code"] == "body_too_large"
        port = int(url.rsplit(":", 1)[1])
        with socket.create_connection(("127.0.0.1", port), timeout=30) as slow:  # a slowloris: headers, then little
            slow.sendall(b"POST /v1/audio/speech HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\n"
                         b"Content-Length: 500\r\n\r\n{\"input\":")
            answer = slow.recv(4096)
        assert b" 408 " in answer.split(b"\r\n")[0]
        assert httpx.get(f"{url}/ping").status_code == 200  # still serving


def test_an_api_key_guards_every_v1_route_but_not_ping(worker, tmp_path):
    service = make_service(worker, tmp_path, api_key="s3cret-key")
    with in_process(create_app(service)) as url:
        assert httpx.get(f"{url}/ping").status_code == 200
        for headers in ({}, {"Authorization": "Bearer wrong"}, {"Authorization": "s3cret-key"}):
            response = httpx.get(f"{url}/v1/models", headers=headers)
            assert response.status_code == 401 and error_of(response)["code"] == "invalid_api_key"
        sdk = openai.OpenAI(base_url=f"{url}/v1", api_key="s3cret-key", max_retries=0)
        assert "tts-1" in [m.id for m in sdk.models.list()]
        assert sdk.audio.speech.create(model="tts-1-hd", voice="alloy", input="Hi.", response_format="wav").read()
        with pytest.raises(openai.AuthenticationError):
            openai.OpenAI(base_url=f"{url}/v1", api_key="nope", max_retries=0).models.list()


def test_not_ready_is_503_and_ping_204(worker, tmp_path):
    settings = build.server(worker.cfg.server, list(worker.cfg.models.variants))
    service = Service(worker.cfg, replace(settings, voices_dir=tmp_path))  # never loaded
    with in_process(create_app(service)) as url:
        assert httpx.get(f"{url}/ping").status_code == 204
        response = httpx.post(f"{url}/v1/audio/speech", json={"input": "hi", "voice": "alloy"})
        assert response.status_code == 503 and error_of(response)["code"] == "not_ready"


def test_a_full_queue_is_429(worker, tmp_path, monkeypatch):
    service = make_service(worker, tmp_path)
    scheduler = worker.store.get("1.7B-CustomVoice").scheduler
    monkeypatch.setattr(scheduler, "queue_limit", 1)
    long_text = " ".join(f"Sentence number {i} of a long text." for i in range(10))
    with in_process(create_app(service)) as url:
        for stream in ({}, {"stream_format": "audio", "response_format": "pcm"}):
            response = httpx.post(f"{url}/v1/audio/speech", json={"input": long_text, "voice": "alloy", **stream},
                                  timeout=60)
            assert response.status_code == 429 and error_of(response)["code"] == "queue_full"


def test_a_burst_of_ten_times_the_queue_limit_is_refused_at_once_then_served(worker, tmp_path, monkeypatch):
    """40 one-chunk requests at once against a queue limit of 4, with admission held (no chunk leaves
    the queue): the 36 beyond the limit are answered 429 while the hold is still on, so "at once" is
    an event, not a time; the 4 queued are then made, and the server serves as before."""
    from concurrent.futures import ThreadPoolExecutor

    service = make_service(worker, tmp_path)
    scheduler = worker.store.get("1.7B-CustomVoice").scheduler
    monkeypatch.setattr(scheduler, "queue_limit", 4)
    with in_process(create_app(service)) as url, httpx.Client(timeout=120) as http, ThreadPoolExecutor(40) as pool:
        def post(i: int) -> httpx.Response:
            return http.post(f"{url}/v1/audio/speech", json={"input": f"Request {i}.", "voice": "alloy",
                                                              "response_format": "wav"})

        with scheduler.held():
            futures = [pool.submit(post, i) for i in range(40)]
            deadline = time.monotonic() + 120
            while sum(f.done() for f in futures) < 36:
                assert time.monotonic() < deadline, "the requests beyond the queue limit were not refused"
                threading.Event().wait(0.01)
            refused = [f.result() for f in futures if f.done()]
            assert scheduler.load == (0, 4)  # nothing was made while the burst was refused
        answers = [f.result() for f in futures]
        monkeypatch.setattr(scheduler, "queue_limit", 4096)
        assert http.post(f"{url}/v1/audio/speech", json={"input": "Served as before.", "voice": "alloy"}).status_code == 200
    assert len(refused) == 36 and all(r.status_code == 429 for r in refused)
    assert all(error_of(r)["code"] == "queue_full" and error_of(r)["message"].startswith("Worker busy: 4 chunks are "
               "waiting") for r in refused)
    served = [r for r in answers if r.status_code == 200]
    assert len(served) == 4 and all(file_seconds(r.content, "wav") > 0 for r in served)


def test_voices_are_saved_listed_used_kept_across_restarts_and_deleted(worker, tmp_path):
    service = make_service(worker, tmp_path)
    with in_process(create_app(service)) as url:
        listed = httpx.get(f"{url}/v1/audio/voices").json()["voices"]
        assert {"name": "alloy", "type": "openai", "speaker": "ryan"} in listed
        with open(SPEECH, "rb") as recording:
            saved = httpx.post(f"{url}/v1/audio/voices", data={"name": "narrator", "ref_text": "The quick brown fox."},
                               files={"audio_sample": ("clean.wav", recording, "audio/wav")}, timeout=60)
        assert saved.status_code == 201, saved.text
        again = httpx.post(f"{url}/v1/audio/voices", data={"name": "narrator"},
                           files={"audio_sample": ("clean.wav", SPEECH.read_bytes(), "audio/wav")})
        assert again.status_code == 400 and "saved already" in error_of(again)["message"]
        noise = httpx.post(f"{url}/v1/audio/voices", data={"name": "noise"},
                           files={"audio_sample": ("x.wav", b"RIFF not audio", "audio/wav")})
        assert noise.status_code == 400 and error_of(noise)["param"] == "audio_sample"
        bad_name = httpx.post(f"{url}/v1/audio/voices", data={"name": "../escape"},
                              files={"audio_sample": ("clean.wav", SPEECH.read_bytes(), "audio/wav")})
        assert bad_name.status_code == 400 and not (tmp_path / "escape").exists()
    restarted = make_service(worker, tmp_path)  # a new server on the same folder
    with in_process(create_app(restarted)) as url:
        assert {"name": "narrator", "type": "saved"}.items() <= next(
            v for v in httpx.get(f"{url}/v1/audio/voices").json()["voices"] if v["name"] == "narrator").items()
        spoken = httpx.post(f"{url}/v1/audio/speech", json={"model": "tts-1", "voice": "narrator", "input": "Hello.",
                                                            "response_format": "wav"}, timeout=120)
        assert spoken.status_code == 200 and agrees(spoken.content, "wav", float(spoken.headers["x-audio-duration"]))
        wrong_model = httpx.post(f"{url}/v1/audio/speech", json={"model": "1.7B-CustomVoice", "voice": "narrator",
                                                                 "input": "Hello."})
        assert wrong_model.status_code == 400 and error_of(wrong_model)["param"] == "model"
        assert httpx.delete(f"{url}/v1/audio/voices/narrator").json()["deleted"] is True
        gone = httpx.post(f"{url}/v1/audio/speech", json={"model": "tts-1", "voice": "narrator", "input": "Hello."})
        assert gone.status_code == 404
        assert httpx.delete(f"{url}/v1/audio/voices/narrator").status_code == 404


def test_v1_tts_answers_as_the_queue_worker_does(server, worker):
    url, _ = server
    payload = {"text": "The same seed, the same bytes.", "output_format": "wav", "params": {"seed": 123}}
    queue = worker.handle({"id": "q", "input": payload})
    http = httpx.post(f"{url}/v1/tts", json={"input": payload}, timeout=120)
    assert http.status_code == 200
    assert base64.b64decode(http.json()["audio_base64"]) == base64.b64decode(queue["audio_base64"])
    assert {k: v for k, v in http.json()["metadata"].items() if k != "generation_time_seconds"} == \
        {k: v for k, v in queue["metadata"].items() if k != "generation_time_seconds"}
    bad = httpx.post(f"{url}/v1/tts", json={"input": {"text": "x", "params": {"top_k": -1}}})
    assert bad.status_code == 400 and bad.json()["error"] == worker.handle({"input": {"text": "x", "params": {"top_k": -1}}})["error"]
    assert "traceback" in bad.json()


def test_v1_tts_streams_json_lines_when_the_input_asks(server):
    url, _ = server
    with httpx.Client(timeout=120) as http, http.stream("POST", f"{url}/v1/tts", json={
            "input": {"text": TEXT, "stream": True, "output_format": "pcm"}}) as r:
        lines = [json.loads(line) for line in r.iter_lines() if line]
    assert [p["piece"] for p in lines] == list(range(len(lines))) and "metadata" in lines[-1]
    audio = b"".join(base64.b64decode(p["audio_base64"]) for p in lines)
    assert file_seconds(audio, "pcm") == pytest.approx(lines[-1]["metadata"]["duration_seconds"], abs=0.002)


def test_hostile_requests_leave_it_serving(server):
    url, _ = server
    hostile = [b"", b"null", b"[]", b"\"text\"", b"{\"input\": 5}", b"{\"input\": [\"a\"]}",
               b"{\"input\": \"hi\", \"voice\": {\"id\": [1]}}", b"[" * 100000, b"\xff\xfe\x00",
               json.dumps({"input": "hi", "voice": "alloy", "speed": float("nan")}).encode(),
               json.dumps({"input": "hi", "voice": "a" * 10000}).encode()]
    for body in hostile:
        response = httpx.post(f"{url}/v1/audio/speech", content=body, headers={"content-type": "application/json"},
                              timeout=60)
        assert 400 <= response.status_code < 500, (body[:40], response.status_code, response.text[:200])
        error_of(response)
    for path in ("/v1/audio/voices/..%2F..%2Fetc", "/v1/audio/voices/%00"):
        assert httpx.delete(f"{url}{path}").status_code in (400, 404)
    assert httpx.get(f"{url}/nowhere").status_code == 404
    assert httpx.post(f"{url}/v1/audio/speech", json={"input": "Still here.", "voice": "alloy"},
                      timeout=60).status_code == 200


def test_the_image_command_runs_the_server_in_http_mode_on_runpods_ports(tmp_path):
    """`python -u handler.py` (the image's command) with TTS_RUNNER_MODE=http, PORT and PORT_HEALTH as
    RunPod's load balancer sets them: the server on PORT, /ping on both, and the README's curl example."""
    import subprocess
    import sys
    import time

    from tests.helpers.servers import free_port, process

    port, health = free_port(), free_port()
    env = {"TTS_RUNNER_MODE": "http", "PORT": str(port), "PORT_HEALTH": str(health), "TTS_RUNNER_HOST": "127.0.0.1",
           "TTS_RUNNER_VOICES_DIR": str(tmp_path / "voices"),
           "TTS_RUNNER_OVERRIDES": "sampling.max_new_tokens=16 sampling.min_new_tokens=16"}
    with process([sys.executable, "-u", "handler.py"], port, tmp_path / "server.log", env):
        deadline = time.monotonic() + 180
        while httpx.get(f"http://127.0.0.1:{port}/ping").status_code != 200:  # 204 while it loads
            assert time.monotonic() < deadline, (tmp_path / "server.log").read_text()[-2000:]
            time.sleep(0.25)
        assert httpx.get(f"http://127.0.0.1:{health}/ping").status_code == 200
        out = tmp_path / "speech.mp3"
        subprocess.run(["curl", "-sf", f"http://127.0.0.1:{port}/v1/audio/speech", "-H", "Content-Type: application/json",
                        "-d", '{"model": "tts-1", "input": "Hello from curl.", "voice": "alloy"}', "-o", str(out)],
                       check=True, timeout=120)
        assert file_seconds(out.read_bytes(), "mp3") > 0.5


def test_an_unknown_mode_is_one_clear_error():
    import subprocess
    import sys

    from tests.helpers.servers import REPO

    proc = subprocess.run([sys.executable, "handler.py"], cwd=REPO, capture_output=True, text=True, timeout=60,
                          env={**__import__("os").environ, "TTS_RUNNER_MODE": "grpc"})
    assert proc.returncode != 0 and "use queue" in proc.stderr and "Traceback" not in proc.stderr


def test_a_gpu_failure_makes_ping_503_and_requests_refused(server, worker, monkeypatch):
    url, _ = server
    monkeypatch.setattr(worker, "device_failure", "The GPU failed (illegal memory access)")
    assert httpx.get(f"{url}/ping").status_code == 503
    response = httpx.post(f"{url}/v1/audio/speech", json={"input": "hi", "voice": "alloy"})
    assert response.status_code == 503 and error_of(response)["code"] == "unhealthy"


def test_a_request_past_its_time_is_504_and_its_job_cancelled(worker, tmp_path, monkeypatch):
    service = make_service(worker, tmp_path, request_timeout_seconds=0.001)  # no job is made in a millisecond
    cancelled = threading.Event()
    original = service.cancel
    monkeypatch.setattr(service, "cancel", lambda ticket: (original(ticket), cancelled.set()))
    with in_process(create_app(service)) as url:
        response = httpx.post(f"{url}/v1/audio/speech", json={"input": TEXT, "voice": "alloy"}, timeout=60)
        assert response.status_code == 504 and error_of(response)["code"] == "timeout"
        assert cancelled.is_set()


def test_word_times_come_in_a_header_or_in_a_json_body(server):
    url, _ = server
    with httpx.Client(timeout=120) as http:
        plain = http.post(f"{url}/v1/audio/speech", json={"model": "tts-1", "voice": "alloy", "input": TEXT,
                                                          "response_format": "wav", "word_timestamps": True})
        assert plain.status_code == 200 and plain.headers["content-type"] == "audio/wav"
        words = json.loads(plain.headers["x-word-timestamps"])
        assert [w["word"] for w in words] == TEXT.split()  # the tiny model's noise: marked, never invented
        assert all(set(w) <= {"word", "start", "end", "aligned"} and w["start"] <= w["end"] for w in words)
        assert words[-1]["end"] <= float(plain.headers["x-audio-duration"]) + 0.001
        body = http.post(f"{url}/v1/audio/speech", json={"voice": "alloy", "input": TEXT, "response_format": "mp3",
                                                         "timestamps": "word", "subtitles": "srt", "chapters": True,
                                                         "response_mode": "json"})
        assert body.status_code == 200 and body.headers["content-type"] == "application/json"
        answer = body.json()
        assert agrees(base64.b64decode(answer["audio"]), "mp3", answer["metadata"]["duration_seconds"])
        assert [w["word"] for w in answer["metadata"]["words"]] == TEXT.split()
        assert answer["subtitles"]["format"] == "srt" and answer["subtitles"]["text"].startswith("1\n00:00:")
        assert answer["metadata"]["chapters"]["chapters"][0]["startTime"] == 0


@pytest.mark.parametrize("extra, param, words", [
    ({"subtitles": "vtt"}, "subtitles", "response_mode"),
    ({"word_timestamps": True, "language": "de"}, "timestamps", "English only"),
    ({"timestamps": "word", "stream_format": "audio", "response_format": "pcm"}, "timestamps", "stream"),
    ({"response_mode": "xml"}, "response_mode", "'audio'"),
])
def test_times_that_cannot_be_had_are_refused_by_name(server, extra, param, words):
    url, _ = server
    reply = httpx.post(f"{url}/v1/audio/speech", json={"voice": "alloy", "input": TEXT, **extra}, timeout=60)
    assert reply.status_code == 400, reply.text
    error = error_of(reply)
    assert param in error["message"] and words in error["message"], error


def test_the_voice_store_is_bounded_in_voices_and_megabytes(worker, tmp_path):
    service = make_service(worker, tmp_path)
    service.voices.bounds = StoreBounds(max_voices=2, max_megabytes=2048)

    def save(name: str) -> httpx.Response:
        return httpx.post(f"{url}/v1/audio/voices", data={"name": name},
                          files={"audio_sample": ("clean.wav", SPEECH.read_bytes(), "audio/wav")}, timeout=60)

    with in_process(create_app(service)) as url:
        assert save("one").status_code == 201 and save("two").status_code == 201
        full = save("three")
        assert full.status_code == 507 and error_of(full)["code"] == "voice_store_full"
        assert "saved_max_voices 2" in error_of(full)["message"] and not (tmp_path / "voices" / "three").exists()
        assert httpx.delete(f"{url}/v1/audio/voices/one").status_code == 200
        assert save("three").status_code == 201  # room again once one is deleted
        used = service.voices.usage()[1]
        service.voices.bounds = StoreBounds(max_voices=100, max_megabytes=(used + 1000) / 2**20)
        too_big = save("four")
        assert too_big.status_code == 507 and "saved_max_megabytes" in error_of(too_big)["message"]
        assert sorted(p.name for p in (tmp_path / "voices").iterdir()) == ["three", "two"]  # no staging left
        assert httpx.post(f"{url}/v1/audio/speech", json={"model": "tts-1", "voice": "two", "input": "Hi.",
                                                          "response_format": "wav"}, timeout=120).status_code == 200


def test_stats_tell_the_process_and_its_models_and_count_a_new_clone_prompt(worker, tmp_path, caplog):
    import numpy as np
    import soundfile

    caplog.set_level("INFO", logger="tts_runner.edge.worker")
    service = make_service(worker, tmp_path)
    recording, rate = soundfile.read(SPEECH, dtype="float32")
    recording[:100] = 0.0  # a reference no other test has used: its prompt is made, not found in the cache
    fresh = tmp_path / "fresh.wav"
    soundfile.write(fresh, np.asarray(recording), rate)
    with in_process(create_app(service)) as url:
        def clone(recording: bytes) -> None:
            spoken = httpx.post(f"{url}/v1/audio/speech", timeout=120, json={
                "input": "Hello.", "ref_audio": base64.b64encode(recording).decode(), "response_format": "wav"})
            assert spoken.status_code == 200, spoken.text
            ids.append(spoken.headers["x-request-id"])

        ids: list[str] = []
        clone(SPEECH.read_bytes())  # the clone model is loaded (its warm-up makes a prompt of its own)
        before = httpx.get(f"{url}/stats").json()
        assert set(before) >= {"rss_mb", "threads", "fds", "jobs_running", "models", "streams"}
        clone(fresh.read_bytes())
        clone(fresh.read_bytes())  # the same reference again: found in the cache
        after = httpx.get(f"{url}/stats").json()
    base = after["models"]["1.7B-Base"]
    assert base["clone_prompts"] == before["models"]["1.7B-Base"]["clone_prompts"] + 1
    assert base["clone_prompt_bytes"] > before["models"]["1.7B-Base"]["clone_prompt_bytes"] and base["rows"] == 0 and base["queued"] == 0
    assert after["jobs_running"] == 0 and after["streams"]["open"] == 0
    logged = caplog.text
    assert len(set(ids)) == 3 and all(f"Job {i} running" in logged for i in ids)  # X-Request-Id: the log's name
