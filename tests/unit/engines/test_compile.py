"""runtime.compile: the graph engine's layer steps and draws through torch.compile (inductor, which
also runs on the CPU) give the stock library's greedy float32 codes, rows ending apart included,
and seeded sampled codes equal to the uncompiled engine's. About a minute of compiling on 2 cores."""

import pytest
import torch

from tests.helpers.config import load_model
from tests.helpers.decode import GREEDY, SPEAKERS, TEXTS, codes

COMPILED = ["runtime.engine=graph", "runtime.graph.buckets=[1,2,4]", "runtime.graph.max_len=160",
            "scheduler.enabled=false", "runtime.compile=true", "runtime.warmup=false"]


@pytest.fixture(scope="module")
def compiled(tiny_env):
    model = load_model(COMPILED)
    assert model.graph.kernels.layer_step is not model.graph.kernels.__class__.layer_step
    return model


def test_compiled_frames_give_the_librarys_greedy_codes(compiled):
    settings = dict(GREEDY, max_new_tokens=30)
    reference = codes(compiled, "stock", TEXTS, SPEAKERS, min_new_tokens=6, max_frames=[8, 29, 17], **settings)
    got = codes(compiled, "graph", TEXTS, SPEAKERS, min_new_tokens=6, max_frames=[8, 29, 17], **settings)
    assert compiled.engine == "graph"  # no fallback: the compiled frame ran
    assert [c.shape[0] for c in got] == [c.shape[0] for c in reference]
    assert all(torch.equal(a, b) for a, b in zip(reference, got, strict=True))


def test_compiled_sampled_codes_equal_the_uncompiled_engines(compiled, tiny_env):
    settings = dict(do_sample=True, subtalker_dosample=True, max_new_tokens=20, temperature=0.8, top_k=40, top_p=0.9,
                    subtalker_temperature=0.8, subtalker_top_k=40, subtalker_top_p=0.9, repetition_penalty=1.05)
    plain = load_model([c for c in COMPILED if not c.startswith("runtime.compile")])
    torch.manual_seed(5)
    want = codes(plain, "graph", TEXTS, SPEAKERS, **settings)
    torch.manual_seed(5)
    got = codes(compiled, "graph", TEXTS, SPEAKERS, **settings)
    assert all(torch.equal(a, b) for a, b in zip(want, got, strict=True))


def test_every_frame_runs_compiled_at_every_bucket(compiled, tiny_env):
    """A frame needs several compiled variants of a layer step (two models' widths, one row or many,
    the predictor's first and last sub-steps); past dynamo's recompile limit new ones would run
    uncompiled without a word, as they did while a layer's number was a constant of its variant.
    Frames at buckets 1, 2, 4, each attending over a growing length, then each bucket's frame: its
    top-level operators must stay those of compiled kernels, a small share of the uncompiled frame's."""
    from tts_runner.tools.frame_bench import launches

    plain = load_model([c for c in COMPILED if not c.startswith("runtime.compile")])
    for model in (compiled, plain):
        if model.graph.state is None:
            model.graph.allocate(model.like)
    with torch.inference_mode():
        for bucket in (1, 2, 4):
            compiled.graph.run_scratch(bucket, 12)
        counts = {bucket: launches(compiled.graph, bucket, cuda=False) for bucket in (4, 2, 1)}
        uncompiled = launches(plain.graph, 4, cuda=False)
    assert all(n < uncompiled / 4 for n in counts.values()), (counts, uncompiled)
