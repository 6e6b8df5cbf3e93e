"""How a TLS certificate names the worker it belongs to (written by ``gen-keys``, checked
by the master's certificate login, docs/security/mtls.rst)."""

from __future__ import annotations

import urllib.parse

from cryptography import x509

#: The subjectAltName URI that binds a worker certificate to a worker name; the name is
#: percent-encoded (UTF-8).  The master should check this, not the CN.
WORKER_URI_PREFIX = "urn:buildbot-msgproto:worker:"


def worker_uri(name: str) -> str:
    """The subjectAltName URI of the worker ``name``'s certificate."""
    return WORKER_URI_PREFIX + urllib.parse.quote(name, safe="")


def worker_names_from_certificate(cert: x509.Certificate) -> list[str]:
    """Worker names a certificate is bound to (from its subjectAltName URIs); for the master.

    The master should accept a TLS client certificate for worker ``W`` only if ``W`` is in
    this list (and the certificate chains to the installation's CA).
    """
    try:
        san = cert.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
    except x509.ExtensionNotFound:
        return []
    return [urllib.parse.unquote(uri[len(WORKER_URI_PREFIX):])
            for uri in san.get_values_for_type(x509.UniformResourceIdentifier)
            if uri.startswith(WORKER_URI_PREFIX)]
