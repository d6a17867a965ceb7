"""Environment variables for a block of a test, through pytest's MonkeyPatch (restored after)."""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager

import pytest


@contextmanager
def environment(**values: str | None) -> Iterator[None]:
    """Set each variable (None: remove it) inside the block."""
    with pytest.MonkeyPatch.context() as patch:
        for name, value in values.items():
            if value is None:
                patch.delenv(name, raising=False)
            else:
                patch.setenv(name, value)
        yield
