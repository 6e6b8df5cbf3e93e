"""The exit code and one-line diagnosis of a connection check's report."""

from __future__ import annotations

import enum
from typing import Any

from twisted.internet import error as net_error

from buildbot_worker_msgproto.protocol.codes import CloseCode
from buildbot_worker_msgproto.reach.http_proxy import ProxyError
from buildbot_worker_msgproto.reach.tls import CertificateRejected


class Outcome(enum.IntEnum):
    """The exit codes of ``check-connection``: one per common failure."""

    OK = 0
    #: Bad options, or a worker directory that cannot be read (before any connection).
    USAGE = 1
    NAME_RESOLUTION = 10
    CONNECTION_REFUSED = 11
    TIMEOUT = 12
    PROXY_REFUSED = 13
    TLS_VERIFICATION = 14
    SSH_HOST_KEY = 15
    #: The SSH server cannot be reached, refuses the login or the tunnel.
    SSH_REFUSED = 16
    WRONG_PASSWORD = 20
    UNKNOWN_WORKER = 21
    PB_ONLY = 22
    #: The master speaks msg but not connection checks (an older buildbot-msgproto).
    MASTER_TOO_OLD = 23
    #: The master refused the worker for another reason (certificate, throttle, owner...).
    REFUSED = 24
    #: The master could not prove it knows the password (an impostor, a wrong master).
    MASTER_NOT_AUTHENTICATED = 25
    #: amqp: the broker refuses a second session of the worker's broker user (its queue
    #: is exclusive): the worker runs; the broker login worked.
    QUEUE_IN_USE = 26
    #: Anything else (connection lost, protocol error, TLS handshake error...).
    FAILED = 30


_REFUSALS = {
    CloseCode.CERTIFICATE_REQUIRED: "the master requires a TLS client certificate",
    CloseCode.CERTIFICATE_MISMATCH: "the TLS client certificate does not name this worker",
    CloseCode.UNSUPPORTED_AUTH: "the master does not accept this way of logging in",
    CloseCode.LOGIN_THROTTLED: "too many failed logins from this host",
    CloseCode.NOT_OWNER: "another master owns this worker now",
    CloseCode.UNSUPPORTED_VERSION: "no protocol version in common",
    CloseCode.SHUTDOWN: "the master is shutting down",
}


def diagnose(report: Any) -> tuple[Outcome, str]:
    """(exit code, one-line diagnosis) of a :class:`~.probe.Report`."""
    where = report.where
    if report.authenticated:
        return Outcome.OK, (f"worker {report.worker!r} authenticated at {where}; not "
                            "attached (a check never is)")
    if report.offered is not None:
        dialects = ", ".join(d.decode("ascii", "replace") for d in report.offered)
        return Outcome.PB_ONLY, (
            f"the master at {where} offers only PB (dialects: {dialects}): it does not run "
            "buildbot-msgproto, or has no c['protocols']['msg'] on this port; a worker "
            "with protocol 'msg' falls back to PB there")
    if report.timed_out is not None:
        return Outcome.TIMEOUT, (f"no answer within {report.timeout:g} s while "
                                 f"{report.timed_out} ({where}): a firewall dropping packets, "
                                 "a wrong host or port, or a master too busy")
    if report.close_code is not None:
        return _closed(report)
    return _connect_failure(report)


def _closed(report: Any) -> tuple[Outcome, str]:
    code, reason, name = report.close_code, report.close_reason, report.worker
    if code == CloseCode.AUTHENTICATION_FAILED:
        return Outcome.WRONG_PASSWORD, (
            f"the master refused worker {name!r}: wrong password, or the master does not "
            f"know {name!r} (a master tells the two apart to checks only with "
            "check_reveals_unknown_workers)")
    if code == CloseCode.UNKNOWN_WORKER:
        return Outcome.UNKNOWN_WORKER, (f"the master does not know worker {name!r}: it is "
                                        "not a MsgWorker of its c['workers']")
    if code == CloseCode.UNKNOWN_TYPE and "'check'" in reason:
        return Outcome.MASTER_TOO_OLD, (
            "the master speaks msg but not connection checks (an older buildbot-msgproto): "
            "the network, TLS and the dialect are fine; authentication was not tried, "
            "so as not to attach this worker")
    if code == CloseCode.MASTER_NOT_AUTHENTICATED:
        return Outcome.MASTER_NOT_AUTHENTICATED, (
            f"the master could not prove it knows worker {name!r}'s password: it is not "
            f"the master this password belongs to (a wrong master, or a man in the middle): "
            f"{reason}")
    if code in _REFUSALS:
        return Outcome.REFUSED, f"the master refused the worker: {_REFUSALS[code]} ({reason})"
    return Outcome.FAILED, f"the session ended before authentication: {code}: {reason}"


def _connect_failure(report: Any) -> tuple[Outcome, str]:
    failure = report.failure
    where = report.where
    if failure is None:
        return Outcome.FAILED, (f"the connection to {where} ended before authentication "
                                f"({report.lost_reason or 'no reason given'})")
    value = failure.value
    text = failure.getErrorMessage() or type(value).__name__
    ssh = _ssh_errors()
    if failure.check(net_error.DNSLookupError):
        return Outcome.NAME_RESOLUTION, (f"cannot resolve the host name of {where}: check "
                                         "the master (or proxy) host name")
    if failure.check(net_error.ConnectionRefusedError, ConnectionRefusedError):
        return Outcome.CONNECTION_REFUSED, (f"connection refused by {where}: nothing "
                                            "listens there; check the port and that the "
                                            "master runs")
    if failure.check(net_error.TimeoutError, net_error.TCPTimedOutError):
        return Outcome.TIMEOUT, (f"no answer from {where} within {report.timeout:g} s "
                                 "while connecting: a firewall dropping packets, or a wrong "
                                 "host")
    if "RESOURCE_LOCKED" in text:
        return Outcome.QUEUE_IN_USE, (
            f"the broker at {where} accepted the login but refuses a second session of "
            "this broker user: its queue is in use, by the running worker; stop the worker "
            "to check its msg login (a check never takes its place)")
    if failure.check(ProxyError):
        return Outcome.PROXY_REFUSED, f"the HTTP proxy did not open the tunnel: {text}"
    if failure.check(CertificateRejected):
        return Outcome.TLS_VERIFICATION, f"the master's TLS certificate was rejected: {text}"
    if ssh and failure.check(ssh[0]):
        return Outcome.SSH_HOST_KEY, f"the SSH server is not trusted: {text}"
    if ssh and failure.check(ssh[1]):
        return Outcome.SSH_REFUSED, f"the SSH tunnel failed: {text}"
    return Outcome.FAILED, f"cannot connect to {where}: {text}"


def _ssh_errors() -> tuple[type, type] | None:
    """(host key rejected, any SSH tunnel error), if the ssh extra is installed."""
    try:
        from buildbot_worker_msgproto.reach.ssh_channel import HostKeyRejected
        from buildbot_worker_msgproto.reach.ssh_channel import SSHTunnelError
    except ImportError:
        return None
    return HostKeyRejected, SSHTunnelError
