"""Two jobs of chunks for the scheduler's tests (CPU and GPU): texts, speakers and floors of their
own, so their rows are left-padded, end apart and join a running batch."""

from __future__ import annotations

import time

from tts_runner.serving.model import ChunkRequest

# The library's arguments for greedy reference codes (tests.helpers.decode.codes), and the rows' sampling
GREEDY = {"do_sample": False, "subtalker_dosample": False, "max_new_tokens": 40, "repetition_penalty": 1.05}
JOB_A = [("A short one.", "ryan", 6), ("A considerably longer sentence, so that the rows are left-padded.", "vivian", 25),
         ("Medium length text here.", "aiden", 14)]
JOB_B = [("Another job joins the running batch.", "serena", 9), ("Hi.", "ryan", 30)]


def request(text: str, speaker: str, floor: int) -> ChunkRequest:
    return ChunkRequest(text, speaker, "english", None, floor=floor, seed=1)


def wait_rounds(scheduler, n: int, timeout: float = 60) -> None:
    """Until the scheduler's loop has run `n` more rounds (an event, not a time)."""
    target = scheduler.rounds + n
    deadline = time.monotonic() + timeout
    while scheduler.rounds < target:
        assert time.monotonic() < deadline, f"the scheduler ran {scheduler.rounds} of {target} rounds in {timeout} s"
        time.sleep(0.001)
