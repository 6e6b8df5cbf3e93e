"""Mutual TLS on the master: ask for worker certificates and bind them to worker names.

Twisted's ``ssl:`` server strport cannot ask for (let alone verify) client certificates,
so with ``c['protocols']['msg']['tls_cert']`` the master builds the TLS layer of its
negotiated port itself (:func:`server_tls_options`, :class:`ServerTLSCreator`), over the
plain ``tcp:`` port of ``c['protocols']['msg']['port']``.  OpenSSL verifies a presented
client certificate against ``tls_client_ca`` during the handshake, so a certificate that a
session can see (:func:`peer_certificate`) is a verified one.

The binding rule (:func:`check_binding`): a verified certificate authenticates worker ``W``
only if its subjectAltName holds the URI ``urn:buildbot-msgproto:worker:W`` (what
``gen-keys`` writes, read with :func:`worker_names_from_certificate`).  The CN is *not*
used: it is a free-form attribute without a matching rule, and any certificate the CA ever
issued for another purpose (the master's own, say) has one.  See docs/security/mtls.rst.
"""

from __future__ import annotations

from typing import Any

from cryptography import x509
from twisted.internet import protocol
from twisted.internet.interfaces import IHandshakeListener
from twisted.internet.interfaces import IOpenSSLServerConnectionCreator
from twisted.python import log
from zope.interface import implementer

from buildbot_worker_msgproto.protocol.codes import CloseCode
from buildbot_worker_msgproto.security import tls_info
from buildbot_worker_msgproto.security.certificates import worker_names_from_certificate
from buildbot_worker_msgproto.security.files import read_file
from buildbot_worker_msgproto.transports.base import peer_address

#: Values of ``c['protocols']['msg']['client_certificates']``.
OFF, OPTIONAL, REQUIRED = "off", "optional", "required"
MODES = (OFF, OPTIONAL, REQUIRED)

#: Close codes of a refused session.
CERTIFICATE_MISMATCH = CloseCode.CERTIFICATE_MISMATCH
CERTIFICATE_REQUIRED = CloseCode.CERTIFICATE_REQUIRED

__all__ = ["CERTIFICATE_MISMATCH", "CERTIFICATE_REQUIRED", "MODES", "OFF", "OPTIONAL",
           "REQUIRED", "ServerTLSCreator", "check_binding", "describe", "peer_certificate",
           "refusal", "server_tls_options", "worker_names_from_certificate"]


def server_tls_options(cert_path: str, key_path: str | None, client_ca: str | None,
                       mode: str) -> Any:
    """Twisted ``CertificateOptions`` of the master port: its certificate (the first of
    ``cert_path``, further ones are sent as the chain) and key (``key_path``, or in
    ``cert_path``), and with ``mode`` optional/required, client certificates verified
    against the CAs of the PEM file ``client_ca``.  Raises ValueError with a clear message.
    """
    from twisted.internet.ssl import Certificate
    from twisted.internet.ssl import CertificateOptions
    from twisted.internet.ssl import PrivateCertificate
    from twisted.internet.ssl import trustRootFromCertificates

    if mode not in MODES:
        raise ValueError(f"client_certificates must be one of {', '.join(MODES)}, not {mode!r}")
    cert_data = read_file(cert_path, "TLS certificate")
    try:
        chain = x509.load_pem_x509_certificates(cert_data)
    except ValueError as e:
        raise ValueError(f"no PEM certificate in the TLS certificate {cert_path!r}: {e}") from None
    key_data = read_file(key_path, "TLS key") if key_path else cert_data
    try:
        private = PrivateCertificate.loadPEM(cert_data + b"\n" + key_data)
    except Exception as e:
        raise ValueError(f"cannot load the TLS certificate {cert_path!r} with the key "
                         f"{key_path or cert_path!r}: {e}") from None
    extra = [Certificate.loadPEM(_pem(c)).original for c in chain[1:]]
    kwargs: dict[str, Any] = {"privateKey": private.privateKey.original,
                              "certificate": private.original, "extraCertChain": extra}
    if mode == OFF:
        return CertificateOptions(**kwargs)
    if not client_ca:
        raise ValueError(f"client_certificates={mode!r} needs tls_client_ca (a PEM file of "
                         "the CA(s) that issue worker certificates)")
    try:
        cas = x509.load_pem_x509_certificates(read_file(client_ca, "TLS client CA file"))
    except ValueError as e:
        raise ValueError(f"no PEM certificate in the TLS client CA file {client_ca!r}: "
                         f"{e}") from None
    options = CertificateOptions(
        trustRoot=trustRootFromCertificates([Certificate.loadPEM(_pem(c)) for c in cas]),
        **kwargs)
    # trustRoot makes a client certificate mandatory; 'optional' still verifies one that is
    # presented (VERIFY_PEER) but lets a client without one complete the handshake.
    options.requireCertificate = mode == REQUIRED
    return options


def _pem(cert: x509.Certificate) -> bytes:
    from cryptography.hazmat.primitives import serialization

    return cert.public_bytes(serialization.Encoding.PEM)


@implementer(IOpenSSLServerConnectionCreator)
class ServerTLSCreator:
    """The server connection creator of the port; ``options`` may be replaced on
    reconfiguration (new connections use the new certificates)."""

    def __init__(self, options: Any) -> None:
        self.options = options

    def serverConnectionForTLS(self, tlsProtocol: Any) -> Any:  # noqa: N802, N803
        return self.options.serverConnectionForTLS(tlsProtocol)


@implementer(IHandshakeListener)
class HandshakeLogger(protocol.Protocol):
    """Between the TLS layer and the port's protocol: logs a failed TLS handshake (e.g. a
    worker without the required certificate) with the peer address; otherwise passes
    everything through.  The inner protocol gets the TLS transport itself."""

    def __init__(self, inner: protocol.Protocol) -> None:
        self.inner = inner
        self.handshake_done = False

    def makeConnection(self, transport: Any) -> None:  # noqa: N802
        self.transport = transport
        self.connected = 1
        self.inner.makeConnection(transport)

    def logPrefix(self) -> str:  # noqa: N802 - log lines keep the inner protocol's prefix
        return self.inner.logPrefix()

    def handshakeCompleted(self) -> None:  # noqa: N802
        self.handshake_done = True

    def dataReceived(self, data: bytes) -> None:  # noqa: N802
        self.inner.dataReceived(data)

    def connectionLost(self, reason: Any = protocol.connectionDone) -> None:  # noqa: N802
        self.connected = 0
        if not self.handshake_done:
            log.msg(f"msgproto: TLS handshake with {peer_address(self.transport)} failed: "
                    f"{_reason(reason)}")
        self.inner.connectionLost(reason)


class HandshakeLoggingFactory(protocol.Factory):
    """Wraps the port's factory so that each protocol gets a :class:`HandshakeLogger`."""

    noisy = False

    def __init__(self, wrapped: protocol.Factory) -> None:
        self.wrapped = wrapped

    def buildProtocol(self, addr: Any) -> protocol.Protocol | None:  # noqa: N802
        inner = self.wrapped.buildProtocol(addr)
        return None if inner is None else HandshakeLogger(inner)


def tls_server_factory(creator: ServerTLSCreator, factory: protocol.Factory) -> Any:
    """``factory`` behind a server-side TLS layer made by ``creator``."""
    from twisted.protocols.tls import TLSMemoryBIOFactory

    return TLSMemoryBIOFactory(creator, False, HandshakeLoggingFactory(factory))


def _reason(reason: Any) -> str:
    try:
        text = reason.getErrorMessage()
    except Exception:
        text = str(reason)
    return text or getattr(getattr(reason, "type", None), "__name__", "connection lost")


def peer_certificate(transport: Any) -> x509.Certificate | None:
    """The client certificate of the TLS connection under ``transport`` (a frame transport,
    a Twisted protocol or transport: their ``.transport`` chain is followed), or None."""
    tls = tls_info.find_tls(transport)
    if tls is None:
        return None
    try:
        cert = tls.getPeerCertificate()
    except Exception:
        return None
    return None if cert is None else cert.to_cryptography()


def describe(cert: x509.Certificate) -> str:
    """A short description for log lines: subject and the worker names it carries."""
    names = worker_names_from_certificate(cert)
    return f"{cert.subject.rfc4514_string() or '(empty subject)'}, worker names {names}"


def check_binding(mode: str, cert: x509.Certificate | None,
                  worker_name: str) -> tuple[str, str] | None:
    """None if a session for ``worker_name`` with (verified) ``cert`` may go on, else the
    close ``(code, reason)``.

    With a certificate (whatever ``mode``: a certificate that was verified is never
    ignored), ``worker_name`` must be one of its worker names.  Without one, ``required``
    refuses.
    """
    if cert is None:
        if mode == REQUIRED:
            return (CERTIFICATE_REQUIRED,
                    "this master requires a TLS client certificate for the worker")
        return None
    names = worker_names_from_certificate(cert)
    if worker_name in names:
        return None
    if not names:
        return (CERTIFICATE_MISMATCH,
                "the TLS client certificate names no worker (no subjectAltName URI "
                "urn:buildbot-msgproto:worker:NAME)")
    return (CERTIFICATE_MISMATCH,
            f"the TLS client certificate is not valid for worker {worker_name!r}")


def refusal(mode: str, transport: Any, worker_name: str, peer: str) -> tuple[str, str] | None:
    """:func:`check_binding` for the certificate under ``transport``; a refusal is logged
    with the peer address."""
    cert = peer_certificate(transport)
    refused = check_binding(mode, cert, worker_name)
    if refused is not None:
        what = describe(cert) if cert is not None else "no certificate"
        log.msg(f"msgproto: refusing worker {worker_name!r} from {peer}: {refused[0]}: "
                f"{refused[1]} ({what})")
    return refused
