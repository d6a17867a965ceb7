"""A job's handle on the rows it asked for: its name, and whether it was cancelled."""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(eq=False)
class Ticket:
    """One job's handle: whoever runs the job hands it to the scheduler with its chunks, and may
    cancel it (RunPod stopped the job, a client went away); equal only to itself."""

    name: str
    cancelled: bool = False
