"""OpenAI's speech request onto our payload: the fields of voices kept across chunks, and
vLLM-Omni's x_vector_only_mode as our clone_mode (tts_runner/server/openai.py)."""

import pytest

from tts_runner.server.errors import ApiError
from tts_runner.server.openai import speech_request
from tts_runner.server.settings import ServerSettings
from tts_runner.voice.clones import Cloning
from tts_runner.voice.saved import VoiceStore

VARIANTS = {"1.7B-CustomVoice": "custom_voice", "1.7B-VoiceDesign": "voice_design", "1.7B-Base": "base"}


def ask(tmp_path, **body):
    settings = ServerSettings(models={}, voices={})
    return speech_request({"input": "Hello.", **body}, settings, VoiceStore(tmp_path, Cloning()), VARIANTS, {},
                          "1.7B-CustomVoice", "ryan").payload


def test_the_fields_of_a_kept_voice_reach_the_payload(tmp_path):
    payload = ask(tmp_path, model="1.7B-VoiceDesign", instructions="A calm voice.", design="once",
                  save_voice="narrator", score_consistency=True)
    assert payload["design"] == "once" and payload["save_voice"] == "narrator" and payload["score_consistency"] is True
    assert payload["params"]["instruct"] == "A calm voice."


@pytest.mark.parametrize("flag, mode", [(True, "xvector"), (False, "icl")])
def test_x_vector_only_mode_is_our_clone_mode(tmp_path, flag, mode):
    payload = ask(tmp_path, model="1.7B-Base", ref_audio="AAAA", x_vector_only_mode=flag)
    assert payload["clone_mode"] == mode
    assert ask(tmp_path, model="1.7B-Base", ref_audio="AAAA", x_vector_only_mode=flag, clone_mode=mode)["clone_mode"] == mode


def test_x_vector_only_mode_against_clone_mode_or_not_a_flag_is_refused_by_name(tmp_path):
    with pytest.raises(ApiError, match=r"Invalid input at x_vector_only_mode: it asks for clone_mode 'xvector', but "
                                       r"clone_mode is 'icl'; give one of the two."):
        ask(tmp_path, model="1.7B-Base", ref_audio="AAAA", x_vector_only_mode=True, clone_mode="icl")
    with pytest.raises(ApiError, match=r"Invalid input at x_vector_only_mode: true or false."):
        ask(tmp_path, model="1.7B-Base", ref_audio="AAAA", x_vector_only_mode="yes")
