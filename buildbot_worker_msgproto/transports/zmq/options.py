"""The options of the zmq transport on each side, checked, with their defaults
(docs/transports/zmq.rst); the CURVE options are :mod:`buildbot_worker_msgproto.security.curve`'s.
"""

from __future__ import annotations

from typing import Any

from buildbot_worker_msgproto.security import curve
from buildbot_worker_msgproto.transports.base import TransportGuarantees
from buildbot_worker_msgproto.transports.messaging import plain_guarantees
from buildbot_worker_msgproto.transports.stream import DEFAULT_BACKLOG

#: Messages ZeroMQ queues per peer and direction before ``EAGAIN`` (libzmq's own default).
DEFAULT_SNDHWM = 1000
DEFAULT_RCVHWM = 1000
#: ``ZMQ_MAXMSGSIZE``: ZeroMQ drops a connection that sends a larger message before
#: buffering it.  Four times the protocol's default ``max_frame_size`` (16 MiB).
DEFAULT_MAX_MESSAGE_SIZE = 64 * 1024 * 1024
#: Milliseconds a closing transport may take to flush queued frames (also ``ZMQ_LINGER``).
DEFAULT_LINGER = 1000

DEFAULTS = {"sndhwm": DEFAULT_SNDHWM, "rcvhwm": DEFAULT_RCVHWM,
            "max_message_size": DEFAULT_MAX_MESSAGE_SIZE, "linger": DEFAULT_LINGER,
            "backlog": DEFAULT_BACKLOG}
MASTER_OPTIONS = frozenset({"endpoint", "port", "interface", *DEFAULTS, *curve.MASTER_OPTIONS})
WORKER_OPTIONS = frozenset({"sndhwm", "rcvhwm", "max_message_size", "linger",
                            *curve.WORKER_OPTIONS})


def _values(options: dict[str, Any], allowed: frozenset[str], side: str) -> dict[str, int]:
    """The integer options with their defaults, checked (the worker CLI gives strings)."""
    unknown = set(options) - allowed
    if unknown:
        raise ValueError(f"unknown zmq {side} options {sorted(unknown)}; "
                         f"known: {', '.join(sorted(allowed))}")
    values = dict(DEFAULTS)
    for key in values:
        if key in options:
            try:
                values[key] = int(options[key])
            except (TypeError, ValueError):
                raise ValueError(f"zmq option {key!r} must be an integer, "
                                 f"got {options[key]!r}") from None
    for key in ("sndhwm", "rcvhwm", "linger", "backlog"):
        if values[key] < 0:
            raise ValueError(f"zmq option {key!r} must not be negative")
    if values["max_message_size"] == 0 or values["max_message_size"] < -1:
        raise ValueError("zmq option 'max_message_size' must be positive (or -1: no limit)")
    return values


def master_values(options: dict[str, Any]) -> dict[str, int]:
    """The master's integer options, defaults filled in."""
    return _values(options, MASTER_OPTIONS, "master")


def worker_values(options: dict[str, Any]) -> dict[str, int]:
    """The worker's integer options, defaults filled in."""
    return _values(options, WORKER_OPTIONS, "worker")


def guarantees(values: dict[str, int], encrypted: bool) -> TransportGuarantees:
    """What a zmq transport with these options guarantees: frames up to
    ``max_message_size`` (ZeroMQ drops the connection of a larger one)."""
    size = values["max_message_size"]
    return plain_guarantees(size if size > 0 else None, encrypted)


def bind_endpoint(options: dict[str, Any]) -> str:
    """The ZeroMQ endpoint the master binds: ``endpoint``, or tcp on ``interface:port``."""
    if "endpoint" in options:
        return options["endpoint"]
    interface = str(options.get("interface", "*"))
    if ":" in interface and not interface.startswith("["):
        interface = f"[{interface}]"
    return f"tcp://{interface}:{options['port'] or '*'}"


def host_port(endpoint: str) -> str:
    """``host:port`` of a ``tcp://`` ZeroMQ endpoint (other kinds as they are)."""
    if not endpoint.startswith("tcp://"):
        return endpoint
    host, _, port = endpoint[len("tcp://"):].rpartition(":")
    return f"{host.strip('[]')}:{port}"


def validate_options(options: dict[str, Any]) -> None:
    """Master side: ``endpoint`` (a ZeroMQ endpoint) or ``port`` (and ``interface``), plus
    ``sndhwm``, ``rcvhwm``, ``max_message_size``, ``linger`` and ``backlog``, and for CURVE
    both ``curve_secret_key`` and ``curve_authorized_keys`` (the files are read here)."""
    master_values(options)
    curve.master_curve(options)
    if ("endpoint" in options) == ("port" in options):
        raise ValueError("the zmq transport needs exactly one of 'endpoint' "
                         "(e.g. 'tcp://*:9990') and 'port' (with optional 'interface')")
    if "endpoint" in options:
        if not isinstance(options["endpoint"], str) or "://" not in options["endpoint"]:
            raise ValueError("zmq 'endpoint' must be a ZeroMQ endpoint, e.g. 'tcp://*:9990'")
        if "interface" in options:
            raise ValueError("zmq 'interface' goes with 'port', not with 'endpoint'")
    elif isinstance(options["port"], bool) or not isinstance(options["port"], int):
        raise ValueError("zmq 'port' must be an int (0: any free port)")
