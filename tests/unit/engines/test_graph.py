"""The graph engine's loop (engines/graph.py: its static-shape frame, the code a CUDA graph captures,
and its slots as a running batch), run eagerly on the CPU, one call's rows through engines/loop.py."""

import logging

import pytest
import torch

from tests.helpers.config import FAST, load_model
from tests.helpers.decode import GREEDY, SPEAKERS, TEXTS, codes
from tts_runner.edge import build
from tts_runner.edge import config as config_mod
from tts_runner.engines import loop
from tts_runner.engines.graph import GraphEngine, GraphRows
from tts_runner.engines.sampling import Sampling
from tts_runner.errors import ModelError
from tts_runner.serving.model import ChunkRequest
from tts_runner.serving.store import graph_buckets, resolve_engine, resolve_sync_every

# Buckets 1, 2, 4: a batch of 3 runs in bucket 4 with one spare slot, and shrinks as items end.
GRAPH = ["runtime.engine=graph", "runtime.graph.buckets=[1,2,4]", "runtime.graph.max_len=160"]
FRAMES_16 = Sampling(max_new_tokens=16, min_new_tokens=16)


@pytest.fixture(scope="module")
def graph_model(tiny_env):
    return load_model([*GRAPH, "scheduler.enabled=false"])


@pytest.fixture
def graph(graph_model):
    with graph_model.using(engine="graph"):  # what a test's fallback changes is restored after it
        yield graph_model


@pytest.fixture
def buckets(graph, monkeypatch):
    """The bucket each frame of a call ran in, in order."""
    seen = []
    original = GraphEngine.run

    def spy(self, b, length, width):
        seen.append(b)
        return original(self, b, length, width)

    monkeypatch.setattr(GraphEngine, "run", spy)
    return seen


@pytest.fixture
def compactions(graph, monkeypatch):
    """The moves of the live slots to the front, as (from bucket, to bucket) pairs."""
    seen = []
    original = GraphEngine.compact

    def spy(self, b, alive, smaller):
        seen.append((b, smaller))
        return original(self, b, alive, smaller)

    monkeypatch.setattr(GraphEngine, "compact", spy)
    return seen


@pytest.mark.parametrize("n", [1, 3])
def test_greedy_codes_equal_the_stock_library(graph, n):
    stock = codes(graph, "stock", TEXTS[:n], SPEAKERS[:n], **GREEDY)
    static = codes(graph, "graph", TEXTS[:n], SPEAKERS[:n], **GREEDY)
    assert graph.engine == "graph"  # no fallback happened
    assert [c.shape for c in static] == [c.shape for c in stock] and stock[0].shape[0] > 0
    assert all(torch.equal(a, b) for a, b in zip(stock, static, strict=True))


@pytest.mark.parametrize("floor", [6, 12])
def test_greedy_equality_holds_while_rows_end_and_buckets_shrink(graph, buckets, floor):
    settings = dict(GREEDY, max_new_tokens=60, min_new_tokens=floor)
    stock = codes(graph, "stock", TEXTS, SPEAKERS, **settings)
    static = codes(graph, "graph", TEXTS, SPEAKERS, **settings)
    assert graph.engine == "graph"
    assert all(c.shape[0] >= floor for c in stock) and len({c.shape[0] for c in stock}) > 1
    assert buckets[0] == 4 and buckets[-1] < 4 and buckets == sorted(buckets, reverse=True)  # moved down as rows ended
    assert all(torch.equal(a, b) for a, b in zip(stock, static, strict=True))


def test_each_row_ends_at_its_own_frame_budget(graph, buckets, compactions):
    settings = dict(GREEDY, max_new_tokens=40, min_new_tokens=40)
    free = codes(graph, "stock", TEXTS, SPEAKERS, **settings)
    budgets = [5, 39, 17]
    cut = codes(graph, "graph", TEXTS, SPEAKERS, **settings, max_frames=budgets)
    assert graph.engine == "graph" and [c.shape[0] for c in cut] == budgets
    assert buckets[0] == 4 and buckets[-1] == 1  # rows that reached their budget left while the others went on
    assert compactions == [(4, 2)]  # the first row (slot 0) ended first: the two others moved to the front
    for a, b, n in zip(free, cut, budgets, strict=True):
        assert torch.equal(a[:n], b)


def test_sampling_settings_are_per_row(graph):
    """A greedy row inside a sampled batch gets exactly its greedy codes: nothing is shared or frozen."""
    greedy = codes(graph, "graph", TEXTS, SPEAKERS, **dict(GREEDY, max_new_tokens=40, min_new_tokens=30))
    mixed = dict(GREEDY, max_new_tokens=40, min_new_tokens=30, do_sample=[False, True, False],
                 subtalker_dosample=[False, True, False], temperature=[1.0, 1.5, 1.0], top_k=[0, 50, 0],
                 top_p=[1.0, 0.9, 1.0])
    torch.manual_seed(3)
    out = codes(graph, "graph", TEXTS, SPEAKERS, **mixed)
    assert graph.engine == "graph"
    assert torch.equal(out[0], greedy[0]) and torch.equal(out[2], greedy[2])
    assert out[1].shape != greedy[1].shape or not torch.equal(out[1], greedy[1])


def test_sampled_runs_are_reproducible_with_a_seed(graph):
    settings = dict(do_sample=True, subtalker_dosample=True, max_new_tokens=20, temperature=0.7, top_k=30,
                    top_p=0.9, subtalker_temperature=0.7, subtalker_top_k=30, subtalker_top_p=0.9,
                    repetition_penalty=1.1)
    runs = []
    for seed in (7, 7, 8):
        torch.manual_seed(seed)
        runs.append(codes(graph, "graph", TEXTS, SPEAKERS, **settings))
    assert all(torch.equal(a, b) for a, b in zip(runs[0], runs[1], strict=True))
    assert not all(a.shape == b.shape and torch.equal(a, b) for a, b in zip(runs[0], runs[2], strict=True))


def test_jobs_run_on_the_graph_engine(graph):
    wavs, sr = graph.generate([ChunkRequest(t, s, "english", None) for t, s in zip(TEXTS, SPEAKERS, strict=True)],
                              FRAMES_16)
    assert sr == 24000 and [w.size for w in wavs] == [15 * 1920] * 3 and graph.engine == "graph"


def test_rows_too_many_or_too_long_for_the_buffers_use_the_fast_loop_beside_them(graph, caplog, monkeypatch):
    caplog.set_level(logging.INFO, logger="tts_runner.engines.loop")
    placed = []
    original = loop.place

    def spy(batches, rows):
        rest = original(batches, rows)
        placed.append([len(b) for b in batches])
        return rest

    monkeypatch.setattr(loop, "place", spy)
    requests = [ChunkRequest(t, s, "english", None) for t, s in zip(TEXTS, SPEAKERS, strict=True)] * 2
    wavs, _ = graph.generate(requests, FRAMES_16)  # 6 rows > bucket 4
    assert [w.size for w in wavs] == [15 * 1920] * 6 and graph.engine == "graph"
    assert placed == [[4, 2]] and "2 of this call's 6 rows exceed the graph buffers" in caplog.text
    wavs, _ = graph.generate(requests[:1], Sampling(max_new_tokens=200, min_new_tokens=2))  # > max_len
    assert wavs[0].size > 0 and graph.engine == "graph" and placed[-1] == [0, 1]


def test_a_graph_failure_falls_back_to_the_fast_loop(graph, monkeypatch, caplog):
    def broken(self):
        raise RuntimeError("injected graph failure")

    monkeypatch.setattr(GraphRows, "step", broken)
    wavs, _ = graph.generate([ChunkRequest("Falls back.", "ryan", "english", None)], FRAMES_16)
    assert wavs[0].size == 15 * 1920 and graph.engine == "fast" and graph.graph is None
    assert "injected graph failure" in caplog.text


@pytest.mark.parametrize("override, message", [
    ("runtime.graph.buckets=[0,8]", "runtime.graph.buckets"),
    ("runtime.graph.buckets=[]", "runtime.graph.buckets"),
    ("runtime.graph.max_len=8", "runtime.graph.max_len"),
    ("runtime.engine=turbo", "use auto, fast, graph, stock"),
    ("runtime.graph.candidates=0", "runtime.graph.candidates=0 must be null"),
    ("runtime.graph.candidates=0", "or an integer from 1 to 4096"),
])
def test_bad_graph_settings_are_named(tiny_env, override, message):
    cfg = config_mod.load(FAST + GRAPH + [override])
    with pytest.raises(ModelError, match=message.replace("[", r"\[")):
        build.model_store(cfg)


# Ops that need the host to see a device value (a sync inside a CUDA graph capture fails), or copy
# host data to the device; none may appear in the frame that is captured.
HOST_ROUND_TRIPS = {"_local_scalar_dense", "nonzero", "masked_select", "lift_fresh", "equal", "is_nonzero"}


def test_the_captured_frame_has_no_host_round_trip(graph):
    """The frame a CUDA graph captures, recorded op by op while it runs on the CPU."""
    from torch.utils._python_dispatch import TorchDispatchMode

    class Record(TorchDispatchMode):
        def __init__(self):
            super().__init__()
            self.ops = []

        def __torch_dispatch__(self, func, types, args=(), kwargs=None):
            self.ops.append((func.__name__.split(".")[0], args))
            return func(*args, **(kwargs or {}))

    codes(graph, "graph", TEXTS, SPEAKERS, **dict(GREEDY, max_new_tokens=4))  # loads the buffers
    decoder = graph.graph
    with torch.inference_mode(), Record() as record:
        decoder.run_scratch(4, eager=True)
    names = {name for name, _ in record.ops}
    assert len(record.ops) > 100 and "index_copy_" in names  # it did record the frame
    assert not names & HOST_ROUND_TRIPS, names & HOST_ROUND_TRIPS
    bool_indexing = [name for name, args in record.ops if name == "index" and any(
        isinstance(i, torch.Tensor) and i.dtype == torch.bool for i in (args[1] if len(args) > 1 else []))]
    assert not bool_indexing


@pytest.mark.parametrize("max_batch, buckets", [
    (None, (1, 8, 16, 32, 64)), (16, (1, 8, 16)), (20, (1, 8, 16, 32)), (1, (1,)), (64, (1, 8, 16, 32, 64)),
])
def test_buckets_stop_at_the_one_that_holds_the_largest_batch(max_batch, buckets):
    # Larger buckets would never run, yet would hold GPU memory and add capture time at start-up.
    assert graph_buckets([64, 1, 16, 8, 32], max_batch) == buckets


def test_a_batch_above_every_bucket_is_warned_about_at_start_up(caplog):
    with caplog.at_level(logging.WARNING, logger="tts_runner.serving.store"):
        assert graph_buckets([1, 8], 16) == (1, 8)
    assert "batching.max_batch_size=16 is above the largest graph bucket (8)" in caplog.text


def test_the_worker_sizes_the_graph_buckets_by_its_batch(tiny_env):
    from tts_runner.edge.worker import Worker

    w = Worker.from_env(FAST + GRAPH + ["batching.max_batch_size=4", "runtime.graph.buckets=[1,2,8,16]"])
    assert w.startup_error is None and w.store.graph_buckets == (1, 2, 8)


def test_static_buffers_are_sized_by_the_largest_bucket_and_max_len(graph):
    graph.generate([ChunkRequest("Hello.", "ryan", "english", None)], Sampling(**GREEDY))
    decoder, config = graph.graph, graph.tts.model.talker.config
    cache = 2 * config.num_hidden_layers * 4 * config.num_key_value_heads * 160 * config.head_dim * 4  # float32
    text = 4 * 160 * config.hidden_size * 4
    assert cache + text < decoder.buffer_bytes < 2 * (cache + text)


@pytest.mark.parametrize("device, engine", [("cuda:0", "graph"), ("cpu", "fast")])
def test_auto_picks_the_engine_measured_fastest_on_the_device(device, engine):
    # docs/results/gpu-latest.json (H100) and docs/performance.md (CPU)
    assert resolve_engine("auto", device) == engine
    assert resolve_engine("stock", device) == "stock"


def test_other_engines_are_not_warned_about_graph_buckets(tiny_env, caplog):
    cfg = config_mod.load(FAST + ["runtime.engine=fast", "runtime.graph.buckets=[1,8]"])
    with caplog.at_level(logging.WARNING, logger="tts_runner.serving.store"):
        build.model_store(cfg)
    assert "graph bucket" not in caplog.text


@pytest.mark.parametrize("engine", ["fast", "graph"])
def test_greedy_equality_holds_with_a_host_check_every_8_frames(tiny_env, engine, monkeypatch):
    """As on CUDA: rows that end are noticed (and dropped, or moved down a bucket) only every 8 frames."""
    model = load_model([*GRAPH, "runtime.sync_every=8", "scheduler.enabled=false"])
    settings = dict(GREEDY, max_new_tokens=60, min_new_tokens=6)
    stock = codes(model, "stock", TEXTS, SPEAKERS, **settings)
    checks = []
    run_to_end = loop.run_to_end

    def spy(batches, rows, sync_every, progress=None):
        checks.append((type(batches[0]).__name__, sync_every))
        return run_to_end(batches, rows, sync_every, progress)

    monkeypatch.setattr(loop, "run_to_end", spy)
    other = codes(model, engine, TEXTS, SPEAKERS, **settings)
    assert checks == [("GraphRows" if engine == "graph" else "RunningBatch", 8)]  # no fallback, checks every 8
    assert len({c.shape[0] for c in stock}) > 1 and any(c.shape[0] % 8 for c in stock)  # ends between checks
    assert all(torch.equal(a, b) for a, b in zip(stock, other, strict=True))


@pytest.mark.parametrize("value, device, expected", [("auto", "cuda:0", 8), ("auto", "cpu", 1), (8, "cpu", 8),
                                                     (3, "cuda:0", 3)])
def test_sync_every_is_auto_or_as_given(value, device, expected):
    assert resolve_sync_every(value, device) == expected


@pytest.mark.parametrize("interleaved", [True, False])
def test_one_streams_rope_table_rotates_as_the_multimodal_rope_does(graph, interleaved):
    """A frame's three position streams are equal, so the graph frame rotates by one stream's table
    (built once per frame) with the library's plain rope: the library's multimodal rope, bit for bit."""
    from tts_runner.engines.library import apply_multimodal_rotary_pos_emb

    engine = graph.graph
    talker = engine.talker
    scaling = talker.config.rope_scaling
    torch.manual_seed(3)
    heads, kv, dim = talker.config.num_attention_heads, talker.config.num_key_value_heads, talker.config.head_dim
    q, k = torch.randn(3, heads, 1, dim), torch.randn(3, kv, 1, dim)
    positions = torch.tensor([[5], [131], [1000]])
    x = torch.zeros(3, 1, talker.config.hidden_size)
    cos, sin = talker.model.rotary_emb(x, positions.view(1, -1, 1).expand(3, -1, 1))
    want = apply_multimodal_rotary_pos_emb(q, k, cos, sin, scaling["mrope_section"], interleaved)
    got = engine._rope(x, positions)(q, k)
    assert all(torch.equal(a, b) for a, b in zip(want, got, strict=True))


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
def test_the_fused_rms_norm_computes_the_librarys_norm(graph, dtype):
    from tts_runner.engines.core import rms_norm

    torch.manual_seed(4)
    layer = graph.graph.model.layers[0]
    for norm, width in ((layer.input_layernorm, talker_width(graph)), (layer.self_attn.q_norm, layer.self_attn.head_dim)):
        norm = type(norm)(width, norm.variance_epsilon).to(dtype)
        norm.weight.data = (torch.randn(width) * 0.2 + 1).to(dtype)
        x = (torch.randn(4, 3, width) * 3).to(dtype)
        assert torch.equal(rms_norm(norm, x), norm(x))


def talker_width(model) -> int:
    return model.graph.talker.config.hidden_size


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
def test_the_rope_by_one_roll_rotates_as_the_librarys_rope(dtype):
    from tts_runner.engines.core import Rope
    from tts_runner.engines.library import apply_rotary_pos_emb

    torch.manual_seed(5)
    cos, sin = torch.randn(3, 2, 64).to(dtype), torch.randn(3, 2, 64).to(dtype)
    q, k = torch.randn(3, 8, 2, 64).to(dtype), torch.randn(3, 2, 2, 64).to(dtype)
    want = apply_rotary_pos_emb(q, k, cos, sin)
    got = Rope(cos, sin)(q, k)
    assert all(torch.equal(a, b) for a, b in zip(want, got, strict=True))


def test_draws_over_the_best_candidates_make_the_codes_of_draws_over_every_code(graph, monkeypatch):
    """Sampled rows whose top_k fits runtime.graph.candidates run the narrow frame; a row with top-k
    off takes the batch to the frame over every code. The reference: the same seeded rows with the
    engine drawing over every code throughout."""
    widths = []
    original = GraphEngine.run

    def spy(self, b, length, width):
        widths.append(width)
        return original(self, b, length, width)

    settings = dict(do_sample=True, subtalker_dosample=True, max_new_tokens=24, temperature=0.9, top_k=50, top_p=0.9,
                    subtalker_temperature=0.9, subtalker_top_k=40, subtalker_top_p=0.95, repetition_penalty=1.05)
    monkeypatch.setattr(GraphEngine, "run", spy)
    torch.manual_seed(11)
    narrow = codes(graph, "graph", TEXTS, SPEAKERS, **settings)
    assert set(widths) == {64}
    widths.clear()
    torch.manual_seed(11)
    off = codes(graph, "graph", TEXTS, SPEAKERS, **dict(settings, top_k=[50, 0, 50]))
    assert set(widths) == {None}
    monkeypatch.setattr(graph.graph, "widths", (None,))
    torch.manual_seed(11)
    reference = codes(graph, "graph", TEXTS, SPEAKERS, **settings)
    assert all(torch.equal(a, b) for a, b in zip(narrow, reference, strict=True))
    assert len(off) == 3
