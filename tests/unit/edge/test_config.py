"""Config composition and precedence: conf defaults < environment < job < command line."""

import re
from dataclasses import replace

import pytest
from omegaconf import OmegaConf

from tests.helpers.env import environment
from tts_runner.audio.sinks import resolve_kind
from tts_runner.edge import build
from tts_runner.edge import config as config_mod
from tts_runner.edge.cli import resolve_job
from tts_runner.edge.jobs import Edge
from tts_runner.engines.sampling import Sampling
from tts_runner.errors import InputError, SettingError


def test_defaults_match_the_documented_api():
    with environment(QWEN_TTS_MODEL_DIR=None, QWEN_TTS_DEVICE=None):
        cfg = config_mod.load()
        assert cfg.models.dir == "/models" and cfg.runtime.device == "auto"
    s = cfg.sampling
    assert (s.temperature, s.top_k, s.top_p, s.repetition_penalty, s.max_new_tokens) == (0.3, 50, 0.85, 1.0, 1024)
    assert (s.subtalker_temperature, s.subtalker_top_k, s.subtalker_top_p, s.min_new_tokens) == (0.3, 50, 0.85, 60)
    assert cfg.input.voice == "male_1" and cfg.input.model == "1.7B-CustomVoice"
    assert cfg.input.output_format == "wav" and cfg.input.language == "en" and cfg.input.instruct is None
    assert cfg.sink.region == "us-east-1" and cfg.sink.prefix == "tts-output/"
    with environment(QWEN_TTS_MIN_NEW_TOKENS=None):
        job = Edge(config_mod.load()).job({"text": "Hi."})
    assert job.sampling == replace(Sampling(), seed=job.sampling.seed)  # the typed defaults are the documented ones


def test_environment_reaches_the_config():
    with environment(QWEN_TTS_MODEL_DIR="/data/m", QWEN_TTS_DEVICE="cuda:0", QWEN_TTS_MIN_NEW_TOKENS="30",
             S3_BUCKET="b", S3_ACCESS_KEY="ak", S3_SECRET_KEY="sk", S3_ENDPOINT="http://minio:9000",
             S3_REGION="eu-west-1"):
        cfg = config_mod.load()
        assert cfg.models.dir == "/data/m" and cfg.runtime.device == "cuda:0"
        assert cfg.sampling.min_new_tokens == 30
        assert (cfg.sink.bucket, cfg.sink.access_key, cfg.sink.secret_key) == ("b", "ak", "sk")
        assert cfg.sink.endpoint_url == "http://minio:9000" and cfg.sink.region == "eu-west-1"
        assert resolve_kind(build.sink(cfg.sink)) == "s3"


def test_auto_sink_is_base64_unless_bucket_and_both_credentials_are_set():
    with environment(S3_BUCKET="b", S3_ACCESS_KEY="ak", S3_SECRET_KEY=None):
        assert resolve_kind(build.sink(config_mod.load().sink)) == "base64"
    with environment(S3_BUCKET="", S3_ACCESS_KEY="ak", S3_SECRET_KEY="sk"):
        assert resolve_kind(build.sink(config_mod.load().sink)) == "base64"


def test_precedence_conf_lt_env_lt_payload_lt_cli():
    assert config_mod.load().sampling.min_new_tokens == 60  # conf default
    with environment(QWEN_TTS_MIN_NEW_TOKENS="30"):
        cfg = config_mod.load()
        assert cfg.sampling.min_new_tokens == 30  # environment beats conf
        assert Edge(cfg).job({"text": "Hi."}).sampling.min_new_tokens == 30
        job = {"text": "Hi.", "params": {"min_new_tokens": 10, "temperature": 0.9}}
        assert Edge(cfg).job(job).sampling.min_new_tokens == 10  # payload beats environment
        cli = ["sampling.min_new_tokens=5", "input.voice=female_2", "sink=file"]
        composed = config_mod.load(cli, config_name="cli")
        final = Edge(composed).cli_job(job, "spec", config_mod.pinned_overrides(composed, cli))
        assert final.sampling.min_new_tokens == 5  # command line beats payload
        assert final.sampling.temperature == 0.9  # payload value not overridden by the CLI stays
        assert final.voice == "female_2" and final.recipe.sink.kind == "file"


def test_cli_job_spec_is_merged_under_cli_overrides():
    cli = ["+job=jobs/podcast.yaml", "sampling.temperature=0.8", "input.output_format=wav"]
    job = resolve_job(config_mod.load(cli, config_name="cli"), cli)
    assert job.name == "podcast" and len(job.segments) >= 12
    assert job.sampling.temperature == 0.8  # the spec says 0.3
    assert job.output.format == "wav"  # the spec says mp3
    text = ["+job=jobs/podcast.yaml", "input.text=Just this."]  # a text given on the command line replaces the spec's segments
    job = resolve_job(config_mod.load(text, config_name="cli"), text)
    assert job.as_text and [s.text for s in job.segments] == ["Just this."]


def test_cli_values_pass_the_same_validation():
    cli = ["+job=hello", "sampling.temperature=-1"]
    with pytest.raises(InputError, match=r"^Invalid setting sampling.temperature: must be > 0"):
        resolve_job(config_mod.load(cli, config_name="cli"), cli)


@pytest.mark.parametrize("key, kind", [("input.voice", "string"), ("input.model", "string"),
                                       ("audio.sample_rate", "integer")])
def test_a_job_field_left_unset_is_named(tiny_env, key, kind):
    cli = ["+job=hello", f"{key}=null"]  # typed on the command line: the schema's word for it
    with pytest.raises(InputError, match=rf"^Invalid setting {key}: must be of type {kind}, got null\.$"):
        resolve_job(config_mod.load(cli, config_name="cli"), cli)
    from tts_runner.edge.worker import Worker  # the worker's config (conf/ or the environment) leaves it unset

    worker = Worker.from_env([f"{key}=null"])
    assert worker.handle({"input": {"text": "Hi."}})["error"] == (
        f"The worker failed to start: Invalid configuration (conf/ or environment): Invalid setting {key}: it must be set.")


def test_every_config_group_is_documented_in_the_root_defaults():
    root = OmegaConf.load(config_mod.CONF_DIR / "config.yaml")
    groups = {next(iter(d)) for d in root.defaults if isinstance(d, dict) or hasattr(d, "keys")}
    on_disk = {p.name for p in config_mod.CONF_DIR.iterdir() if p.is_dir()}
    text = (config_mod.CONF_DIR / "config.yaml").read_text()
    opt_in = set(re.findall(r"^#   (\w+) ", text.split("# Opt-in groups")[1], re.M)) if "# Opt-in groups" in text else set()
    assert groups | opt_in == on_disk and not groups & opt_in


def test_sweeps_score_the_voice_unless_the_spec_or_the_command_line_says_not_to():
    base = ["+job=hello"]
    assert resolve_job(config_mod.load(base, config_name="cli"), base, sweep=True).score_consistency
    assert not resolve_job(config_mod.load(base, config_name="cli"), base).score_consistency  # a single run: off
    off = [*base, "input.score_consistency=false"]
    assert not resolve_job(config_mod.load(off, config_name="cli"), off, sweep=True).score_consistency


def test_clone_mode_and_design_follow_the_precedence_of_every_field(monkeypatch):
    cfg = config_mod.load(["+job=hello", "cloning.mode=icl"], config_name="cli")
    job = resolve_job(cfg, ["+job=hello", "cloning.mode=icl"])
    assert job.clone_mode == "icl" and job.design == "once"
    with pytest.raises(SettingError, match=r"Invalid setting cloning.mode='both': use xvector or icl."):
        overrides = ["+job=hello", "cloning.mode=both"]
        resolve_job(config_mod.load(overrides, config_name="cli"), overrides)
    with pytest.raises(SettingError, match=r"Invalid setting voices.design.clone_with='1.7B-CustomVoice': use a Base variant of models.variants \(0.6B-Base, 1.7B-Base\)."):
        overrides = ["+job=hello", "voices.design.clone_with=1.7B-CustomVoice"]
        resolve_job(config_mod.load(overrides, config_name="cli"), overrides)
