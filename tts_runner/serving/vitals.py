"""What a running worker holds, for an operator's log and the soak (tts_runner/tools/soak.py): the
process's resident memory, threads and open file descriptors (from /proc, where there is one), and
for each loaded model its scheduler's rows and queue and its clone-prompt cache.

`Reporter` logs them as one JSON line ("Vitals: {...}") every worker.vitals_every_seconds, from the
queue worker and the HTTP server alike; the server also answers them at GET /stats."""

from __future__ import annotations

import json
import logging
import os
import re
import threading
from pathlib import Path

log = logging.getLogger(__name__)


def of_process(pid: int | str = "self") -> dict:
    """{rss_mb, threads, fds} of process `pid` (this one by default), read from /proc."""
    proc = Path("/proc", str(pid))
    fields = {}
    for line in (proc / "status").read_text().splitlines():
        key, _, value = line.partition(":")
        fields[key] = value.split()
    return {"rss_mb": round(int(fields["VmRSS"][0]) / 1024, 1), "threads": int(fields["Threads"][0]),
            "fds": len(os.listdir(proc / "fd"))}


def open_files(pid: int | str = "self") -> dict[str, int]:
    """Process `pid`'s open file descriptors by kind (socket, pipe, anon_inode:..., or the file's path)."""
    kinds: dict[str, int] = {}
    folder = Path("/proc", str(pid), "fd")
    for fd in os.listdir(folder):
        try:
            link = os.readlink(folder / fd)
        except OSError:  # closed while we looked
            continue
        kind = link.split(":")[0] if link.startswith(("socket:", "pipe:")) else link
        kinds[kind] = kinds.get(kind, 0) + 1
    return dict(sorted(kinds.items()))


def python_threads() -> dict[str, int]:
    """This process's Python threads by name, less their numbers (a pool's threads are one entry)."""
    names: dict[str, int] = {}
    for thread in threading.enumerate():
        name = re.sub(r"[-_]?\d+", "", thread.name.split(" ")[0]) or "thread"
        names[name] = names.get(name, 0) + 1
    return dict(sorted(names.items()))


def of_worker(worker) -> dict:
    """This process's vitals and, per loaded model, {rows, queued, clone_prompts, clone_prompt_bytes},
    and the jobs running (an edge.worker.Worker; nothing of the models before it has loaded)."""
    vitals = {**of_process(), "python_threads": python_threads(), "jobs_running": len(worker.active), "models": {}}
    for model in worker.store.loaded_models() if worker.store else []:
        rows, queued = model.scheduler.load if model.scheduler is not None else (0, 0)
        prompts, size = model.clone_prompts.usage()
        vitals["models"][model.name] = {"rows": rows, "queued": queued, "clone_prompts": prompts,
                                        "clone_prompt_bytes": size}
    return vitals


class Reporter:
    """Logs `vitals()` as one JSON line every `seconds`, on a daemon thread, until stopped."""

    def __init__(self, vitals, seconds: float):
        self.vitals, self.seconds = vitals, float(seconds)
        self.stopped = threading.Event()
        self.thread = threading.Thread(target=self._run, name="vitals", daemon=True)

    def start(self) -> Reporter:
        if self.seconds > 0:
            self.thread.start()
        return self

    def stop(self) -> None:
        self.stopped.set()

    def _run(self) -> None:
        while not self.stopped.wait(self.seconds):
            try:
                log.info("Vitals: %s", json.dumps(self.vitals(), separators=(",", ":")))
            except Exception as exc:  # noqa: BLE001 - a report must never end the worker
                log.warning("Vitals could not be read: %s: %s", type(exc).__name__, exc)
