"""Worker-side connection: PB dialect negotiation, then a msg session or a PB fallback."""

from __future__ import annotations

from typing import Any

from twisted.internet import protocol
from twisted.python import log

from buildbot_worker_msgproto.driver import MessageHandler
from buildbot_worker_msgproto.driver import SessionDriver
from buildbot_worker_msgproto.protocol import negotiation
from buildbot_worker_msgproto.protocol.codes import LOGIN_FAILURES
from buildbot_worker_msgproto.protocol.codes import CloseCode
from buildbot_worker_msgproto.protocol.limits import DEFAULT_LIMITS
from buildbot_worker_msgproto.protocol.limits import MSG_DIALECT
from buildbot_worker_msgproto.protocol.limits import Limits
from buildbot_worker_msgproto.protocol.session import Role
from buildbot_worker_msgproto.protocol.session import Session
from buildbot_worker_msgproto.transports.tcp import FramedProtocol
from buildbot_worker_msgproto.transports.tcp import set_nodelay

#: Bytes we are willing to buffer while waiting for the master's dialect offer.
MAX_OFFER_BYTES = 1024


class NegotiatingClientProtocol(protocol.Protocol):
    """Reads the master's banana dialect offer and becomes msg framing or a PB broker.

    If the master does not speak first within the handshake timeout (a silently
    dropped connection, a wrong port), the connection is aborted so that the
    reconnecting service retries instead of waiting forever.
    """

    def __init__(self, factory: MsgClientFactory, addr: Any) -> None:
        self.factory = factory
        self.addr = addr
        self.inner: protocol.Protocol | None = None
        self._buffer = b""
        self._timer = None

    def connectionMade(self) -> None:
        set_nodelay(self.transport)
        self._timer = self.factory.reactor.callLater(self.factory.limits.handshake_timeout,
                                                     self._timed_out)

    def _timed_out(self) -> None:
        self._timer = None
        log.msg(f"msgproto: the master at {self.addr} sent no dialect offer within "
                f"{self.factory.limits.handshake_timeout:g} s; reconnecting")
        self.transport.abortConnection()

    def dataReceived(self, data: bytes) -> None:
        if self.inner is not None:
            self.inner.dataReceived(data)
            return
        self._buffer += data
        try:
            parsed = negotiation.parse_offer(self._buffer)
            if parsed is None and len(self._buffer) > MAX_OFFER_BYTES:
                raise negotiation.NegotiationError("dialect offer too long")
        except negotiation.NegotiationError as e:
            log.msg(f"msgproto: the master at {self.addr} is not a Buildbot master: {e}")
            self.transport.abortConnection()
            return
        if parsed is None:
            return
        self._cancel_timer()
        offered, rest = parsed
        if negotiation.choose(offered, (MSG_DIALECT,)) is not None:
            self.transport.write(negotiation.encode_string(MSG_DIALECT))
            self._become(FramedProtocol(self.factory.new_driver()), rest)
        elif self.factory.sessions.password is None:
            self.factory.sessions.login_failed(
                CloseCode.UNSUPPORTED_AUTH, "the master does not offer the msg protocol, and "
                "PB has no certificate login (this worker has no password)")
            self.transport.abortConnection()
        else:
            log.msg("msgproto: the master does not offer the msg protocol "
                    f"(offers {[d.decode('ascii', 'replace') for d in offered]}); "
                    "falling back to PB")
            broker = self.factory.pb_factory.buildProtocol(self.addr)
            self._become(broker, self._buffer)
        self._buffer = b""

    def _become(self, inner: protocol.Protocol, data: bytes) -> None:
        self.inner = inner
        inner.makeConnection(self.transport)
        if data:
            inner.dataReceived(data)

    def connectionLost(self, reason: Any = protocol.connectionDone) -> None:
        self._cancel_timer()
        if self.inner is not None:
            self.inner.connectionLost(reason)

    def _cancel_timer(self) -> None:
        if self._timer is not None and self._timer.active():
            self._timer.cancel()
        self._timer = None


class WorkerSessions:
    """Makes the worker's sessions (one per connection) and remembers the current one."""

    def __init__(self, bot: MessageHandler, name: str, password: str | None, reactor: Any,
                 limits: Limits = DEFAULT_LIMITS, software: dict[str, Any] | None = None,
                 retry_policy: Any = None) -> None:
        self.bot = bot
        self.retry_policy = retry_policy
        self.failed_logins = 0
        self.name = name
        self.password = password
        self.reactor = reactor
        self.limits = limits
        self.software = software or {}
        self.driver: SessionDriver | None = None

    def new_driver(self) -> SessionDriver:
        session = Session(Role.WORKER, self.limits, now=self.reactor.seconds(),
                          worker_name=self.name, password=self.password,
                          certificate_login=self.password is None, software=self.software)
        self.driver = SessionDriver(session, self.bot, self.reactor, label="msgproto-worker")
        self.driver.end_callbacks.append(self._session_ended)
        return self.driver

    def _session_ended(self, code: str, reason: str, by_peer: bool) -> None:
        """Count failed logins and apply the retry policy to them, as PB does
        (the policy stops the worker after ``maxRetries``)."""
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
