"""A login to another master while the worker's session may still resume on its own.

With a list of masters, a worker whose link was lost may get into another master (its
own refused the connection or did not answer).  A session lives in one master's memory,
so the other master cannot resume it, and the worker cannot tell a dead master from one
it is merely cut off from.  The masters can: the new master holds the login while the
old one's lease on the worker runs, then either takes the worker over (the old master
stopped renewing: it is gone) and starts talking to it, or refuses it with
``not_owner`` (the old master is alive and keeps the worker).

So the new session is on probation: the worker keeps its suspended session (and the
running commands) until the new master sends its first message, which only a master
that took the worker over does.  Then the old session ends and the bot moves to the new
one.  If the new session ends first, the old one is untouched and may still resume.
"""

from __future__ import annotations

from typing import Any
from typing import Callable

from buildbot_worker_msgproto.driver import MessageHandler
from buildbot_worker_msgproto.driver import SessionDriver
from buildbot_worker_msgproto.protocol import events as ev


class ProbationHandler(MessageHandler):
    """Stands for ``bot`` on a new session until the master's first message accepts it.

    ``on_accept(driver)`` is called once, before that message is handled: the owner ends
    the old session there; then the bot hears ``authenticated`` and handles everything
    from then on.  Until then, the bot hears nothing of this session.
    """

    def __init__(self, bot: MessageHandler, on_accept: Callable[[SessionDriver], None]) -> None:
        self.bot = bot
        self.on_accept = on_accept
        self.accepted = False
        self._driver: SessionDriver | None = None
        self._authenticated: ev.Authenticated | None = None

    def _accept(self) -> None:
        if self.accepted or self._driver is None or self._authenticated is None:
            return
        self.accepted = True
        self.on_accept(self._driver)
        self.bot.authenticated(self._driver, self._authenticated)

    def _first_message(self, method: Callable | None) -> Callable | None:
        if method is None or self.accepted:
            return method

        def handle(message: dict[str, Any]) -> Any:
            self._accept()
            return method(message)
        return handle

    def request_handler(self, message_type: str) -> Callable | None:
        return self._first_message(self.bot.request_handler(message_type))

    def notification_handler(self, message_type: str) -> Callable | None:
        return self._first_message(self.bot.notification_handler(message_type))

    def authenticated(self, driver: SessionDriver, event: ev.Authenticated) -> None:
        self._driver, self._authenticated = driver, event

    def link_lost(self, driver: SessionDriver, event: ev.LinkLost) -> None:
        if self.accepted:
            self.bot.link_lost(driver, event)

    def resumed(self, driver: SessionDriver, event: ev.Resumed) -> None:
        if self.accepted:
            self.bot.resumed(driver, event)

    def writable_changed(self, driver: SessionDriver, writable: bool) -> None:
        if self.accepted:
            self.bot.writable_changed(driver, writable)

    def session_ended(self, driver: SessionDriver, code: str, reason: str,
                      by_peer: bool) -> None:
        if self.accepted:
            self.bot.session_ended(driver, code, reason, by_peer)
