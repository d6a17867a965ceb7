"""Hostile input: property-based fuzzing of the real handler, over HTTP too, and limits."""

import base64
import math

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from tests.helpers.config import NATURAL
from tests.helpers.media import agrees
from tests.helpers.servers import runpod_api
from tts_runner.edge.worker import Worker

VALID = [
    {"text": "Hello there."},
    {"segments": [{"text": "Hi.", "voice": "male_1"}, {"text": "Hello!", "voice": "female_1"}], "output_format": "mp3"},
    {"text": "Short one.", "voice": "female_2", "params": {"temperature": 0.5, "top_k": 20, "language": "en"}},
]
FIELDS = ["text", "segments", "voice", "model", "output_format", "params", "text ", "TEXT", "input", "__proto__"]
PARAMS = ["temperature", "top_k", "top_p", "repetition_penalty", "max_new_tokens", "min_new_tokens",
          "subtalker_temperature", "subtalker_top_k", "subtalker_top_p", "language", "instruct", "do_sample"]

# Characters that break naive code: RTL and bidi controls, zero-width, emoji, combining marks,
# control characters, surrogates-adjacent and CJK.
HOSTILE = st.sampled_from(list("\u202e\u202d\u200b\u200c\u200d\ufeff\u0000\u0007\u001b\t\n\r\x7f"
                               "\u0301\u0336😀👩‍👩‍👧🇺🇳語日本한국אבגعربي\U0010ffff/\\.%~$`'\"<>&;|*?{}:"))
hostile_text = st.one_of(
    st.text(max_size=200),
    st.text(alphabet=st.one_of(HOSTILE, st.characters()), max_size=300),
    st.builds(lambda c, n: c * n, st.sampled_from(["a", " ", "😀", "\u200b", "..", "ab "]), st.integers(0, 30000)),
    st.sampled_from(["../../etc/passwd", "/etc/passwd", "..%2F..%2Fetc%2Fpasswd", "%2e%2e/%2e%2e/", "C:\\Windows",
                     "file:///etc/passwd", "http://169.254.169.254/", "${oc.env:S3_SECRET_KEY}", "${", "\\${x}", "${now:}", "{{7*7}}", ""]),
)
scalars = st.one_of(st.none(), st.booleans(), st.integers(-2**70, 2**70),
                    st.floats(allow_nan=True, allow_infinity=True), hostile_text)
junk = st.recursive(scalars, lambda inner: st.one_of(st.lists(inner, max_size=4),
                                                     st.dictionaries(st.text(max_size=10), inner, max_size=4)),
                    max_leaves=30)


def deep(depth: int):
    node = "bottom"
    for i in range(depth):
        node = [node] if i % 2 else {"k": node}
    return node


@st.composite
def mutated_payload(draw):
    payload = {k: (list(v) if isinstance(v, list) else dict(v) if isinstance(v, dict) else v)
               for k, v in draw(st.sampled_from(VALID)).items()}
    for _ in range(draw(st.integers(1, 3))):
        action = draw(st.sampled_from(["text", "text", "text", "voice", "set", "delete", "param", "segment", "deep"]))
        if action == "text":  # well-formed, hostile content: most of these must become audio
            payload.pop("segments", None)
            payload["text"] = draw(hostile_text)
        elif action == "voice":
            payload["voice"] = draw(st.sampled_from(["MALE_1", "Female_2", "ryan", "Ono_Anna", "sohee", "male_3"]))
        elif action == "set":
            payload[draw(st.sampled_from(FIELDS))] = draw(st.one_of(junk, hostile_text))
        elif action == "delete" and payload:
            payload.pop(draw(st.sampled_from(sorted(payload))))
        elif action == "param":
            params = payload.get("params") if isinstance(payload.get("params"), dict) else {}
            params[draw(st.sampled_from(PARAMS))] = draw(scalars)
            payload["params"] = params
        elif action == "segment":
            payload["segments"] = draw(st.lists(st.one_of(
                st.fixed_dictionaries({"text": hostile_text}, optional={"voice": hostile_text}), junk), max_size=5))
            payload.pop("text", None)
        else:
            payload[draw(st.sampled_from(FIELDS))] = deep(draw(st.integers(10, 3000)))
    return payload


@pytest.fixture(scope="module")
def fuzz_worker(tiny_env):
    # Small limits keep the valid payloads among the fuzzed ones fast on a CPU; chunks end where the
    # model ends them (the end code is sampled), never past 16 frames.
    w = Worker.from_env(NATURAL + ["limits.max_new_tokens=16", "limits.max_total_chars=1500"])
    assert w.startup_error is None
    return w


def check_answer(answer: dict) -> str:
    assert isinstance(answer, dict)
    if "error" in answer:
        assert set(answer) == {"error", "traceback"}
        assert isinstance(answer["error"], str) and answer["error"]
        assert not answer["error"].startswith("Internal error"), answer["error"]
        return "error"
    meta = answer["metadata"]
    assert set(answer) == {"audio_base64", "metadata"} and len(answer["audio_base64"]) > 100
    assert meta["duration_seconds"] > 0 and math.isfinite(meta["duration_seconds"])
    return "audio"


def test_fuzzed_payloads_get_audio_or_a_clear_error_and_the_worker_keeps_serving(fuzz_worker):
    counts = {"error": 0, "audio": 0}

    @settings(max_examples=320, deadline=None, derandomize=True, database=None,
              suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large,
                                     HealthCheck.large_base_example])
    @given(payload=st.one_of(mutated_payload(), junk))
    def fuzz(payload):
        counts[check_answer(fuzz_worker.handle({"id": "fuzz", "input": payload}))] += 1

    fuzz()
    assert sum(counts.values()) >= 300, counts
    assert counts["error"] > 0 and counts["audio"] > 0, counts
    answer = fuzz_worker.handle({"id": "after", "input": {"text": "Still correct.", "output_format": "mp3",
                                                          "params": {"min_new_tokens": 8}}})
    # at least 8 frames (0.64 s) and at most the limit's 16 are made; trimming the chunk's silent edges
    # may take some of them, so the file is checked against what the metadata says, not a fixed length
    meta = answer["metadata"]
    assert meta["format"] == "mp3" and 0 < meta["duration_seconds"] <= 1.28
    assert agrees(base64.b64decode(answer["audio_base64"]), "mp3", meta["duration_seconds"])
    print(f"fuzzed payloads: {counts}")


def test_a_subset_of_fuzzed_payloads_over_http(tmp_path, model_dir):
    examples = []

    @settings(max_examples=40, deadline=None, derandomize=True, database=None,
              suppress_health_check=list(HealthCheck))
    @given(payload=mutated_payload())
    def collect(payload):
        examples.append(payload)

    collect()
    env = {"TTS_RUNNER_OVERRIDES": " ".join(NATURAL + ["limits.max_new_tokens=16", "limits.max_total_chars=1500"])}
    with runpod_api(tmp_path / "api.log", env) as runsync:
        for payload in examples:
            try:
                answer = runsync(payload, timeout=120)
            except (ValueError, RecursionError):  # a body the client cannot encode is not sent
                continue
            assert answer["http_status"] in (200, 422), answer
            if answer["http_status"] == 200:
                assert answer["status"] in ("COMPLETED", "FAILED"), answer
                assert "Internal error" not in str(answer.get("error", ""))
        # nesting deeper than any JSON parser recurses, sent raw
        deep_body = '{"input": {"text": "x", "junk": ' + "[" * 100_000 + "]" * 100_000 + "}}"
        assert runsync(deep_body)["http_status"] in (200, 400, 422, 500)
        assert runsync.proc.poll() is None
        assert runsync({"text": "Valid after the fuzz."})["status"] == "COMPLETED"
