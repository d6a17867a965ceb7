"""When a streamed job's running chunk is decoded (tts_runner/job/stream.py, stream.schedule), and how
a real-time listener hears a stream (tts_runner/tools/listen_bench.py). The listener's time is set
far from every threshold, so no verdict depends on the machine's speed."""

import time

import pytest

from tests.helpers.config import make_job
from tts_runner.job.plan import plan
from tts_runner.job.stream import FRAMES_PER_SECOND, StreamAssembler
from tts_runner.tools.listen_bench import heard


def assembler(model, schedule: str) -> StreamAssembler:
    job = make_job({"text": "A short text to stream."}, [f"stream.schedule={schedule}"])
    return StreamAssembler(model, plan(job, model), job)


def listening(stream: StreamAssembler, left_to_play: float, speed: float | None) -> None:
    """A listener with `left_to_play` seconds still to hear, and a row made at `speed` x real time."""
    stream.total = int(10 * 24000)
    stream.playing_since = time.monotonic() - (10 - left_to_play)
    if speed is not None:
        stream.pace[0] = (0.0, 0, 10.0, int(10 * speed * FRAMES_PER_SECOND))


@pytest.mark.parametrize("schedule", ["fixed", "adaptive"])
def test_the_first_piece_at_four_frames_then_whole_pieces_while_the_listener_has_plenty(model, schedule):
    stream = assembler(model, schedule)
    assert not stream._due(0, 0, 3) and stream._due(0, 0, 4)
    listening(stream, left_to_play=8.0, speed=3.0)
    assert not stream._due(0, 4, 4 + 23) and stream._due(0, 4, 4 + 24)


def test_adaptive_decodes_early_when_the_listener_runs_low_and_the_row_keeps_up(model):
    stream = assembler(model, "adaptive")
    listening(stream, left_to_play=0.1, speed=3.0)
    assert stream._due(0, 4, 8)          # a first piece's worth of new frames, at once
    assert not stream._due(0, 4, 7)      # but never less: each decode costs its left context
    listening(stream, left_to_play=0.1, speed=1.2)  # a row barely keeping up: early pieces would cost more
    assert not stream._due(0, 4, 8)


def test_fixed_never_decodes_early(model):
    stream = assembler(model, "fixed")
    listening(stream, left_to_play=-1.0, speed=5.0)
    assert not stream._due(0, 4, 27) and stream._due(0, 4, 28)


def test_a_listener_hears_underruns_where_the_stream_ran_dry():
    # 0.32 s at t=1.0, so dry at 1.32; the next 0.18 s late (dry at 2.14); one in time (dry at 2.46);
    # the last 0.04 s late
    started, arrivals = 0.9, [(1.0, 0.32), (1.5, 0.64), (2.0, 0.32), (2.5, 0.1)]
    first, count, gap = heard(started, arrivals)
    assert first == pytest.approx(0.1) and count == 2 and gap == pytest.approx(0.18 + 0.04)
    first, count, gap = heard(started, [(1.0, 0.32), (1.5, 0.64), (2.5, 0.1)])
    assert count == 2 and gap == pytest.approx(0.18 + 0.36)
    assert heard(0.0, [(0.1, 1.0), (0.5, 1.0), (1.0, 1.0)])[1:] == (0, 0.0)


def test_the_low_water_rises_with_what_a_decode_has_lately_taken(model):
    stream = assembler(model, "adaptive")
    listening(stream, left_to_play=0.6, speed=3.0)
    assert not stream._due(0, 4, 8)          # 0.6 s left: above the 0.4 s low water
    stream.decode_seconds = 0.15             # decodes lately waited their turn on a busy loop
    assert stream._due(0, 4, 8)              # 0.4 + 2 x 0.15: due now, so the piece lands in time
