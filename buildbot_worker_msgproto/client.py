"""Worker-side connection: PB dialect negotiation, then a msg session or a PB fallback."""

from __future__ import annotations

from typing import Any

from twisted.internet import protocol
from twisted.python import log

from buildbot_worker_msgproto.driver import MessageHandler
from buildbot_worker_msgproto.driver import SessionDriver
from buildbot_worker_msgproto.negotiating import NegotiatingProtocol
from buildbot_worker_msgproto.probation import ProbationHandler
from buildbot_worker_msgproto.protocol import negotiation
from buildbot_worker_msgproto.protocol.codes import LOGIN_FAILURES
from buildbot_worker_msgproto.protocol.codes import CloseCode
from buildbot_worker_msgproto.protocol.events import LinkLost
from buildbot_worker_msgproto.protocol.events import Resumed
from buildbot_worker_msgproto.protocol.limits import DEFAULT_LIMITS
from buildbot_worker_msgproto.protocol.limits import MSG_DIALECT
from buildbot_worker_msgproto.protocol.limits import Limits
from buildbot_worker_msgproto.protocol.session import Role
from buildbot_worker_msgproto.protocol.session import Session
from buildbot_worker_msgproto.reach.failover import MasterList
from buildbot_worker_msgproto.transports.base import FrameReceiver
from buildbot_worker_msgproto.transports.tcp import FramedProtocol

#: Bytes we are willing to buffer while waiting for the master's dialect offer.
MAX_OFFER_BYTES = 1024


class NegotiatingClientProtocol(NegotiatingProtocol):
    """Reads the master's banana dialect offer and becomes msg framing or a PB broker.

    If the master does not speak first within the handshake timeout (a silently
    dropped connection, a wrong port), the connection is aborted so that the
    reconnecting service retries instead of waiting forever.
    """

    def __init__(self, factory: MsgClientFactory, addr: Any) -> None:
        super().__init__(factory.reactor, factory.limits.handshake_timeout)
        self.factory = factory
        self.addr = addr

    def timeout_message(self) -> str:
        return (f"msgproto: the master at {self.addr} sent no dialect offer within "
                f"{self.timeout:g} s; reconnecting")

    def error_message(self, error: negotiation.NegotiationError) -> str:
        return f"msgproto: the master at {self.addr} is not a Buildbot master: {error}"

    def negotiate(self, buffer: bytes) -> tuple[protocol.Protocol, bytes] | None:
        parsed = negotiation.parse_offer(buffer)
        if parsed is None:
            if len(buffer) > MAX_OFFER_BYTES:
                raise negotiation.NegotiationError("dialect offer too long")
            return None
        offered, rest = parsed
        if negotiation.choose(offered, (MSG_DIALECT,)) is not None:
            self.transport.write(negotiation.encode_string(MSG_DIALECT))
            return FramedProtocol(self.factory.new_driver()), rest
        if self.factory.sessions.password is None:
            self.factory.sessions.login_failed(
                CloseCode.UNSUPPORTED_AUTH, "the master does not offer the msg protocol, and "
                "PB has no certificate login (this worker has no password)")
            self.transport.abortConnection()
            return None
        log.msg("msgproto: the master does not offer the msg protocol "
                f"(offers {[d.decode('ascii', 'replace') for d in offered]}); "
                "falling back to PB")
        # the whole offer is replayed: the PB broker answers it as from a stock master
        return self.factory.pb_factory.buildProtocol(self.addr), buffer


#: Close codes from a master meaning "not here, not now": try the next master.
MOVE_ON = frozenset({CloseCode.NOT_OWNER, CloseCode.SHUTDOWN, CloseCode.LOGIN_THROTTLED})


class WorkerSessions:
    """Makes the worker's sessions (one per connection) and remembers the current one."""

    def __init__(self, bot: MessageHandler, name: str, password: str | None, reactor: Any,
                 limits: Limits = DEFAULT_LIMITS, software: dict[str, Any] | None = None,
                 retry_policy: Any = None, masters: MasterList | None = None) -> None:
        self.bot = bot
        self.retry_policy = retry_policy
        #: With several masters: which one to try next (None: a single master).
        self.masters = masters
        self.failed_logins = 0
        self.name = name
        self.password = password
        self.reactor = reactor
        self.limits = limits
        self.software = software or {}
        self.driver: SessionDriver | None = None
        #: With several masters: the index of the master the suspended session was on.
        self.session_master: int | None = None

    def new_driver(self) -> FrameReceiver:
        """The receiver for a new connection: a new port of the suspended session (which
        then asks to resume), or a new session's driver."""
        driver = self.driver
        if driver is not None and driver.session.may_resume:
            if not self._on_another_master():
                return driver.new_port()
            return self._probation_driver()
        self.driver = self._session_driver(self.bot)
        self.driver.end_callbacks.append(self._session_ended)
        self.driver.link_callbacks.append(self._link_event)
        return self.driver

    def _session_driver(self, handler: MessageHandler) -> SessionDriver:
        session = Session(Role.WORKER, self.limits, now=self.reactor.seconds(),
                          worker_name=self.name, password=self.password,
                          certificate_login=self.password is None, software=self.software)
        return SessionDriver(session, handler, self.reactor, label="msgproto-worker")

    def _probation_driver(self) -> SessionDriver:
        """A fresh login to another master while the suspended session may still resume
        on its own (see :mod:`buildbot_worker_msgproto.probation`)."""
        was, now = (self.masters.masters[i] for i in (self.session_master,
                                                      self.masters.current))
        log.msg(f"msgproto: connected to master {now} while the session on master {was} "
                f"may still resume: logging in to {now}, keeping the session on {was} "
                f"until {now} takes this worker over")
        driver = self._session_driver(ProbationHandler(self.bot, self._take_over))

        def link_event(event: LinkLost | Resumed) -> None:
            if driver is self.driver:
                self._link_event(event)
            elif isinstance(event, LinkLost):  # before the master took the worker over
                driver.close(CloseCode.NORMAL, "connection lost during the login")

        driver.link_callbacks.append(link_event)
        driver.end_callbacks.append(lambda code, reason, by_peer: self._probation_ended(
            driver, code, reason, by_peer))
        return driver

    def _take_over(self, driver: SessionDriver) -> None:
        """The other master took this worker over (its first message): the old master is
        gone, so its session ends (and with it the commands it ran) and ``driver`` is the
        worker's session from now on."""
        old, was = self.driver, self.masters.masters[self.session_master]
        log.msg(f"msgproto: master {self.masters.masters[self.masters.current]} took this "
                f"worker over: ending the session on master {was}")
        if old is not None and not old.session.is_closed:
            old.close(CloseCode.SESSION_EXPIRED, f"another master took this worker over; "
                      f"the session on master {was} cannot resume")
        self.driver = driver
        self.session_master = None

    def _probation_ended(self, driver: SessionDriver, code: str, reason: str,
                         by_peer: bool) -> None:
        if driver is self.driver:  # it had become the worker's session
            self._session_ended(code, reason, by_peer)
            return
        old = self.driver
        if old is None or not old.session.may_resume:
            self._session_ended(code, reason, by_peer)
            return
        was = self.masters.masters[self.session_master]
        log.msg(f"msgproto: master {self.masters.masters[self.masters.current]} did not take "
                f"this worker over ({code}: {reason}); the session on master {was} may still "
                "resume: trying it first")
        self.masters.back_to(self.session_master)
        if code in LOGIN_FAILURES:
            self.login_failed(code, reason)

    def _link_event(self, event: LinkLost | Resumed) -> None:
        """Retry quickly, and the same master first, while the session may resume; back
        to normal once it did."""
        if isinstance(event, LinkLost):
            if self.masters is not None:
                self.session_master = self.masters.current
                self.masters.pin()
            if self.retry_policy is not None:
                self.retry_policy.resume_until(self.reactor.seconds() + event.window)
            return
        if self.masters is not None:
            self.masters.unpin()
        if self.retry_policy is not None:
            self.retry_policy.logged_in()

    def _on_another_master(self) -> bool:
        """The new connection goes to another master than the suspended session's."""
        return (self.masters is not None and self.session_master is not None
                and self.masters.current != self.session_master)

    def _session_ended(self, code: str, reason: str, by_peer: bool) -> None:
        """Count failed logins and apply the retry policy to them, as PB does
        (the policy stops the worker after ``maxRetries``); pass over a master that
        refused this worker."""
        if self.retry_policy is not None:
            self.retry_policy.resume_over()
        if self.masters is not None:
            self.masters.unpin()
            if by_peer and code in MOVE_ON or code == CloseCode.HANDSHAKE_TIMEOUT:
                log.msg(f"msgproto: master {self.masters.masters[self.masters.current]} "
                        f"cannot serve this worker now ({code}): trying the next master")
                self.masters.refused()
                if self.retry_policy is not None:
                    self.retry_policy.failover()
        if self.driver is not None and self.driver.session.auth_mechanism is not None:
            logged_in = getattr(self.retry_policy, "logged_in", None)
            if logged_in is not None:  # the session had opened: retry soon
                logged_in()
        if code in LOGIN_FAILURES:
            self.login_failed(code, reason)
        elif code != CloseCode.HANDSHAKE_TIMEOUT and self.driver is not None \
                and self.driver.session.version is not None:
            self.failed_logins = 0

    def login_failed(self, code: str, reason: str) -> None:
        """Count a failed login and apply the retry policy (it stops the worker after
        ``maxRetries``)."""
        self.failed_logins += 1
        what = "password" if self.password is not None else "TLS client certificate"
        log.msg(f"msgproto: login to the master failed ({code}): {reason}; "
                f"check the worker name and {what}")
        check = getattr(self.retry_policy, "check_failures", self.retry_policy)
        if check is not None:
            check(self.failed_logins)

    @property
    def active_driver(self) -> SessionDriver | None:
        """The driver of the current open session, if any."""
        if self.driver is not None and self.driver.session.is_open:
            return self.driver
        return None


class MsgClientFactory(protocol.Factory):
    """Negotiated TCP: one negotiating connection per attempt of the ClientService."""

    noisy = False

    def __init__(self, sessions: WorkerSessions, pb_factory: Any) -> None:
        self.sessions = sessions
        self.pb_factory = pb_factory
        self.reactor = sessions.reactor
        self.limits = sessions.limits

    def buildProtocol(self, addr: Any) -> NegotiatingClientProtocol:
        return NegotiatingClientProtocol(self, addr)

    def new_driver(self) -> SessionDriver:
        return self.sessions.new_driver()
