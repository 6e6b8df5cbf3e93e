"""TLS for the worker's stream transports: how the master's certificate is verified.

Three ways to trust the master, combinable:

* default (``--use-tls`` alone): the system's trusted CAs, and the master host name (or
  IP address) must match the certificate;
* ``tls_ca_file``: the CAs of that PEM file *instead of* the system's, host name checked;
* ``tls_fingerprint``: the SHA-256 fingerprint of the master's (leaf) certificate must be
  this one.  Alone it replaces the CA and host name checks (a pinned, typically
  self-signed, certificate); with ``tls_ca_file`` all checks must pass.

``tls_client_cert`` (+ ``tls_client_key``) presents a client certificate (mutual TLS).

:class:`VerifiedTLSEndpoint` runs the TLS handshake *before* the application protocol sees
the connection: a rejected master certificate fails the connection attempt itself, so the
reconnecting service backs off as for a refused connection, the rejection is logged once as
``TLS: master certificate rejected: ...``, and nothing is ever sent in clear instead.
"""

from __future__ import annotations

import dataclasses
import hmac
import ipaddress
import re
from typing import Any

from cryptography import x509
from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives import serialization
from twisted.internet import defer
from twisted.internet import protocol
from twisted.internet.interfaces import IHandshakeListener
from twisted.internet.interfaces import IOpenSSLClientConnectionCreator
from twisted.internet.interfaces import IStreamClientEndpoint
from twisted.python import log
from twisted.python.failure import Failure
from zope.interface import implementer

from buildbot_worker_msgproto.security.files import read_file

# pyOpenSSL and service_identity (Twisted's ``tls`` extra) are imported where TLS is used,
# so that a worker without TLS does not need them.

#: Seconds a TLS handshake may take before the attempt is given up (and retried).
TLS_HANDSHAKE_TIMEOUT = 30.0

#: OpenSSL X509_V_ERR_* codes seen when a master certificate is not trusted.
_X509_ERRORS = {
    2: "unable to get issuer certificate",
    9: "certificate is not yet valid",
    10: "certificate has expired",
    18: "self-signed certificate",
    19: "self-signed certificate in certificate chain",
    20: "unable to get local issuer certificate (not issued by a trusted CA)",
    21: "unable to verify the first certificate",
    24: "invalid CA certificate",
}


class CertificateRejected(Exception):
    """The master's certificate failed verification (the message says why)."""


def normalize_fingerprint(value: str) -> str:
    """``value`` as 64 lower-case hex digits: accepts ``AB:CD:...``, ``ab cd ...``,
    ``abcd...`` and an optional ``sha256:``/``SHA256=`` prefix.  Raises ValueError."""
    text = value.strip()
    text = re.sub(r"^sha-?256\s*[:=]\s*", "", text, flags=re.IGNORECASE)
    digits = re.sub(r"[\s:.-]", "", text).lower()
    if not re.fullmatch(r"[0-9a-f]{64}", digits):
        raise ValueError(f"not a SHA-256 fingerprint (64 hex digits, colons allowed): {value!r}")
    return digits


def certificate_fingerprint(cert: x509.Certificate) -> str:
    """The SHA-256 fingerprint of ``cert`` (of its DER encoding), as normalised hex."""
    return cert.fingerprint(hashes.SHA256()).hex()


def _colons(digits: str) -> str:
    return ":".join(digits[i:i + 2] for i in range(0, len(digits), 2)).upper()


@dataclasses.dataclass(frozen=True)
class TLSSettings:
    """How the worker verifies the master and what it presents (paths are PEM files)."""

    ca_file: str | None = None
    #: Normalised (see :func:`normalize_fingerprint`).
    fingerprint: str | None = None
    client_cert: str | None = None
    #: None: the key is in ``client_cert``'s file.
    client_key: str | None = None

    @classmethod
    def create(cls, ca_file: str | None = None, fingerprint: str | None = None,
               client_cert: str | None = None,
               client_key: str | None = None) -> TLSSettings | None:
        """Checked settings, or None when no option is given."""
        if not (ca_file or fingerprint or client_cert or client_key):
            return None
        if client_key and not client_cert:
            raise ValueError("tls_client_key needs tls_client_cert")
        return cls(ca_file or None, normalize_fingerprint(fingerprint) if fingerprint else None,
                   client_cert or None, client_key or None)


def load_trust_root(path: str) -> Any:
    """A Twisted trust root of every certificate in the PEM file ``path``."""
    from twisted.internet.ssl import Certificate
    from twisted.internet.ssl import trustRootFromCertificates

    try:
        certs = x509.load_pem_x509_certificates(read_file(path, "TLS CA file"))
    except ValueError as e:
        raise ValueError(f"no PEM certificate in the TLS CA file {path!r}: {e}") from None
    return trustRootFromCertificates([
        Certificate.loadPEM(c.public_bytes(serialization.Encoding.PEM)) for c in certs])


def load_client_certificate(cert_path: str, key_path: str | None) -> Any:
    """The client certificate (first certificate of ``cert_path``) with its private key."""
    from twisted.internet.ssl import PrivateCertificate

    data = read_file(cert_path, "TLS client certificate")
    if key_path:
        data += b"\n" + read_file(key_path, "TLS client key")
    try:
        return PrivateCertificate.loadPEM(data)
    except Exception as e:
        raise ValueError(f"cannot load the TLS client certificate {cert_path!r} with key "
                         f"{key_path or cert_path!r}: {e}") from None


@implementer(IOpenSSLClientConnectionCreator)
class MasterConnectionCreator:
    """Twisted's client TLS (``optionsForClientTLS``: SNI, trust root, client certificate)
    with our own certificate check, which reports a rejection through
    ``failVerification(CertificateRejected(...))``."""

    def __init__(self, hostname: str, settings: TLSSettings | None = None) -> None:
        from twisted.internet.ssl import optionsForClientTLS

        settings = settings or TLSSettings()
        self.hostname = hostname
        self.settings = settings
        self.check_chain = bool(settings.ca_file) or not settings.fingerprint
        try:
            self.ip = ipaddress.ip_address(hostname)
        except ValueError:
            self.ip = None
        trust_root = load_trust_root(settings.ca_file) if settings.ca_file else None
        client = (load_client_certificate(settings.client_cert, settings.client_key)
                  if settings.client_cert else None)
        self._options = optionsForClientTLS(hostname, trustRoot=trust_root,
                                            clientCertificate=client)
        #: The master certificate of the last handshake, verified or not (for the
        #: connection check, which shows its fingerprint also when it is rejected).
        self.last_certificate: x509.Certificate | None = None

    def clientConnectionForTLS(self, tlsProtocol: Any) -> Any:  # noqa: N802, N803
        from OpenSSL.SSL import VERIFY_FAIL_IF_NO_PEER_CERT
        from OpenSSL.SSL import VERIFY_PEER

        connection = self._options.clientConnectionForTLS(tlsProtocol)
        connection.set_verify(VERIFY_PEER | VERIFY_FAIL_IF_NO_PEER_CERT,
                              self.verify_callback(tlsProtocol))
        return connection

    def verify_callback(self, tls_protocol: Any) -> Any:
        """The OpenSSL verify callback for one connection."""

        def verify(conn: Any, cert: Any, err: int, depth: int, ok: int) -> bool:
            try:
                certificate = cert.to_cryptography()
                self._note_master_certificate(conn, certificate, depth)
                problem = self.problem(certificate, err, depth, ok)
            except Exception as e:  # never let an exception escape into OpenSSL
                problem = f"cannot check the certificate: {e!r}"
            if problem is None:
                return True
            tls_protocol.failVerification(Failure(CertificateRejected(problem)))
            return False

        return verify

    def _note_master_certificate(self, conn: Any, cert: x509.Certificate, depth: int) -> None:
        """Remember the master's (leaf) certificate: OpenSSL checks the chain from its
        root down, so a rejected chain may never reach depth 0; the peer's chain has it."""
        if depth == 0:
            self.last_certificate = cert
            return
        chain = conn.get_peer_cert_chain() or []
        if chain:
            self.last_certificate = chain[0].to_cryptography()

    def problem(self, cert: x509.Certificate, err: int, depth: int, ok: int) -> str | None:
        """Why ``cert`` (at ``depth`` of the chain, OpenSSL's verdict ``ok``/``err``) is
        not acceptable, or None."""
        from service_identity import CertificateError
        from service_identity import VerificationError
        from service_identity.cryptography import verify_certificate_hostname
        from service_identity.cryptography import verify_certificate_ip_address

        if self.check_chain and not ok:
            where = "the master certificate" if depth == 0 else f"chain certificate {depth}"
            trusted = ("the CAs of " + self.settings.ca_file if self.settings.ca_file
                       else "the system's trusted CAs")
            return (f"{where} ({cert.subject.rfc4514_string()}) is not trusted by "
                    f"{trusted}: {_X509_ERRORS.get(err, f'X509 verify error {err}')}")
        if depth != 0:
            return None
        if self.check_chain:
            try:
                if self.ip is not None:
                    verify_certificate_ip_address(cert, str(self.ip))
                else:
                    verify_certificate_hostname(cert, self.hostname)
            except (VerificationError, CertificateError) as e:
                return f"it is not valid for the master host {self.hostname!r}: {e}"
        pinned = self.settings.fingerprint
        if pinned:
            actual = certificate_fingerprint(cert)
            if not hmac.compare_digest(actual, pinned):
                return (f"its SHA-256 fingerprint {_colons(actual)} is not the pinned "
                        f"{_colons(pinned)}")
        return None


@implementer(IHandshakeListener)
class _HandshakeGate(protocol.Protocol):
    """Sits under the TLS layer and connects the application protocol only once the
    handshake succeeded; a failed handshake fails ``ready`` instead."""

    def __init__(self, factory: protocol.Factory, addr: Any, ready: defer.Deferred,
                 where: str, reactor: Any) -> None:
        self.app = factory.buildProtocol(addr)
        self.ready = ready
        self.where = where
        self.reactor = reactor
        self.handshake_done = False
        self._timer: Any = None

    def connectionMade(self) -> None:  # noqa: N802
        if self.app is None:  # the factory refused the connection
            self.transport.abortConnection()
            return
        self._timer = self.reactor.callLater(TLS_HANDSHAKE_TIMEOUT, self._timed_out)

    def _timed_out(self) -> None:
        self._timer = None
        self._fail(Failure(defer.TimeoutError(
            f"TLS handshake not finished within {TLS_HANDSHAKE_TIMEOUT:g} s")))
        self.transport.abortConnection()

    def handshakeCompleted(self) -> None:  # noqa: N802 - IHandshakeListener
        self._cancel_timer()
        ready, self.ready = self.ready, None
        if ready is None or ready.called:  # cancelled meanwhile
            self.transport.abortConnection()
            return
        self.handshake_done = True
        self.app.makeConnection(self.transport)
        ready.callback(self.app)

    def dataReceived(self, data: bytes) -> None:  # noqa: N802
        if self.handshake_done:
            self.app.dataReceived(data)

    def connectionLost(self, reason: Failure = protocol.connectionDone) -> None:  # noqa: N802
        self._cancel_timer()
        if self.handshake_done:
            self.app.connectionLost(reason)
        else:
            self._fail(reason)

    def _fail(self, reason: Failure) -> None:
        ready, self.ready = self.ready, None
        if ready is None or ready.called:  # cancelled: the service is stopping
            return
        if reason.check(CertificateRejected):
            log.msg(f"TLS: master certificate rejected: {reason.getErrorMessage()} "
                    f"(master {self.where}); not connecting, will retry")
        else:
            log.msg(f"TLS: handshake with the master {self.where} failed: "
                    f"{reason.getErrorMessage() or reason.type.__name__}; will retry")
        ready.errback(reason)

    def _cancel_timer(self) -> None:
        if self._timer is not None and self._timer.active():
            self._timer.cancel()
        self._timer = None


class _GateFactory(protocol.Factory):
    noisy = False

    def __init__(self, factory: protocol.Factory, ready: defer.Deferred, where: str,
                 reactor: Any) -> None:
        self.factory = factory
        self.ready = ready
        self.where = where
        self.reactor = reactor
        self.gate: _HandshakeGate | None = None

    def buildProtocol(self, addr: Any) -> _HandshakeGate:  # noqa: N802
        self.gate = _HandshakeGate(self.factory, addr, self.ready, self.where, self.reactor)
        return self.gate


@implementer(IStreamClientEndpoint)
class VerifiedTLSEndpoint:
    """TLS over ``wrapped`` (any stream client endpoint: TCP, an HTTP proxy tunnel...),
    whose ``connect()`` fires only after a successful handshake with a verified master."""

    def __init__(self, reactor: Any, creator: Any, wrapped: Any, where: str) -> None:
        self.reactor = reactor
        self.creator = creator
        self.wrapped = wrapped
        self.where = where

    def __repr__(self) -> str:
        return f"<VerifiedTLSEndpoint tls:{self.where}>"

    def connect(self, factory: protocol.Factory) -> defer.Deferred:
        from twisted.protocols.tls import TLSMemoryBIOFactory

        tls_protocol: list[Any] = []
        connecting: defer.Deferred | None = None

        def cancel(d: defer.Deferred) -> None:
            if tls_protocol:
                tls_protocol[0].abortConnection()
            elif connecting is not None:
                connecting.cancel()

        ready: defer.Deferred = defer.Deferred(cancel)
        gate_factory = _GateFactory(factory, ready, self.where, self.reactor)
        connecting = self.wrapped.connect(TLSMemoryBIOFactory(self.creator, True, gate_factory))

        def connected(proto: Any) -> None:
            tls_protocol.append(proto)

        def failed(reason: Failure) -> None:
            if not ready.called:
                ready.errback(reason)

        connecting.addCallbacks(connected, failed)
        return ready


def tls_endpoint(reactor: Any, hostname: str, wrapped: Any, settings: TLSSettings | None,
                 where: str) -> VerifiedTLSEndpoint:
    """A verified TLS endpoint to the master ``hostname`` over ``wrapped``."""
    return VerifiedTLSEndpoint(reactor, MasterConnectionCreator(hostname, settings), wrapped,
                               where)
