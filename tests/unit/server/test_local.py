"""wait_for_port: the wait the tests and serve_bench share for a server process they start."""

import subprocess
import sys

import pytest

from tts_runner.server.local import free_port, wait_for_port

LISTEN = ("import socket, sys, time\n"
          "s = socket.socket(); s.bind(('127.0.0.1', int(sys.argv[1]))); s.listen()\n"
          "print('listening', flush=True); time.sleep(60)\n")


def run(code: str, *args: str, log):
    with open(log, "wb") as out:
        return subprocess.Popen([sys.executable, "-c", code, *args], stdout=out, stderr=subprocess.STDOUT)


def test_returns_once_the_process_listens(tmp_path):
    port = free_port()
    proc = run(LISTEN, str(port), log=tmp_path / "log")
    try:
        wait_for_port(port, proc, tmp_path / "log")
        assert proc.poll() is None
    finally:
        proc.kill()
        proc.wait()


def test_a_process_that_exits_first_raises_with_its_log(tmp_path):
    proc = run("import sys; print('no model here'); sys.exit(3)", log=tmp_path / "log")
    with pytest.raises(RuntimeError, match=r"(?s)server exited with 3:\nno model here"):
        wait_for_port(free_port(), proc, tmp_path / "log")


def test_a_port_never_opened_raises_when_the_time_is_up(tmp_path):
    port = free_port()
    proc = run("import time; print('still loading', flush=True); time.sleep(60)", log=tmp_path / "log")
    try:
        with pytest.raises(RuntimeError, match=rf"(?s)server did not open port {port} in 0.5 s:\n.*"):
            wait_for_port(port, proc, tmp_path / "log", timeout=0.5)
        assert proc.poll() is None  # the caller decides what to do with it
    finally:
        proc.kill()
        proc.wait()
