"""Choosing codes (engines/draw.py): HF's warpers row by row, and draws from the warped distribution."""

import pytest
import torch
from scipy.stats import kstest
from transformers.generation.logits_process import TopKLogitsWarper, TopPLogitsWarper

from tts_runner.engines.draw import candidates, draw, stream_keys, uniform, warp
from tts_runner.engines.sampling import Sampling


def test_warping_keeps_the_codes_hf_keeps_row_by_row():
    torch.manual_seed(0)
    scores = torch.randn(64, 50) * 3
    top_k = torch.randint(0, 60, (64, 1))
    top_p = torch.rand(64, 1) * 0.9 + 0.05
    top_p[::5] = 1.0
    temperature = torch.rand(64, 1) + 0.3
    warped = warp(scores, temperature, top_k, top_p)
    for row in range(64):
        expected = scores[row:row + 1] / temperature[row].item()
        if top_k[row].item():
            expected = TopKLogitsWarper(int(top_k[row]))(None, expected)
        if top_p[row].item() < 1.0:
            expected = TopPLogitsWarper(float(top_p[row]))(None, expected)
        assert torch.equal(torch.isfinite(warped[row]), torch.isfinite(expected[0])), row


def test_the_exponential_race_draws_from_the_distribution():
    torch.manual_seed(0)
    n = 40000
    scores = torch.log(torch.tensor([[1.0, 2.0, 3.0, 4.0]])).expand(n, -1).contiguous()
    ones = torch.ones(n, 1)
    seeds = torch.arange(n)[:, None]  # every row its own stream
    draws = draw(scores, ones.bool(), ones, torch.zeros(n, 1, dtype=torch.long), ones, stream_keys(seeds, 0, 0))
    freq = torch.bincount(draws, minlength=4).float() / n
    assert torch.allclose(freq, torch.tensor([0.1, 0.2, 0.3, 0.4]), atol=0.01)
    kept = draw(scores, ones.bool(), ones, torch.full((n, 1), 2), ones,
                stream_keys(seeds, 0, 0))  # top-k 2: codes 2, 3 only
    assert set(kept.tolist()) == {2, 3}
    greedy = draw(scores, ~ones.bool(), ones, 0 * ones.long(), ones, stream_keys(seeds, 0, 0))
    assert torch.equal(greedy, torch.full((n,), 3))


def test_drawing_among_the_best_candidates_draws_the_same_codes():
    """The fast loop draws among only as many best codes as the largest top_k: the same draws."""
    torch.manual_seed(1)
    n = 40000
    scores = (torch.randn(1, 300) * 2).expand(n, -1).contiguous()
    ones = torch.ones(n, 1)
    top_k, top_p = torch.full((n, 1), 20), torch.full((n, 1), 0.9)
    seeds = torch.arange(n)[:, None]
    full = draw(scores, ones.bool(), ones * 0.7, top_k, top_p, stream_keys(seeds, 3, 1))
    fewer = draw(scores, ones.bool(), ones * 0.7, top_k, top_p, stream_keys(seeds, 3, 1), candidates=25)
    kept = torch.isfinite(warp(scores[:1], ones[:1] * 0.7, top_k[:1], top_p[:1]))[0]
    assert set(full.tolist()) <= set(kept.nonzero().view(-1).tolist())
    assert torch.equal(full, fewer)  # a code's random number is its own: the same race, fewer runners


@pytest.mark.parametrize("rows, expected", [
    ([(50, True)], 50),
    ([(10, True), (70, True)], 70),
    ([(0, False), (70, True)], 70),  # the greedy row's top-k does not count
    ([(0, True), (70, True)], None),  # top-k off: every code is a candidate
    ([(30, False)], 1),
])
def test_candidates_are_the_largest_top_k_of_the_sampling_rows(rows, expected):
    talker = [Sampling(top_k=k, do_sample=sample, subtalker_top_k=7, subtalker_dosample=True) for k, sample in rows]
    assert candidates(talker) == (expected, 7)
    predictor = [Sampling(subtalker_top_k=k, subtalker_dosample=sample, top_k=7) for k, sample in rows]
    assert candidates(predictor) == (7, expected)  # the code predictor's from its own settings


def test_a_rows_draws_depend_on_its_seed_alone():
    torch.manual_seed(2)
    scores = torch.randn(6, 500)
    ones = torch.ones(6, 1)
    seeds = torch.tensor([[11], [22], [33], [44], [55], [66]])
    k, p = torch.full((6, 1), 0), torch.full((6, 1), 1.0)
    together = draw(scores, ones.bool(), ones, k, p, stream_keys(seeds, 5, 2))
    alone = torch.cat([draw(scores[i:i + 1], ones[:1].bool(), ones[:1], k[:1], p[:1],
                            stream_keys(seeds[i:i + 1], 5, 2))
                       for i in range(6)])
    assert torch.equal(together, alone)
    other_frame = draw(scores, ones.bool(), ones, k, p, stream_keys(seeds, 6, 2))
    assert not torch.equal(together, other_frame)


def test_the_hashed_random_numbers_are_uniform_and_independent():
    seeds = torch.arange(200)[:, None]
    codes = torch.arange(1000).expand(200, -1)
    u = uniform(seeds, 7, 3, codes)
    assert 0 < float(u.min()) and float(u.max()) < 1
    assert kstest(u.flatten().numpy(), "uniform").pvalue > 1e-3
    neighbours = [uniform(seeds, 8, 3, codes), uniform(seeds, 7, 4, codes), uniform(seeds + 1, 7, 3, codes)]
    for v in neighbours:  # the next frame, sub-step or seed: unrelated numbers
        assert abs(float(torch.corrcoef(torch.stack([u.flatten(), v.flatten()]))[0, 1])) < 0.01


def test_a_frames_stream_keys_at_once_are_each_sub_steps_own():
    """The code predictor hashes its rows once per frame for its 15 draws: the same keys, one by one."""
    seeds = torch.tensor([[3], [2**40 + 5], [77]])
    frame = torch.tensor([[0], [9], [4]])
    together = stream_keys(seeds, frame, torch.arange(1, 16))
    assert together.shape == (3, 15)
    for g in range(1, 16):
        assert torch.equal(together[:, g - 1:g], stream_keys(seeds, frame, g))
    codes = torch.arange(50).expand(3, -1)
    assert torch.equal(uniform(seeds, frame, 4, codes), uniform(seeds, frame, 4, codes))
