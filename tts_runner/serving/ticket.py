"""A job's handle on the rows it asked for: its name, and whether it was cancelled (and why)."""

from __future__ import annotations

from dataclasses import dataclass

from tts_runner.errors import JobCancelled


@dataclass(eq=False)
class Ticket:
    """One job's handle: whoever runs the job hands it to the scheduler with its chunks, and may
    cancel it (RunPod stopped the job, a client went away, the worker is stopping); equal only to
    itself. `error` is what the job raises when it was cancelled for a reason of its own."""

    name: str
    cancelled: bool = False
    error: JobCancelled | None = None

    def failure(self) -> JobCancelled:
        return self.error or JobCancelled("The job was cancelled.")
