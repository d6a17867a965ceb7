"""The fast decode loop against the stock library: exact codes with greedy decoding in float32."""

import pytest
import torch

from tts_runner.engine import ChunkRequest

TEXTS = ["Hi.", "A considerably longer sentence, so that the batch is left-padded.", "Medium length text here."]
SPEAKERS = ["ryan", "vivian", "aiden"]


def codes(engine, decode, texts, speakers, **sampling):
    """The codes qwen_tts's generate() returns for this batch, with the given decode loop."""
    engine.decode = decode
    engine._floor = sampling.pop("min_new_tokens", 2)
    engine._budgets = sampling.pop("max_frames", None)
    tts = engine.tts
    prompts = [tts._build_assistant_text(t) for t in texts]
    try:
        with torch.inference_mode():
            out, _ = tts.model.generate(input_ids=tts._tokenize_texts(prompts), instruct_ids=[None] * len(texts),
                                        languages=["english"] * len(texts), speakers=speakers,
                                        non_streaming_mode=True, **sampling)
    finally:
        engine._budgets = None
    return out


@pytest.fixture
def restore(engine):
    saved = engine.decode
    yield
    engine.decode, engine._floor = saved, 2


GREEDY = dict(do_sample=False, subtalker_dosample=False, max_new_tokens=30, repetition_penalty=1.05)


@pytest.mark.parametrize("n", [1, 3])
def test_greedy_codes_equal_the_stock_library(engine, restore, n):
    stock = codes(engine, "stock", TEXTS[:n], SPEAKERS[:n], **GREEDY)
    fast = codes(engine, "fast", TEXTS[:n], SPEAKERS[:n], **GREEDY)
    assert [c.shape for c in fast] == [c.shape for c in stock] and stock[0].shape[0] > 0
    for a, b in zip(stock, fast, strict=True):
        assert torch.equal(a, b)


def test_greedy_equality_holds_with_end_of_speech_and_the_floor(engine, restore):
    # speech-like stopping: items end at different frames; the floor holds them all back to 6
    settings = dict(GREEDY, max_new_tokens=60, min_new_tokens=6)
    stock = codes(engine, "stock", TEXTS, SPEAKERS, **settings)
    fast = codes(engine, "fast", TEXTS, SPEAKERS, **settings)
    assert all(c.shape[0] >= 6 for c in stock)
    assert len({c.shape[0] for c in stock}) > 1  # items end apart: the fast loop drops ended rows
    for a, b in zip(stock, fast, strict=True):
        assert torch.equal(a, b)


@pytest.mark.parametrize("decode", ["stock", "fast"])
def test_each_row_ends_at_its_own_frame_budget(engine, restore, decode):
    # the reference: stock without budgets, each item cut at its budget (greedy, so the frames before match)
    settings = dict(GREEDY, max_new_tokens=40, min_new_tokens=40)
    free = codes(engine, "stock", TEXTS, SPEAKERS, **settings)
    assert all(c.shape[0] == 39 for c in free)
    budgets = [7, 39, 20]
    cut = codes(engine, decode, TEXTS, SPEAKERS, **settings, max_frames=budgets)
    assert [c.shape[0] for c in cut] == budgets
    for a, b, n in zip(free, cut, budgets, strict=True):
        assert torch.equal(a[:n], b)


def test_sampled_runs_are_reproducible_with_a_seed(engine, restore):
    settings = dict(do_sample=True, subtalker_dosample=True, max_new_tokens=20, temperature=0.7, top_k=30,
                    top_p=0.9, subtalker_temperature=0.7, subtalker_top_k=30, subtalker_top_p=0.9,
                    repetition_penalty=1.1)
    torch.manual_seed(7)
    first = codes(engine, "fast", TEXTS, SPEAKERS, **settings)
    torch.manual_seed(7)
    again = codes(engine, "fast", TEXTS, SPEAKERS, **settings)
    torch.manual_seed(8)
    other = codes(engine, "fast", TEXTS, SPEAKERS, **settings)
    assert all(torch.equal(a, b) for a, b in zip(first, again, strict=True))
    assert not all(a.shape == b.shape and torch.equal(a, b) for a, b in zip(first, other, strict=True))


def test_the_engine_runs_jobs_on_the_fast_loop_and_falls_back_on_failure(engine, restore, monkeypatch):
    engine.decode = "fast"
    wavs, sr = engine.generate([ChunkRequest(t, s, "english", None) for t, s in zip(TEXTS, SPEAKERS, strict=True)],
                               {"max_new_tokens": 16, "min_new_tokens": 16})
    assert [w.size for w in wavs] == [15 * 1920] * 3 and engine.decode == "fast"

    def broken(*args, **kwargs):
        raise RuntimeError("injected fast-loop failure")

    monkeypatch.setattr("tts_runner.engine.lean_talker_generate", broken)
    wavs, _ = engine.generate([ChunkRequest("Falls back.", "ryan", "english", None)],
                              {"max_new_tokens": 16, "min_new_tokens": 16})
    assert wavs[0].size == 15 * 1920 and engine.decode == "stock"
