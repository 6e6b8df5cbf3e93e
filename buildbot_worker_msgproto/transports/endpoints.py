"""Twisted endpoints for stream transports, built the way buildbot-worker builds them."""

from __future__ import annotations

from typing import Any

from buildbot_worker.tunnel import HTTPTunnelEndpoint
from twisted.internet.endpoints import clientFromString
from twisted.internet.endpoints import serverFromString
from twisted.python import log

from buildbot_worker_msgproto.transports.base import ClientTarget


def client_endpoint(reactor: Any, target: ClientTarget) -> Any:
    """The client endpoint for ``target``: connection string, proxy tunnel, or tcp/tls."""
    if target.proxy_connection_string:
        log.msg("Using HTTP tunnel to connect through proxy")
        endpoint = HTTPTunnelEndpoint(target.host, target.port,
                                      clientFromString(reactor, target.proxy_connection_string))
        if target.use_tls:
            from twisted.internet.endpoints import wrapClientTLS
            from twisted.internet.ssl import optionsForClientTLS

            endpoint = wrapClientTLS(optionsForClientTLS(hostname=target.host), endpoint)
        return endpoint
    connection_string = target.connection_string
    if connection_string is None:
        kind = "tls" if target.use_tls else "tcp"
        host = (target.host or "localhost").replace(":", r"\:")
        connection_string = f"{kind}:host={host}:port={target.port}"
    return clientFromString(reactor, connection_string)


def server_endpoint(reactor: Any, port: int | str, backlog: int | None = None) -> Any:
    """A server endpoint from an int port or a strport, with ``backlog`` if none is set."""
    portstr = f"tcp:{port}" if isinstance(port, int) or ":" not in port else port
    if backlog and portstr.split(":", 1)[0] in ("tcp", "ssl", "tcp6") \
            and "backlog=" not in portstr:
        portstr += f":backlog={backlog}"
    return serverFromString(reactor, portstr)


class PortListening:
    """A :class:`~buildbot_worker_msgproto.transports.base.Listening` for a listening port."""

    def __init__(self, kind: str, port: Any) -> None:
        self.kind = kind
        self.port = port

    def stop(self) -> Any:
        return self.port.stopListening()

    def address(self) -> str:
        host = self.port.getHost()
        return f"{self.kind}:{host.host}:{host.port}"

    @property
    def port_number(self) -> int:
        return self.port.getHost().port
