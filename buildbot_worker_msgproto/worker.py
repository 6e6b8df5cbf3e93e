"""The worker service for buildbot.tac: buildbot-worker's Worker, speaking msg by default."""

from __future__ import annotations

import dataclasses
import os
import signal
from typing import Any

from buildbot_worker import pb as worker_pb
from buildbot_worker.base import WorkerBase
from buildbot_worker.compat import unicode2bytes
from twisted.application.internet import ClientService
from twisted.cred import credentials
from twisted.internet import defer
from twisted.internet import reactor
from twisted.python import log

import buildbot_worker_msgproto
from buildbot_worker_msgproto.bot import BotMsg
from buildbot_worker_msgproto.client import MsgClientFactory
from buildbot_worker_msgproto.client import WorkerSessions
from buildbot_worker_msgproto.protocol.codes import CloseCode
from buildbot_worker_msgproto.protocol.limits import DEFAULT_LIMITS
from buildbot_worker_msgproto.protocol.limits import Limits
from buildbot_worker_msgproto.reach.endpoints import client_endpoint
from buildbot_worker_msgproto.reach.failover import FailoverEndpoint
from buildbot_worker_msgproto.reach.failover import MasterList
from buildbot_worker_msgproto.reach.tls import TLSSettings
from buildbot_worker_msgproto.retry import RetryPolicy
from buildbot_worker_msgproto.transports import registry
from buildbot_worker_msgproto.transports.base import ClientTarget

PROTOCOLS = ("msg", "pb")
TRANSPORTS = registry.names()
#: Transports on which the master sees the worker's TLS client certificate, so that it
#: can log in with it instead of a password (AMQP ends TLS at the broker; ZeroMQ uses CURVE).
CERTIFICATE_LOGIN_TRANSPORTS = ("tcp", "amp", "websocket")


def check_certificate_login(protocol: str, transport: str) -> None:
    """Raise ValueError if a worker without password cannot log in this way."""
    if protocol != "msg":
        raise ValueError("a worker without password logs in with its TLS client certificate, "
                         "which needs protocol 'msg' (PB has no certificate login)")
    if transport not in CERTIFICATE_LOGIN_TRANSPORTS:
        raise ValueError(f"certificate login (no password) works over the transports "
                         f"{', '.join(CERTIFICATE_LOGIN_TRANSPORTS)}, not {transport!r}: the "
                         "master cannot see a client certificate there")


class _BotFactory(worker_pb.BotFactory):
    """buildbot-worker's PB factory, telling the retry policy when a PB login worked."""

    def __init__(self, *args: Any, retryPolicy: RetryPolicy) -> None:  # noqa: N803
        super().__init__(*args, retryPolicy=retryPolicy)
        self.retry_policy = retryPolicy

    def gotPerspective(self, perspective: Any) -> None:  # noqa: N802 - Twisted's name
        self.retry_policy.logged_in()
        super().gotPerspective(perspective)


class Worker(worker_pb.Worker):
    """Drop-in for ``buildbot_worker.bot.Worker`` with ``protocol=`` and ``transport=``.

    ``protocol='msg'`` (default) offers the JSON message protocol and falls back to
    PB by itself when the master does not offer it; ``protocol='pb'`` forces PB.
    ``tls_ca_file``, ``tls_fingerprint`` and ``tls_client_cert``/``tls_client_key``
    verify the master's certificate against a CA file or a pinned SHA-256 fingerprint and
    present a client certificate; each implies ``useTls`` (docs/security/tls.rst).
    With ``tls_client_cert`` and no ``passwd`` (None or empty) the worker logs in with its
    certificate alone (docs/security/mtls.rst).
    ``ssh_tunnel='user@host[:port]'`` reaches the master through that SSH server, logging
    in with ``ssh_key`` (private key file(s), default ``~/.ssh/id_ed25519``...) and checking
    its host key against ``ssh_known_hosts`` (default ``~/.ssh/known_hosts``);
    ``buildmaster_host`` and ``port`` are then the master as seen from the SSH server
    (docs/security/ssh.rst).
    ``masters=[(host, port), ...]`` lists several masters of one multi-master
    installation (``buildmaster_host``/``port`` is then the first): the worker tries them
    in ``master_order`` ('preferred': the first when it can; 'shuffle': a random one, then
    where it got in) and moves to the next when one refuses it (docs/multimaster.rst).
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
                 transport: str = "tcp", transport_options: dict[str, Any] | None = None,
                 limits: Limits | None = None, tls_ca_file: str | None = None,
                 tls_fingerprint: str | None = None, tls_client_cert: str | None = None,
                 tls_client_key: str | None = None, ssh_tunnel: str | None = None,
                 ssh_key: str | list[str] | None = None,
                 ssh_known_hosts: str | None = None,
                 masters: list[tuple[str, int]] | None = None,
                 master_order: str = "preferred") -> None:
        if protocol not in PROTOCOLS:
            raise ValueError(f"unknown protocol {protocol!r}; choose one of {PROTOCOLS}")
        if transport not in TRANSPORTS:
            raise ValueError(f"unknown transport {transport!r}; choose one of {TRANSPORTS}")
        if protocol == "pb" and transport != "tcp":
            raise ValueError("protocol='pb' only runs over transport='tcp'")
        assert connection_string is None or (buildmaster_host, port) == (None, None), (
            "If you want to supply a connection string, then set host and port to None")
        assert not (proxy_connection_string and connection_string), (
            "If you want to use HTTP tunneling, then supply build master host and port "
            "rather than a connection string")
        # Checked (and the files read) now: a bad option stops the worker at startup
        # instead of connecting without the verification that was asked for.
        tls_settings = TLSSettings.create(tls_ca_file, tls_fingerprint, tls_client_cert,
                                          tls_client_key)
        if tls_settings is not None and connection_string:
            raise ValueError("tls_ca_file, tls_fingerprint and tls_client_cert need "
                             "buildmaster_host and port, not a connection string")
        certificate_login = not passwd
        if certificate_login:
            if tls_settings is None or not tls_settings.client_cert:
                raise ValueError("a worker needs a password, or a TLS client certificate "
                                 "(tls_client_cert) to log in with instead")
            check_certificate_login(protocol, transport)
        masters = [(str(host), int(master_port)) for host, master_port in masters or ()]
        if masters and connection_string:
            raise ValueError("masters needs host and port pairs, not a connection string")
        if masters and (buildmaster_host, port) == (None, None):
            buildmaster_host, port = masters[0]
        master_list = (MasterList([f"{host}:{master_port}" for host, master_port in masters],
                                  master_order, clock=reactor.seconds)
                       if len(masters) > 1 else None)
        ssh_settings = None
        if ssh_tunnel or ssh_key or ssh_known_hosts:
            from buildbot_worker_msgproto.reach.ssh import SSHSettings

            ssh_settings = SSHSettings.create(ssh_tunnel, ssh_key, ssh_known_hosts)
            if connection_string or proxy_connection_string:
                raise ValueError("ssh_tunnel needs buildmaster_host and port (the master as "
                                 "seen from the SSH server), without connection_string or "
                                 "proxy_connection_string")

        WorkerBase.__init__(self, name, basedir, BotMsg, umask=umask,
                            unicode_encoding=unicode_encoding,
                            delete_leftover_dirs=delete_leftover_dirs)
        self.protocol = protocol
        self.transport = transport
        self.limits = limits or DEFAULT_LIMITS
        self.bot.limits = self.limits
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

        # as buildbot-worker (maxdelay is deprecated there too), growing until a login works
        policy = self.retry_policy = RetryPolicy(maxRetries, reactor.stop,
                                                 clock=reactor.seconds)

        # The PB factory serves protocol='pb' and the automatic fallback of 'msg'.
        encoding = self.bot.unicode_encoding
        self.bf = _BotFactory(buildmaster_host, port, keepalive, maxdelay, retryPolicy=policy)
        self.bf.startLogin(credentials.UsernamePassword(unicode2bytes(name, encoding),
                                                        unicode2bytes(passwd or "", encoding)),
                           client=self.bot)
        self.sessions = WorkerSessions(
            self.bot, name, None if certificate_login else passwd, reactor, self.limits,
            software={"buildbot_worker_msgproto": buildbot_worker_msgproto.__version__},
            retry_policy=policy, masters=master_list)
        target = ClientTarget(host=buildmaster_host, port=port,
                              connection_string=connection_string,
                              use_tls=bool(useTls) or tls_settings is not None,
                              tls=tls_settings, ssh=ssh_settings,
                              proxy_connection_string=proxy_connection_string,
                              options=dict(transport_options or {}, **({"path": path}
                                                                      if path else {})))
        # One reconnecting service for every way of connecting: Twisted's ClientService
        # over a client endpoint (one per master, failing over), waiting
        # retry_policy(attempt) s between attempts.
        if protocol == "pb":
            endpoint_for, factory = client_endpoint, self.bf
        elif transport == "tcp":  # negotiated on the PB port, with automatic PB fallback
            endpoint_for = client_endpoint
            factory = MsgClientFactory(self.sessions, self.bf)
        else:
            backend = registry.load(transport)
            endpoint_for = backend.client_endpoint
            factory = backend.client_factory(reactor, target, self.sessions.new_driver)
        if master_list is None:
            endpoint = endpoint_for(reactor, target)
        else:
            endpoint = FailoverEndpoint(reactor, [
                endpoint_for(reactor, dataclasses.replace(target, host=host, port=master_port))
                for host, master_port in masters], master_list)
        self.addService(ClientService(endpoint, factory, retryPolicy=policy, clock=reactor))

    def gracefulShutdown(self) -> Any:
        """Ask the master to shut this worker down once its builds are finished."""
        driver = self.sessions.active_driver
        if driver is None:
            return super().gracefulShutdown()
        log.msg("Telling the master we want to shutdown after any running builds are finished")
        d = driver.request("request_shutdown")
        d.addErrback(lambda f: log.msg(f"request_shutdown failed: {f.getErrorMessage()}"))
        return d

    @defer.inlineCallbacks
    def stopService(self) -> Any:
        driver = self.sessions.active_driver
        if driver is not None:
            driver.close(CloseCode.SHUTDOWN, "worker stopping")
        # The PB factory only gets stopFactory() if a PB fallback used it; without this
        # its waitForCompleteShutdown() would wait forever.
        self.bf.stopTimers()
        yield super().stopService()
