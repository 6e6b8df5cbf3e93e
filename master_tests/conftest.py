"""pytest fixtures shared by the master-side tests."""

from __future__ import annotations

import pytest
from twisted.python import log


@pytest.fixture
def logged():
    """The text of every Twisted log message while the test runs."""
    lines: list[str] = []

    def observer(event):
        lines.append(" ".join(str(m) for m in event.get("message", ())))

    log.addObserver(observer)
    yield lines
    log.removeObserver(observer)
