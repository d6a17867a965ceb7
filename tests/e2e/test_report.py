"""The sweep report: its scores on real speech (espeak-ng recordings), the page and table a multirun
leaves, rebuilt from the command line, and the page in a real browser (headless Chromium)."""

from __future__ import annotations

import csv
import os
import re
import shutil
import subprocess
import sys

import numpy as np
import pytest
import soundfile as sf

from tests.helpers.servers import REPO
from tts_runner.sweeps import report

SPEECH = REPO / "tests" / "fixtures" / "speech"
SAID = "The quick brown fox jumps over the lazy dog near the river bank."


def recording(name: str) -> tuple[np.ndarray, int]:
    samples, rate = sf.read(SPEECH / name, dtype="float32")
    return samples, rate


def test_dnsmos_rates_clean_speech_above_the_same_speech_in_noise():
    clean, noisy = report.dnsmos(*recording("clean.wav")), report.dnsmos(*recording("noisy.wav"))
    assert clean["dnsmos_ovrl"] > noisy["dnsmos_ovrl"] + 0.3
    assert 1.0 <= noisy["dnsmos_ovrl"] <= 5.0 and 1.0 <= clean["dnsmos_ovrl"] <= 5.0


def test_alignment_succeeds_for_what_was_said_and_fails_for_another_text_or_noise():
    samples, rate = recording("clean.wav")
    assert report.aligns(samples, rate, SAID) is True
    assert report.aligns(samples, rate, "Seven purple elephants danced quietly in the rain tonight.") is False
    noise = np.random.default_rng(0).standard_normal(samples.size).astype(np.float32) * 0.1
    assert report.aligns(noise, rate, SAID) is False
    assert report.aligns(samples, rate, "Zxqv qwrtp.") is None  # no word of it in the dictionary


@pytest.fixture(scope="module")
def sweep(tmp_path_factory, model_dir):
    """A real multirun of the command line: the named sweep over the tiny model (4 runs)."""
    folder = tmp_path_factory.mktemp("sweep")
    env = {**os.environ, "QWEN_TTS_MODEL_DIR": str(model_dir), "QWEN_TTS_DEVICE": "cpu", "TQDM_DISABLE": "1"}
    done = subprocess.run([sys.executable, "-m", "tts_runner", "+job=hello", "+sweep=sampling_grid",
                           f"hydra.sweep.dir={folder}"], cwd=REPO, env=env, capture_output=True, text=True,
                          timeout=600)
    assert done.returncode == 0, done.stderr[-3000:]
    assert f"sweep report: {folder}/report.html" in done.stdout
    assert "SoX" not in done.stdout + done.stderr and "flash-attn" not in done.stdout + done.stderr  # quiet
    return folder


def test_a_multirun_leaves_a_report_with_a_row_per_run(sweep):
    rows = list(csv.DictReader((sweep / "report.csv").open()))
    assert [r["run"] for r in rows] == ["0", "1", "2", "3"]
    assert {(r["sampling.temperature"], r["sampling.top_p"]) for r in rows} == {
        ("0.3", "0.85"), ("0.3", "1.0"), ("0.7", "0.85"), ("0.7", "1.0")}
    assert "+job" not in rows[0]  # the same in every run: not a column
    for r in rows:
        assert float(r["duration_s"]) > 0 and float(r["rtf"]) > 0 and r["runaways"] == "0" and r["retries"] == "0"
        assert abs(float(r["lufs"]) + 16) < 1.0  # the default loudness target
        assert 1.0 <= float(r["dnsmos_ovrl"]) <= 5.0 and r["aligned"] in ("0/1", "1/1")
    page = (sweep / "report.html").read_text()
    assert "Random weights." in page  # the tiny model's folder says so
    sources = re.findall(r'src="([^"]+)"', page)
    assert len(sources) == 12 and all(not s.startswith(("/", "http")) and (sweep / s).is_file() for s in sources)


def test_the_report_is_rebuilt_from_the_command_line(sweep, tmp_path):
    copy = tmp_path / "sweep"
    shutil.copytree(sweep, copy)  # the other tests read the fixture's own report
    (copy / "report.html").unlink()
    (copy / "report.csv").unlink()
    done = subprocess.run([sys.executable, "-m", "tts_runner.report", str(copy), "--no-scores"], cwd=REPO,
                          capture_output=True, text=True, timeout=300)
    assert done.returncode == 0 and (copy / "report.html").is_file(), done.stderr[-2000:]
    rows = list(csv.DictReader((copy / "report.csv").open()))
    assert len(rows) == 4 and float(rows[0]["duration_s"]) > 0 and abs(float(rows[0]["lufs"]) + 16) < 1.0
    assert rows[0]["dnsmos_ovrl"] == rows[0]["aligned"] == ""  # no model scores asked for
    empty = subprocess.run([sys.executable, "-m", "tts_runner.report", str(copy / "report")], cwd=REPO,
                           capture_output=True, text=True, timeout=60)
    assert empty.returncode == 2 and "no runs here" in empty.stderr


CHROMIUM = shutil.which("chromium") or shutil.which("chromium-browser")


@pytest.mark.skipif(CHROMIUM is None, reason="needs chromium (.ci/run installs Debian's)")
def test_the_report_in_a_real_browser_loads_every_audio_and_sorts(sweep, tmp_path):
    def browse(*args: str, address: str) -> subprocess.CompletedProcess:
        return subprocess.run([CHROMIUM, "--headless", "--no-sandbox", "--disable-gpu", "--allow-file-access-from-files",
                               "--autoplay-policy=no-user-gesture-required", "--virtual-time-budget=8000",
                               f"--user-data-dir={tmp_path / 'profile'}", *args, address],
                              capture_output=True, text=True, timeout=120)

    address = (sweep / "report.html").as_uri()
    dom = browse("--dump-dom", address=address + "#sort=duration_s").stdout
    loaded = dict(item.split("=") for item in re.search(r'id="loaded">([^<]*)<', dom).group(1).split())
    assert sorted(loaded) == ["0", "1", "2", "3"] and all(float(v) > 0 for v in loaded.values())
    body = dom.split("<tbody>")[1].split("</tbody>")[0]
    durations = [float(v) for v in re.findall(r'<tr><td data-value="\d+">\d+</td>(?:<td[^>]*>[^<]*</td>){2}'
                                              r'<td data-value="([0-9.]+)"', body)]
    assert len(durations) == 4 and durations == sorted(durations)  # sorted by the address's #sort=duration_s
    shot = tmp_path / "report.png"
    browse(f"--screenshot={shot}", "--window-size=1200,1600", address=address)
    assert shot.is_file() and shot.stat().st_size > 10_000


def test_a_runs_word_times_are_shown_under_its_waveform():
    metadata = {"duration_seconds": 2.0, "words": [{"word": "Hello", "start": 0.1, "end": 0.5},
                                                   {"word": "<there>", "start": 1.0, "end": 1.6, "aligned": False}]}
    strip = report.words_strip(metadata)
    assert strip.count("<span") == 2 and 'left:5.00%' in strip and 'left:50.00%' in strip
    assert "&lt;there&gt;" in strip and "unaligned" in strip and 'title="1.00 to 1.60 s"' in strip
    assert report.words_strip({"duration_seconds": 2.0}) == ""
