"""The master's msg sessions, so that a worker's new connection can resume one.

A session is registered once its worker is authenticated and forgotten when it ends.  A
new connection that asks to resume names a session by id; only a resumable session of
that worker name matches (the proof is checked by the sans-IO core).
"""

from __future__ import annotations

from buildbot_worker_msgproto.driver import SessionDriver


class SessionRegistry:
    """The authenticated sessions of one master, by session id."""

    def __init__(self) -> None:
        self._drivers: dict[str, SessionDriver] = {}

    def __len__(self) -> int:
        return len(self._drivers)

    def add(self, driver: SessionDriver) -> None:
        """Remember ``driver``'s session until it ends."""
        session_id = driver.session.session_id
        self._drivers[session_id] = driver
        driver.end_callbacks.append(lambda *_: self._forget(session_id, driver))

    def _forget(self, session_id: str, driver: SessionDriver) -> None:
        if self._drivers.get(session_id) is driver:
            del self._drivers[session_id]

    def find(self, session_id: str | None, worker_name: str) -> SessionDriver | None:
        """The driver of session ``session_id`` if it belongs to ``worker_name`` and may
        still be resumed."""
        driver = self._drivers.get(session_id) if session_id else None
        if driver is None or driver.session.worker_name != worker_name \
                or not driver.session.may_be_resumed:
            return None
        return driver

    def of_worker(self, worker_name: str) -> list[SessionDriver]:
        """The sessions of ``worker_name``."""
        return [driver for driver in self._drivers.values()
                if driver.session.worker_name == worker_name]

    def suspended(self, worker_name: str) -> list[SessionDriver]:
        """The suspended sessions of ``worker_name`` (waiting for a resume)."""
        return [driver for driver in self.of_worker(worker_name)
                if driver.session.is_suspended]

    def all(self) -> list[SessionDriver]:
        return list(self._drivers.values())
