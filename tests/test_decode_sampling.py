"""The decode core's sampler: HF's warpers row by row, and draws from the warped distribution."""

import torch
from transformers.generation.logits_process import TopKLogitsWarper, TopPLogitsWarper

from tts_runner.decode.sampling import draw, warp


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
    draws = draw(scores, ones.bool(), ones, torch.zeros(n, 1, dtype=torch.long), ones)
    freq = torch.bincount(draws, minlength=4).float() / n
    assert torch.allclose(freq, torch.tensor([0.1, 0.2, 0.3, 0.4]), atol=0.01)
    kept = draw(scores, ones.bool(), ones, torch.full((n, 1), 2), ones)  # top-k 2: codes 2, 3 only
    assert set(kept.tolist()) == {2, 3}
    assert torch.equal(draw(scores, ~ones.bool(), ones, 0 * ones.long(), ones), torch.full((n,), 3))
