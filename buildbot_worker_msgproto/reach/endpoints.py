"""The worker's client endpoint to the master, built the way buildbot-worker builds it:
a connection string, or host and port, directly, through an HTTP proxy or an SSH tunnel,
with TLS on top if asked for.  Any stream transport connects through it."""

from __future__ import annotations

from typing import Any

from twisted.internet.endpoints import HostnameEndpoint
from twisted.internet.endpoints import clientFromString
from twisted.python import log

from buildbot_worker_msgproto.reach import tls
from buildbot_worker_msgproto.reach.http_proxy import HTTPConnectEndpoint
from buildbot_worker_msgproto.transports.base import ClientTarget


def client_endpoint(reactor: Any, target: ClientTarget) -> Any:
    """The client endpoint for ``target``: connection string, proxy tunnel, SSH tunnel, or
    tcp/tls.

    TLS to host and port (directly, through the proxy tunnel or through the SSH tunnel)
    verifies the master's certificate as ``target.tls`` says (see :mod:`.tls`); a
    connection string is used as it is (a ``tls:`` one has its own ``trustRoots=``,
    ``certificate=``...).
    """
    use_tls = target.use_tls or target.tls is not None
    if target.ssh is not None:
        check_ssh_target(target)
    if target.connection_string is not None:
        if target.tls is not None:
            raise ValueError(
                "the TLS verification options (CA file, fingerprint, client certificate) "
                "need the master host and port, not a connection string; a tls: connection "
                "string has its own trustRoots=, certificate= and privateKey= options")
        return clientFromString(reactor, target.connection_string)
    host = target.host or "localhost"
    if target.ssh is not None:
        from buildbot_worker_msgproto.reach import ssh

        endpoint = ssh.tunnel_endpoint(reactor, target.ssh, host, target.port)
    elif target.proxy_connection_string:
        log.msg("Using HTTP tunnel to connect through proxy")
        endpoint = HTTPConnectEndpoint(reactor,
                                       clientFromString(reactor, target.proxy_connection_string),
                                       host, target.port)
    elif use_tls:
        endpoint = HostnameEndpoint(reactor, host, target.port)
    else:
        escaped = host.replace(":", r"\:")
        return clientFromString(reactor, f"tcp:host={escaped}:port={target.port}")
    if use_tls:
        endpoint = tls.tls_endpoint(reactor, host, endpoint, target.tls,
                                    f"{host}:{target.port}")
    return endpoint


def check_ssh_target(target: ClientTarget) -> None:
    """Raise ValueError if ``target`` combines an SSH tunnel with what it cannot have."""
    if target.connection_string is not None:
        raise ValueError("an SSH tunnel needs the master host and port (as seen from the SSH "
                         "server), not a connection string")
    if target.proxy_connection_string:
        raise ValueError("an SSH tunnel cannot be combined with an HTTP proxy "
                         "(proxy_connection_string)")
    if not target.port:
        raise ValueError("an SSH tunnel needs the master port")
