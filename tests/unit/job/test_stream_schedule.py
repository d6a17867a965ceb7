"""When a streamed job's running chunk is decoded (tts_runner/job/stream.py, stream.schedule), and how
a real-time listener hears a stream (tts_runner/tools/listen_bench.py). The listener's time is set
far from every threshold, so no verdict depends on the machine's speed."""

import time
from collections import deque
from types import SimpleNamespace

import numpy as np
import pytest
import torch

from tests.helpers.config import load_model, make_job
from tts_runner.job.plan import plan
from tts_runner.job.stream import FRAMES_PER_SECOND, PACE_CHECKS, SAMPLES_PER_FRAME, StreamAssembler
from tts_runner.tools.listen_bench import row
from tts_runner.tools.serve_bench import heard


def assembler(model, schedule: str, decode_seconds: float = 0.0) -> StreamAssembler:
    """A stream of a short job whose piece decodes lately took `decode_seconds` (on a decoder of its own:
    the shared model's other streams do not move it)."""
    job = make_job({"text": "A short text to stream."}, [f"stream.schedule={schedule}"])
    stream = StreamAssembler(model, plan(job, model), job)
    stream.scheduler = SimpleNamespace(piece_seconds=decode_seconds)
    return stream


def measured(stream: StreamAssembler, speed: float) -> None:
    """The running chunk 0 has been made at `speed` x real time."""
    stream.pace[0] = deque([(0.0, 0), (10.0, int(round(10 * speed * FRAMES_PER_SECOND)))])


def listening(stream: StreamAssembler, left_to_play: float) -> None:
    """A listener who has `left_to_play` seconds still to hear."""
    stream.total = int(10 * 24000)
    stream.playing_since = time.monotonic() - (10 - left_to_play)


@pytest.mark.parametrize("schedule", ["fixed", "adaptive"])
def test_a_fast_row_has_its_first_piece_at_four_frames_then_whole_pieces_while_the_listener_has_plenty(
        model, schedule):
    stream = assembler(model, schedule, decode_seconds=0.025)
    assert not stream._due(0, 0, 3) and stream._due(0, 0, 4)  # not measured yet
    measured(stream, 3.0)  # 4 frames, 0.32 s (less a 40 ms crossfade) cover the next 4 (0.11 s) and 2 decodes
    assert not stream._due(0, 0, 3) and stream._due(0, 0, 4)
    listening(stream, left_to_play=8.0)
    assert not stream._due(0, 4, 4 + 23) and stream._due(0, 4, 4 + 24)


def test_a_slow_row_holds_its_first_piece_until_it_covers_the_making_of_the_next(model):
    # at 1.25x real time a piece gains 1 - 1/1.25 = 0.2 s per second of audio: with 50 ms decodes, the
    # smallest worth it is 2 x 0.05 x 12.5 / 0.2 = 6.25 -> 7 frames, made in 7 / 15.625 = 0.448 s; the first
    # piece must bring 0.448 + 2 x 0.05 = 0.548 s audible (a 40 ms crossfade waits): 8 frames, not 7
    stream = assembler(model, "adaptive", decode_seconds=0.05)
    measured(stream, 1.25)
    assert stream._min_piece(1.25) == 7
    assert not stream._due(0, 0, 7) and stream._due(0, 0, 8)


def test_a_first_piece_that_was_all_silence_is_followed_as_soon_as_a_first_piece(model):
    # 4 frames decoded, nothing sent (the trim cut them all): the next comes at 4 new frames, not 24
    stream = assembler(model, "adaptive", decode_seconds=0.025)
    measured(stream, 3.0)
    assert stream._left_to_play() is None
    assert not stream._due(0, 4, 7) and stream._due(0, 4, 8)


def test_streams_that_start_together_hold_their_first_piece_for_decodes_that_meet(model):
    stream = assembler(model, "adaptive", decode_seconds=0.025)
    measured(stream, 3.0)
    assert stream._due(0, 0, 4)                      # alone: 4 frames cover 4 more (0.11 s) and 2 decodes
    stream.scheduler.streams_starting = 4            # 4 first pieces on one decoder: 0.1 s a decode, so the
    assert not stream._due(0, 0, 4)                  # next that pays is 4 frames, made in 0.11 s, and two
    assert stream._due(0, 0, 5)                      # decodes: 0.31 s; 5 frames bring 0.36 s (less 0.04)
    listening(stream, left_to_play=0.1)              # once playing, pieces are sized by the decode alone
    assert stream._due(0, 4, 8)


def test_a_stream_counts_as_starting_from_its_rows_first_codes_not_while_it_waits_for_a_row(model):
    stream = assembler(model, "adaptive")
    changes = []
    stream.scheduler = SimpleNamespace(piece_seconds=0.0, streams_starting=0, count_starting=changes.append)
    stream.events()                                       # handed to the scheduler: waiting for a row
    assert changes == []
    hear = stream.listener(stream.order[0][0])
    hear(torch.zeros((1, 16), dtype=torch.long))          # its row runs
    hear(torch.zeros((2, 16), dtype=torch.long))
    assert changes == [1]
    stream.close()
    assert changes == [1, -1]
    hear(torch.zeros((3, 16), dtype=torch.long))          # a last host check after the end counts for nothing
    assert changes == [1, -1]


@pytest.mark.parametrize("speed", [1.0, 0.8])
def test_a_row_at_or_below_real_time_keeps_to_whole_pieces(model, speed):
    stream = assembler(model, "adaptive", decode_seconds=0.05)
    measured(stream, speed)
    assert not stream._due(0, 0, 23) and stream._due(0, 0, 24)  # one wait up front, not a gap every piece
    listening(stream, left_to_play=0.1)
    assert not stream._due(0, 4, 4 + 23) and stream._due(0, 4, 4 + 24)


def test_adaptive_decodes_early_when_the_listener_runs_low_in_pieces_that_pay(model):
    stream = assembler(model, "adaptive")
    measured(stream, 3.0)
    listening(stream, left_to_play=0.1)
    assert stream._due(0, 4, 8)          # a first piece's worth of new frames, at once
    assert not stream._due(0, 4, 7)      # but never less: each decode costs its left context
    stream = assembler(model, "adaptive", decode_seconds=0.05)
    measured(stream, 1.25)                # a row barely keeping up: only pieces of 7 frames or more gain
    listening(stream, left_to_play=0.1)
    assert not stream._due(0, 4, 10) and stream._due(0, 4, 11)


def test_a_rows_speed_is_read_over_its_last_host_checks(model):
    stream = assembler(model, "adaptive")
    hear = stream.listener(stream.order[0][0])
    for frames in range(1, 21):   # heard at 20 host checks; it falls as other rows join
        hear(torch.zeros((frames, 16), dtype=torch.long))
    checks = stream.pace[0]
    assert len(checks) == PACE_CHECKS and [n for _, n in checks] == list(range(21 - PACE_CHECKS, 21))
    checks.clear()
    for second in range(20):  # 25 frames a second for 10 s (2x real time), then 6 (0.48x)
        checks.append((float(second), 25 * second if second <= 10 else 250 + 6 * (second - 10)))
    # the last checks only: whatever the first ten seconds made
    assert stream._speed(0) == pytest.approx(6 / FRAMES_PER_SECOND)


def test_fixed_never_decodes_early(model):
    stream = assembler(model, "fixed")
    measured(stream, 5.0)
    listening(stream, left_to_play=-1.0)
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
    measured(stream, 3.0)
    listening(stream, left_to_play=0.6)
    assert not stream._due(0, 4, 10)         # 0.6 s left: above the 0.4 s low water
    stream.decode_seconds = 0.15             # this stream's decodes lately waited their turn on a busy loop
    assert stream._due(0, 4, 10)             # 0.4 + 2 x 0.15: due now, so the piece lands in time...
    assert not stream._due(0, 4, 9)          # ...if it pays: 2 x 0.15 x 12.5 / (1 - 1/3) = 5.6 -> 6 frames
    stream = assembler(model, "adaptive", decode_seconds=0.15)  # or the other streams' on the same decoder
    measured(stream, 3.0)
    listening(stream, left_to_play=0.6)
    assert stream._due(0, 4, 10) and not stream._due(0, 4, 9)


def test_a_finished_chunk_is_decoded_after_what_the_stream_has_decoded_with_its_left_context(model):
    stream = assembler(model, "adaptive")
    chunk = stream.order[0][0]
    codes = torch.arange(100 * 16).reshape(100, 16)
    assert stream.tail(chunk, chunk.request, codes) is None      # nothing decoded yet: the whole chunk
    sent = np.full(80 * SAMPLES_PER_FRAME, 0.5, dtype=np.float32)
    stream.head = (chunk.index, 80, sent)                        # 80 frames decoded by the stream
    (request, rest), whole = stream.tail(chunk, chunk.request, codes)
    assert torch.equal(rest, codes[80 - 72:])                    # 72 frames of context, then the new 20
    decoded = np.arange(92 * SAMPLES_PER_FRAME, dtype=np.float32)
    wav = whole(decoded)
    assert wav.size == 100 * SAMPLES_PER_FRAME
    assert np.array_equal(wav[:sent.size], sent) and np.array_equal(wav[sent.size:], decoded[72 * SAMPLES_PER_FRAME:])
    stream.head = (chunk.index + 1, 80, sent)                    # another chunk's opening: this one whole
    assert stream.tail(chunk, chunk.request, codes) is None


def test_a_model_s_warm_up_measures_a_first_piece_s_decode(tiny_env):
    # the first streams on a fresh worker size their pieces by it, before any of theirs has been decoded
    assert load_model().scheduler.piece_seconds > 0
    assert load_model(["runtime.warmup=false"]).scheduler.piece_seconds == 0


def test_the_bench_row_counts_the_streams_that_ran_dry_and_those_of_the_first_wave():
    # (first audio, underruns, underrun s, audio s, order sent) for 6 streams at concurrency 2
    results = [(0.1, 1, 0.2, 2.0, 0), (0.2, 0, 0.0, 2.0, 1), (0.1, 2, 0.1, 2.0, 2),
               (0.3, 0, 0.0, 2.0, 3), (0.1, 0, 0.0, 2.0, 5), (0.1, 1, 0.3, 2.0, 4)]
    r = row("adaptive", "queue", 2, results, failed=0, wall=4.0)
    assert (r.streams, r.streams_with_underruns, r.of_them_first_wave) == (6, 3, 1)
    assert r.underruns_per_stream == 0.67 and r.underrun_s_per_stream == 0.1
    assert r.realtime_per_stream == 1.5  # 12 s of audio in 4 s by 2 streams at a time
