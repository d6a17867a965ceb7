"""The fast engine's loop (engines/running.py, one call's rows through engines/loop.py) against the
stock library: exact codes with greedy decoding in float32."""

import pytest
import torch

from tests.helpers.decode import GREEDY, SPEAKERS, TEXTS, codes
from tts_runner.engines.running import RunningBatch
from tts_runner.engines.sampling import Sampling
from tts_runner.serving.model import ChunkRequest


@pytest.mark.parametrize("n", [1, 3])
def test_greedy_codes_equal_the_stock_library(model, n):
    stock = codes(model, "stock", TEXTS[:n], SPEAKERS[:n], **GREEDY)
    fast = codes(model, "fast", TEXTS[:n], SPEAKERS[:n], **GREEDY)
    assert [c.shape for c in fast] == [c.shape for c in stock] and stock[0].shape[0] > 0
    for a, b in zip(stock, fast, strict=True):
        assert torch.equal(a, b)


def test_greedy_equality_holds_with_end_of_speech_and_the_floor(model):
    # speech-like stopping: items end at different frames; the floor holds them all back to 6
    settings = dict(GREEDY, max_new_tokens=60, min_new_tokens=6)
    stock = codes(model, "stock", TEXTS, SPEAKERS, **settings)
    fast = codes(model, "fast", TEXTS, SPEAKERS, **settings)
    assert all(c.shape[0] >= 6 for c in stock)
    assert len({c.shape[0] for c in stock}) > 1  # items end apart: the fast loop drops ended rows
    for a, b in zip(stock, fast, strict=True):
        assert torch.equal(a, b)


@pytest.mark.parametrize("engine", ["stock", "fast"])
def test_each_row_ends_at_its_own_frame_budget(model, engine):
    # the reference: stock without budgets, each item cut at its budget (greedy, so the frames before match)
    settings = dict(GREEDY, max_new_tokens=40, min_new_tokens=40)
    free = codes(model, "stock", TEXTS, SPEAKERS, **settings)
    assert all(c.shape[0] == 39 for c in free)
    budgets = [7, 39, 20]
    cut = codes(model, engine, TEXTS, SPEAKERS, **settings, max_frames=budgets)
    assert [c.shape[0] for c in cut] == budgets
    for a, b, n in zip(free, cut, budgets, strict=True):
        assert torch.equal(a[:n], b)


def test_sampled_runs_are_reproducible_with_a_seed(model):
    settings = dict(do_sample=True, subtalker_dosample=True, max_new_tokens=20, temperature=0.7, top_k=30,
                    top_p=0.9, subtalker_temperature=0.7, subtalker_top_k=30, subtalker_top_p=0.9,
                    repetition_penalty=1.1)
    torch.manual_seed(7)
    first = codes(model, "fast", TEXTS, SPEAKERS, **settings)
    torch.manual_seed(7)
    again = codes(model, "fast", TEXTS, SPEAKERS, **settings)
    torch.manual_seed(8)
    other = codes(model, "fast", TEXTS, SPEAKERS, **settings)
    assert all(torch.equal(a, b) for a, b in zip(first, again, strict=True))
    assert not all(a.shape == b.shape and torch.equal(a, b) for a, b in zip(first, other, strict=True))


def test_the_model_runs_jobs_on_the_fast_loop_and_falls_back_on_failure(model, monkeypatch):
    sampling = Sampling(max_new_tokens=16, min_new_tokens=16)
    with model.using(engine="fast"):
        wavs, sr = model.generate([ChunkRequest(t, s, "english", None) for t, s in zip(TEXTS, SPEAKERS, strict=True)],
                                  sampling)
        assert [w.size for w in wavs] == [15 * 1920] * 3 and model.engine == "fast"

        def broken(*args, **kwargs):
            raise RuntimeError("injected fast-loop failure")

        monkeypatch.setattr(RunningBatch, "step", broken)
        wavs, _ = model.generate([ChunkRequest("Falls back.", "ryan", "english", None)], sampling)
        assert wavs[0].size == 15 * 1920 and model.engine == "stock"
