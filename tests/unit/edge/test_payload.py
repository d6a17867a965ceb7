"""A job's input at the edge: every bad input gets one clear error naming the field and what is
allowed; a valid one becomes a Job with its values, strings taken literally."""

import pytest
from hypothesis import HealthCheck, assume, given, settings
from hypothesis import strategies as st

from tts_runner.edge import payload as payload_mod
from tts_runner.edge.jobs import Edge, as_config, as_payload
from tts_runner.errors import InputError


@pytest.fixture
def check(cfg):
    validator = payload_mod.build_validator(cfg)
    return lambda p: payload_mod.validate(p, validator, cfg.limits.max_total_chars)


def error_of(check, payload) -> str:
    with pytest.raises(InputError) as info:
        check(payload)
    return str(info.value)


def test_readme_examples_are_valid(check):
    check({"text": "Hello world.", "voice": "male_1"})
    check({
        "segments": [{"text": "Hi.", "voice": "male_1"}, {"text": "Hello.", "voice": "female_1"}],
        "output_format": "mp3",
        "params": {"temperature": 0.3, "top_k": 50, "top_p": 0.85, "repetition_penalty": 1.0,
                   "max_new_tokens": 1024, "subtalker_temperature": 0.3, "subtalker_top_k": 50,
                   "subtalker_top_p": 0.85, "language": "en", "instruct": None},
    })


@pytest.mark.parametrize("payload, expected", [
    ({"text": "a", "segments": [{"text": "b"}]}, "got both"),
    ({"voice": "male_1"}, "got neither"),
    ({"text": ""}, "$.text: must not be empty"),
    ({"text": "   "}, "$.text: must contain some non-whitespace text"),
    ({"text": 5}, "$.text: must be of type string, got number"),
    ({"text": "a", "output_format": "ogg"}, "$.output_format: 'ogg' is not allowed; allowed: wav, mp3"),
    ({"text": "a", "model": "../../etc/passwd"}, "$.model: '../../etc/passwd' is not allowed; allowed: 0.6B-Base, 0.6B-CustomVoice, 1.7B-Base, 1.7B-CustomVoice, 1.7B-VoiceDesign"),
    ({"text": "a", "voice": "/etc/passwd"}, "$.voice: '/etc/passwd' is not a voice name"),
    ({"text": "a", "voice": "..%2F..%2Fetc"}, "$.voice: '..%2F..%2Fetc' is not a voice name"),
    ({"text": "a", "extra": 1, "more": 2}, "$: unknown field(s) 'extra', 'more'; allowed: chapters, clone_mode, design, "
     "loudness_lufs, model, mp3_bitrate, output_format, params, ref_audio, ref_text, sample_rate, save_voice, "
     "score_consistency, segments, speed, stream, subtitles, text, timestamps, voice"),
    ({"text": "a", "params": {"temp": 1}}, "$.params: unknown field(s) 'temp'; allowed:"),
    ({"text": "a", "params": {"temperature": 0}}, "$.params.temperature: must be > 0 and <= 2, got 0"),
    ({"text": "a", "params": {"top_p": 1.5}}, "$.params.top_p: must be > 0 and <= 1, got 1.5"),
    ({"text": "a", "params": {"top_k": 2.5}}, "$.params.top_k: must be of type integer, got number"),
    ({"text": "a", "params": {"max_new_tokens": 100000}}, "$.params.max_new_tokens: must be >= 1 and <= 4096, got 100000"),
    ({"text": "a", "params": {"temperature": float("nan")}}, "$.params.temperature: must be a finite number, got nan"),
    ({"text": "a", "params": {"top_p": float("inf")}}, "$.params.top_p: must be a finite number, got inf"),
    ({"text": "a", "params": {"temperature": True}}, "$.params.temperature: must be of type number, got boolean"),
    ({"segments": []}, "$.segments: has 0 items; at least 1 required"),
    ({"segments": [{"voice": "male_1"}]}, "$.segments[0]: 'text' is a required property"),
    ({"segments": [{"text": "a", "speaker": "x"}]}, "$.segments[0]: unknown field(s) 'speaker'"),
    ({"segments": ["just a string"]}, "$.segments[0]: must be of type object, got string"),
    (["text"], "$: the job input must be a JSON object"),
    ({"text": "a", "junk": [[[[[[[[[["deep"]]]]]]]]]]}, "nested more than 8 levels deep"),
    (None, "$: the job input must be a JSON object"),
])
def test_bad_payloads_get_one_clear_error(check, payload, expected):
    message = error_of(check, payload)
    assert message.startswith("Invalid input at ")
    assert expected in message


def test_limits_come_from_config_and_do_not_echo_the_text(cfg):
    cfg.limits.max_text_chars = 50
    cfg.limits.max_segments = 3
    cfg.limits.max_total_chars = 100
    validator = payload_mod.build_validator(cfg)
    long_text = "secret words " * 10

    def message(p):
        with pytest.raises(InputError) as info:
            payload_mod.validate(p, validator, cfg.limits.max_total_chars)
        return str(info.value)

    assert message({"text": long_text}) == "Invalid input at $.text: is 130 characters long; the limit is 50."
    assert "has 4 items; the limit is 3" in message({"segments": [{"text": "a"}] * 4})
    assert "the job has 120 characters of text; the limit is 100" in message({"segments": [{"text": "x" * 40}] * 3})


def test_payload_becomes_a_job(cfg):
    job = Edge(cfg).job({
        "text": "Hi.", "voice": "female_2", "output_format": "mp3",
        "params": {"temperature": 0.7, "top_k": 10, "language": "de", "instruct": "Whisper."},
    }, id="j1")
    assert job.as_text and [s.text for s in job.segments] == ["Hi."] and job.id == "j1"
    assert job.voice == "female_2" and job.output.format == "mp3"
    assert job.language == "de" and job.instruct == "Whisper."
    assert job.sampling.temperature == 0.7 and job.sampling.top_k == 10
    assert job.sampling.top_p == 0.85  # untouched default
    assert cfg.input.text is None  # the config is not modified


@pytest.mark.parametrize("text", ["${", "${oc.env:HOME}", "a\\${b}", "\\\\${input.voice}", "$ {x}", "}{$"])
def test_payload_strings_are_literal_never_interpolated(cfg, text):
    # A text that looks like an OmegaConf interpolation is spoken as written: never resolved (that
    # would read the worker's environment, S3 keys included, into the audio), never a parse error.
    job = Edge(cfg).job({"segments": [{"text": text, "instruct": text}], "params": {"instruct": text}})
    assert job.segments[0].text == text and job.segments[0].instruct == text and job.instruct == text
    again = as_payload(job)
    assert again["segments"] == [{"text": text, "instruct": text}] and again["params"]["instruct"] == text
    shown = as_config(cfg, job)  # the command line's record and --cfg job: resolved, the job's strings as given
    assert shown["input"]["segments"][0]["text"] == text and shown["input"]["instruct"] == text


@settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(text=st.text(alphabet=st.sampled_from(list("\\${}:.ab ")), max_size=24))
def test_any_text_survives_the_edge_unchanged(cfg, text):
    assume(text.strip())
    job = Edge(cfg).job({"text": text})
    assert job.segments[0].text == text and as_config(cfg, job)["input"]["text"] == text


def test_a_job_round_trips_through_the_schema(cfg, check):
    again = as_payload(Edge(cfg).job({"segments": [{"text": "a", "voice": "male_2"}], "params": {"top_k": 7}}))
    check(again)
    assert again["segments"] == [{"text": "a", "voice": "male_2"}]
    assert again["params"]["top_k"] == 7 and again["params"]["language"] == "en"


def test_config_keys_name_the_payloads_fields():
    assert payload_mod.config_key("$.params.top_k") == "sampling.top_k"
    assert payload_mod.config_key("$.params.language") == "input.language"
    assert payload_mod.config_key("$.segments[2].voice") == "input.segments[2].voice"
    assert payload_mod.config_key("$.sample_rate") == "audio.sample_rate"
    assert payload_mod.config_key("$") is None
    assert payload_mod.from_config_keys({"sampling.top_k": 3, "input.language": "de", "audio.mp3_bitrate": 64,
                                         "batching.retries": 5}) == {"mp3_bitrate": 64,
                                                                     "params": {"top_k": 3, "language": "de"}}


def test_job_specs_load_by_name_and_by_path():
    name, spec = payload_mod.load_job_spec("podcast")
    assert name == "podcast" and len(spec["segments"]) >= 12
    assert {s["voice"] for s in spec["segments"]} == {"male_1", "female_1"}
    assert payload_mod.load_job_spec("jobs/hello.yaml")[0] == "hello"
    with pytest.raises(InputError, match="Job spec 'nope' not found.*Known jobs: hello, interview, podcast"):
        payload_mod.load_job_spec("nope")
