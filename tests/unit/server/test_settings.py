"""The server's settings (tts_runner/serve.py): conf/ < the environment < command-line overrides < flags,
and a bad setting named."""

import pytest

from tts_runner.errors import SettingError
from tts_runner.serve import configure, parse


def test_precedence_conf_then_environment_then_overrides_then_flags(monkeypatch):
    monkeypatch.delenv("PORT", raising=False)
    monkeypatch.delenv("TTS_RUNNER_API_KEY", raising=False)
    _, settings = configure(parse([]))
    assert (settings.port, settings.host, settings.api_key, settings.health_port) == (8000, "127.0.0.1", None, None)
    monkeypatch.setenv("PORT", "9001")
    monkeypatch.setenv("PORT_HEALTH", "9009")
    monkeypatch.setenv("TTS_RUNNER_API_KEY", "s3cret-value")
    _, settings = configure(parse([]))
    assert (settings.port, settings.health_port, settings.api_key) == (9001, 9009, "s3cret-value")
    _, settings = configure(parse(["server.port=9002", "server.max_input_chars=5"]))
    assert (settings.port, settings.max_input_chars) == (9002, 5)
    _, settings = configure(parse(["--port", "9003", "--host", "0.0.0.0", "server.port=9002"]))
    assert (settings.port, settings.host) == (9003, "0.0.0.0")
    assert "s3cret-value" not in repr(settings)  # the key never reaches a log


def test_an_alias_to_a_model_that_does_not_exist_is_named():
    with pytest.raises(SettingError, match="server.models.tts-1: 'nope' is not a model"):
        configure(parse(["server.models.tts-1=nope"]))
