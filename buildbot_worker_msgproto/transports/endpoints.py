"""Twisted endpoints for stream transports, built the way buildbot-worker builds them."""

from __future__ import annotations

from typing import Any
from typing import Callable

from twisted.application.internet import ClientService
from twisted.internet import protocol
from twisted.internet.endpoints import HostnameEndpoint
from twisted.internet.endpoints import clientFromString
from twisted.internet.endpoints import serverFromString
from twisted.python import log

from buildbot_worker_msgproto.transports import tls
from buildbot_worker_msgproto.transports.base import ClientTarget
from buildbot_worker_msgproto.transports.base import ReceiverFactory
from buildbot_worker_msgproto.transports.http_proxy import HTTPConnectEndpoint

#: Listen backlog for stream transports (see buildbot_msgproto.config.DEFAULT_BACKLOG).
DEFAULT_BACKLOG = 4096


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
        from buildbot_worker_msgproto.transports import ssh

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


class ReceiverProtocolFactory(protocol.Factory):
    """Builds ``protocol_class(receiver)`` with a fresh receiver for each connection."""

    noisy = False

    def __init__(self, protocol_class: Any, new_receiver: ReceiverFactory) -> None:
        self.protocol_class = protocol_class
        self.new_receiver = new_receiver

    def buildProtocol(self, addr: Any) -> Any:  # noqa: N802 - Twisted's name
        return self.protocol_class(self.new_receiver())


#: Wraps a server factory, e.g. in the master's TLS layer with client certificates.
FactoryWrapper = Callable[[protocol.Factory], protocol.Factory]

#: The ``tls`` option of stream transports on the master: TLS made by the master from
#: c['protocols']['msg']['tls_cert'] (with client certificates), passed in as a wrapper.
TLS_OPTION = "tls"


def check_tls_option(kind: str, options: dict[str, Any]) -> None:
    """``options['tls']``, if given, must be a bool and go with a plain tcp port."""
    if TLS_OPTION not in options:
        return
    if not isinstance(options[TLS_OPTION], bool):
        raise ValueError(f"{kind} 'tls' must be True or False")
    port = options.get("port")
    if options[TLS_OPTION] and isinstance(port, str) and ":" in port \
            and port.split(":", 1)[0] not in ("tcp", "tcp6"):
        raise ValueError(f"{kind} with 'tls': True needs an int or tcp: port (the master "
                         f"adds TLS itself), not {port!r}")


async def listen_stream(reactor: Any, kind: str, options: dict[str, Any],
                        factory: protocol.Factory,
                        wrap_factory: FactoryWrapper | None = None) -> PortListening:
    """Listen on ``options['port']`` (int or strport) with ``options['backlog']``;
    ``wrap_factory`` (the master's TLS layer) wraps ``factory`` if given."""
    endpoint = server_endpoint(reactor, options["port"],
                               options.get("backlog", DEFAULT_BACKLOG))
    if wrap_factory is not None:
        factory = wrap_factory(factory)
    return PortListening(kind, await endpoint.listen(factory))


def stream_client_service(reactor: Any, target: ClientTarget, factory: protocol.Factory,
                          retry_policy: Any = None) -> ClientService:
    """A reconnecting client of a stream transport (tcp, tls, proxy tunnel...)."""
    return ClientService(client_endpoint(reactor, target), factory, retryPolicy=retry_policy)
