"""The clone-prompt cache driven past both of its bounds (cloning.cache.max_entries, max_megabytes):
least recently used out first, never more than the bound, a hit computes nothing."""

from types import SimpleNamespace

import torch

from tts_runner.voice.clones import PromptCache


def prompt(megabytes: float) -> SimpleNamespace:
    return SimpleNamespace(ref_code=torch.zeros(int(megabytes * 2**20), dtype=torch.uint8), ref_spk_embedding=None)


def test_past_its_entries_the_least_recently_used_goes_first():
    cache = PromptCache(max_entries=3, max_megabytes=100)
    for name in "abcd":
        cache.get(SimpleNamespace(digest=name), lambda ref: prompt(0.001))
        if name == "b":
            cache.get(SimpleNamespace(digest="a"), lambda ref: prompt(0.001))  # a is used again: b is older
    assert list(cache.entries) == ["a", "c", "d"] and cache.computed == 4


def test_past_its_megabytes_prompts_are_dropped_until_it_fits():
    cache = PromptCache(max_entries=100, max_megabytes=2.5)
    for name in "abc":
        cache.get(SimpleNamespace(digest=name), lambda ref: prompt(1.0))
    assert list(cache.entries) == ["b", "c"]  # 3 MB over 2.5: the oldest went
    assert sum(size for _, size in cache.entries.values()) <= 2.5 * 2**20
    cache.get(SimpleNamespace(digest="big"), lambda ref: prompt(4.0))  # alone over the bound: kept alone
    assert list(cache.entries) == ["big"]
