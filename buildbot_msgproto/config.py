"""Parsing and validation of ``c['protocols']['msg']``."""

from __future__ import annotations

import dataclasses
from typing import Any

from buildbot_msgproto.liveness import DEFAULT_MASTER_TIMEOUT
from buildbot_msgproto.ownership import DEFAULT_LEASE_SECONDS
from buildbot_msgproto.throttle import DEFAULT_FAILURES_BEFORE_THROTTLE
from buildbot_msgproto.throttle import DEFAULT_THROTTLE_SECONDS
from buildbot_worker_msgproto.protocol.limits import DEFAULT_LIMITS
from buildbot_worker_msgproto.protocol.limits import Limits
from buildbot_worker_msgproto.transports import registry
from buildbot_worker_msgproto.transports.options import TransportOptions

#: Listen backlog: Twisted's default of 50 left 25-50 % of 200 PB workers hanging in a
#: measured connection burst.  The kernel caps it at net.core.somaxconn.
DEFAULT_BACKLOG = 4096

#: Keys of c['protocols']['msg'] that map onto :class:`Limits` fields: every field.
LIMIT_KEYS = tuple(field.name for field in dataclasses.fields(Limits))

#: Keys of c['protocols']['msg'] for the failed-login throttle (ListenerOptions fields).
THROTTLE_KEYS = ("login_failures_before_throttle", "login_throttle_seconds")

#: Worker leases across masters (docs/multimaster.rst); on with c['multiMaster'] only.
LEASE_KEY = "lease_seconds"
#: Seconds after which a master that renews nothing is declared dead (several masters).
MASTER_TIMEOUT_KEY = "master_timeout"

#: Seconds between the ``keepalive`` requests that measure a worker's round-trip time for
#: the web UI (``rtt_probe_interval``; 0: no measuring).
DEFAULT_RTT_PROBE_INTERVAL = 60.0

#: Keys of c['protocols']['msg'] for the connection status and connection checks.
STATUS_KEYS = ("rtt_probe_interval", "check_reveals_unknown_workers")

#: Keys of c['protocols']['msg'] for TLS built in code and mutual TLS (docs/security/mtls.rst).
TLS_KEYS = ("tls_cert", "tls_key", "tls_client_ca", "client_certificates")


class MsgProtocolConfigError(ValueError):
    """c['protocols']['msg'] is not valid."""


@dataclasses.dataclass(frozen=True)
class ListenerOptions:
    """The options of one msg listening port."""

    port: str | int
    backlog: int = DEFAULT_BACKLOG
    serve_pb: bool = True
    limits: Limits = DEFAULT_LIMITS
    #: Further transports: (backend name, its parsed master options), sorted by name (the
    #: negotiated TCP port is ``port``).
    transports: tuple[tuple[str, TransportOptions], ...] = ()
    #: Failed logins of one worker name from one host before that host is refused for
    #: that name (see :mod:`buildbot_msgproto.throttle` for the policy).
    login_failures_before_throttle: int = DEFAULT_FAILURES_BEFORE_THROTTLE
    #: First refusal period in seconds; doubles per further failure (capped); 0 disables.
    login_throttle_seconds: float = DEFAULT_THROTTLE_SECONDS
    #: TLS on the negotiated port, built in code (PEM paths); None: as ``port`` says.
    tls_cert: str | None = None
    tls_key: str | None = None
    tls_client_ca: str | None = None
    #: 'off' | 'optional' | 'required' (see :mod:`buildbot_msgproto.client_certs`).
    client_certificates: str = "off"
    #: Seconds of a worker's lease in the shared database with several masters (0: off).
    lease_seconds: float = DEFAULT_LEASE_SECONDS
    #: Seconds without renewal after which a master is declared dead (0: Buildbot's own).
    master_timeout: float = DEFAULT_MASTER_TIMEOUT
    #: Seconds between round-trip measurements of each worker (0: none).
    rtt_probe_interval: float = DEFAULT_RTT_PROBE_INTERVAL
    #: A connection check of a worker name this master does not know is told so
    #: (``unknown_worker``) instead of getting the decoy challenge of a login.
    check_reveals_unknown_workers: bool = False

    def transport_options(self) -> dict[str, TransportOptions]:
        return dict(self.transports)


#: The last ``c['protocols']['msg']`` parsed, a copy of it, and the result.
_last_parsed: tuple[Any, dict[str, Any], ListenerOptions] | None = None


def parse_options_once(options: dict[str, Any]) -> ListenerOptions:
    """:func:`parse_options`, parsing each configuration's options once: every
    ``MsgWorker`` of a (re)configuration passes the same dict (with 2,000 workers, parsing
    it for each was a tenth of the master's start-up CPU)."""
    global _last_parsed
    last = _last_parsed
    if last is not None and last[0] is options and last[1] == options:
        return last[2]
    parsed = parse_options(options)
    _last_parsed = (options, dict(options), parsed)
    return parsed


def parse_options(options: dict[str, Any]) -> ListenerOptions:
    """Validate ``c['protocols']['msg']``; raise MsgProtocolConfigError with a clear message."""
    where = "c['protocols']['msg']"
    if not isinstance(options, dict):
        raise MsgProtocolConfigError(f"{where} must be a dict")
    known = {"port", "backlog", "pb", "transports", LEASE_KEY, MASTER_TIMEOUT_KEY,
             *LIMIT_KEYS, *THROTTLE_KEYS, *TLS_KEYS, *STATUS_KEYS}
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
    lease_seconds = _seconds(options, LEASE_KEY, DEFAULT_LEASE_SECONDS, where)
    master_timeout = _seconds(options, MASTER_TIMEOUT_KEY, DEFAULT_MASTER_TIMEOUT, where)
    if 0 < master_timeout < 2 * lease_seconds:
        raise MsgProtocolConfigError(
            f"{where}[{MASTER_TIMEOUT_KEY!r}] must be at least twice {LEASE_KEY!r}: a master "
            "must not be declared dead before its workers could move")
    rtt_interval = _seconds(options, "rtt_probe_interval", DEFAULT_RTT_PROBE_INTERVAL, where)
    reveal = options.get("check_reveals_unknown_workers", False)
    if not isinstance(reveal, bool):
        raise MsgProtocolConfigError(
            f"{where}['check_reveals_unknown_workers'] must be True or False")
    transports = options.get("transports", {})
    if not isinstance(transports, dict):
        raise MsgProtocolConfigError(f"{where}['transports'] must be a dict of name -> options")
    parsed: list[tuple[str, TransportOptions]] = []
    for name, transport_options in sorted(transports.items()):
        if name == "tcp":
            raise MsgProtocolConfigError(f"{where}['transports']: tcp is configured by "
                                         f"{where}['port']")
        if not isinstance(transport_options, dict):
            raise MsgProtocolConfigError(f"{where}['transports'][{name!r}] must be a dict")
        try:
            parsed.append((name, registry.load(name).MasterOptions.parse(transport_options)))
        except (ValueError, ImportError) as e:
            raise MsgProtocolConfigError(f"{where}['transports'][{name!r}]: {e}") from e
    tls = _parse_tls(options, port, parsed, where)
    return ListenerOptions(port=port, backlog=backlog, serve_pb=serve_pb, limits=limits,
                           transports=tuple(parsed),
                           login_failures_before_throttle=failures,
                           login_throttle_seconds=float(throttle_seconds),
                           lease_seconds=lease_seconds, master_timeout=master_timeout,
                           rtt_probe_interval=rtt_interval,
                           check_reveals_unknown_workers=reveal, **tls)


def _seconds(options: dict[str, Any], key: str, default: float, where: str) -> float:
    value = options.get(key, default)
    if (not isinstance(value, (int, float)) or isinstance(value, bool)
            or not 0 <= value < float("inf")):
        raise MsgProtocolConfigError(
            f"{where}[{key!r}] must be a number of seconds >= 0 (0 turns it off)")
    return float(value)


def _parse_tls(options: dict[str, Any], port: str | int,
               transports: list[tuple[str, TransportOptions]], where: str) -> dict[str, Any]:
    """The TLS keys of ListenerOptions; the files are loaded here to report problems early."""
    from buildbot_msgproto import client_certs

    mode = options.get("client_certificates", client_certs.OFF)
    if mode not in client_certs.MODES:
        raise MsgProtocolConfigError(
            f"{where}['client_certificates'] must be one of {list(client_certs.MODES)}")
    paths = {}
    for key in ("tls_cert", "tls_key", "tls_client_ca"):
        value = options.get(key)
        if value is not None and (not isinstance(value, str) or not value):
            raise MsgProtocolConfigError(f"{where}[{key!r}] must be the path of a PEM file")
        paths[key] = value
    tls_transports = [name for name, transport in transports if transport.tls]
    if paths["tls_cert"] is None:
        if tls_transports:
            raise MsgProtocolConfigError(
                f"{where}['transports']: 'tls': True ({', '.join(tls_transports)}) uses the "
                f"master's TLS certificate: set {where}['tls_cert']")
        if mode != client_certs.OFF or paths["tls_key"] or paths["tls_client_ca"]:
            raise MsgProtocolConfigError(
                f"{where}: tls_key, tls_client_ca and client_certificates need 'tls_cert' "
                "(Twisted's ssl: strport cannot ask for client certificates)")
        return {}
    if isinstance(port, str) and ":" in port and port.split(":", 1)[0] not in ("tcp", "tcp6"):
        raise MsgProtocolConfigError(
            f"{where}: with 'tls_cert' the 'port' must be an int or a tcp:/tcp6: strport "
            "(the master adds TLS itself)")
    if paths["tls_client_ca"] and mode == client_certs.OFF:
        raise MsgProtocolConfigError(
            f"{where}['tls_client_ca'] is only used with client_certificates "
            "'optional' or 'required'")
    without = [name for name, _ in transports if name not in tls_transports]
    if mode == client_certs.REQUIRED and without:
        raise MsgProtocolConfigError(
            f"{where}: client_certificates='required', but the transports "
            f"{', '.join(without)} cannot ask for client certificates: give them 'tls': True "
            "(amp, websocket) or remove them, or use 'optional'")
    try:
        client_certs.server_tls_options(paths["tls_cert"], paths["tls_key"],
                                        paths["tls_client_ca"], mode)
    except ValueError as e:
        raise MsgProtocolConfigError(f"{where}: {e}") from e
    return {**paths, "client_certificates": mode}


def normalize_portstr(port: str | int, backlog: int) -> str:
    """A strport for ``port``, with our backlog added to tcp/ssl ports that set none."""
    portstr = f"tcp:{port}" if isinstance(port, int) or ":" not in port else port
    kind = portstr.split(":", 1)[0]
    if kind in ("tcp", "ssl", "tcp6") and "backlog=" not in portstr:
        portstr += f":backlog={backlog}"
    return portstr
