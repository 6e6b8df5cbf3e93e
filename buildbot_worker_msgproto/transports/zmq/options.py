"""The options of the zmq transport on each side, declared with their defaults
(docs/transports/zmq.rst); the CURVE keys are read by
:mod:`buildbot_worker_msgproto.security.curve`.
"""

from __future__ import annotations

import dataclasses

from buildbot_worker_msgproto.security import curve
from buildbot_worker_msgproto.transports.base import TransportGuarantees
from buildbot_worker_msgproto.transports.messaging import plain_guarantees
from buildbot_worker_msgproto.transports.options import TransportOptions
from buildbot_worker_msgproto.transports.options import option
from buildbot_worker_msgproto.transports.stream import DEFAULT_BACKLOG

#: Messages ZeroMQ queues per peer and direction before ``EAGAIN`` (libzmq's own default).
DEFAULT_SNDHWM = 1000
DEFAULT_RCVHWM = 1000
#: ``ZMQ_MAXMSGSIZE``: ZeroMQ drops a connection that sends a larger message before
#: buffering it.  Four times the protocol's default ``max_frame_size`` (16 MiB).
DEFAULT_MAX_MESSAGE_SIZE = 64 * 1024 * 1024
#: Milliseconds a closing transport may take to flush queued frames (also ``ZMQ_LINGER``).
DEFAULT_LINGER = 1000


@dataclasses.dataclass(frozen=True)
class ZmqSocketOptions(TransportOptions):
    """The socket options both sides have (the master's apply to every worker's peer)."""

    sndhwm: int = option(
        DEFAULT_SNDHWM, minimum=0,
        doc="``ZMQ_SNDHWM``: messages queued in ZeroMQ **per peer** towards it (``0``: no "
            "limit, not recommended).")
    rcvhwm: int = option(
        DEFAULT_RCVHWM, minimum=0,
        doc="``ZMQ_RCVHWM``: messages queued in ZeroMQ **per peer** from it.")
    max_message_size: int = option(
        DEFAULT_MAX_MESSAGE_SIZE, minimum=-1, default_doc="``67108864`` (64 MiB)",
        doc="``ZMQ_MAXMSGSIZE``: largest message ZeroMQ accepts; ``-1``: no limit.")
    linger: int = option(
        DEFAULT_LINGER, minimum=0,
        doc="Milliseconds a closing transport (and a closed socket, ``ZMQ_LINGER``) may "
            "take to send what is still queued.")

    def check(self) -> None:
        super().check()
        if self.max_message_size == 0:
            raise self.error("max_message_size", "must be positive (or -1: no limit)")

    def guarantees(self, encrypted: bool) -> TransportGuarantees:
        """What a zmq transport with these options guarantees: frames up to
        ``max_message_size`` (ZeroMQ drops the connection of a larger one)."""
        size = self.max_message_size
        return plain_guarantees(size if size > 0 else None, encrypted)


@dataclasses.dataclass(frozen=True)
class ZmqWorkerOptions(ZmqSocketOptions):
    """The worker's DEALER socket; CURVE with both keys."""

    label = "zmq worker"

    curve_secret_key: str | None = option(
        None, default_doc="(none: no CURVE)",
        doc="Path of the worker's CURVE secret key file (``zmq.auth`` format, e.g. "
            "``gen-keys``' ``curve/worker-NAME.key_secret``); the public key is read from "
            "it too.  Needs ``curve_server_key``.")
    curve_server_key: str | None = option(
        None, default_doc="(none: no CURVE)",
        doc="Path of the master's CURVE public key file (``curve/master.key``).  Needs "
            "``curve_secret_key``.")

    def check(self) -> None:
        super().check()
        self.curve_keys()  # read the keys now: a clear error at startup

    def curve_keys(self) -> curve.CurveKeys | None:
        """The worker's key pair and the master's public key (files read now), or None."""
        return curve.worker_curve(self.curve_secret_key, self.curve_server_key)


@dataclasses.dataclass(frozen=True)
class ZmqMasterOptions(ZmqSocketOptions):
    """The master's ROUTER socket: where it binds, its backlog; CURVE with both keys."""

    label = "zmq master"

    port: int | None = option(
        None, minimum=0, text=False, default_doc="(required, or ``endpoint``)",
        doc="TCP port of the ROUTER socket (``0`` binds any free port).")
    interface: str | None = option(
        None, default_doc="``'*'`` (all)",
        doc="Address to bind with ``port``, e.g. ``'127.0.0.1'`` or ``'::1'``.")
    endpoint: str | None = option(
        None, default_doc="(instead of ``port``)",
        doc="Any ZeroMQ bind endpoint, e.g. ``'tcp://10.0.0.5:9992'`` or "
            "``'ipc:///run/bb.sock'``.  Exactly one of ``port`` and ``endpoint`` must be "
            "given.")
    backlog: int = option(
        DEFAULT_BACKLOG, minimum=0,
        doc="``ZMQ_BACKLOG`` of the listening TCP socket, as for the other transports.")
    curve_secret_key: str | None = option(
        None, default_doc="(none: no CURVE)",
        doc="Path of the master's CURVE secret key file (``zmq.auth`` format, e.g. "
            "``gen-keys``' ``curve/master.key_secret``); the public key is read from it "
            "too.  Needs ``curve_authorized_keys``.")
    curve_authorized_keys: str | None = option(
        None, default_doc="(none: no CURVE)",
        doc="Directory of the authorized workers' CURVE public key files (``*.key``, e.g. "
            "``gen-keys``' ``curve/workers/``).  Needs ``curve_secret_key``.")

    def check(self) -> None:
        super().check()
        if (self.endpoint is None) == (self.port is None):
            raise ValueError("the zmq transport needs exactly one of 'endpoint' "
                             "(e.g. 'tcp://*:9990') and 'port' (with optional 'interface')")
        if self.endpoint is not None:
            if "://" not in self.endpoint:
                raise self.error("endpoint", "must be a ZeroMQ endpoint, e.g. 'tcp://*:9990'")
            if self.interface is not None:
                raise self.error("interface", "goes with 'port', not with 'endpoint'")
        self.curve_keys()  # read the keys now: a clear error when the configuration is loaded

    def curve_keys(self) -> tuple[curve.CurveKeys, str] | None:
        """The master's key pair and the directory of authorized worker keys (files read
        now), or None."""
        return curve.master_curve(self.curve_secret_key, self.curve_authorized_keys)

    def bind_endpoint(self) -> str:
        """The ZeroMQ endpoint to bind: ``endpoint``, or tcp on ``interface:port``."""
        if self.endpoint is not None:
            return self.endpoint
        interface = self.interface or "*"
        if ":" in interface and not interface.startswith("["):
            interface = f"[{interface}]"
        return f"tcp://{interface}:{self.port or '*'}"


def host_port(endpoint: str) -> str:
    """``host:port`` of a ``tcp://`` ZeroMQ endpoint (other kinds as they are)."""
    if not endpoint.startswith("tcp://"):
        return endpoint
    host, _, port = endpoint[len("tcp://"):].rpartition(":")
    return f"{host.strip('[]')}:{port}"
