"""Shared fixtures: tiny random-weight models built once per session by tts_runner.tools.tiny_model
and loaded through the real Qwen3TTSModel.from_pretrained path, on the CPU.

The suite mirrors the package: tests/unit/<folder>/ for each folder of tts_runner/, tests/e2e/ for
the entry points as a user meets them (the worker, HTTP, the command line, long and hostile jobs),
tests/gpu/ for CUDA only (marker `gpu`), tests/helpers/ for what several modules share."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from tests.helpers.config import FAST, load_model
from tts_runner.edge import config as config_mod
from tts_runner.tools.tiny_model import build_all


@pytest.fixture(scope="session")
def model_dir(tmp_path_factory) -> Path:
    cached = os.environ.get("TTS_RUNNER_TEST_MODELS")
    if cached and Path(cached, "Qwen3-TTS-12Hz-1.7B-CustomVoice", "config.json").is_file():
        return Path(cached)
    out = tmp_path_factory.mktemp("models")
    build_all(out)
    return out


@pytest.fixture(scope="session", autouse=True)
def tiny_env(model_dir, tmp_path_factory):
    """Every test runs against the tiny models on the CPU, with no S3 configured, and voices saved
    at run time in a folder of the session's own (never the checkout's saved_voices/)."""
    with pytest.MonkeyPatch.context() as patch:
        patch.setenv("QWEN_TTS_MODEL_DIR", str(model_dir))
        patch.setenv("TTS_RUNNER_VOICES_DIR", str(tmp_path_factory.mktemp("saved_voices")))
        patch.setenv("QWEN_TTS_DEVICE", "cpu")
        for name in ("S3_BUCKET", "S3_ACCESS_KEY", "S3_SECRET_KEY", "S3_ENDPOINT", "QWEN_TTS_MIN_NEW_TOKENS"):
            patch.delenv(name, raising=False)
        yield


@pytest.fixture
def cfg(tiny_env):
    return config_mod.load(FAST)


@pytest.fixture(scope="session")
def worker(tiny_env):
    from tts_runner.edge.worker import Worker

    w = Worker.from_env(FAST)
    assert w.startup_error is None, w.startup_error
    return w


@pytest.fixture
def fresh_worker(tiny_env):
    """A worker of the test's own (natural-length chunks, and `overrides`): for tests that change or stop it."""
    from tests.helpers.config import NATURAL
    from tts_runner.edge.worker import Worker

    def make(*overrides):
        worker = Worker.from_env([*NATURAL, *overrides])
        assert worker.startup_error is None, worker.startup_error
        return worker
    return make


@pytest.fixture(scope="session")
def model(worker):
    return worker.store.get("1.7B-CustomVoice")


@pytest.fixture(scope="session")
def batch_model(tiny_env):
    """A model without a scheduler: the batch path (each job runs its own batches, as the stock
    engine and scheduler.enabled=false do). The scheduled path has its own tests (unit/serving/test_scheduler.py)."""
    return load_model(["scheduler.enabled=false"])


def pytest_collection_modifyitems(config, items):
    """Tests under tests/gpu/ carry the `gpu` marker, and tests marked `gpu` are skipped where CUDA is
    absent (CI has no GPU)."""
    import torch

    skip = None if torch.cuda.is_available() else pytest.mark.skip(reason="needs CUDA (marker gpu)")
    for item in items:
        if "tests/gpu/" in item.nodeid:
            item.add_marker(pytest.mark.gpu)
        if skip is not None and "gpu" in item.keywords:
            item.add_marker(skip)
