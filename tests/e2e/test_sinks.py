"""Sinks against real S3 faults (a moto server process), and object keys."""

import re

import boto3
import pytest

from tests.helpers.config import FAST
from tests.helpers.env import environment
from tests.helpers.servers import free_port, process
from tts_runner.audio.sinks import object_key
from tts_runner.edge.worker import Worker

SECRET = "wrong-secret-key-PLANTED"


def test_object_keys_are_ours_not_the_users():
    key = object_key("tts-output/", "../../etc/passwd", "mp3")
    assert re.fullmatch(r"tts-output/etcpasswd-[0-9a-f]{16}\.mp3", key)
    assert object_key("tts-output/", "", "wav").startswith("tts-output/job-")
    assert object_key("p/", "a", "wav") != object_key("p/", "a", "wav")


@pytest.fixture
def strict_s3(tmp_path):
    """moto enforcing credentials after its first request, which creates the bucket."""
    import sys

    port = free_port()
    env = {"INITIAL_NO_AUTH_ACTION_COUNT": "1"}
    args = [sys.executable, "-m", "moto.server", "-H", "127.0.0.1", "-p", str(port)]
    with process(args, port, tmp_path / "moto.log", env):
        endpoint = f"http://127.0.0.1:{port}"
        boto3.client("s3", endpoint_url=endpoint, region_name="us-east-1", aws_access_key_id="x",
                      aws_secret_access_key="y").create_bucket(Bucket="strict")
        yield endpoint


def test_wrong_credentials_are_a_clear_error_without_the_secret(strict_s3, tiny_env, caplog):
    with environment(S3_BUCKET="strict", S3_ACCESS_KEY="AKIAWRONGKEY0001", S3_SECRET_KEY=SECRET,
                     S3_ENDPOINT=strict_s3):
        w = Worker.from_env(FAST)
        out = w.handle({"id": "creds", "input": {"text": "Nobody will hear this."}})
    assert set(out) == {"error", "traceback"}  # no audio_url: nothing reported as uploaded
    assert out["error"].startswith(f"S3 upload to bucket 'strict' at {strict_s3} failed: InvalidAccessKeyId")
    assert SECRET not in repr(out) + caplog.text and "AKIAWRONGKEY0001" not in repr(out) + caplog.text


def test_unreachable_endpoint_is_a_clear_error(tiny_env):
    endpoint = f"http://127.0.0.1:{free_port()}"  # nothing listens there
    with environment(S3_BUCKET="b", S3_ACCESS_KEY="AKIAEXAMPLE", S3_SECRET_KEY=SECRET, S3_ENDPOINT=endpoint):
        out = Worker.from_env(FAST).handle({"id": "down", "input": {"text": "Hello?"}})
    assert out["error"].startswith(f"S3 upload to bucket 'b' at {endpoint} failed after 4 attempts: "
                                   "EndpointConnectionError")  # tried again after 0.5, 1 and 2 s
    assert SECRET not in repr(out)


def test_an_upload_is_tried_again_until_the_store_answers(tiny_env, caplog):
    """The S3 server (moto, in this process, its bucket already made) is not there for the first
    attempt: it starts listening when the sink says that attempt failed and it will try again (an
    event, not a time, so a slow machine changes nothing), and a later attempt succeeds; the job is
    answered with a URL that serves the audio."""
    import logging

    import requests
    from moto.backends import get_backend
    from moto.server import ThreadedMotoServer

    port = free_port()
    get_backend("s3")["123456789012"]["global"].create_bucket("late", "us-east-1")
    server = ThreadedMotoServer(ip_address="127.0.0.1", port=port, verbose=False)
    failed: list[str] = []

    class StartOnFirstRetry(logging.Handler):
        def emit(self, record: logging.LogRecord) -> None:
            if "trying again" in record.getMessage() and not failed:
                failed.append(record.getMessage())
                server.start()  # returns once it listens: the next attempt finds it

    sinks_log = logging.getLogger("tts_runner.audio.sinks")
    handler = StartOnFirstRetry(level=logging.WARNING)
    sinks_log.addHandler(handler)
    with environment(S3_BUCKET="late", S3_ACCESS_KEY="AKIAEXAMPLE", S3_SECRET_KEY=SECRET,
                     S3_ENDPOINT=f"http://127.0.0.1:{port}"):
        worker = Worker.from_env(FAST + ["sink.upload_attempts=6"])
        try:
            with caplog.at_level("WARNING", logger="tts_runner.audio.sinks"):
                out = worker.handle({"id": "late", "input": {"text": "Delivered in the end."}})
            assert "audio_url" in out, out
            assert requests.get(out["audio_url"], timeout=10).content[:4] == b"RIFF"
        finally:
            sinks_log.removeHandler(handler)
            if failed:
                server.stop()
    assert failed and "S3 upload to bucket 'late'" in failed[0] and "(attempt 1 of 6" in failed[0]


@pytest.fixture
def small_disk(tmp_path):
    """A 32 KB tmpfs made for the test (a disk that fills); skipped where it cannot be mounted."""
    import subprocess

    mount = tmp_path / "disk"
    mount.mkdir()
    made = subprocess.run(["mount", "-t", "tmpfs", "-o", "size=32k", "tmpfs", str(mount)], capture_output=True, text=True)
    if made.returncode != 0:
        pytest.skip(f"cannot mount a small tmpfs here: {made.stderr.strip() or made.returncode}")
    try:
        yield mount
    finally:
        subprocess.run(["umount", str(mount)], check=False)


def test_a_file_sink_on_a_full_disk_is_one_clear_error_and_leaves_no_partial_file(tiny_env, small_disk):
    worker = Worker.from_env([*FAST, "sink=file", f"sink.dir={small_disk}", "input.name=speech"])
    out = worker.handle({"id": "full", "input": {"text": "This does not fit on the disk.", "output_format": "wav"}})
    assert out["error"] == f"Could not write {small_disk / 'speech.wav'}: No space left on device"
    assert list(small_disk.iterdir()) == []  # nothing under the final name, no temporary left behind
    small = worker.handle({"id": "fits", "input": {"text": "Hi.", "output_format": "mp3",
                                                   "params": {"max_new_tokens": 4, "min_new_tokens": 4}}})
    assert "error" not in small, small  # the worker goes on, and a file that fits is written whole
    assert [p.name for p in small_disk.iterdir()] == ["speech.mp3"]


@pytest.fixture
def store():
    """moto's S3 server in this process with a bucket of the test's own (moto's store outlives its
    server in a process); yields (its URL, a client of it, the bucket)."""
    import uuid

    from moto.server import ThreadedMotoServer

    port = free_port()
    server = ThreadedMotoServer(ip_address="127.0.0.1", port=port, verbose=False)
    server.start()
    url = f"http://127.0.0.1:{port}"
    client = boto3.client("s3", endpoint_url=url, region_name="us-east-1", aws_access_key_id="x",
                          aws_secret_access_key="y")
    bucket = f"faults-{uuid.uuid4().hex[:8]}"
    client.create_bucket(Bucket=bucket)
    try:
        yield url, client, bucket
    finally:
        server.stop()


def objects(client, bucket: str) -> dict[str, int]:
    return {o["Key"]: o["Size"] for o in client.list_objects_v2(Bucket=bucket).get("Contents", [])}


def test_uploads_meet_500_503_a_reset_and_a_slow_store_and_the_object_is_whole(tiny_env, store):
    """Through the fault proxy: the first upload is answered 500, the second 503, the third is cut off
    half-way (a reset), the fourth is never answered (past the sink's 1 s timeout); the fifth reaches
    the store. The job's URL serves the whole file (decoded by ffmpeg to the metadata's duration),
    and it is the only object: no partial or empty one under any key."""
    import requests

    from tests.helpers.media import agrees
    from tests.helpers.s3proxy import faulty_s3

    url, client, bucket = store
    with faulty_s3(url, ["500", "503", "reset", "slow"]) as proxy, \
            environment(S3_BUCKET=bucket, S3_ACCESS_KEY="AKIAEXAMPLE", S3_SECRET_KEY=SECRET, S3_ENDPOINT=proxy.url):
        worker = Worker.from_env(FAST + ["sink.upload_attempts=6", "sink.upload_backoff_seconds=0.05",
                                         "sink.timeout_seconds=1"])
        out = worker.handle({"id": "faults", "input": {"text": "Delivered through every fault.", "output_format": "mp3"}})
        assert "audio_url" in out, out
        data = requests.get(out["audio_url"], timeout=30).content
    assert proxy.seen == ["500", "503", "reset", "slow", "pass"]
    assert agrees(data, "mp3", out["metadata"]["duration_seconds"])
    key = out["audio_url"].split(f"/{bucket}/")[1].split("?")[0]
    assert objects(client, bucket) == {key: len(data)}


def test_when_the_store_never_recovers_the_audio_is_kept_locally_and_the_error_says_where(tiny_env, store, tmp_path):
    from tests.helpers.media import file_seconds
    from tests.helpers.s3proxy import faulty_s3

    url, client, bucket = store
    kept = tmp_path / "kept"
    with faulty_s3(url, ["503", "reset", "500"]) as proxy, \
            environment(S3_BUCKET=bucket, S3_ACCESS_KEY="AKIAEXAMPLE", S3_SECRET_KEY=SECRET, S3_ENDPOINT=proxy.url,
                        TTS_RUNNER_KEEP_DIR=str(kept)):
        worker = Worker.from_env(FAST + ["sink.upload_attempts=3", "sink.upload_backoff_seconds=0.05", "input.name=lost"])
        out = worker.handle({"id": "lost", "input": {"text": "Kept on the disk instead.", "output_format": "wav"}})
    assert proxy.seen == ["503", "reset", "500"]
    assert out["error"].startswith(f"S3 upload to bucket '{bucket}' at {proxy.url} failed after 3 attempts: InternalError")
    assert out["error"].endswith(f"The audio is kept at {kept / 'lost.wav'}.")
    assert file_seconds((kept / "lost.wav").read_bytes(), "wav") > 1.0  # the one chunk of 16 frames, whole
    assert objects(client, bucket) == {} and SECRET not in repr(out)
