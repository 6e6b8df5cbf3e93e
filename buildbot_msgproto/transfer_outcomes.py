"""What the master's file writers made of each command's upload requests.

With the ``pipelined_close`` feature (docs/commands.rst section 7.4) a worker sends
``complete`` right behind its last ``close_writer`` / ``utime_file`` / ``unpack_writer``,
without waiting for their answers.  The master then has to do what the worker would
have done with an error answer: complete the command with that error.  This keeps, per
command, the first failure of its writer calls and the calls still running, so that the
command completes after them and with that failure.
"""

from __future__ import annotations

from typing import Any
from typing import Callable

from twisted.internet import defer
from twisted.python.failure import Failure

from buildbot_worker_msgproto.protocol import payloads


class TransferOutcomes:
    """Per command: the writer calls still running and the first one that failed."""

    def __init__(self) -> None:
        self._running: dict[Any, set[defer.Deferred]] = {}
        self._failures: dict[Any, Failure] = {}

    def run(self, command_id: Any, call: Callable[[], Any]) -> Any:
        """Run a writer call of ``command_id``; its result (or error) is what the caller
        answers the request with."""
        try:
            result = call()
        except Exception:
            self._failed(command_id, Failure())
            raise
        if not isinstance(result, defer.Deferred):
            return result
        running = self._running.setdefault(command_id, set())
        running.add(result)

        def settled(outcome: Any) -> Any:
            running.discard(result)
            if isinstance(outcome, Failure):
                self._failed(command_id, outcome)
            return outcome

        return result.addBoth(settled)

    def _failed(self, command_id: Any, failure: Failure) -> None:
        self._failures.setdefault(command_id, failure)

    def settle(self, command_id: Any) -> defer.Deferred:
        """Fires, once every writer call of ``command_id`` ended, with the text of the
        first failure (as ``complete.failure`` decodes to) or None; forgets the command."""
        running = [d for d in self._running.pop(command_id, ()) if not d.called]
        done = defer.DeferredList(running, consumeErrors=False) if running else defer.succeed(None)
        done.addCallback(lambda _: self._first_failure(command_id))
        return done

    def _first_failure(self, command_id: Any) -> str | None:
        failure = self._failures.pop(command_id, None)
        return None if failure is None else payloads.decode_failure(
            payloads.encode_failure(failure))

    def forget(self, command_id: Any) -> None:
        self._running.pop(command_id, None)
        self._failures.pop(command_id, None)

    def clear(self) -> None:
        self._running.clear()
        self._failures.clear()
