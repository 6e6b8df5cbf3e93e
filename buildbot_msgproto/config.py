"""Parsing and validation of ``c['protocols']['msg']``."""

from __future__ import annotations

import dataclasses
from typing import Any

from buildbot_msgproto.throttle import DEFAULT_FAILURES_BEFORE_THROTTLE
from buildbot_msgproto.throttle import DEFAULT_THROTTLE_SECONDS
from buildbot_worker_msgproto.protocol.limits import DEFAULT_LIMITS
from buildbot_worker_msgproto.protocol.limits import Limits
from buildbot_worker_msgproto.transports import registry

#: Listen backlog: Twisted's default of 50 left 25-50 % of 200 PB workers hanging in a
#: measured connection burst.  The kernel caps it at net.core.somaxconn.
DEFAULT_BACKLOG = 4096

#: Keys of c['protocols']['msg'] that map onto :class:`Limits` fields.
LIMIT_KEYS = ("max_frame_size", "max_handshake_frame_size", "handshake_timeout",
              "heartbeat_interval", "heartbeat_timeout", "auth_iterations", "transfer_window")

#: Keys of c['protocols']['msg'] for the failed-login throttle (ListenerOptions fields).
THROTTLE_KEYS = ("login_failures_before_throttle", "login_throttle_seconds")


class MsgProtocolConfigError(ValueError):
    """c['protocols']['msg'] is not valid."""


@dataclasses.dataclass(frozen=True)
class ListenerOptions:
    """The options of one msg listening port."""

    port: str | int
    backlog: int = DEFAULT_BACKLOG
    serve_pb: bool = True
    limits: Limits = DEFAULT_LIMITS
    #: Further transports: backend name -> its options (the negotiated TCP port is ``port``).
    transports: tuple[tuple[str, tuple[tuple[str, Any], ...]], ...] = ()
    #: Failed logins of one worker name from one host before that host is refused for
    #: that name (see :mod:`buildbot_msgproto.throttle` for the policy).
    login_failures_before_throttle: int = DEFAULT_FAILURES_BEFORE_THROTTLE
    #: First refusal period in seconds; doubles per further failure (capped); 0 disables.
    login_throttle_seconds: float = DEFAULT_THROTTLE_SECONDS

    def transport_options(self) -> dict[str, dict[str, Any]]:
        return {name: dict(options) for name, options in self.transports}


def parse_options(options: dict[str, Any]) -> ListenerOptions:
    """Validate ``c['protocols']['msg']``; raise MsgProtocolConfigError with a clear message."""
    where = "c['protocols']['msg']"
    if not isinstance(options, dict):
        raise MsgProtocolConfigError(f"{where} must be a dict")
    known = {"port", "backlog", "pb", "transports", *LIMIT_KEYS, *THROTTLE_KEYS}
    unknown = sorted(set(options) - known)
    if unknown:
        raise MsgProtocolConfigError(
            f"{where} has unknown keys {unknown}; known keys are {sorted(known)}")
    if "port" not in options:
        raise MsgProtocolConfigError(f"{where} needs a 'port' (an int or a Twisted strport)")
    port = options["port"]
    if not isinstance(port, (int, str)) or isinstance(port, bool):
        raise MsgProtocolConfigError(f"{where}['port'] must be an int or a strport string")
    backlog = options.get("backlog", DEFAULT_BACKLOG)
    if not isinstance(backlog, int) or backlog <= 0:
        raise MsgProtocolConfigError(f"{where}['backlog'] must be a positive int")
    serve_pb = options.get("pb", True)
    if not isinstance(serve_pb, bool):
        raise MsgProtocolConfigError(f"{where}['pb'] must be True or False")
    try:
        limits = DEFAULT_LIMITS.replace(**{k: options[k] for k in LIMIT_KEYS if k in options})
    except (TypeError, ValueError) as e:
        raise MsgProtocolConfigError(f"{where}: {e}") from e
    failures = options.get("login_failures_before_throttle", DEFAULT_FAILURES_BEFORE_THROTTLE)
    if not isinstance(failures, int) or isinstance(failures, bool) or failures < 1:
        raise MsgProtocolConfigError(
            f"{where}['login_failures_before_throttle'] must be a positive int")
    throttle_seconds = options.get("login_throttle_seconds", DEFAULT_THROTTLE_SECONDS)
    if (not isinstance(throttle_seconds, (int, float)) or isinstance(throttle_seconds, bool)
            or not 0 <= throttle_seconds < float("inf")):
        raise MsgProtocolConfigError(
            f"{where}['login_throttle_seconds'] must be a number >= 0 (0 disables it)")
    transports = options.get("transports", {})
    if not isinstance(transports, dict):
        raise MsgProtocolConfigError(f"{where}['transports'] must be a dict of name -> options")
    frozen = []
    for name, transport_options in sorted(transports.items()):
        if name == "tcp":
            raise MsgProtocolConfigError(f"{where}['transports']: tcp is configured by "
                                         f"{where}['port']")
        if not isinstance(transport_options, dict):
            raise MsgProtocolConfigError(f"{where}['transports'][{name!r}] must be a dict")
        try:
            registry.load(name).validate_options(transport_options)
        except (ValueError, ImportError) as e:
            raise MsgProtocolConfigError(f"{where}['transports'][{name!r}]: {e}") from e
        frozen.append((name, tuple(sorted(transport_options.items()))))
    return ListenerOptions(port=port, backlog=backlog, serve_pb=serve_pb, limits=limits,
                           transports=tuple(frozen),
                           login_failures_before_throttle=failures,
                           login_throttle_seconds=float(throttle_seconds))


def normalize_portstr(port: str | int, backlog: int) -> str:
    """A strport for ``port``, with our backlog added to tcp/ssl ports that set none."""
    portstr = f"tcp:{port}" if isinstance(port, int) or ":" not in port else port
    kind = portstr.split(":", 1)[0]
    if kind in ("tcp", "ssl", "tcp6") and "backlog=" not in portstr:
        portstr += f":backlog={backlog}"
    return portstr
