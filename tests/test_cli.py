"""The command line as a user runs it: a subprocess in a scratch directory."""

import json
import os
import subprocess
import sys

from tests.helpers.media import agrees
from tests.helpers.servers import REPO


def run_cli(args, cwd, model_dir):
    env = {**os.environ, "QWEN_TTS_MODEL_DIR": str(model_dir), "QWEN_TTS_DEVICE": "cpu",
           "PYTHONPATH": str(REPO)}
    return subprocess.run([sys.executable, "-m", "tts_runner", *args], cwd=cwd, env=env,
                          capture_output=True, text=True, timeout=600)


def test_podcast_job_writes_a_playable_file_and_its_record(tmp_path, model_dir):
    proc = run_cli(["+job=jobs/podcast.yaml", "sampling.max_new_tokens=12", "hydra.run.dir=out"],
                   tmp_path, model_dir)
    assert proc.returncode == 0, proc.stderr[-3000:]
    audio_file = tmp_path / "out" / "podcast.mp3"
    assert f"wrote {audio_file}" in proc.stdout
    record = json.loads((tmp_path / "out" / "result.json").read_text())
    assert agrees(audio_file.read_bytes(), "mp3", record["metadata"]["duration_seconds"])
    assert record["metadata"]["num_segments"] >= 12
    assert record["config"]["sampling"]["max_new_tokens"] == 12 and record["config"]["input"]["name"] == "podcast"


def test_multirun_writes_one_file_per_setting(tmp_path, model_dir):
    proc = run_cli(["+job=hello", "sampling.max_new_tokens=8", "sampling.min_new_tokens=8",
                    "hydra.sweep.dir=sweep", "-m", "sampling.temperature=0.3,0.7"], tmp_path, model_dir)
    assert proc.returncode == 0, proc.stderr[-3000:]
    for n, temperature in enumerate([0.3, 0.7]):
        record = json.loads((tmp_path / "sweep" / str(n) / "result.json").read_text())
        assert record["config"]["sampling"]["temperature"] == temperature
        assert (tmp_path / "sweep" / str(n) / "hello.wav").stat().st_size > 44


def test_bad_cli_values_are_one_clear_error(tmp_path, model_dir):
    proc = run_cli(["+job=hello", "input.voice=../../etc/passwd"], tmp_path, model_dir)
    assert proc.returncode == 2
    assert "Invalid input at $.voice: '../../etc/passwd' is not a voice name" in proc.stdout + proc.stderr
    proc = run_cli(["+job=nonexistent"], tmp_path, model_dir)
    assert proc.returncode == 2 and "Job spec 'nonexistent' not found" in proc.stdout + proc.stderr


def run_script(args, cwd, model_dir, timeout=600):
    env = {**os.environ, "QWEN_TTS_MODEL_DIR": str(model_dir), "QWEN_TTS_DEVICE": "cpu",
           "TTS_RUNNER_OVERRIDES": "sampling.max_new_tokens=16 sampling.min_new_tokens=16"}
    return subprocess.run([sys.executable, *args], cwd=cwd, env=env, capture_output=True, text=True, timeout=timeout)


def test_local_runpod_test_script_saves_the_audio(tmp_path, model_dir):
    segments = '[{"text": "Hi.", "voice": "male_1"}, {"text": "Hello!", "voice": "female_1"}]'
    proc = run_script([str(REPO / "scripts" / "local_runpod_test.py"), "--segments", segments,
                       "--format", "mp3", "--save", str(tmp_path / "dialog.mp3")], tmp_path, model_dir)
    assert proc.returncode == 0, proc.stdout[-2000:] + proc.stderr[-2000:]
    assert agrees((tmp_path / "dialog.mp3").read_bytes(), "mp3", 2 * 1.2 + 0.2)  # two 1.2 s chunks and a gap
    assert '"num_segments": 2' in proc.stdout
    proc = run_script([str(REPO / "scripts" / "local_runpod_test.py"), "--text", "Hi.", "--voice", "nobody"],
                      tmp_path, model_dir)
    assert proc.returncode == 1 and "unknown voice 'nobody'" in proc.stdout


def test_handler_runs_a_test_input_like_the_runpod_sdk(tmp_path, model_dir):
    proc = run_script(["handler.py", "--test_input", '{"input": {"text": "Testing the handler."}}'], REPO, model_dir)
    out = proc.stdout + proc.stderr
    assert proc.returncode == 0, out[-3000:]
    assert "Job result" in out and '"duration_seconds": 1.2' in out.replace("'", '"')
