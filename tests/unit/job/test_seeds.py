"""params.seed: the same payload, seed and configuration give byte-identical audio; without a seed
one is drawn and returned; a chunk draws the same whichever batch it lands in."""

import pytest

from tests.helpers.config import load_model, make_job
from tts_runner.audio.formats import read
from tts_runner.job.plan import chunk_seed
from tts_runner.job.run import synthesize

SEGMENTS = [{"text": f"Line {i} of a short dialogue, long enough to sample a few dozen frames."} for i in range(6)]


def run(model, seed=None, batch=4):
    spec = make_job({"segments": SEGMENTS, "params": {"seed": seed, "min_new_tokens": 2, "max_new_tokens": 48}},
                    [f"batching.max_batch_size={batch}", "batching.min_seconds_per_char=0"])
    return synthesize(spec, model)


@pytest.fixture(scope="module", params=["fast", "graph"])
def seeded(tiny_env, request):
    """The batch path (each job its own batches): a chunk lands in batches of the job's own size."""
    return load_model([f"runtime.engine={request.param}", "runtime.graph.buckets=[1,2,4,8]",
                       "runtime.graph.max_len=200", "scheduler.enabled=false", "batching.max_batch_size=8"])


def test_the_same_seed_gives_the_same_bytes_and_another_seed_other_audio(seeded):
    first, again, other = run(seeded, 42), run(seeded, 42), run(seeded, 43)
    assert first.metadata["seed"] == again.metadata["seed"] == 42 and first.data == again.data
    assert other.data != first.data


def test_without_a_seed_one_is_drawn_and_returned_so_the_job_can_be_repeated(seeded):
    drawn = run(seeded)
    seed = drawn.metadata["seed"]
    assert isinstance(seed, int) and 0 <= seed < 2**31
    assert run(seeded, seed).data == drawn.data


def test_a_chunk_draws_the_same_whichever_batch_it_lands_in(seeded):
    """The same codes, so the same audio but for the last bit here and there: the speech decoder's
    arithmetic in a group of another size rounds differently."""
    runs = [read(run(seeded, 7, batch=size).data, "wav")[0] for size in (1, 4, 8)]
    assert runs[0].size == runs[1].size == runs[2].size > 6 * 1920
    assert max(abs(runs[0] - r).max() for r in runs[1:]) <= 2 / 32768


def test_each_chunk_and_each_retry_has_its_own_seed():
    seeds = {chunk_seed(5, index, attempt) for index in range(50) for attempt in range(3)}
    assert len(seeds) == 150 and all(0 <= s < 2**31 for s in seeds)
    assert chunk_seed(5, 3, 0) == chunk_seed(5, 3, 0) != chunk_seed(6, 3, 0)
