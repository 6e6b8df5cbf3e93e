"""pytest fixtures shared by the master-side tests."""

from __future__ import annotations

import pytest
import sqlalchemy as sa
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


@pytest.fixture
def engine(tmp_path):
    """A SQLite database of the test's own (the masters' shared database, in small)."""
    engine = sa.create_engine(f"sqlite:///{tmp_path / 'state.sqlite'}")
    yield engine
    engine.dispose()
