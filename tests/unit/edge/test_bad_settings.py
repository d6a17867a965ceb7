"""Bad settings and job specs: each one clear error, at start-up or before anything runs."""


import pytest
import torch

from tests.helpers.config import FAST
from tests.helpers.env import environment
from tts_runner.audio.sinks import Sink, deliver
from tts_runner.edge import build
from tts_runner.edge import config as config_mod
from tts_runner.edge import payload as payload_mod
from tts_runner.edge.worker import Worker
from tts_runner.errors import InputError, SinkError


def start_up_error(overrides=(), **env) -> str:
    with environment(**env):
        worker = Worker.from_env(FAST + list(overrides))
    return worker.handle({"input": {"text": "Hi."}})["error"]


def test_device_that_is_not_a_device(tiny_env):
    assert start_up_error(QWEN_TTS_DEVICE="gpu") == (
        "The worker failed to start: QWEN_TTS_DEVICE='gpu' is not a device; use auto, cpu or cuda:N.")


@pytest.mark.skipif(torch.cuda.is_available(), reason="needs a machine without CUDA")
def test_cuda_asked_for_where_there_is_none(tiny_env):
    assert start_up_error(QWEN_TTS_DEVICE="cuda:0") == (
        "The worker failed to start: QWEN_TTS_DEVICE=cuda:0 but CUDA is not available on this machine; "
        "use cpu or auto.")


def test_unknown_dtype_and_engine(tiny_env):
    assert start_up_error(["runtime.dtype=int8"]) == (
        "The worker failed to start: runtime.dtype='int8' is not supported; use auto, bfloat16, float16, float32.")
    assert start_up_error(["runtime.engine=turbo"]) == (
        "The worker failed to start: runtime.engine='turbo' is not an engine; use auto, fast, graph, stock.")


def test_job_spec_that_is_not_yaml(tmp_path):
    spec = tmp_path / "broken.yaml"
    spec.write_text("text: [unclosed\n")
    with pytest.raises(InputError, match=rf"^Job spec {spec} is not valid YAML: "):
        payload_mod.load_job_spec(str(spec))


def test_unknown_sink_kind_and_s3_without_credentials(tiny_env):
    needs = r"^The s3 sink needs S3_BUCKET, S3_ACCESS_KEY and S3_SECRET_KEY to be set\.$"
    with pytest.raises(SinkError, match=needs):
        build.sink(config_mod.load(["sink=s3"]).sink)  # before any audio is made
    with pytest.raises(SinkError, match=needs):
        deliver(b"RIFF", "wav", Sink(kind="s3"), "job")
    unknown = r"^Unknown sink kind 'ftp'; use auto, base64, s3 or file\.$"
    with pytest.raises(SinkError, match=unknown):
        build.sink(config_mod.load(["sink.kind=ftp"]).sink)
    with pytest.raises(SinkError, match=unknown):
        deliver(b"RIFF", "wav", Sink(kind="ftp"), "job")
    assert start_up_error(["sink=s3"]) == ("The worker failed to start: The s3 sink needs S3_BUCKET, S3_ACCESS_KEY and "
                                           "S3_SECRET_KEY to be set.")


@pytest.mark.parametrize("value", ["0", "many"])
def test_torch_threads_that_are_not_a_count(tiny_env, value):
    assert start_up_error([f"runtime.torch_threads={value}"]) == (
        f"The worker failed to start: runtime.torch_threads={value if value == '0' else repr(value)} must be auto "
        "or a positive integer.")


def test_the_voice_stores_bounds_come_from_conf_and_are_checked(tmp_path):
    cfg = config_mod.load(["voices.saved_max_voices=3", "voices.saved_max_megabytes=1.5"])
    store = build.saved_voices(cfg.voices, build.cloning(cfg.cloning), tmp_path)
    assert (store.bounds.max_voices, store.bounds.max_megabytes) == (3, 1.5)
    defaults = config_mod.load([])
    assert build.saved_voices(defaults.voices, build.cloning(defaults.cloning), tmp_path).bounds.max_voices == 1000
    bad = config_mod.load(["voices.saved_max_voices=0"])
    with pytest.raises(InputError, match=r"^Invalid setting voices.saved_max_voices=0: use a number from 1 to 1000000\.$"):
        build.saved_voices(bad.voices, build.cloning(bad.cloning), tmp_path)


def test_a_bad_voice_store_bound_is_the_workers_start_up_error(tiny_env):
    assert start_up_error(["voices.saved_max_megabytes=0"]) == (
        "The worker failed to start: Invalid setting voices.saved_max_megabytes=0: use a number from 1 to 1048576.")


@pytest.mark.parametrize("value", ["0", "-5", "soon"])
def test_a_job_time_limit_that_is_not_a_positive_number_is_the_start_up_error(tiny_env, value):
    broken = Worker.from_env([f"worker.job_timeout_seconds={value}"])
    shown = repr(value if value == "soon" else int(value))
    assert broken.startup_error == (f"Invalid setting worker.job_timeout_seconds={shown}: "
                                    "use a number from 0.001 to 604800.")


def test_a_vitals_period_that_is_not_a_number_of_seconds_is_the_start_up_error(tiny_env):
    broken = Worker.from_env(["worker.vitals_every_seconds=-1"])
    assert broken.startup_error == "Invalid setting worker.vitals_every_seconds=-1: use a number from 0 to 86400."


@pytest.mark.parametrize("value, shown", [("0", "0"), ("many", "'many'")])
def test_a_malloc_arena_count_out_of_range_is_the_start_up_error(tiny_env, value, shown):
    broken = Worker.from_env([f"runtime.malloc_arenas={value}"])
    assert broken.startup_error == f"Invalid setting runtime.malloc_arenas={shown}: use a number from 1 to 64 or null."
