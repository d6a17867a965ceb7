"""params.seed: the same payload, seed and configuration give byte-identical audio; without a seed
one is drawn and returned; a chunk draws the same whichever batch it lands in."""

import pytest

from tests.helpers.config import FAST
from tts_runner.audio.dsp import decode
from tts_runner.edge import config as config_mod
from tts_runner.edge import payload as payload_mod
from tts_runner.job.run import chunk_seed, synthesize
from tts_runner.serving.store import ModelStore

SEGMENTS = [{"text": f"Line {i} of a short dialogue, long enough to sample a few dozen frames."} for i in range(6)]


def run(model, cfg, seed=None, batch=4):
    spec = payload_mod.merge(cfg, {"segments": SEGMENTS, "params": {"seed": seed, "min_new_tokens": 2,
                                                                    "max_new_tokens": 48}})
    spec.batching.max_batch_size = batch
    spec.batching.min_seconds_per_char = 0
    return synthesize(spec, model)


@pytest.fixture(scope="module", params=["fast", "graph"])
def seeded(tiny_env, request):
    cfg = config_mod.load(FAST + [f"runtime.engine={request.param}", "runtime.graph.buckets=[1,2,4,8]",
                                  "runtime.graph.max_len=200"])
    return ModelStore(cfg.models, cfg.runtime).get("1.7B-CustomVoice"), cfg


def test_the_same_seed_gives_the_same_bytes_and_another_seed_other_audio(seeded):
    model, cfg = seeded
    first, again, other = run(model, cfg, 42), run(model, cfg, 42), run(model, cfg, 43)
    assert first.seed == again.seed == 42 and first.data == again.data
    assert other.data != first.data


def test_without_a_seed_one_is_drawn_and_returned_so_the_job_can_be_repeated(seeded):
    model, cfg = seeded
    drawn = run(model, cfg)
    assert isinstance(drawn.seed, int) and 0 <= drawn.seed < 2**31
    assert run(model, cfg, drawn.seed).data == drawn.data


def test_a_chunk_draws_the_same_whichever_batch_it_lands_in(seeded):
    """The same codes, so the same audio but for the last bit here and there: the speech decoder's
    arithmetic in a group of another size rounds differently."""
    model, cfg = seeded
    runs = [decode(run(model, cfg, 7, batch=size).data, "wav")[0] for size in (1, 4, 8)]
    assert runs[0].size == runs[1].size == runs[2].size > 6 * 1920
    assert max(abs(runs[0] - r).max() for r in runs[1:]) <= 2 / 32768


def test_each_chunk_and_each_retry_has_its_own_seed():
    seeds = {chunk_seed(5, index, attempt) for index in range(50) for attempt in range(3)}
    assert len(seeds) == 150 and all(0 <= s < 2**31 for s in seeds)
    assert chunk_seed(5, 3, 0) == chunk_seed(5, 3, 0) != chunk_seed(6, 3, 0)
