"""Every attention implementation the config offers (`runtime.attention`) gives the stock codes in
the fast and graph engines (greedy, float32, a batch whose rows end apart). The tiny model's code
predictor has two layers: with one, a predictor that saw the wrong context would still agree."""

import importlib.util

import pytest
import torch

from tests.helpers.config import load_model
from tests.helpers.decode import GREEDY, SPEAKERS, TEXTS, codes

FLASH = importlib.util.find_spec("flash_attn") is not None and torch.cuda.is_available()


@pytest.mark.parametrize("attention", [
    "auto", "sdpa", "eager",
    pytest.param("flash_attention_2", marks=[pytest.mark.gpu, pytest.mark.skipif(not FLASH, reason="needs flash-attn")]),
])
def test_every_attention_mode_gives_the_stock_codes(tiny_env, attention):
    model = load_model(["runtime.engine=graph", "runtime.graph.buckets=[1,2,4]", "runtime.graph.max_len=160",
                        f"runtime.attention={attention}", "scheduler.enabled=false"])
    assert model.tts.model.talker.code_predictor.config.num_hidden_layers >= 2
    settings = dict(GREEDY, max_new_tokens=40, min_new_tokens=6)
    stock = codes(model, "stock", TEXTS, SPEAKERS, **settings)
    assert len({c.shape[0] for c in stock}) > 1  # rows end apart
    for engine in ("fast", "graph"):
        other = codes(model, engine, TEXTS, SPEAKERS, **settings)
        assert [c.shape for c in other] == [c.shape for c in stock], engine
        assert all(torch.equal(a, b) for a, b in zip(stock, other, strict=True)), engine
