"""RunPod Hub packaging: .runpod/hub.json types and describes every environment variable the worker
reads, and .runpod/tests.json runs the README's example payloads, each valid."""

import json
import re

from tests.helpers.servers import REPO
from tts_runner.edge import config as config_mod
from tts_runner.edge import payload as payload_mod


def environment_read() -> set[str]:
    conf = " ".join(p.read_text() for p in (REPO / "conf").rglob("*.yaml"))
    code = " ".join(p.read_text() for p in [*(REPO / "tts_runner").rglob("*.py"), REPO / "handler.py"])
    names = set(re.findall(r"oc\.env:([A-Z0-9_]+)", conf))
    names |= set(re.findall(r"os\.environ(?:\.get)?\(\"([A-Z0-9_]+)\"", code))
    names |= set(re.findall(r"os\.environ\.setdefault\(\"([A-Z0-9_]+)\"", code))
    return names - {"RUNPOD_WEBHOOK_GET_JOB"}  # set by RunPod itself, not by whoever deploys


def test_hub_json_describes_every_variable_the_worker_reads():
    hub = json.loads((REPO / ".runpod" / "hub.json").read_text())
    described = {entry["key"]: entry["input"] for entry in hub["config"]["env"]}
    assert set(described) == environment_read()
    assert all(entry["type"] in ("string", "number", "boolean") and entry["name"] for entry in described.values())
    assert hub["type"] == "serverless" and hub["config"]["gpuIds"]


def test_tests_json_runs_the_readme_examples_and_each_is_valid():
    readme = (REPO / "README.md").read_text()
    examples = [json.loads(b)["input"] for b in re.findall(r"```json\n(.*?)```", readme, re.S) if '"input":' in b[:20]]
    tests = json.loads((REPO / ".runpod" / "tests.json").read_text())["tests"]
    assert [t["input"] for t in tests] == examples and len(examples) >= 3
    cfg = config_mod.load()
    validator = payload_mod.build_validator(cfg)
    for example in examples:
        payload_mod.validate(example, validator, cfg.limits.max_total_chars)
