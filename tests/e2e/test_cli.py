"""The command line as a user runs it: a subprocess in a scratch directory."""

import json
import os
import re
import subprocess
import sys

import pytest
import yaml

from tests.helpers.media import agrees
from tests.helpers.servers import REPO, free_port


def run_cli(args, cwd, model_dir, env=None):
    env = {**os.environ, "QWEN_TTS_MODEL_DIR": str(model_dir), "QWEN_TTS_DEVICE": "cpu",
           "PYTHONPATH": str(REPO), **(env or {})}
    return subprocess.run([sys.executable, "-m", "tts_runner", *args], cwd=cwd, env=env,
                          capture_output=True, text=True, timeout=600)


HEAVY = ("torch", "transformers", "qwen_tts")  # the model code: seconds to import, more to load a model


def imported_heavy(proc: subprocess.CompletedProcess) -> set[str]:
    """The model-code packages a command run with PYTHONPROFILEIMPORTTIME=1 imported (Python's own
    import log on stderr): what it did, whatever the machine's speed."""
    return {name for name in HEAVY if re.search(rf"\|\s+{name}$", proc.stderr, re.M)}


def test_podcast_job_writes_a_playable_file_and_its_record(tmp_path, model_dir):
    proc = run_cli(["+job=jobs/podcast.yaml", "sampling.max_new_tokens=12", "sampling.min_new_tokens=12",
                    "hydra.run.dir=out"],
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
    assert "Invalid setting input.voice: '../../etc/passwd' is not a voice name" in proc.stdout + proc.stderr
    proc = run_cli(["+job=nonexistent"], tmp_path, model_dir)
    assert proc.returncode == 2 and "Job spec 'nonexistent' not found" in proc.stdout + proc.stderr


def run_script(args, cwd, model_dir, timeout=600):
    env = {**os.environ, "QWEN_TTS_MODEL_DIR": str(model_dir), "QWEN_TTS_DEVICE": "cpu",
           "TTS_RUNNER_OVERRIDES": "sampling.max_new_tokens=16 sampling.min_new_tokens=16 audio.trim.threshold_db=null"}
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
    assert "Job local_test done" in out and '"duration_seconds": 1.2' in out
    assert "audio_base64" not in out  # the SDK's own log of the whole result (megabytes) stays quiet


def test_help_is_ours_quick_and_quiet(tmp_path, model_dir):
    proc = run_cli(["--help"], tmp_path, model_dir, {"PYTHONPROFILEIMPORTTIME": "1"})
    assert proc.returncode == 0 and imported_heavy(proc) == set()  # quick: no model code imported
    assert "hello" in proc.stdout and "podcast" in proc.stdout  # the jobs
    assert "sink       auto, base64, file, s3" in proc.stdout  # the config groups and their options
    assert "python -m tts_runner +job=podcast" in proc.stdout
    assert "powered by Hydra" not in proc.stdout and "flash-attn" not in proc.stdout + proc.stderr


def test_cfg_job_and_the_saved_config_show_the_job_that_runs(tmp_path, model_dir):
    proc = run_cli(["+job=jobs/podcast.yaml", "sampling.temperature=0.5", "--cfg", "job"], tmp_path, model_dir)
    assert proc.returncode == 0, proc.stderr
    shown = yaml.safe_load(proc.stdout)
    assert len(shown["input"]["segments"]) == 14 and shown["input"]["name"] == "podcast"
    assert shown["sampling"]["temperature"] == 0.5 and "hydra" not in shown
    proc = run_cli(["+job=jobs/podcast.yaml", "sampling.max_new_tokens=8", "sampling.min_new_tokens=8",
                    "hydra.run.dir=out"], tmp_path, model_dir)
    assert proc.returncode == 0, proc.stderr[-2000:]
    saved = yaml.safe_load((tmp_path / "out" / ".hydra" / "config.yaml").read_text())
    assert len(saved["input"]["segments"]) == 14 and saved["input"]["output_format"] == "mp3"
    assert "flash-attn" not in proc.stdout + proc.stderr and "SoX" not in proc.stdout + proc.stderr


@pytest.mark.parametrize("args, message", [
    (["sampling.temperature=-1"], "Invalid setting sampling.temperature: must be > 0 and <= 2, got -1."),
    (["sampling.min_new_tokens=100", "sampling.max_new_tokens=16"],
     "Invalid setting sampling.min_new_tokens: the end-of-speech floor, 100 frames, is above max_new_tokens, 16"),
    (["audio.sample_rate=44100", "input.output_format=opus"],
     "Invalid setting audio.sample_rate: output_format 'opus' takes"),
    (["sink=s3"], "The s3 sink needs S3_BUCKET, S3_ACCESS_KEY and S3_SECRET_KEY to be set."),
])
def test_what_can_be_checked_is_checked_before_any_model_loads(tmp_path, model_dir, args, message):
    proc = run_cli(["+job=podcast", *args], tmp_path, model_dir, {"PYTHONPROFILEIMPORTTIME": "1"})
    assert proc.returncode == 2 and message in proc.stdout + proc.stderr
    assert imported_heavy(proc) == set() and "Loaded" not in proc.stdout + proc.stderr  # no model code, no model
    assert not (tmp_path / "outputs").exists() or not any((tmp_path / "outputs").rglob("*.wav"))
    assert not any(p.is_dir() for p in (tmp_path / "outputs").glob("*/*"))  # the failed run left no folder


def test_a_sink_that_fails_after_generation_keeps_the_audio_and_says_where(tmp_path, model_dir):
    env = {"S3_BUCKET": "b", "S3_ACCESS_KEY": "AKIAEXAMPLE", "S3_SECRET_KEY": "not-a-secret-1234",
           "S3_ENDPOINT": f"http://127.0.0.1:{free_port()}"}  # nothing listens there
    proc = run_cli(["+job=hello", "sink=s3", "sink.upload_attempts=1", "sampling.max_new_tokens=8",
                    "sampling.min_new_tokens=8", "hydra.run.dir=out"], tmp_path, model_dir, env)
    out = proc.stdout + proc.stderr
    assert proc.returncode == 2 and "S3 upload to bucket 'b'" in out
    kept = tmp_path / "out" / "hello.wav"
    assert f"The audio is kept at {kept}." in out and kept.stat().st_size > 1000
    assert "not-a-secret-1234" not in out


def test_an_interview_in_a_saved_cloned_voice(tmp_path, model_dir):
    proc = run_cli(["+job=interview", "sampling.max_new_tokens=8", "sampling.min_new_tokens=8", "hydra.run.dir=out"],
                   tmp_path, model_dir)
    assert proc.returncode == 0, proc.stderr[-2000:]
    record = json.loads((tmp_path / "out" / "result.json").read_text())
    assert [s["voice"] for s in record["metadata"]["segments"]] == ["clone:anna"] * 3
    assert agrees((tmp_path / "out" / "interview.mp3").read_bytes(), "mp3", record["metadata"]["duration_seconds"])


def test_a_missing_model_is_fetched_and_an_unreachable_hub_is_one_clear_error(tmp_path, model_dir):
    empty = tmp_path / "models"
    empty.mkdir()
    proc = run_cli(["+job=hello"], tmp_path, model_dir,
                   {"QWEN_TTS_MODEL_DIR": str(empty), "HF_ENDPOINT": f"http://127.0.0.1:{free_port()}",
                    "HF_HUB_OFFLINE": "0"})
    out = proc.stdout + proc.stderr
    assert proc.returncode == 2
    assert "fetching Qwen/Qwen3-TTS-12Hz-1.7B-CustomVoice from the Hugging Face Hub" in out  # it tried
    assert (f"Model '1.7B-CustomVoice' not found at {empty}/Qwen3-TTS-12Hz-1.7B-CustomVoice, and fetching it from "
            "the Hugging Face Hub (Qwen/Qwen3-TTS-12Hz-1.7B-CustomVoice) failed") in out
    assert "python -m tts_runner.tools.tiny_model DIR" in out


def test_subtitles_and_chapters_are_written_into_the_run_folder(tmp_path, model_dir):
    proc = run_cli(["+job=jobs/interview.yaml", "sampling.max_new_tokens=12", "sampling.min_new_tokens=12",
                    "input.subtitles=vtt", "input.chapters=true", "input.output_format=mp3", "hydra.run.dir=out"],
                   tmp_path, model_dir)
    assert proc.returncode == 0, proc.stderr[-3000:]
    out = tmp_path / "out"
    record = json.loads((out / "result.json").read_text())
    assert record["subtitles_path"] == str(out / "interview.vtt") and record["chapters_path"] == str(out / "chapters.json")
    assert (out / "interview.vtt").read_text().startswith("WEBVTT")
    chapters = json.loads((out / "chapters.json").read_text())
    assert chapters == record["metadata"]["chapters"] and len(chapters["chapters"]) == record["metadata"]["num_segments"]
