"""batching.max_batch_size: auto, the rows a device runs: exact buffer sizes, choices for simulated
cards, the start-up log, and an explicit number winning."""

import logging

import pytest
import torch

from tests.helpers.config import load_model
from tts_runner.edge import build
from tts_runner.edge import config as config_mod
from tts_runner.errors import SettingError
from tts_runner.serving import sizing
from tts_runner.serving.sizing import CPU_ROWS, RowCost, choose_rows
from tts_runner.tools.tiny_model import TinySizes, talker_config

GIB = 2**30
REAL = talker_config(TinySizes.real_1_7b(), 151936, "custom_voice")  # the 1.7B dimensions
REAL_WEIGHTS = int(4.5 * GIB)  # the 1.7B model and its speech tokenizer in bfloat16, about


def test_a_rows_buffers_are_what_the_graph_engine_allocates_for_a_slot(tiny_env):
    """The estimate's static part is exact: against the bytes the engine's buffers really hold."""
    model = load_model(["runtime.engine=graph", "runtime.graph.buckets=[1,4]", "runtime.graph.max_len=200",
                        "scheduler.enabled=false"])
    engine = model.graph
    engine.allocate(model.like)
    talker = model.tts.model.talker.config.to_dict()
    cost = RowCost.of(talker, 200, model.like.element_size())
    assert cost.buffers * engine.buckets[-1] == engine.buffer_bytes


@pytest.mark.parametrize("card_gib, expected", [(80, 128), (24, 64), (8, 4)])
def test_auto_picks_the_most_rows_that_fit_a_simulated_card(card_gib, expected):
    row = RowCost.of(REAL, 1280, 2)
    choice = choose_rows("cuda:0", card_gib * GIB, card_gib * GIB, REAL_WEIGHTS, row)
    assert choice.rows == expected, choice.reason
    reserve = max(sizing.RESERVE_MIN_BYTES, 0.1 * card_gib * GIB)
    assert REAL_WEIGHTS + choice.rows * row.total + reserve <= card_gib * GIB  # what it picked fits
    if expected < sizing.BEST_ROWS:
        assert REAL_WEIGHTS + 2 * choice.rows * row.total + reserve > card_gib * GIB  # twice as many would not
    assert f"{card_gib:.1f} GiB free" in choice.reason and "a row" in choice.reason


def test_a_card_too_small_for_one_row_gets_one_and_says_so():
    choice = choose_rows("cuda:0", 5 * GIB, 5 * GIB, REAL_WEIGHTS, RowCost.of(REAL, 1280, 2))
    assert choice.rows == 1 and "not even one row" in choice.reason


def test_on_the_cpu_auto_is_16_and_the_scheduler_follows(tiny_env, caplog):
    build._auto_batch_size.cache_clear()
    cfg = config_mod.load(["runtime.device=cpu"])
    assert cfg.batching.max_batch_size == "auto"
    with caplog.at_level(logging.INFO):
        assert build.batch_size(cfg) == CPU_ROWS
    assert "batching.max_batch_size=auto: 16 on the CPU" in caplog.text
    assert build.model_store(cfg).serving.max_rows == CPU_ROWS
    assert build.recipe(cfg).batching.max_batch_size == CPU_ROWS


def test_auto_on_a_simulated_cuda_device_sizes_by_its_free_memory(tiny_env, monkeypatch, caplog):
    """The tiny model on a pretend card whose free memory holds the reserve, the weights and 20 rows:
    auto runs 16 rows (the largest power of two that fits), and the log says why."""
    build._auto_batch_size.cache_clear()
    cfg = config_mod.load(["runtime.device=cuda:0"])
    folder = build.catalog(cfg.models).folder(str(cfg.models.default))
    row = RowCost.of(sizing.model_config(folder)["talker_config"], 1280, 2)
    free = sizing.RESERVE_MIN_BYTES + sizing.weights_bytes(folder, 2) + 20 * row.total
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    monkeypatch.setattr(torch.cuda, "mem_get_info", lambda device=None: (free, free))
    with caplog.at_level(logging.INFO):
        assert build.batch_size(cfg) == 16
    assert "16, the most that fit" in caplog.text
    build._auto_batch_size.cache_clear()


def test_an_explicit_number_wins_and_a_bad_one_is_named(tiny_env):
    assert build.batch_size(config_mod.load(["batching.max_batch_size=48"])) == 48
    assert build.model_store(config_mod.load(["batching.max_batch_size=48"])).serving.max_rows == 48
    with pytest.raises(SettingError, match=r"batching.max_batch_size='many': use auto or an integer from 1 to 1024"):
        build.batch_size(config_mod.load(["batching.max_batch_size=many"]))
