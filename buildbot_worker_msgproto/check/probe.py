"""One connection check against one master: connect as the worker would (the same client
endpoint: TLS, HTTP proxy, SSH tunnel; the same transport), negotiate the dialect, then
run the handshake with ``check`` instead of ``hello``.  The master authenticates the
worker and closes without attaching it (a master that does not know ``check`` closes
before authenticating), and the checker closes too once it is authenticated.  A master
that offers only PB is reported, never logged in to (a PB login attaches).

The round-trip time is that of the last handshake exchange: from the worker's
``authenticate`` to the master's ``welcome`` (from ``check`` to ``welcome`` in a
certificate login), one round trip plus the master's proof check.
"""

from __future__ import annotations

import dataclasses
import time
from typing import Any

from cryptography import x509
from twisted.internet import defer
from twisted.internet import protocol
from twisted.python.failure import Failure

import buildbot_worker_msgproto
from buildbot_worker_msgproto.check.settings import WorkerSettings
from buildbot_worker_msgproto.driver import MessageHandler
from buildbot_worker_msgproto.driver import SessionDriver
from buildbot_worker_msgproto.negotiating import NegotiatingProtocol
from buildbot_worker_msgproto.protocol import negotiation
from buildbot_worker_msgproto.protocol.codes import CloseCode
from buildbot_worker_msgproto.protocol.events import Authenticated
from buildbot_worker_msgproto.protocol.events import LinkLost
from buildbot_worker_msgproto.protocol.limits import DEFAULT_LIMITS
from buildbot_worker_msgproto.protocol.limits import MSG_DIALECT
from buildbot_worker_msgproto.protocol.session import Role
from buildbot_worker_msgproto.protocol.session import Session
from buildbot_worker_msgproto.reach.endpoints import client_endpoint
from buildbot_worker_msgproto.security import tls_info
from buildbot_worker_msgproto.transports import registry
from buildbot_worker_msgproto.transports.base import ClientTarget
from buildbot_worker_msgproto.transports.tcp import FramedProtocol

#: Seconds a check may take, from the first connection attempt to authentication.
DEFAULT_TIMEOUT = 30.0


@dataclasses.dataclass
class Report:
    """What one check found out, step by step (unset: not reached)."""

    worker: str
    where: str
    transport: str
    route: str
    timeout: float
    certificate_login: bool = False
    connected: bool = False
    encryption: str | None = None
    tls: tls_info.TLSDetails | None = None
    #: The master's certificate, also when it was rejected.
    certificate: x509.Certificate | None = None
    verification: str | None = None
    #: The dialects of a master that offers no msg (PB only).
    offered: tuple[bytes, ...] | None = None
    version: int | None = None
    features: tuple[str, ...] = ()
    auth: str | None = None
    rtt: float | None = None
    authenticated: bool = False
    close_code: str | None = None
    close_reason: str = ""
    failure: Failure | None = None
    lost_reason: str | None = None
    #: What the check was doing when its time ran out.
    timed_out: str | None = None


def route_of(target: ClientTarget) -> str:
    """How the worker reaches ``target``, for people."""
    if target.ssh is not None:
        return f"SSH tunnel via {target.ssh.where}"
    if target.proxy_connection_string:
        return f"HTTP proxy {target.proxy_connection_string}"
    if target.connection_string:
        return "connection string"
    return "direct"


def verification_of(target: ClientTarget) -> str:
    """What a successful TLS handshake to ``target`` proved about the master."""
    tls = target.tls
    host = target.host
    if target.connection_string:
        return "as the connection string's options say (trustRoots=...)"
    if tls is not None and tls.fingerprint and not tls.ca_file:
        return "verified: the pinned SHA-256 fingerprint (no CA or host name check)"
    issuer = f"a CA of {tls.ca_file}" if tls is not None and tls.ca_file else \
        "a CA the system trusts"
    pinned = ", and the pinned fingerprint" if tls is not None and tls.fingerprint else ""
    return f"verified: issued by {issuer}, valid for {host}{pinned}"


class _Checker(MessageHandler):
    """The session's handler: notes the outcome, closes once authenticated."""

    def __init__(self, probe: Probe) -> None:
        self.probe = probe

    def authenticated(self, driver: SessionDriver, event: Authenticated) -> None:
        self.probe.authenticated(driver)
        driver.close(CloseCode.NORMAL, "connection check done")

    def link_lost(self, driver: SessionDriver, event: LinkLost) -> None:
        self.probe.finish()

    def session_ended(self, driver: SessionDriver, code: str, reason: str,
                      by_peer: bool) -> None:
        self.probe.ended(code, reason)


class _TimedReceiver:
    """The session driver's FrameReceiver, noting when the connection opened and when each
    frame arrived (for the round-trip time) and what the transport tells of itself."""

    def __init__(self, probe: Probe, driver: SessionDriver) -> None:
        self.probe = probe
        self.driver = driver
        self.opened_at: float | None = None
        self.received_at: list[float] = []

    def transport_opened(self, transport: Any) -> None:
        self.opened_at = time.perf_counter()
        self.probe.opened(transport)
        self.driver.transport_opened(transport)

    def frame_received(self, frame: bytes) -> None:
        self.received_at.append(time.perf_counter())
        self.driver.frame_received(frame)

    def frame_rejected(self, size: int) -> None:
        self.driver.frame_rejected(size)

    def transport_closed(self, reason: str) -> None:
        self.probe.lost(reason)
        self.driver.transport_closed(reason)

    def max_incoming_frame_size(self) -> int:
        return self.driver.max_incoming_frame_size()

    def writable_changed(self, writable: bool) -> None:
        self.driver.writable_changed(writable)

    def round_trip(self, certificate_login: bool) -> float | None:
        """Seconds from our last handshake frame to ``welcome``."""
        times = self.received_at
        if certificate_login and times and self.opened_at is not None:
            return times[0] - self.opened_at
        if len(times) >= 2:
            return times[1] - times[0]
        return None


class _Negotiating(NegotiatingProtocol):
    """The dialect exchange of the negotiated port: msg, or a PB-only master (reported,
    never logged in to)."""

    def __init__(self, probe: Probe) -> None:
        super().__init__(probe.reactor, probe.report.timeout)
        self.probe = probe

    def connectionMade(self) -> None:  # noqa: N802 - Twisted's name
        super().connectionMade()
        self.probe.phase = "waiting for the master's dialect offer"

    def timeout_message(self) -> str:
        self.probe.time_out()
        return "check-connection: no dialect offer"

    def error_message(self, error: negotiation.NegotiationError) -> str:
        self.probe.fail(Failure(ConnectionError(f"not a Buildbot master: {error}")))
        return "check-connection: not a Buildbot master"

    def negotiate(self, buffer: bytes) -> tuple[protocol.Protocol, bytes] | None:
        parsed = negotiation.parse_offer(buffer)
        if parsed is None:
            if len(buffer) > 1024:
                raise negotiation.NegotiationError("dialect offer too long")
            return None
        offered, rest = parsed
        if negotiation.choose(offered, (MSG_DIALECT,)) is None:
            self.probe.pb_only(tuple(offered))
            self.transport.abortConnection()
            return None
        self.transport.write(negotiation.encode_string(MSG_DIALECT))
        return FramedProtocol(self.probe.new_receiver()), rest

    def connectionLost(self, reason: Any = protocol.connectionDone) -> None:  # noqa: N802
        super().connectionLost(reason)
        if self.inner is None:
            self.probe.lost(reason.getErrorMessage())


class _NegotiatingFactory(protocol.Factory):
    noisy = False

    def __init__(self, probe: Probe) -> None:
        self.probe = probe

    def buildProtocol(self, addr: Any) -> _Negotiating:  # noqa: N802 - Twisted's name
        return _Negotiating(self.probe)


class Probe:
    """Checks ``settings``' worker against one master (``target``)."""

    def __init__(self, reactor: Any, settings: WorkerSettings, target: ClientTarget,
                 timeout: float = DEFAULT_TIMEOUT) -> None:
        self.reactor = reactor
        self.settings = settings
        self.target = target
        self.report = Report(worker=settings.name, where=settings.where(target),
                             transport=settings.transport, route=route_of(target),
                             timeout=timeout, certificate_login=settings.password is None)
        self.phase = "connecting"
        self.done: defer.Deferred = defer.Deferred()
        self.receiver: _TimedReceiver | None = None
        self.transport: Any = None
        self.endpoint: Any = None
        self._connecting: defer.Deferred | None = None

    # ------------------------------------------------------------------ running
    def run(self) -> defer.Deferred:
        """Fires with the :class:`Report` (never fails)."""
        timer = self.reactor.callLater(self.report.timeout, self.time_out)
        self.done.addBoth(lambda result: timer.cancel() if timer.active() else None)
        try:
            if self.settings.transport == "tcp":
                self.endpoint = client_endpoint(self.reactor, self.target)
                factory: Any = _NegotiatingFactory(self)
            else:
                backend = registry.load(self.settings.transport)
                self.endpoint = backend.client_endpoint(self.reactor, self.target)
                factory = backend.client_factory(self.reactor, self.target, self.new_receiver)
            self._connecting = self.endpoint.connect(factory)
        except Exception:
            self.fail(Failure())
            return self.done.addCallback(lambda _: self.report)
        self._connecting.addCallbacks(self._connected, self._connect_failed)
        return self.done.addCallback(lambda _: self.report)

    def new_receiver(self) -> _TimedReceiver:
        limits = DEFAULT_LIMITS.replace(handshake_timeout=self.report.timeout)
        password = self.settings.password
        session = Session(Role.WORKER, limits, now=self.reactor.seconds(),
                          worker_name=self.settings.name, password=password,
                          certificate_login=password is None, check=True,
                          software={"buildbot_worker_msgproto":
                                    buildbot_worker_msgproto.__version__})
        driver = SessionDriver(session, _Checker(self), self.reactor, label="check-connection")
        self.receiver = _TimedReceiver(self, driver)
        return self.receiver

    def _connected(self, proto: Any) -> None:
        self.report.connected = True
        if self.phase == "connecting":
            self.phase = "authenticating"

    def _connect_failed(self, failure: Failure) -> None:
        if not self.done.called:
            self._note_certificate()
            self.fail(failure)

    # ------------------------------------------------------------------ events
    def opened(self, transport: Any) -> None:
        """The msg session's transport is up (after TLS, proxy, negotiation)."""
        self.phase = "authenticating"
        self.transport = transport
        report = self.report
        report.connected = True
        try:
            report.encryption = transport.encryption()
        except Exception as e:  # informational
            report.encryption = f"? ({e})"
        link = getattr(transport, "link", None)  # amqp: TLS is the broker connection's
        report.tls = tls_info.tls_details(getattr(link, "proto", None) or transport)
        if report.tls is not None:
            report.certificate = report.tls.peer_certificate
            report.verification = verification_of(self.target)

    def authenticated(self, driver: SessionDriver) -> None:
        session = driver.session
        report = self.report
        report.authenticated = True
        report.version = session.version
        report.features = tuple(sorted(session.features))
        report.auth = session.auth_mechanism
        report.rtt = self.receiver.round_trip(session.certificate_login) \
            if self.receiver is not None else None

    def ended(self, code: str, reason: str) -> None:
        if not self.report.authenticated:
            self.report.close_code, self.report.close_reason = str(code), reason
        self.finish()

    def pb_only(self, offered: tuple[bytes, ...]) -> None:
        self.report.offered = offered
        self.finish()

    def lost(self, reason: str) -> None:
        if self.report.lost_reason is None:
            self.report.lost_reason = reason
        self.reactor.callLater(0, self.finish)  # after the session's own end, if any

    def fail(self, failure: Failure) -> None:
        if self.report.failure is None:
            self.report.failure = failure
        self.finish()

    def time_out(self) -> None:
        if self.done.called:
            return
        self.report.timed_out = self.phase
        self._note_certificate()
        self.finish()

    def finish(self) -> None:
        if self.done.called:
            return
        if self.receiver is not None and not self.receiver.driver.session.is_closed:
            self.receiver.driver.close(CloseCode.NORMAL, "connection check done")
        if self.transport is not None:
            abort = getattr(self.transport, "abort", None)
            if abort is not None:
                self.reactor.callLater(1.0, abort)  # let our close frame go out first
        if self._connecting is not None and not self._connecting.called:
            self._connecting.addErrback(lambda _: None)
            self._connecting.cancel()
        self.done.callback(None)

    def _note_certificate(self) -> None:
        """The master certificate the TLS layer saw, also when it rejected it."""
        endpoint = self.endpoint
        for _ in range(3):  # the verified TLS endpoint may sit under a broker endpoint
            creator = getattr(endpoint, "creator", None)
            seen = getattr(creator, "last_certificate", None)
            if seen is not None:
                self.report.certificate = seen
                return
            endpoint = getattr(endpoint, "endpoint", None)


def check(reactor: Any, settings: WorkerSettings, target: ClientTarget,
          timeout: float = DEFAULT_TIMEOUT) -> defer.Deferred:
    """Check ``settings``' worker against the master at ``target``; fires with the
    :class:`Report`."""
    return Probe(reactor, settings, target, timeout).run()
