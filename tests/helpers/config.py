"""Config overrides the tests share, and models and jobs built from them as the edge builds them."""

from __future__ import annotations

# Small enough for a 2-core CI machine, and exact: with the end-of-speech floor at max_new_tokens
# every chunk is 15 frames (1.2 s) long, and nothing is trimmed from its edges. Tests of speech-like
# lengths, and of trimming, set their own values.
FAST = ["sampling.max_new_tokens=16", "sampling.min_new_tokens=16", "audio.trim.threshold_db=null"]

# Short chunks that end where the model ends them (the end code is sampled), and are kept when they
# reach max_new_tokens instead: for job-level tests that do not count frames.
NATURAL = ["sampling.max_new_tokens=16", "sampling.min_new_tokens=2", "batching.min_seconds_per_char=0",
           "batching.runaway=keep"]


def load_model(overrides: list[str] = (), variant: str = "1.7B-CustomVoice", base: list[str] = FAST):
    """A model of a fresh store built from conf/ with `base` and `overrides` (the tiny models)."""
    from tts_runner.edge import build
    from tts_runner.edge import config as config_mod

    return build.model_store(config_mod.load([*base, *overrides])).get(variant)


def make_job(payload: dict, overrides: list[str] = (), base: list[str] = FAST):
    """The Job the edge makes of `payload` under conf/ with `base` and `overrides`."""
    from tts_runner.edge import config as config_mod
    from tts_runner.edge.jobs import Edge

    return Edge(config_mod.load([*base, *overrides])).job(payload)
