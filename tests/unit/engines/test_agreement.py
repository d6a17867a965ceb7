"""The engines against the library in bfloat16 on the CPU (torch runs bf16 there): greedy codes of
8 items x 100 frames, fast and graph each against stock (qwen-tts's own generate, the reference).
Attention written out (q.k, mask, softmax, second product) over the whole static cache parted from
stock within a few frames (about 5 % of codes equal); through the library's kernel (SDPA) over the
used prefix only, they agree."""

import pytest

from tests.helpers.config import load_model
from tts_runner.tools.bench import agreement


@pytest.fixture(scope="module")
def bf16_model(tiny_env):
    return load_model(["scheduler.enabled=false", "runtime.dtype=bfloat16", "runtime.engine=graph",
                       "runtime.graph.buckets=[1,8]", "runtime.graph.max_len=296", "batching.max_batch_size=8"])


def test_greedy_codes_in_bfloat16_agree_with_the_library(bf16_model):
    assert bf16_model.graph is not None and str(bf16_model.like.dtype) == "torch.bfloat16"
    found = {row["engine"]: row for row in agreement(bf16_model, ["stock", "fast", "graph"], 100, 8)}
    for engine in ("fast", "graph"):
        assert found[engine]["codes_equal_pct"] >= 99.0, found[engine]
