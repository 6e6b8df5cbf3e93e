"""Ports, registrations and authentication for ``c['protocols']['msg']``.

Follows Buildbot's own managers (``buildbot.worker.protocols.manager``): a manager
service owns one dispatcher per port; a dispatcher knows the registered workers
and authenticates both PB logins (through Buildbot's own PB portal) and msg
sessions (SCRAM, see :mod:`buildbot_worker_msgproto.protocol.auth`).
"""

from __future__ import annotations

from typing import Any

from buildbot.process.properties import Properties
from buildbot.util import bytes2unicode
from buildbot.util.eventual import eventually
from buildbot.worker.protocols import base
from buildbot.worker.protocols.manager.base import BaseManager
from buildbot.worker.protocols.manager.base import Registration
from buildbot.worker.protocols.manager.pb import Dispatcher as PBDispatcher
from twisted.application import strports
from twisted.cred import error as cred_error
from twisted.internet import defer
from twisted.internet import threads
from twisted.python import log
from twisted.spread import pb

from buildbot_msgproto import client_certs
from buildbot_msgproto import compat
from buildbot_msgproto.config import ListenerOptions
from buildbot_msgproto.config import normalize_portstr
from buildbot_msgproto.connection import MsgConnection
from buildbot_msgproto.liveness import MasterLiveness
from buildbot_msgproto.negotiation import NegotiatingServerFactory
from buildbot_msgproto.ownership import WorkerOwnership
from buildbot_msgproto.ownership import refusal_reason
from buildbot_msgproto.sessions import SessionRegistry
from buildbot_msgproto.throttle import LoginThrottle
from buildbot_msgproto.throttle import peer_host
from buildbot_worker_msgproto.driver import MessageHandler
from buildbot_worker_msgproto.driver import SessionDriver
from buildbot_worker_msgproto.protocol import auth
from buildbot_worker_msgproto.protocol.auth import ScramCredentials
from buildbot_worker_msgproto.protocol.codes import CloseCode
from buildbot_worker_msgproto.protocol.events import Authenticated
from buildbot_worker_msgproto.protocol.events import HelloReceived
from buildbot_worker_msgproto.protocol.events import Resumed
from buildbot_worker_msgproto.protocol.session import Role
from buildbot_worker_msgproto.protocol.session import Session
from buildbot_worker_msgproto.transports import registry
from buildbot_worker_msgproto.transports.base import peer_address


class _CertificateOnly:
    """The registered "password" of a worker without one (``MsgWorker(name, None)``).

    Buildbot's registration skips workers whose password is falsy, so a certificate-only
    worker is registered with this truthy marker instead; no password ever matches it.
    """

    def __repr__(self) -> str:
        return "CERTIFICATE_ONLY"


CERTIFICATE_ONLY = _CertificateOnly()


class MsgDispatcher(PBDispatcher):
    """One listening port serving msg sessions and, negotiated on the same port, PB."""

    def __init__(self, config_portstr: Any, portstr: str, options: ListenerOptions,
                 sessions: SessionRegistry) -> None:
        super().__init__(config_portstr, portstr)
        self.options = options
        #: The master's resumable sessions (shared by all its msg ports).
        self.sessions = sessions
        self._credentials: dict[str, tuple[str, ScramCredentials]] = {}
        self.serverFactory = NegotiatingServerFactory(
            self.serverFactory, self.new_driver, _reactor(), options.limits.handshake_timeout,
            serve_pb=options.serve_pb)
        self.login_throttle = LoginThrottle(options.login_failures_before_throttle,
                                            options.login_throttle_seconds)
        self.tls_creator: client_certs.ServerTLSCreator | None = None

    def reconfigure(self, options: ListenerOptions) -> None:
        """Apply new limits to sessions started from now on."""
        if self.tls_creator is not None and options.tls_cert and options is not self.options:
            try:  # new certificates for new connections
                self.tls_creator.options = _server_tls_options(options)
            except ValueError as e:
                log.msg(f"msgproto: keeping the old TLS settings of {self.portstr}: {e}")
        elif (self.tls_creator is not None) != bool(options.tls_cert):
            log.msg(f"msgproto: turning tls_cert on or off for {self.portstr} needs a restart")
        self.options = options
        self.serverFactory.negotiation_timeout = options.limits.handshake_timeout
        self.login_throttle.configure(options.login_failures_before_throttle,
                                      options.login_throttle_seconds)

    @property
    def ownership(self) -> WorkerOwnership | None:
        """The master's worker leases (several masters), or None."""
        return self.parent.ownership

    # ---------------------------------------------------------------- msg sessions
    def new_driver(self) -> SessionDriver:
        reactor = self.master.reactor
        session = Session(Role.MASTER, self.options.limits, now=reactor.seconds())
        return SessionDriver(session, MasterHandshake(self), reactor, label="msgproto")

    @defer.inlineCallbacks
    def credentials_for(self, worker_name: str) -> Any:
        """SCRAM credentials of a registered worker (None if unknown), cached per password.

        PBKDF2 (``auth_iterations``) runs in the reactor's thread pool: hashlib releases
        the GIL, so a high iteration count or many first logins at once do not stall the
        master's event loop.
        """
        password = yield self._rendered_password(worker_name)
        if password is None:
            return None
        cached = self._credentials.get(worker_name)
        if cached is None or cached[0] != password:
            reactor = self.master.reactor
            credentials = yield threads.deferToThreadPool(
                reactor, reactor.getThreadPool(), ScramCredentials.from_password, password,
                self.options.limits.auth_iterations)
            cached = self._credentials[worker_name] = (password, credentials)
        return cached[1]

    @defer.inlineCallbacks
    def _rendered_password(self, worker_name: str) -> Any:
        """The registered password, rendered (None: unknown or certificate-only worker)."""
        yield self.master.initLock.acquire()
        try:
            if worker_name not in self.users:
                return None
            password, _ = self.users[worker_name]
            if password is CERTIFICATE_ONLY:
                log.msg(f"msgproto: worker {worker_name!r} has no password on this master "
                        "(certificate login only); refusing its password login")
                return None
            props = Properties()
            props.master = self.master
            return (yield props.render(password))
        finally:
            eventually(self.master.initLock.release)

    def certificate_only(self, worker_name: str) -> bool | None:
        """True if the worker is registered without a password (certificate login only),
        False if with one, None if it is not registered."""
        entry = self.users.get(worker_name)
        return None if entry is None else entry[0] is CERTIFICATE_ONLY

    def connection_factory(self, worker_name: str) -> Any:
        entry = self.users.get(worker_name)
        return entry[1] if entry else None

    def unregister(self, username: str) -> None:
        super().unregister(username)
        self._credentials.pop(username, None)

    # ---------------------------------------------------------------- PB on the same port
    def requestAvatarId(self, creds: Any) -> Any:  # noqa: N802 - Twisted's name
        """Buildbot's PB password check, refusing workers without a password cleanly."""
        name = bytes2unicode(creds.username)
        if self.certificate_only(name):
            log.msg(f"msgproto: refusing the PB login of worker {name!r}: it has no password "
                    "(certificate login over msg only)")
            return defer.fail(cred_error.UnauthorizedLogin())
        return super().requestAvatarId(creds)

    @defer.inlineCallbacks
    def requestAvatar(self, avatarId: Any, mind: Any, *interfaces: Any) -> Any:  # noqa: N802,N803
        """A legacy PB worker logged in: attach it with Buildbot's own PB connection."""
        assert interfaces[0] == pb.IPerspective
        name = None if isinstance(avatarId, tuple) else bytes2unicode(avatarId)
        if not name or name not in self.users:
            raise ValueError(f"no perspective for {name!r}")
        transport = getattr(getattr(mind, "broker", None), "transport", None)
        refusal = client_certs.refusal(self.options.client_certificates, transport, name,
                                       peer_address(transport))
        if refusal is not None:
            raise ValueError(refusal[1])
        persp = yield compat.create_pb_connection(self.master, mind, name)
        yield persp.attached(mind)
        return (pb.IPerspective, persp, lambda: persp.detached(mind))

    def start_listening_port(self) -> Any:
        tls = ""
        if self.options.tls_cert:  # TLS built here: an ssl: strport cannot ask for client certs
            self.tls_creator = client_certs.ServerTLSCreator(_server_tls_options(self.options))
            port = strports.listen(self.portstr, client_certs.tls_server_factory(
                self.tls_creator, self.serverFactory))
            tls = f", TLS, client certificates {self.options.client_certificates}"
        else:
            port = super().start_listening_port()
        log.msg(f"msgproto: listening on {self.portstr} "
                f"({'msg and PB' if self.options.serve_pb else 'msg only'}{tls})")
        return port

    @defer.inlineCallbacks
    def startService(self) -> Any:  # noqa: N802
        self.serverFactory.reactor = self.master.reactor
        yield super().startService()
        self.listening = []
        for name, options in self.options.transport_options().items():
            backend = registry.load(name)
            extra: dict[str, Any] = {}
            tls = ""
            if options.tls:  # the port's TLS layer, with client certificates
                creator = self.tls_creator
                extra["wrap_factory"] = lambda f, c=creator: client_certs.tls_server_factory(c, f)
                tls = f" (TLS, client certificates {self.options.client_certificates})"
            listening = yield defer.ensureDeferred(
                backend.listen(self.master.reactor, options, self.new_driver, **extra))
            log.msg(f"msgproto: {name} transport listening on {listening.address()}{tls}")
            self.listening.append(listening)

    @defer.inlineCallbacks
    def stopService(self) -> Any:  # noqa: N802
        listening, self.listening = getattr(self, "listening", []), []
        for item in listening:
            yield item.stop()
        yield super().stopService()


class MasterHandshake(MessageHandler):
    """Handles a master session until the worker is authenticated and attached."""

    def __init__(self, dispatcher: MsgDispatcher) -> None:
        self.dispatcher = dispatcher

    def _throttle_key(self, driver: SessionDriver) -> tuple[str, str]:
        return (peer_host(driver.peer), driver.session.worker_name or "")

    def hello_received(self, driver: SessionDriver, event: HelloReceived) -> None:
        throttle, key = self.dispatcher.login_throttle, self._throttle_key(driver)
        wait = throttle.retry_after(key, driver.reactor.seconds())
        if wait > 0:
            if throttle.should_log_refusal(key):
                log.msg(f"msgproto: refusing logins of worker {event.worker!r} from {key[0]} "
                        f"for another {wait:.0f} s (too many failed logins)")
            driver.close(CloseCode.LOGIN_THROTTLED,
                         f"too many failed logins; retry in {wait:.0f} s")
            return
        if event.check and self.dispatcher.options.check_reveals_unknown_workers \
                and self.dispatcher.certificate_only(event.worker) is None:
            self._refuse(driver, event.worker, CloseCode.UNKNOWN_WORKER,
                         f"connection check: worker {event.worker!r} is not configured on "
                         "this master")
            return
        if auth.SCRAM not in event.mechanisms:  # the worker offers certificate login only
            self._certificate_login(driver, event)
            return
        refusal = self._certificate_refusal(driver, event.worker)
        if refusal is not None:  # before the challenge: the password is not even tried
            driver.close(*refusal)
            return
        d = self.dispatcher.credentials_for(event.worker)
        d.addCallback(lambda credentials: driver.answer_hello(
            credentials, resume=self._resume_target(event)))
        d.addErrback(self._internal_error, driver, "looking up credentials")

    def _resume_target(self, event: HelloReceived) -> Any:
        """The session the worker asks to resume, if this master still has it."""
        target = self.dispatcher.sessions.find(event.resume, event.worker)
        return target.session if target is not None else None

    def resumed(self, driver: SessionDriver, event: Resumed) -> None:
        """The new connection resumed a session: hand it to that session's driver."""
        self.dispatcher.login_throttle.succeeded(self._throttle_key(driver))
        target = self.dispatcher.sessions.find(event.session_id, driver.session.worker_name)
        if target is None or target.session is not event.session:  # cannot happen
            driver.abort()
            return
        log.msg(f"msgproto: worker {driver.session.worker_name!r} resumed its session from "
                f"{driver.peer} after {event.suspended_for:.1f} s ({event.replayed} frames "
                "sent again)")
        target.adopt(driver, event)

    def _certificate_login(self, driver: SessionDriver, event: HelloReceived) -> None:
        """Open the session of a worker that logs in with its TLS client certificate:
        allowed if client certificates are on, the verified certificate names the worker
        and the worker has no password on this master (docs/security/mtls.rst)."""
        worker = event.worker
        mode = self.dispatcher.options.client_certificates
        if mode == client_certs.OFF:
            self._refuse(driver, worker, CloseCode.UNSUPPORTED_AUTH,
                         "this master does not accept certificate login (its "
                         "client_certificates option is 'off')")
            return
        refusal = client_certs.refusal(mode, driver.transport, worker, driver.peer)
        if refusal is not None:
            driver.close(*refusal)
            return
        cert = client_certs.peer_certificate(driver.transport)
        if cert is None:
            self._refuse(driver, worker, client_certs.CERTIFICATE_REQUIRED,
                         "certificate login needs a TLS client certificate")
            return
        only = self.dispatcher.certificate_only(worker)
        if only is None:
            self._refuse(driver, worker, CloseCode.AUTHENTICATION_FAILED,
                         f"worker {worker!r} failed to authenticate (unknown worker)")
            return
        if not only:
            self._refuse(driver, worker, CloseCode.UNSUPPORTED_AUTH,
                         f"worker {worker!r} has a password on this master and must log in "
                         f"with it (certificate login needs MsgWorker({worker!r}, None))")
            return
        log.msg(f"msgproto: worker {worker!r} from {driver.peer} logs in with its TLS client "
                f"certificate ({client_certs.describe(cert)})")
        driver.accept_certificate(resume=self._resume_target(event))

    @staticmethod
    def _refuse(driver: SessionDriver, worker: str, code: str, reason: str) -> None:
        log.msg(f"msgproto: refusing worker {worker!r} from {driver.peer}: {code}: {reason}")
        driver.close(code, reason)

    def _certificate_refusal(self, driver: SessionDriver, worker: str) -> Any:
        return client_certs.refusal(self.dispatcher.options.client_certificates,
                                    driver.transport, worker, driver.peer)

    def authenticated(self, driver: SessionDriver, event: Authenticated) -> None:
        self.dispatcher.login_throttle.succeeded(self._throttle_key(driver))
        if driver.session.check:
            # a connection check: authenticated, and nothing else happens (no lease, no
            # attach, the worker's other sessions untouched)
            log.msg(f"msgproto: connection check of worker {event.worker!r} from "
                    f"{driver.peer} passed; not attaching it")
            driver.close(CloseCode.NORMAL, "connection check passed; a check is never "
                         "attached")
            return
        # a new login, not a resume: the worker process restarted, so a session it left
        # suspended has nobody to resume it; end it now instead of after its window
        for old in self.dispatcher.sessions.suspended(event.worker):
            log.msg(f"msgproto: worker {event.worker!r} logged in anew from {driver.peer}: "
                    "ending its suspended session")
            old.close(CloseCode.SESSION_REPLACED, "the worker logged in anew")
        self.dispatcher.sessions.add(driver)
        d = self._attach(driver, event.worker)
        d.addErrback(self._internal_error, driver, "attaching the worker")

    @defer.inlineCallbacks
    def _attach(self, driver: SessionDriver, worker_name: str) -> Any:
        factory = self.dispatcher.connection_factory(worker_name)
        if factory is None:
            driver.close(CloseCode.UNKNOWN_WORKER,
                         f"worker {worker_name!r} is no longer configured")
            return
        ownership = self.dispatcher.ownership
        if ownership is not None:
            owner = yield ownership.claim(worker_name)
            if owner is not None:
                left = owner.expires_at - driver.reactor.seconds()
                log.msg(f"msgproto: worker {worker_name!r} from {driver.peer}: master "
                        f"{owner.master_name!r} holds its lease for {left:.1f} s more; "
                        "taking it over if it lapses")
                owner = yield ownership.claim_when_lapsed(
                    worker_name, owner, lambda: not driver.session.is_closed)
            if owner is not None:
                reason = refusal_reason(worker_name, owner, driver.reactor.seconds())
                log.msg(f"msgproto: refusing worker {worker_name!r} from {driver.peer}: "
                        f"{reason}")
                driver.close(CloseCode.NOT_OWNER, reason)
                return
            driver.end_callbacks.append(lambda *_: ownership.release(worker_name))
            if driver.session.is_closed:
                return
        log.msg(f"msgproto: worker {worker_name!r} authenticated from {driver.peer}")
        try:
            conn = yield factory(driver, worker_name)
        except RuntimeError as e:  # Buildbot's "rejecting duplicate worker"
            log.msg(f"msgproto: rejecting worker {worker_name!r} from {driver.peer}: {e}")
            driver.close(CloseCode.DUPLICATE_WORKER, str(e))
            return
        if driver.session.is_closed:
            conn.detached(driver)
            return
        yield conn.attached(driver, self.dispatcher.options.rtt_probe_interval)

    def session_ended(self, driver: SessionDriver, code: str, reason: str,
                      by_peer: bool) -> None:
        if code != CloseCode.AUTHENTICATION_FAILED or by_peer:
            return
        key = self._throttle_key(driver)
        throttle = self.dispatcher.login_throttle
        backoff = throttle.failed(key, driver.reactor.seconds())
        if backoff > 0:
            log.msg(f"msgproto: throttling logins of worker {key[1]!r} from {key[0]} for "
                    f"{backoff:.0f} s after {throttle.failures_before_throttle} or more failed "
                    "logins")

    def _internal_error(self, failure: Any, driver: SessionDriver, what: str) -> None:
        log.err(failure, f"msgproto: error {what} for {driver.peer}")
        driver.close(CloseCode.INTERNAL_ERROR, f"master error while {what}")


class MsgManager(BaseManager):
    """The service owning every msg port of a master (a child of the master)."""

    #: The service name under which the manager is a child of the Buildbot master.
    NAME = "msgproto_manager"

    def __init__(self, listener: MsgListener) -> None:
        super().__init__(self.NAME)
        self.listener = listener
        self.options: dict[str, ListenerOptions] = {}
        self.sessions = SessionRegistry()
        #: Worker leases across masters (None: a single master, or lease_seconds 0).
        self.ownership: WorkerOwnership | None = None
        #: Finds dead masters (several masters only).
        self.liveness: MasterLiveness | None = None

    @defer.inlineCallbacks
    def configure_ownership(self, options: ListenerOptions) -> Any:
        """Worker ownership is on in Buildbot's multi-master mode (unless
        ``lease_seconds`` is 0); a reconfig may turn it on or off."""
        seconds = options.lease_seconds
        wanted = bool(self.master.config.multiMaster) and seconds > 0
        current = self.ownership
        if current is not None and (not wanted or current.duration != seconds):
            self.ownership = None
            yield defer.maybeDeferred(current.disownServiceParent)
        if wanted and self.ownership is None:
            self.ownership = WorkerOwnership(self.master, seconds, self._lease_lost)
            yield self.ownership.setServiceParent(self)
            log.msg(f"msgproto: one master per worker: worker leases of {seconds:g} s in the "
                    "shared database")
        yield self._configure_liveness(options.master_timeout if wanted else None)

    @defer.inlineCallbacks
    def _configure_liveness(self, timeout: float | None) -> Any:
        """Dead masters found in ``master_timeout`` seconds (several masters only)."""
        current = self.liveness
        if current is not None and (timeout is None or current.timeout != timeout):
            self.liveness = None
            yield defer.maybeDeferred(current.disownServiceParent)
        if timeout is not None and self.liveness is None:
            self.liveness = MasterLiveness(self.master, timeout, self._fence)
            yield self.liveness.setServiceParent(self)

    def _lease_lost(self, worker: str) -> None:
        for driver in self.sessions.of_worker(worker):
            driver.close(CloseCode.NOT_OWNER, "another master took this worker over")

    def _fence(self) -> None:
        """This master was declared dead: drop every msg worker (see liveness.py)."""
        for driver in self.sessions.all():
            driver.close(CloseCode.NOT_OWNER, "this master was declared dead by the others; "
                         "another master takes this worker")

    def dispatcher_class(self, config_portstr: Any, portstr: str) -> MsgDispatcher:
        return MsgDispatcher(config_portstr, portstr, self.options[portstr], self.sessions)

    @defer.inlineCallbacks
    def stopService(self) -> Any:  # noqa: N802
        """A master shutdown ends every session at once, suspended ones too (no worker
        can resume with a master that is going away)."""
        for driver in self.sessions.all():
            driver.close(CloseCode.SHUTDOWN, "the master is shutting down")
        yield super().stopService()

    @defer.inlineCallbacks
    def register(self, options: ListenerOptions, username: str, password: Any,  # type: ignore[override]
                 pfactory: Any) -> Any:
        portstr = normalize_portstr(options.port, options.backlog)
        self.options[portstr] = options
        yield self.configure_ownership(options)
        if portstr in self.dispatchers:
            self.dispatchers[portstr].reconfigure(options)
            disp = self.dispatchers[portstr]
        else:
            disp = self.dispatchers[portstr] = self.dispatcher_class(options.port, portstr)
            yield disp.setServiceParent(self)
        disp.register(username, password, pfactory)
        return Registration(self, portstr, username)


class MsgListener(base.UpdateRegistrationListener):
    """Creates :class:`MsgConnection` objects for authenticated workers (one per master)."""

    name = "MsgProtoListener"

    def __init__(self, master: Any) -> None:
        super().__init__()
        self.master = master
        self.ConnectionClass = MsgConnection
        self.manager = MsgManager(self)

    def get_manager(self) -> MsgManager:
        return self.manager

    def before_connection_setup(self, driver: SessionDriver, worker_name: str) -> None:
        log.msg(f"worker '{worker_name}' attaching over msgproto from {driver.peer}")


@defer.inlineCallbacks
def get_listener(master: Any) -> Any:
    """The master's MsgListener, created (and its manager started, as a named child service
    of the master) on first use."""
    try:
        return master.getServiceNamed(MsgManager.NAME).listener
    except KeyError:
        listener = MsgListener(master)
        # setServiceParent registers the name at once, before the first yield, so a
        # concurrent caller finds this listener instead of making a second one
        yield listener.manager.setServiceParent(master)
        return listener


def _server_tls_options(options: ListenerOptions) -> Any:
    return client_certs.server_tls_options(options.tls_cert, options.tls_key,
                                           options.tls_client_ca, options.client_certificates)


def _reactor() -> Any:
    from twisted.internet import reactor

    return reactor
