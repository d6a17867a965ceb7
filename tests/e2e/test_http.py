"""End to end over HTTP: `python handler.py --rp_serve_api` as a process on 127.0.0.1, the
README's example payloads sent to /runsync unchanged, answered as base64 and as a presigned S3
URL from a moto server process; bad payloads answered with errors while the server keeps serving."""

import base64
import json
import re
from pathlib import Path

import boto3
import pytest
import requests

from tests.helpers.media import agrees
from tests.helpers.servers import REPO, moto_s3, runpod_api


def readme_payloads() -> list[dict]:
    blocks = re.findall(r"```json\n(.*?)```", (REPO / "README.md").read_text(), re.S)
    payloads = [json.loads(b) for b in blocks if b.lstrip().startswith('{"input"') or '"input":' in b[:20]]
    assert len(payloads) >= 2
    return payloads


def check_audio(data: bytes, fmt: str, metadata: dict, segments: int) -> None:
    assert metadata["sample_rate"] == 24000 and metadata["format"] == fmt
    assert metadata["num_segments"] == segments
    assert metadata["duration_seconds"] > 0 and agrees(data, fmt, metadata["duration_seconds"])


@pytest.fixture(scope="module")
def api(tmp_path_factory, model_dir):
    with runpod_api(tmp_path_factory.mktemp("logs") / "api.log") as runsync:
        yield runsync


@pytest.mark.parametrize("index", [0, 1, 2])  # one text, a dialogue, a cloned voice
def test_readme_examples_over_http_as_base64(api, index):
    payload = readme_payloads()[index]
    answer = api(payload["input"])
    assert answer["http_status"] == 200 and answer["status"] == "COMPLETED", answer
    output = answer["output"]
    fmt = payload["input"].get("output_format", "wav")
    segments = len(payload["input"].get("segments", [None]))
    check_audio(base64.b64decode(output["audio_base64"]), fmt, output["metadata"], segments)


BAD = [
    ({"text": "hi", "segments": [{"text": "x"}]}, "got both"),
    ({"text": "hi", "model": "/etc/passwd"}, "$.model: '/etc/passwd' is not allowed"),
    ({"text": "hi", "voice": "nobody"}, "Invalid input at $.voice: unknown voice 'nobody'"),
    ({"text": "hi", "params": {"temperature": "hot"}}, "$.params.temperature: must be of type number"),
    ({"text": "hi", "output_format": "aiff"}, "$.output_format: 'aiff' is not allowed; allowed: wav, mp3, flac, opus, aac, pcm"),
    ({"segments": [{"text": ""}]}, "$.segments[0].text: must not be empty"),
]


def test_bad_payloads_get_errors_and_the_server_keeps_serving(api):
    for job_input, expected in BAD:
        answer = api(job_input)
        assert answer["status"] == "FAILED" and expected in answer["error"], answer
    assert api.proc.poll() is None
    answer = api({"text": "Still serving.", "params": {"seed": 1}})  # a fixed draw: the tiny model may fail its checks
    assert answer["status"] == "COMPLETED" and "audio_base64" in answer["output"]


def test_non_json_and_non_object_bodies_do_not_kill_the_server(api):
    assert api(b"{not json")["http_status"] == 422
    answer = api(json.dumps({"input": "just a string"}))
    assert answer.get("status") == "FAILED" or answer["http_status"] == 422
    assert api({"text": "Alive.", "params": {"seed": 1}})["status"] == "COMPLETED"


def test_readme_examples_over_http_as_presigned_s3_urls(tmp_path, model_dir):
    credentials = {"S3_ACCESS_KEY": "test-access-key", "S3_SECRET_KEY": "test-secret-key-123"}
    with moto_s3(tmp_path / "moto.log") as endpoint:
        s3 = boto3.client("s3", endpoint_url=endpoint, region_name="us-east-1",
                          aws_access_key_id=credentials["S3_ACCESS_KEY"],
                          aws_secret_access_key=credentials["S3_SECRET_KEY"])
        s3.create_bucket(Bucket="tts-bucket")
        env = {**credentials, "S3_BUCKET": "tts-bucket", "S3_ENDPOINT": endpoint}
        with runpod_api(tmp_path / "api.log", env) as runsync:
            for payload in readme_payloads():
                answer = runsync(payload["input"])
                assert answer["status"] == "COMPLETED", answer
                output = answer["output"]
                assert "audio_base64" not in output
                assert output["audio_url"].startswith(f"{endpoint}/tts-bucket/tts-output/")
                fetched = requests.get(output["audio_url"], timeout=30)
                assert fetched.status_code == 200
                fmt = payload["input"].get("output_format", "wav")
                check_audio(fetched.content, fmt, output["metadata"], len(payload["input"].get("segments", [None])))
            keys = [o["Key"] for o in s3.list_objects_v2(Bucket="tts-bucket")["Contents"]]
            assert len(keys) == len(readme_payloads()) and all(k.startswith("tts-output/test-") for k in keys)

            # a missing bucket is a clear error without the secret, and nothing is reported as done
            for key in keys:
                s3.delete_object(Bucket="tts-bucket", Key=key)
            s3.delete_bucket(Bucket="tts-bucket")
            answer = runsync({"text": "Where does this go?"})
            assert answer["status"] == "FAILED"
            assert answer["error"] == f"S3 upload to bucket 'tts-bucket' at {endpoint} failed: NoSuchBucket: The specified bucket does not exist"
            log = Path(tmp_path / "api.log").read_text()
            assert credentials["S3_SECRET_KEY"] not in log and credentials["S3_SECRET_KEY"] not in json.dumps(answer)


def test_the_local_client_script_polls_run_and_status(api, tmp_path):
    """scripts/local_runpod_test.py --async: POST /run, then POST /status/<id> until done."""
    import subprocess
    import sys

    proc = subprocess.run([sys.executable, str(REPO / "scripts" / "local_runpod_test.py"), "--url",
                           f"http://127.0.0.1:{api.port}", "--async", "--text", "Polled until done.", "--format",
                           "flac", "--save", str(tmp_path / "polled.flac")], capture_output=True, text=True,
                          timeout=300)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    assert re.search(r"job \S+ queued", proc.stdout) and re.search(r"job \S+ completed", proc.stdout)
    metadata = json.loads(proc.stdout[proc.stdout.index("{"):proc.stdout.index("round trip")])["metadata"]
    assert agrees((tmp_path / "polled.flac").read_bytes(), "flac", metadata["duration_seconds"])


def test_a_voice_cloned_from_a_base64_reference_over_http(api):
    reference = base64.b64encode((REPO / "jobs" / "voices" / "anna.wav").read_bytes()).decode()
    answer = api({"model": "0.6B-Base", "output_format": "flac",
                  "segments": [{"text": "A guest with a borrowed voice.", "ref_audio": reference,
                                "ref_text": "Hello, I am Anna, and this is how I sound when I read the news.",
                                "clone_mode": "icl"},
                               {"text": "And the host, from the saved voice.", "voice": "anna"}]})
    assert answer["status"] == "COMPLETED", answer
    output = answer["output"]
    check_audio(base64.b64decode(output["audio_base64"]), "flac", output["metadata"], 2)
    voices = [s["voice"] for s in output["metadata"]["segments"]]
    assert voices[0].startswith("reference:") and voices[1] == "clone:anna"
