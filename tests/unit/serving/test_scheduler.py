"""The scheduler: rows shared by concurrent jobs, admitted at host checks, fair, bounded, and
failing or cancelled one job at a time (the tiny model underneath, on the CPU, float32)."""

from __future__ import annotations

import threading
import time
from collections import deque
from dataclasses import replace

import numpy as np
import pytest
import torch

from tests.helpers.config import FAST, load_model, make_job
from tests.helpers.decode import codes as library_codes
from tests.helpers.scheduler import GREEDY, JOB_A, JOB_B, request, wait_rounds
from tts_runner.engines.sampling import Sampling
from tts_runner.errors import WorkerBusy
from tts_runner.serving.scheduler import Scheduler
from tts_runner.serving.ticket import Ticket

ROWS = Sampling(**GREEDY)  # the rows' sampling (GREEDY: the library's arguments for the reference)


@pytest.fixture(scope="module")
def graph_model(tiny_env):
    """The graph engine (run eagerly on the CPU: the code a GPU captures) under a scheduler."""
    return load_model(["runtime.engine=graph", "runtime.graph.buckets=[1,2,4,8]", "runtime.graph.max_len=160",
                       "batching.max_batch_size=8"])


@pytest.mark.parametrize("engine", ["fast", "graph"])
def test_greedy_codes_of_a_job_are_the_same_alone_and_beside_other_jobs(model, graph_model, engine):
    """The reference is the stock library, each request alone (its own floor). Job B joins while
    job A's rows run (fast: the merge pads one side or the other; graph: free slots, each row at its
    own position), with a sampled row of its own."""
    model = graph_model if engine == "graph" else model
    alone = [library_codes(model, "stock", [t], [s], min_new_tokens=f, **GREEDY)[0] for t, s, f in JOB_A + JOB_B]
    assert len({c.shape[0] for c in alone}) > 3  # rows end apart: they leave the batch at different checks
    scheduler = model.scheduler
    assert model.engine == engine and scheduler is not None
    sampled = replace(ROWS, do_sample=True, subtalker_dosample=True, temperature=1.3, top_k=0)
    a = scheduler.submit(Ticket("a"), [(r := request(*item), model.row_sampling(r, ROWS), None) for item in JOB_A])
    wait_rounds(scheduler, 3)  # A is running: B's rows join a batch with a longer cache
    b = scheduler.submit(Ticket("b"), [(r := request(*item), model.row_sampling(r, ROWS), None) for item in JOB_B]
                         + [(r := request("Sampled, with other settings.", "aiden", 2), model.row_sampling(r, sampled),
                             None)])
    got = [f.result(timeout=60) for f in a + b[:2]]
    assert b[2].result(timeout=60).shape[1] == 16
    for reference, codes in zip(alone, got, strict=True):
        assert torch.equal(reference, codes)


def test_rows_go_round_robin_over_jobs_in_arrival_order(model):
    scheduler = Scheduler(model, max_rows=8, queue_limit=100, sync_every=1)  # not started: take alone
    long, short, third = Ticket("long"), Ticket("short"), Ticket("third")
    for ticket, n in ((long, 6), (short, 2), (third, 1)):
        scheduler.waiting[ticket] = deque(f"{ticket.name}{i}" for i in range(n))
        scheduler.count += n
    assert scheduler.take(5) == ["long0", "short0", "third0", "long1", "short1"]
    assert scheduler.take(10) == ["long2", "long3", "long4", "long5"]
    assert scheduler.count == 0 and not scheduler.waiting


def test_a_short_job_does_not_wait_behind_a_long_one(model):
    scheduler = Scheduler(model, max_rows=4, queue_limit=100, sync_every=1)
    sampling = replace(ROWS, max_new_tokens=12)
    long = scheduler.submit(Ticket("podcast"), [(r := request(f"Chunk {i} of a long job.", "ryan", 11),
                                                  model.row_sampling(r, sampling), None) for i in range(24)])
    wait_rounds(scheduler, 2)  # the long job holds every row
    short = scheduler.submit(Ticket("hello"), [(r := request("Hello.", "vivian", 11), model.row_sampling(r, sampling),
                                                None)])
    short[0].result(timeout=60)
    assert sum(f.done() for f in long) <= 8  # it got a row as the first ones freed, not after the 24
    assert all(f.result(timeout=120).shape[0] == 11 for f in long)


def test_a_hold_keeps_chunks_waiting_while_the_running_rows_go_on(model):
    """Scheduler.held (the start of a batched sweep): nothing is admitted while it is on, whether the
    loop is idle or rows are running; the rows that run go on; at its end everything waiting comes in."""
    scheduler = Scheduler(model, max_rows=4, queue_limit=100, sync_every=1)
    running = scheduler.submit(Ticket("running"), [(r := request("A long running row.", "ryan", 39),
                                                    model.row_sampling(r, ROWS), None)])
    wait_rounds(scheduler, 2)
    with scheduler.held():
        late = scheduler.submit(Ticket("late"), [(r := request("Held back.", "vivian", 3),
                                                  model.row_sampling(r, ROWS), None)])
        wait_rounds(scheduler, 5)
        assert scheduler.load == (1, 1) and not late[0].done()  # the running row went on, the new one waits
    assert late[0].result(timeout=60).shape[0] >= 3 and running[0].result(timeout=60).shape[0] == 39


def test_a_job_that_fails_fails_alone_and_its_neighbours_come_out_as_alone(fresh_worker):
    worker = fresh_worker()
    model = worker.store.get("1.7B-CustomVoice")
    # greedy: sampled codes may differ in float32 rounding with the company a row keeps (not its seed)
    good = {"id": "good", "input": {"text": "The good job. It has two sentences of its own.",
                                    "params": {"seed": 4, "do_sample": False}}}
    alone = worker.handle(good)
    real = model.decode

    def poisoned(items):  # a chunk that always comes back empty: retried, then out of retries
        wavs = real(items)
        return [np.zeros(0, np.float32) if "POISON" in r.text else w for (r, _), w in zip(items, wavs, strict=True)]

    model.decode = poisoned
    try:
        jobs = [good, {"id": "bad", "input": {"text": "This chunk is POISON.", "params": {"seed": 4}}},
                {"id": "invalid", "input": {"text": "x", "params": {"top_p": 7}}}]
        answers: dict = {}
        threads = [threading.Thread(target=lambda j=j: answers.update({j["id"]: worker.handle(j)})) for j in jobs]
        for thread in threads:
            thread.start()
        for thread in threads:
            thread.join(120)
    finally:
        del model.decode
    assert "after 3 attempts: the model returned empty audio" in answers["bad"]["error"]
    assert "$.params.top_p" in answers["invalid"]["error"]
    assert answers["good"]["audio_base64"] == alone["audio_base64"]  # the same bytes as alone, greedy
    assert model.scheduler.load == (0, 0)


def test_a_failed_decode_round_is_retried_and_the_job_succeeds(fresh_worker, monkeypatch):
    worker = fresh_worker()
    from tts_runner.engines.running import RunningBatch

    real, failures = RunningBatch.step, []

    def flaky(self):
        if not failures:
            failures.append(1)
            raise RuntimeError("a transient failure in the loop")
        return real(self)

    monkeypatch.setattr(RunningBatch, "step", flaky)
    answer = worker.handle({"id": "1", "input": {"text": "Two sentences here. The second one too."}})
    assert "audio_base64" in answer and failures == [1]


def test_beyond_the_queue_limit_a_job_is_refused_as_busy_and_the_worker_keeps_serving(fresh_worker):
    worker = fresh_worker("scheduler.queue_limit=3", "chunking.max_chars=20")
    answer = worker.handle({"id": "big", "input": {"text": "One sentence here. " * 6}})
    assert answer["error"].startswith("Worker busy: 0 chunks are waiting for 1.7B-CustomVoice and this job adds 6, "
                                      "over the queue limit of 3 (scheduler.queue_limit)")
    assert "audio_base64" in worker.handle({"id": "small", "input": {"text": "Hello there."}})
    with pytest.raises(WorkerBusy):
        worker.store.get("1.7B-CustomVoice").scheduler.submit(Ticket("x"), [(None, {}, None)] * 4)


def test_a_cancelled_job_gives_its_rows_back(fresh_worker):
    worker = fresh_worker(*FAST[:2], "sampling.max_new_tokens=200", "sampling.min_new_tokens=200",
                          "batching.max_batch_size=4", "chunking.max_chars=20")
    scheduler = worker.store.get("1.7B-CustomVoice").scheduler
    ticket, answer = Ticket("long"), {}
    thread = threading.Thread(target=lambda: answer.update(worker.handle(
        {"id": "long", "input": {"text": "One sentence here. " * 12}}, ticket)))
    thread.start()
    wait_rounds(scheduler, 3)
    assert scheduler.load == (4, 8)
    worker.cancel(ticket)
    thread.join(30)
    assert answer["error"] == "The job was cancelled."
    deadline = time.monotonic() + 10
    while scheduler.load != (0, 0) and time.monotonic() < deadline:
        time.sleep(0.01)
    assert scheduler.load == (0, 0)  # waiting chunks dropped at once, rows at the next check
    assert "audio_base64" in worker.handle({"id": "next", "input": {"text": "Hi."}})


def test_a_chunk_too_long_for_the_graph_buffers_runs_on_the_fast_loop_beside_them(graph_model):
    scheduler = graph_model.scheduler
    settings = {**GREEDY, "max_new_tokens": 200}  # 92 prompt positions + 199 frames > max_len 160
    long, short = request(*JOB_A[1]), request(*JOB_A[0])
    futures = scheduler.submit(Ticket("long"), [(long, graph_model.row_sampling(long, Sampling(**settings)), None),
                                                (short, graph_model.row_sampling(short, ROWS), None)])
    wait_rounds(scheduler, 1)
    assert [len(b) for b in scheduler.batches] in ([1, 1], [0, 1])  # graph slots, and the fast loop beside
    alone = library_codes(graph_model, "stock", [long.text], [long.speaker], min_new_tokens=long.floor, **settings)[0]
    assert torch.equal(futures[0].result(timeout=60), alone)
    assert futures[1].result(timeout=60).shape[0] == 6


def test_a_job_whose_sink_fails_fails_alone(worker, tmp_path):
    """Two jobs share the model's rows; one's sink cannot write (a file where its folder should be)."""
    from tts_runner.audio.sinks import Sink
    from tts_runner.errors import SinkError
    from tts_runner.job.run import run_job

    blocked = tmp_path / "not-a-folder"
    blocked.write_text("a file")
    model = worker.store.get("1.7B-CustomVoice")
    good = make_job({"text": "The job whose audio arrives.", "params": {"seed": 2}})
    bad = make_job({"text": "The job whose sink fails.", "params": {"seed": 2}})
    bad = replace(bad, recipe=replace(bad.recipe, sink=Sink(kind="file", dir=blocked / "out")))
    outcome: dict = {}

    def run(name, job):
        try:
            outcome[name] = run_job(job, model)[0]
        except SinkError as exc:
            outcome[name] = exc

    threads = [threading.Thread(target=run, args=item) for item in (("good", good), ("bad", bad))]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(60)
    assert isinstance(outcome["bad"], SinkError) and "audio_base64" in outcome["good"]


def test_the_loop_keeps_stepping_while_a_decode_runs(model, monkeypatch):
    """The speech decoder runs on a thread of its own: while it decodes one job's finished chunk the
    loop goes on making another job's frames (before, a decode ran between rounds and the loop waited)."""
    scheduler = Scheduler(model, max_rows=4, queue_limit=100, sync_every=1)
    real = model.decode
    seen: dict = {}

    def slow(items):  # holds the decode until the loop has run 3 more rounds (or it never does)
        start = scheduler.rounds
        deadline = time.monotonic() + 60
        while scheduler.rounds < start + 3 and time.monotonic() < deadline:
            time.sleep(0.001)
        seen.update(rounds_during=scheduler.rounds - start, running=scheduler.running)
        return real(items)

    monkeypatch.setattr(model, "decode", slow)
    long = scheduler.submit(Ticket("long"), [(r := request("A long one, still going.", "ryan", 30),
                                              model.row_sampling(r, ROWS), None)])
    short_request = request("Short.", "vivian", 3)
    short = scheduler.submit(Ticket("short"), [(short_request, model.row_sampling(short_request, ROWS), None)])
    codes = short[0].result(timeout=60)
    wav = scheduler.decode([(short_request, codes)])[0]
    assert seen["rounds_during"] >= 3 and seen["running"] == 1, seen  # the long row went on meanwhile
    assert wav.size > 0 and long[0].result(timeout=60).shape[0] == 30
