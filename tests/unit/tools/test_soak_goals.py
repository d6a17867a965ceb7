"""The soak's verdicts on made-up runs: each goal met by a steady run and missed by one that leaks,
loses a job or slows down (the verdict the real soak prints comes from the same function)."""

from __future__ import annotations

from tts_runner.tools.soak import Done, judge


def run(jobs: int = 1000, slow_end: float = 1.0, lost: int = 0) -> list[Done]:
    done = [Done(i, "short", "ok", float(i), 2.0 * (slow_end if i >= 0.9 * jobs else 1.0), "load") for i in range(jobs)]
    done += [Done(jobs + i, "long", "lost", float(jobs + i), 600.0, "load") for i in range(lost)]
    return done


def samples(jobs: int, rss_at) -> list[dict]:
    return [{"jobs": j, "rss_mb": rss_at(j), "threads": 40, "fds": 12} for j in range(100, jobs + 101, 25)]


BASE = {"jobs": 100, "rss_mb": 1000.0, "threads": 40, "fds": 12, "idle": True}


def verdicts(done, taken, final) -> dict:
    return {g.name: g.met for g in judge(done, taken, BASE, final, died=False)}


def test_a_steady_run_meets_every_goal():
    final = {**BASE, "jobs": 1100, "rss_mb": 1010.0}
    met = verdicts(run(), samples(1100, lambda j: 1000 + (j % 50) / 10), final)
    assert set(met.values()) == {True}, met
    assert len(met) == 8


def test_memory_that_grows_threads_or_files_not_given_back_and_a_lost_job_are_each_missed():
    leaking = samples(1100, lambda j: 1000 + 0.1 * (j - 100))  # 100 MB per 1,000 jobs, on to the end
    met = verdicts(run(lost=1), leaking, {**BASE, "jobs": 1100, "rss_mb": 1100.0, "threads": 41, "fds": 13})
    assert met == {"jobs lost": False, "bad answers": True, "worker deaths": True, "threads when idle": False,
                   "open files when idle": False, "RSS growth, MB per 1,000 jobs": False,
                   "RSS growth in the last half, MB": False, "p95 latency of short jobs, last tenth / first": True}


def test_a_run_whose_last_tenth_is_slower_misses_the_latency_goal_and_a_short_one_is_not_judged():
    final = {**BASE, "jobs": 1100}
    slow = verdicts(run(slow_end=1.3), samples(1100, lambda j: 1000.0), final)
    assert slow["p95 latency of short jobs, last tenth / first"] is False
    short = judge(run(jobs=150), samples(250, lambda j: 1000.0), BASE, final, died=False)
    unjudged = {g.name: g.limit for g in short if g.met is None}
    assert unjudged == {"RSS growth, MB per 1,000 jobs": "not judged: 150 jobs (< 500)",
                        "p95 latency of short jobs, last tenth / first": "not judged: 15 short jobs a tenth (< 20)"}
