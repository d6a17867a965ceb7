"""The soak's short version: 60 jobs of mixed load on each target after a warm-up of 16, run as
a user runs it (python -m tts_runner.tools.soak, the worker a child process on 127.0.0.1). The 30-minute
run's figures are in docs/reliability.md; this keeps the tool and what it checks working."""

from __future__ import annotations

import json
import subprocess
import sys

import pytest

from tests.helpers.servers import REPO


@pytest.mark.parametrize("target", ["queue", "http"])
def test_a_short_soak_answers_every_job_and_gives_back_threads_and_files(target, model_dir, tmp_path):
    report = tmp_path / "soak.json"
    run = subprocess.run([sys.executable, "-m", "tts_runner.tools.soak", "--target", target, "--minutes", "5", "--max-jobs", "60",
                          "--concurrency", "8", "--warmup", "16", "--burst-every", "40", "--burst-size", "24",
                          "--model-dir", str(model_dir), "--device", "cpu", "--json", str(report),
                          "--plot", str(tmp_path / "soak.png")],
                         cwd=REPO, capture_output=True, text=True, timeout=900)
    assert run.returncode == 0, run.stdout[-3000:] + run.stderr[-3000:]
    figures = json.loads(report.read_text())
    goals = {g["name"]: g["met"] for g in figures["goals"]}
    assert goals["jobs lost"] and goals["bad answers"] and goals["worker deaths"], figures["goals"]
    assert goals["threads when idle"] and goals["open files when idle"], (figures["baseline"], figures["final"])
    outcomes = figures["outcomes"]
    assert set(outcomes["hostile"]) == {"refused"}  # each hostile payload's error named its field
    assert set(outcomes["burst"]) <= {"ok", "busy"}
    good = ("short", "long", "segments", "stream", "clone_inline", "clone_saved")
    for kind in good:  # each was sent and answered (a burst may make one busy; the tiny model's noise fail one)
        assert sum(outcomes.get(kind, {}).get(k, 0) for k in ("ok", "busy", "failed")) >= 1, (kind, outcomes)
    made = sum(outcomes.get(kind, {}).get("ok", 0) for kind in good)
    assert made >= sum(sum(outcomes.get(kind, {}).values()) for kind in good) / 2, outcomes
    assert figures["samples"] and (tmp_path / "soak.png").stat().st_size > 0
