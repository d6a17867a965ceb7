"""runtime.malloc_arenas: the arenas glibc itself reports (malloc_info), in a fresh process each."""

from __future__ import annotations

import subprocess
import sys

import pytest

from tests.helpers.servers import REPO

# Eight threads allocate at once, each holding its blocks while the others take theirs; glibc then
# writes its heaps (arenas) as XML, and the process prints how many there are.
PROBE = """
import ctypes, os, sys, tempfile, threading
from tts_runner.serving.memory import limit_arenas
limit = None if sys.argv[1] == "none" else int(sys.argv[1])
print(limit_arenas(limit))
libc = ctypes.CDLL("libc.so.6")
libc.malloc.restype = ctypes.c_void_p
libc.fdopen.restype = ctypes.c_void_p
met = threading.Barrier(8)
def allocate():
    held = [libc.malloc(200_000) for _ in range(20)]
    met.wait()
    for block in held:
        libc.free(ctypes.c_void_p(block))
threads = [threading.Thread(target=allocate) for _ in range(8)]
[t.start() for t in threads]
[t.join() for t in threads]
with tempfile.TemporaryFile() as out:
    fp = libc.fdopen(os.dup(out.fileno()), b"w")
    libc.malloc_info(0, ctypes.c_void_p(fp))
    libc.fclose(ctypes.c_void_p(fp))
    out.seek(0)
    print(out.read().decode().count("<heap nr="))
"""


def arenas(limit: str, **env) -> tuple[str, int]:
    import os

    run = subprocess.run([sys.executable, "-c", PROBE, limit], cwd=REPO, capture_output=True, text=True, check=True,
                         env={**{k: v for k, v in os.environ.items() if k != "MALLOC_ARENA_MAX"}, **env})
    applied, heaps = run.stdout.split()
    return applied, int(heaps)


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="glibc's mallopt and malloc_info")
def test_the_arena_bound_holds_where_glibcs_default_would_give_more():
    assert arenas("2") == ("True", 2)
    applied, default = arenas("none")
    assert applied == "False" and default > 2  # eight threads at once: more arenas without the bound
    assert arenas("2", MALLOC_ARENA_MAX="4")[0] == "False"  # the user's variable wins
