"""What a connection says about its protection: the TLS layer under it (version, cipher,
the peer's certificate) and an SSH tunnel it goes through, for status displays and the
connection check.  Works on any Twisted protocol or transport, and on frame transports:
their ``.transport`` chain is followed down to the socket."""

from __future__ import annotations

import dataclasses
from typing import Any

from cryptography import x509
from cryptography.hazmat.primitives import hashes
from twisted.internet.interfaces import ISSLTransport

#: Layers followed down a ``.transport`` chain (a frame transport, the negotiating
#: protocol, TLS, an SSH channel...), so a cycle cannot hang us.
MAX_LAYERS = 8


def layers(transport: Any) -> list[Any]:
    """``transport`` and what is under it, outermost first."""
    found = []
    while transport is not None and len(found) < MAX_LAYERS:
        found.append(transport)
        transport = getattr(transport, "transport", None)
    return found


def find_tls(transport: Any) -> Any:
    """The TLS transport under ``transport`` (an ``ISSLTransport``), or None."""
    for layer in layers(transport):
        if ISSLTransport.providedBy(layer):
            return layer
    return None


def colons(digits: str) -> str:
    """``ab12...`` as ``AB:12:...`` (how fingerprints are usually shown)."""
    return ":".join(digits[i:i + 2] for i in range(0, len(digits), 2)).upper()


@dataclasses.dataclass(frozen=True)
class TLSDetails:
    """The negotiated TLS parameters of one connection."""

    version: str
    cipher: str
    #: The other end's certificate (None if it sent none).
    peer_certificate: x509.Certificate | None = None

    @property
    def fingerprint(self) -> str | None:
        """SHA-256 fingerprint of the peer's certificate, ``AB:CD:...``."""
        if self.peer_certificate is None:
            return None
        return colons(self.peer_certificate.fingerprint(hashes.SHA256()).hex())

    def describe(self) -> str:
        return f"TLS ({self.version}, {self.cipher})"


def tls_details(transport: Any) -> TLSDetails | None:
    """The TLS parameters under ``transport``, or None if it has no TLS (or it is gone)."""
    tls = find_tls(transport)
    if tls is None:
        return None
    try:
        handle = tls.getHandle()
        version = handle.get_protocol_version_name()
        cipher = handle.get_cipher_name()
        cert = tls.getPeerCertificate()
    except Exception:  # the connection is gone, or not a pyOpenSSL one
        return None
    return TLSDetails(str(version or "TLS"), str(cipher or "?"),
                      None if cert is None else cert.to_cryptography())


def ssh_tunnel(transport: Any) -> str | None:
    """The SSH server (``user@host:port``) whose tunnel the connection goes through, or
    None: a tunnel channel's peer address says ``via`` which server it is."""
    for layer in layers(transport):
        try:
            via = getattr(layer.getPeer(), "via", None)
        except Exception:
            continue
        if via:
            return str(via)
    return None


def describe(transport: Any, encrypted: bool = False) -> str:
    """How the connection under ``transport`` is protected, for people: ``TLS (TLSv1.3,
    TLS_AES_256_GCM_SHA384)``, ``SSH tunnel (bb@host:22)``, ``SSH tunnel (bb@host:22) +
    TLS (...)``, ``none``...  ``encrypted``: the transport says it is, though no TLS layer
    shows."""
    tls = tls_details(transport)
    tunnel = ssh_tunnel(transport)
    if tunnel:
        return f"SSH tunnel ({tunnel})" + (f" + {tls.describe()}" if tls is not None else "")
    if tls is not None:
        return tls.describe()
    return "encrypted" if encrypted else "none"
