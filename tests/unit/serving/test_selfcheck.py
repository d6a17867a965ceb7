"""The graph rows' start-up self-check: it passes on a sound engine, and a fault planted in the graph
rows (a wrong slot on admission, live slots not moved on compaction) makes the model use the fast
loop, logged. Run eagerly on the CPU: the same frame a GPU captures."""

import logging

import pytest

from tests.helpers.config import load_model
from tts_runner.engines.graph import GraphEngine, GraphRows
from tts_runner.engines.sampling import Sampling
from tts_runner.serving import selfcheck
from tts_runner.serving.model import ChunkRequest

GRAPH = ["runtime.engine=graph", "runtime.graph.buckets=[1,2,4]", "runtime.graph.max_len=128",
         "scheduler.enabled=false"]


@pytest.fixture(scope="module")
def graph_model(tiny_env):
    return load_model(GRAPH)


@pytest.fixture
def model(graph_model):
    with graph_model.using(engine="graph"):  # a fallback inside a test is undone after it
        yield graph_model


def test_a_sound_graph_engine_passes_and_stays_on(model, caplog, monkeypatch):
    moves = []
    original = GraphEngine.compact
    monkeypatch.setattr(GraphEngine, "compact", lambda self, b, alive, smaller: moves.append((b, smaller))
                        or original(self, b, alive, smaller))
    with caplog.at_level(logging.INFO):
        verdict = selfcheck.check_rows(model)
    assert verdict.passed and verdict.agreement == 1.0 and verdict.needed == 1.0
    assert moves == [(2, 1)]  # the second row moved from slot 1 down into bucket 1: compaction ran
    assert model.engine == "graph" and model.graph is not None
    assert "self-check passed" in caplog.text
    print(f"self-check on the CPU (tiny model): {verdict.seconds:.2f} s")


def _no_move(self, b, alive, smaller):
    """A planted fault: the live slots are not moved to the front (the rows' bookkeeping says they were)."""


def _wrong_slot(original):
    def admit(self, rows):
        original(self, rows)
        if len(self.slots) == 2:  # the second row is told it sits in the first one's slot
            self.slots[1] = self.slots[0]
    return admit


@pytest.mark.parametrize("fault", ["compaction", "admission"])
def test_a_planted_fault_in_the_graph_rows_turns_the_graph_engine_off(model, caplog, monkeypatch, fault):
    if fault == "compaction":
        monkeypatch.setattr(GraphEngine, "compact", _no_move)
    else:
        monkeypatch.setattr(GraphRows, "admit", _wrong_slot(GraphRows.admit))
    with caplog.at_level(logging.INFO):
        verdict = selfcheck.check_rows(model)
    assert not verdict.passed and verdict.agreement < 1.0
    assert model.engine == "fast" and model.graph is None
    assert "self-check FAILED" in caplog.text and "uses the fast loop from now on" in caplog.text
    wavs, rate = model.generate([ChunkRequest("Still speaking.", model.speakers[0], "english", None, max_frames=8)],
                                Sampling(max_new_tokens=16, min_new_tokens=8))
    assert rate == 24000 and wavs[0].size > 0  # the model still makes audio, through the fast loop


@pytest.mark.parametrize("enabled", [True, False])
def test_the_store_runs_the_check_after_a_capture_unless_turned_off(tiny_env, monkeypatch, caplog, enabled):
    """On CUDA the store checks the rows once the graphs are captured (here a capture is pretended:
    the CPU captures nothing); runtime.graph.self_check=false skips it."""
    from tts_runner.serving.model import Model

    monkeypatch.setattr(Model, "capture_graphs", lambda self: 1.0)
    with caplog.at_level(logging.INFO):
        model = load_model([*GRAPH, f"runtime.graph.self_check={str(enabled).lower()}"])
    assert ("self-check passed" in caplog.text) is enabled
    assert model.engine == "graph"
