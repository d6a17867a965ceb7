"""Sweeps from the command line: batched runs sharing the model's rows, Hydra's submitit and joblib
launchers running real subprocess jobs, and the SLURM example config (tiny models, CPU)."""

from __future__ import annotations

import csv
import json
import os
import subprocess
import sys
import time

import numpy as np
import pytest
import soundfile as sf
import torch

from tests.helpers.decode import codes as library_codes
from tests.helpers.servers import REPO


def multirun(folder, model_dir, *args: str, timeout: float = 600) -> subprocess.CompletedProcess:
    env = {**os.environ, "QWEN_TTS_MODEL_DIR": str(model_dir), "QWEN_TTS_DEVICE": "cpu", "TQDM_DISABLE": "1"}
    return subprocess.run([sys.executable, "-m", "tts_runner", "+job=hello", "sampling.seed=5",
                           "sampling.do_sample=false", f"hydra.sweep.dir={folder}", *args, "-m",
                           "sampling.max_new_tokens=200,300,400"],
                          cwd=REPO, env=env, capture_output=True, text=True, timeout=timeout)


def results(folder) -> dict[str, dict]:
    return {p.parent.name: json.loads(p.read_text()) for p in folder.glob("*/result.json")}


@pytest.fixture(scope="module")
def serial(tmp_path_factory, model_dir):
    folder = tmp_path_factory.mktemp("serial")
    done = multirun(folder, model_dir, "multirun.batched=false")
    assert done.returncode == 0, done.stderr[-3000:]
    return folder


def test_a_batched_sweep_runs_together_and_makes_what_one_after_another_makes(tmp_path, model_dir, serial):
    done = multirun(tmp_path, model_dir)  # multirun.batched: true, the command line's default
    assert done.returncode == 0, done.stderr[-3000:]
    together, apart = results(tmp_path), results(serial)
    assert sorted(together) == sorted(apart) == ["0", "1", "2"]
    for run in together:  # greedy: the same codes whichever runs share the rows; decoded beside other
        # runs' chunks, the audio may differ in float rounding (a sample by 1 LSB)
        assert together[run]["metadata"]["duration_seconds"] == apart[run]["metadata"]["duration_seconds"]
        a, _ = sf.read(tmp_path / run / "hello.wav", dtype="int16")
        b, _ = sf.read(serial / run / "hello.wav", dtype="int16")
        assert a.shape == b.shape and np.abs(a.astype(int) - b.astype(int)).max() <= 2
    spans = [(os.stat(tmp_path / r / "result.json").st_mtime - together[r]["metadata"]["generation_time_seconds"],
              os.stat(tmp_path / r / "result.json").st_mtime) for r in together]
    assert max(start for start, _ in spans) < min(end for _, end in spans)  # all three were running at once
    assert len(list(csv.DictReader((tmp_path / "report.csv").open()))) == 3


def test_a_batched_sweep_whose_runs_fail_ends_with_an_error_and_still_a_report(tmp_path, model_dir):
    """Every run's chunk is out of retries (min_seconds_per_char asks for more audio than its frame
    budget allows): each says why, the command exits 2, and the report of what there is is written."""
    done = multirun(tmp_path, model_dir, "batching.min_seconds_per_char=0.5", "sampling.min_new_tokens=2",
                    "input.text='Hello there, this sentence asks for at least thirty seconds of speech.'")
    assert done.returncode == 2, done.stderr[-3000:]
    assert "after 3 attempts: the audio is too short" in done.stdout + done.stderr
    assert (tmp_path / "report.html").is_file() and "run(s) of the sweep failed" in done.stdout + done.stderr


@pytest.mark.parametrize("launcher", ["submitit_local", "joblib"])
def test_hydras_launchers_run_the_sweep_in_subprocesses(tmp_path, model_dir, serial, launcher):
    extra = (["hydra.launcher.n_jobs=2", "hydra.callbacks.report.scores=false"] if launcher == "joblib"
             else ["hydra.launcher.timeout_min=10"])
    done = multirun(tmp_path, model_dir, f"hydra/launcher={launcher}", *extra)
    assert done.returncode == 0, done.stderr[-3000:]
    made = results(tmp_path)
    assert sorted(made) == ["0", "1", "2"]
    for run in made:
        assert (tmp_path / run / "hello.wav").read_bytes() == (serial / run / "hello.wav").read_bytes()
    assert (tmp_path / "report.html").is_file()
    rows = list(csv.DictReader((tmp_path / "report.csv").open()))
    assert all(float(row["lufs"]) < 0 for row in rows)  # loudness always; the model scores unless scores=false
    assert all(bool(row["dnsmos_ovrl"]) == (launcher != "joblib") for row in rows)
    if launcher == "submitit_local":
        assert list(tmp_path.glob(".submitit/*/*_submitted.pkl"))  # submitit's own job records


def test_the_slurm_example_composes_to_a_submitit_slurm_launcher(model_dir):
    env = {**os.environ, "QWEN_TTS_MODEL_DIR": str(model_dir)}
    done = subprocess.run([sys.executable, "-m", "tts_runner", "+job=hello", "hydra/launcher=slurm_gpu", "--cfg",
                           "hydra", "--package", "hydra.launcher"], cwd=REPO, env=env, capture_output=True,
                          text=True, timeout=120)
    assert done.returncode == 0, done.stderr[-2000:]
    assert "SlurmLauncher" in done.stdout and "gpus_per_node: 1" in done.stdout and "partition: gpu" in done.stdout


def test_the_runs_of_a_batched_sweep_hand_their_chunks_over_into_one_prefill(model):
    """Runs start on threads of their own and reach the scheduler a little apart (here 30 ms, by a
    sleep standing for each run's planning); without the hold the first would be admitted alone and
    the others would join it frames later. One run ends without handing anything over (it failed
    before generating): the others are not held for it, and wait() counts it."""
    from tts_runner.engines.sampling import Sampling
    from tts_runner.serving.model import ChunkRequest
    from tts_runner.serving.scheduler import Scheduler
    from tts_runner.serving.ticket import Ticket
    from tts_runner.sweeps import runs as sweeps

    scheduler = Scheduler(model, max_rows=8, queue_limit=100, sync_every=1)
    admitted: list[int] = []
    real = scheduler.admit
    scheduler.admit = lambda pending: (admitted.append(len(pending)), real(pending))[1]
    settings = {"do_sample": False, "subtalker_dosample": False, "max_new_tokens": 12}
    codes: dict[int, torch.Tensor] = {}

    def run(i: int) -> bool:
        time.sleep(0.03 * i)
        if i == 2:
            return False  # this run fails before it hands anything over
        request = ChunkRequest(f"Run {i} of the sweep.", "ryan", "english", None, floor=4 + i, seed=i)
        future = scheduler.submit(Ticket(f"run-{i}"), [(request, model.row_sampling(request, Sampling(**settings)),
                                                         None)])[0]
        codes[i] = future.result(timeout=60)
        return True

    for i in range(5):
        sweeps.submit(run, i, scheduler=scheduler)
    assert sweeps.wait() == 1
    assert admitted == [4]  # one prefill for the four runs that handed chunks over
    assert sorted(codes) == [0, 1, 3, 4]
    for i, got in codes.items():  # greedy: as the stock library makes each alone
        alone = library_codes(model, "stock", [f"Run {i} of the sweep."], ["ryan"], min_new_tokens=4 + i, **settings)
        assert torch.equal(got, alone[0])


def test_the_sweep_benchmark_runs_and_writes_its_figures(tmp_path):
    """tools/sweep_bench, in process only (the command-line half runs the same sweep as the tests above)."""
    from tts_runner.tools import sweep_bench

    out = tmp_path / "sweep.json"
    assert sweep_bench.main(["--settings", "2", "--repeats", "1", "--no-cli", "--json", str(out)]) == 0
    figures = json.loads(out.read_text())
    assert figures["settings"] == 2 and figures["audio_seconds"] > 0
    assert all(len(turns) == 1 and turns[0] > 0 for turns in figures["all_turns_s"].values())
    assert abs(figures["batched_over_one_job"] - figures["batched_sweep_s"] / figures["one_job_s"]) < 0.02
