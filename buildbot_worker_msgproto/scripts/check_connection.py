"""``buildbot-worker-msgproto check-connection``: check a worker's way to its master(s).

Given a worker's BASEDIR (its buildbot.tac is read, nothing is started) or the same
MASTER NAME [PASSWD] and options as ``create-worker``, it does what the worker would do up
to and including authentication, without being attached and without disturbing a
running worker of that name, prints what it found and exits with a code per failure
(:class:`~buildbot_worker_msgproto.check.diagnosis.Outcome`; docs/check-connection.rst).
"""

from __future__ import annotations

import sys
from typing import Any
from typing import TextIO

from twisted.internet import defer
from twisted.internet import task
from twisted.python import log

from buildbot_worker_msgproto.check import probe
from buildbot_worker_msgproto.check.diagnosis import Outcome
from buildbot_worker_msgproto.check.diagnosis import diagnose
from buildbot_worker_msgproto.check.settings import SettingsError
from buildbot_worker_msgproto.check.settings import WorkerSettings
from buildbot_worker_msgproto.check.settings import from_tac
from buildbot_worker_msgproto.check.settings import make_settings
from buildbot_worker_msgproto.security.tls_info import TLSDetails


def settings_from_options(config: Any) -> WorkerSettings:
    """The worker's settings: from BASEDIR's buildbot.tac, or from the options."""
    if config.worker is None:
        return from_tac(config["basedir"])
    config = config.worker
    return make_settings(
        config["host"], config["port"], config["name"], config["passwd"],
        transport=config["transport"], protocol=config["protocol"],
        connection_string=config["connection-string"], use_tls=bool(config["use-tls"]),
        proxy_connection_string=config["proxy-connection-string"],
        transport_options=config["transport-options"], tls_ca_file=config["tls-ca-file"],
        tls_fingerprint=config["tls-fingerprint"], tls_client_cert=config["tls-client-cert"],
        tls_client_key=config["tls-client-key"], ssh_tunnel=config["ssh-tunnel"],
        ssh_key=config["ssh-key"], ssh_known_hosts=config["ssh-known-hosts"],
        masters=config.get("masters") or None)


def _certificate(report: probe.Report) -> str | None:
    cert = report.certificate
    if cert is None:
        return None
    fingerprint = TLSDetails("", "", cert).fingerprint or ""
    return f"{cert.subject.rfc4514_string() or '(empty subject)'}; SHA-256 {fingerprint}"


def report_lines(settings: WorkerSettings, report: probe.Report) -> list[tuple[str, str]]:
    """The (label, text) lines printed for one master."""
    transport = report.transport + (" (negotiated on the PB port)"
                                    if report.transport == "tcp" else "")
    lines = [("master", report.where), ("transport", f"{transport}, {report.route}")]
    if settings.protocol == "pb":
        lines.append(("note", "this worker is set to protocol 'pb'; the check speaks msg"))
    if report.encryption is not None:
        lines.append(("encryption", report.encryption))
    certificate = _certificate(report)
    if certificate is not None:
        lines.append(("certificate", certificate))
        outcome, _ = diagnose(report)
        verdict = report.verification if outcome is not Outcome.TLS_VERIFICATION else \
            "REJECTED (see below)"
        lines.append(("verification", verdict or "not reached"))
    if report.authenticated:
        features = ", ".join(report.features) or "none"
        lines.append(("protocol", f"msg v{report.version}, features: {features}"))
        how = ("TLS client certificate" if report.auth == "tls-client-cert" else
               "password (SCRAM-SHA-256; the master proved it knows it too)")
        lines.append(("login", how))
        if report.rtt is not None:
            lines.append(("round trip", f"{report.rtt * 1000:.2f} ms (last handshake "
                                        "exchange)"))
    return lines


def print_report(settings: WorkerSettings, report: probe.Report, out: TextIO) -> Outcome:
    outcome, diagnosis = diagnose(report)
    for label, text in report_lines(settings, report):
        out.write(f"  {label + ':':14}{text}\n")
    if outcome is Outcome.OK:
        out.write(f"OK: {diagnosis}\n")
    else:
        out.write(f"FAILED ({int(outcome)} {outcome.name.lower()}): {diagnosis}\n")
    out.flush()
    return outcome


@defer.inlineCallbacks
def run_checks(reactor: Any, settings: WorkerSettings, timeout: float, out: TextIO) -> Any:
    """Check every master of ``settings``; the exit code is the first failure's."""
    worst = Outcome.OK
    out.write(f"check-connection: worker {settings.name!r}, {len(settings.targets)} "
              f"master{'s' if len(settings.targets) > 1 else ''}\n")
    for target in settings.targets:
        report = yield probe.check(reactor, settings, target, timeout)
        outcome = print_report(settings, report, out)
        if worst is Outcome.OK:
            worst = outcome
    return worst


def checkConnection(config: Any) -> int:  # noqa: N802 - named like create-worker's
    """The ``check-connection`` command."""
    try:
        settings = settings_from_options(config)
    except SettingsError as e:
        print(f"check-connection: {e}")
        return int(Outcome.USAGE)
    if config["verbose"]:
        log.startLogging(sys.stderr)
    result: list[int] = []

    def main(reactor: Any) -> Any:
        d = run_checks(reactor, settings, config["timeout"], sys.stdout)
        d.addCallback(result.append)
        return d

    try:
        task.react(main)
    except SystemExit as e:  # react() exits with 0 (or 1 on an error) when done
        if e.code not in (0, None) or not result:
            return int(Outcome.FAILED)
    return int(result[0])
