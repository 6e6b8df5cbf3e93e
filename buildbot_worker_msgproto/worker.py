"""The worker service for buildbot.tac: buildbot-worker's Worker, speaking msg by default."""

from __future__ import annotations

import os
import signal
from typing import Any

from buildbot_worker import pb as worker_pb
from buildbot_worker.base import WorkerBase
from buildbot_worker.compat import unicode2bytes
from buildbot_worker.tunnel import HTTPTunnelEndpoint
from twisted.application.internet import ClientService
from twisted.application.internet import backoffPolicy
from twisted.cred import credentials
from twisted.internet import defer
from twisted.internet import reactor
from twisted.internet.endpoints import clientFromString
from twisted.python import log

import buildbot_worker_msgproto
from buildbot_worker_msgproto.bot import BotMsg
from buildbot_worker_msgproto.client import MsgClientFactory
from buildbot_worker_msgproto.protocol.limits import DEFAULT_LIMITS
from buildbot_worker_msgproto.protocol.limits import Limits

PROTOCOLS = ("msg", "pb")
TRANSPORTS = ("tcp",)


class Worker(worker_pb.Worker):
    """Drop-in for ``buildbot_worker.bot.Worker`` with ``protocol=`` and ``transport=``.

    ``protocol='msg'`` (default) offers the JSON message protocol and falls back to
    PB by itself when the master does not offer it; ``protocol='pb'`` forces PB.
    Every other argument keeps its buildbot-worker meaning.  ``keepalive`` applies
    to PB; msg sessions use the heartbeat interval the master announces.
    """

    def __init__(self, buildmaster_host: str | None, port: int | None, name: str, passwd: str,
                 basedir: str, keepalive: int | None, keepaliveTimeout: Any = None,  # noqa: N803
                 umask: int | None = None, maxdelay: int | None = None,
                 numcpus: int | None = None, unicode_encoding: str | None = None,
                 protocol: str = "msg", useTls: bool | None = None,  # noqa: N803
                 allow_shutdown: str | None = None, maxRetries: int | None = None,  # noqa: N803
                 connection_string: str | None = None, path: str | None = None,
                 delete_leftover_dirs: bool = False,
                 proxy_connection_string: str | None = None,
                 transport: str = "tcp", limits: Limits | None = None) -> None:
        if protocol not in PROTOCOLS:
            raise ValueError(f"unknown protocol {protocol!r}; choose one of {PROTOCOLS}")
        if transport not in TRANSPORTS:
            raise ValueError(f"unknown transport {transport!r}; choose one of {TRANSPORTS}")
        assert connection_string is None or (buildmaster_host, port) == (None, None), (
            "If you want to supply a connection string, then set host and port to None")
        assert not (proxy_connection_string and connection_string), (
            "If you want to use HTTP tunneling, then supply build master host and port "
            "rather than a connection string")

        WorkerBase.__init__(self, name, basedir, BotMsg, umask=umask,
                            unicode_encoding=unicode_encoding,
                            delete_leftover_dirs=delete_leftover_dirs)
        self.protocol = protocol
        self.transport = transport
        self.limits = limits or DEFAULT_LIMITS
        self.bot.transfer_window = self.limits.transfer_window
        self.numcpus = numcpus
        self.shutdown_loop = None
        if keepalive == 0:
            keepalive = None
        if allow_shutdown == "signal":
            if not hasattr(signal, "SIGHUP"):
                raise ValueError("Can't install signal handler")
        elif allow_shutdown == "file":
            self.shutdown_file = os.path.join(basedir, "shutdown.stamp")
            self.shutdown_mtime = 0
        self.allow_shutdown = allow_shutdown

        backoff = backoffPolicy()  # as buildbot-worker: maxdelay is deprecated there too

        def policy(attempt: int) -> float:
            if maxRetries and attempt >= maxRetries:
                reactor.stop()
            return backoff(attempt)

        # The PB factory serves protocol='pb' and the automatic fallback of 'msg'.
        encoding = self.bot.unicode_encoding
        self.bf = worker_pb.BotFactory(buildmaster_host, port, keepalive, maxdelay,
                                       retryPolicy=policy)
        self.bf.startLogin(credentials.UsernamePassword(unicode2bytes(name, encoding),
                                                        unicode2bytes(passwd, encoding)),
                           client=self.bot)
        self.msg_factory: MsgClientFactory | None = None
        factory: Any = self.bf
        if protocol == "msg":
            factory = self.msg_factory = MsgClientFactory(
                self.bot, name, passwd, self.bf, reactor, self.limits,
                software={"buildbot_worker_msgproto": buildbot_worker_msgproto.__version__})

        endpoint = _make_endpoint(buildmaster_host, port, useTls, connection_string,
                                  proxy_connection_string)
        self.addService(ClientService(endpoint, factory, retryPolicy=policy))

    def gracefulShutdown(self) -> Any:
        """Ask the master to shut this worker down once its builds are finished."""
        driver = self.msg_factory.active_driver if self.msg_factory else None
        if driver is None:
            return super().gracefulShutdown()
        log.msg("Telling the master we want to shutdown after any running builds are finished")
        d = driver.request("request_shutdown")
        d.addErrback(lambda f: log.msg(f"request_shutdown failed: {f.getErrorMessage()}"))
        return d

    @defer.inlineCallbacks
    def stopService(self) -> Any:
        driver = self.msg_factory.active_driver if self.msg_factory else None
        if driver is not None:
            driver.close("shutdown", "worker stopping")
        # The PB factory only gets stopFactory() if a PB fallback used it; without this
        # its waitForCompleteShutdown() would wait forever.
        self.bf.stopTimers()
        yield super().stopService()


def _make_endpoint(host: str | None, port: int | None, use_tls: bool | None,
                   connection_string: str | None, proxy_connection_string: str | None) -> Any:
    """The client endpoint, built exactly as buildbot-worker builds it."""
    if proxy_connection_string:
        log.msg("Using HTTP tunnel to connect through proxy")
        endpoint = HTTPTunnelEndpoint(host, port,
                                      clientFromString(reactor, proxy_connection_string))
        if use_tls:
            from twisted.internet.endpoints import wrapClientTLS
            from twisted.internet.ssl import optionsForClientTLS

            endpoint = wrapClientTLS(optionsForClientTLS(hostname=host), endpoint)
        return endpoint
    if connection_string is None:
        kind = "tls" if use_tls else "tcp"
        connection_string = "{}:host={}:port={}".format(kind, host.replace(":", r"\:"), port)
    return clientFromString(reactor, connection_string)
