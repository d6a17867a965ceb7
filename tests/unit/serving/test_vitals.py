"""The vitals a worker reports, read against other sources than its own (ps, the kernel's task list)."""

from __future__ import annotations

import json
import logging
import os
import subprocess
import sys
import threading

from tts_runner.serving import vitals

COUNT_THREADS = """
import json, os, threading
from tts_runner.serving import vitals
def both():
    return vitals.of_process()["threads"], len(os.listdir("/proc/self/task"))
alone = both()
release, started = threading.Event(), threading.Event()
thread = threading.Thread(target=lambda: (started.set(), release.wait()))
thread.start()
started.wait()
with_one = both()
release.set()
thread.join()
print(json.dumps([alone, with_one, both()]))
"""


def test_a_process_vitals_agree_with_ps_and_count_what_it_opens():
    before = vitals.of_process()
    by_ps = int(subprocess.run(["ps", "-o", "rss=", "-p", str(os.getpid())], capture_output=True, text=True,
                               check=True).stdout) / 1024
    assert abs(before["rss_mb"] - by_ps) < 32  # ps reads the same counter a moment later
    with open(__file__) as one, open(__file__) as two:
        assert vitals.of_process()["fds"] == before["fds"] + 2
        assert one and two
    # threads in a process of its own: in this one, a thread of an earlier test or a library may end at any time
    out = subprocess.run([sys.executable, "-c", COUNT_THREADS], capture_output=True, text=True, check=True).stdout
    alone, with_one, after = json.loads(out)
    assert alone == [1, 1] and with_one == [2, 2] and after == [1, 1]  # vitals against the kernel's task list


def test_the_reporter_logs_one_json_line_each_time_and_stops(caplog):
    reported = threading.Semaphore(0)

    def measured():
        reported.release()
        return {"rss_mb": 1.0, "n": 2}

    with caplog.at_level(logging.INFO, logger="tts_runner.serving.vitals"):
        reporter = vitals.Reporter(measured, 0.01).start()
        assert reported.acquire(timeout=30) and reported.acquire(timeout=30)
        reporter.stop()
        reporter.thread.join(timeout=30)
    lines = [r.getMessage() for r in caplog.records if r.getMessage().startswith("Vitals: ")]
    assert len(lines) >= 1 and json.loads(lines[0][len("Vitals: "):]) == {"rss_mb": 1.0, "n": 2}
    assert not reporter.thread.is_alive()
    never = vitals.Reporter(measured, 0).start()  # 0: no reports, no thread
    assert not never.thread.is_alive()
