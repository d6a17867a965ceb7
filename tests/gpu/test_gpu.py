"""The decode engines on CUDA: capture, host round trips, exact greedy codes, bf16 agreement, OOM,
the scheduler under captured graphs, and a broken device.

Marked `gpu` (as everything under tests/gpu/): collected everywhere, skipped where CUDA is absent
(CI). On a GPU machine: `python -m pytest -m gpu`. The tiny models of conftest, moved to cuda:0.
"""

import json
import logging
import os
from pathlib import Path

import pytest
import torch

from tests.helpers.config import load_model
from tests.helpers.decode import GREEDY, SPEAKERS, TEXTS, codes
from tts_runner.edge import config as config_mod
from tts_runner.tools.texts import AGREEMENT_TEXTS

pytestmark = pytest.mark.gpu

CUDA = ["runtime.device=cuda:0"]
BUCKETS = [1, 2, 4, 8]
GRAPH = ["runtime.engine=graph", f"runtime.graph.buckets=[{','.join(map(str, BUCKETS))}]",
         "runtime.graph.max_len=256"]


def load(*overrides: str):
    return load_model([*CUDA, *GRAPH, "scheduler.enabled=false", *overrides])


@pytest.fixture(scope="module")
def float32(tiny_env):
    torch.backends.cuda.matmul.allow_tf32 = False
    return load("runtime.dtype=float32")


@pytest.fixture
def model32(float32):
    with float32.using(engine="graph"):
        yield float32


def test_every_graph_bucket_captures(float32):
    graph = float32.graph
    assert float32.engine == "graph" and graph is not None
    assert sorted({b for b, *_ in graph.graphs}) == BUCKETS and graph.capture_seconds > 0
    assert graph.state.codes.is_cuda


def test_the_captured_frame_makes_no_host_round_trip(model32):
    """A capture already fails on a synchronising op; here the same frame also runs eagerly with
    CUDA's sync debug mode set to raise, then the captured graph replays."""
    codes(model32, "graph", TEXTS, SPEAKERS, **dict(GREEDY, max_new_tokens=4))  # loads the buffers
    decoder = model32.graph
    torch.cuda.synchronize()
    torch.cuda.set_sync_debug_mode("error")
    try:
        with torch.inference_mode():
            decoder.run_scratch(4, eager=True)
            decoder.run_scratch(4)
    finally:
        torch.cuda.set_sync_debug_mode("default")
    torch.cuda.synchronize()


def test_greedy_codes_of_fast_and_graph_equal_stock_in_float32(model32):
    """A mixed-length batch whose items end at different frames (the floor holds them to 6), so the
    fast loop drops rows and the graph loop moves down buckets on the way."""
    settings = dict(GREEDY, max_new_tokens=60, min_new_tokens=6)
    stock = codes(model32, "stock", TEXTS, SPEAKERS, **settings)
    assert len({c.shape[0] for c in stock}) > 1 and all(c.shape[0] >= 6 for c in stock)
    for engine in ("fast", "graph"):
        other = codes(model32, engine, TEXTS, SPEAKERS, **settings)
        assert model32.engine == engine  # no fallback
        assert [c.shape for c in other] == [c.shape for c in stock], engine
        assert all(torch.equal(a, b) for a, b in zip(stock, other, strict=True)), engine


def test_greedy_agreement_in_bfloat16_is_reported(tiny_env):
    """bf16 kernels differ between the loops, so codes may part after a while: the rate over 8 items x
    100 frames is written to $OUT/gpu-agreement-bf16.json (or printed). Frame 0's first code comes
    from the library's own talker forward in every loop: it agrees for nearly every item (a broken
    loop would agree by chance with 1 in 2048)."""
    model = load("runtime.dtype=bfloat16")
    texts = AGREEMENT_TEXTS
    speakers = [model.speakers[i % len(model.speakers)] for i in range(len(texts))]
    settings = dict(GREEDY, max_new_tokens=101, min_new_tokens=101)
    stock = codes(model, "stock", texts, speakers, **settings)
    report = {}
    for engine in ("fast", "graph"):
        other = codes(model, engine, texts, speakers, **settings)
        assert model.engine == engine
        same = torch.stack([a[:100] == b[:100] for a, b in zip(stock, other, strict=True)])  # [8, 100, 16]
        assert same.shape == (8, 100, 16)
        assert same[:, 0, 0].sum() >= 6, engine
        report[engine] = {"codes_equal_pct": round(100 * same.float().mean().item(), 2),
                          "first_codebook_equal_pct": round(100 * same[..., 0].float().mean().item(), 2)}
    text = json.dumps({"items": 8, "frames": 100, "dtype": "bfloat16", "model": "tiny", **report})
    print("bf16 greedy agreement with stock:", text)
    if os.environ.get("OUT"):
        Path(os.environ["OUT"], "gpu-agreement-bf16.json").write_text(text)


def test_a_batch_that_runs_out_of_memory_splits_and_the_worker_answers_the_next_job(tiny_env, caplog):
    """A real CUDA OOM: the process's memory is capped between what one chunk and a batch of 16 need."""
    from tts_runner.edge.worker import Worker

    worker = Worker(config_mod.load([*CUDA, "runtime.engine=fast", "sampling.max_new_tokens=61",
                                     "sampling.min_new_tokens=61", "batching.max_batch_size=16",
                                     "scheduler.enabled=false"]))
    assert worker.startup_error is None, worker.startup_error
    batch = {"id": "batch", "input": {"segments": [{"text": f"Segment {i} says something.", "voice": "male_1"}
                                                   for i in range(16)]}}
    one = {"id": "one", "input": {"text": "Just one chunk."}}

    def peak(job) -> int:
        torch.cuda.empty_cache()
        torch.cuda.reset_peak_memory_stats()
        resting = torch.cuda.memory_allocated()
        answer = worker.handle(job)
        assert "error" not in answer, answer
        return torch.cuda.max_memory_allocated() - resting

    need_one, need_batch = peak(one), peak(batch)
    assert need_batch > 4 * need_one, (need_one, need_batch)  # 16 chunks at once is what overflows
    torch.cuda.empty_cache()
    total = torch.cuda.get_device_properties(0).total_memory
    cap = torch.cuda.memory_reserved() + int((need_one * need_batch) ** 0.5)
    caplog.set_level(logging.WARNING, logger="tts_runner.job.generate")
    torch.cuda.set_per_process_memory_fraction(cap / total)
    try:
        answer = worker.handle(batch)
        assert "error" not in answer, answer
        assert answer["metadata"]["num_chunks"] == 16
        assert "Batch of 16 failed (OutOfMemoryError" in caplog.text
        answer = worker.handle(one)
        assert "error" not in answer and answer["metadata"]["duration_seconds"] > 4.5
    finally:
        torch.cuda.set_per_process_memory_fraction(1.0)
        torch.cuda.empty_cache()


@pytest.mark.parametrize("engine", ["graph", "fast"])
def test_the_scheduler_admits_rows_into_captured_graphs_and_codes_equal_stock(tiny_env, engine):
    """Jobs joining a running batch (each row at its own frame and position: under captured graphs, in
    the static buffers' slots), ending apart, the graph's rows compacted into smaller buckets as they
    end: greedy codes in float32 equal the stock library's, each request alone."""
    from tests.helpers.scheduler import GREEDY as SCHEDULED_GREEDY
    from tests.helpers.scheduler import JOB_A, JOB_B, request, wait_rounds
    from tts_runner.engines.sampling import Sampling
    from tts_runner.serving.ticket import Ticket

    torch.backends.cuda.matmul.allow_tf32 = False
    model = load_model([*CUDA, *GRAPH, f"runtime.engine={engine}", "runtime.dtype=float32", "batching.max_batch_size=8"])
    assert model.engine == engine and model.scheduler is not None
    moves = []
    if engine == "graph":
        assert sorted({b for b, *_ in model.graph.graphs}) == BUCKETS
        compact = model.graph.compact  # the real one, its calls noted

        def noted(b, alive, smaller):
            moves.append((b, smaller))
            compact(b, alive, smaller)

        model.graph.compact = noted
    alone = [codes(model, "stock", [t], [s], min_new_tokens=f, **SCHEDULED_GREEDY)[0] for t, s, f in JOB_A + JOB_B]
    assert len({c.shape[0] for c in alone}) > 2  # they end apart
    rows = Sampling(**SCHEDULED_GREEDY)
    a = model.scheduler.submit(Ticket("a"), [(r := request(*i), model.row_sampling(r, rows), None) for i in JOB_A])
    wait_rounds(model.scheduler, 2)
    b = model.scheduler.submit(Ticket("b"), [(r := request(*i), model.row_sampling(r, rows), None) for i in JOB_B])
    for reference, future in zip(alone, a + b, strict=True):
        assert torch.equal(reference, future.result(timeout=120).cpu())
    assert model.engine == engine  # no fallback on the way
    if engine == "graph":
        assert moves and all(smaller < b for b, smaller in moves), moves  # rows moved down buckets as they ended


def test_a_cuda_error_other_than_out_of_memory_marks_the_worker_broken_and_ping_answers_503(tiny_env):
    """A real device-side assert inside the scheduler's loop, on the HTTP server (in a process of its own:
    the error poisons the CUDA context): the request gets 503, /ping answers 503 naming the failure, the
    next request is refused, and the worker ends its process."""
    import subprocess
    import sys

    root = Path(__file__).resolve().parents[2]
    child = subprocess.run([sys.executable, "-m", "tests.gpu.broken_device"], cwd=root, capture_output=True, text=True,
                           timeout=300)
    lines = [line for line in child.stdout.splitlines() if line.startswith("{")]
    assert lines, child.stdout[-2000:] + child.stderr[-3000:]
    seen = json.loads(lines[-1])
    assert seen["ping_before"] == 200, seen
    assert seen["speech"] == 503 and seen["speech_error"]["code"] == "worker_unhealthy", seen
    assert "device-side assert" in seen["speech_error"]["message"], seen
    assert seen["ping"] == 503 and "unhealthy: The GPU failed" in seen["ping_text"], seen
    assert seen["after"] == 503 and seen["after_error"]["code"] == "unhealthy", seen
    assert child.returncode == 1, (child.returncode, child.stderr[-2000:])  # the worker's own exit
