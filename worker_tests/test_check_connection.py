"""check-connection without a master: reading a worker's settings from its buildbot.tac,
the command line, and the diagnosis of each kind of report.  Against real masters:
master_tests/e2e/test_check_connection.py."""

from __future__ import annotations

import os

import pytest
from twisted.internet import error as net_error
from twisted.python import usage
from twisted.python.failure import Failure

from buildbot_worker_msgproto.check import settings as check_settings
from buildbot_worker_msgproto.check.diagnosis import Outcome
from buildbot_worker_msgproto.check.diagnosis import diagnose
from buildbot_worker_msgproto.check.probe import Report
from buildbot_worker_msgproto.reach.http_proxy import ProxyError
from buildbot_worker_msgproto.reach.tls import CertificateRejected
from buildbot_worker_msgproto.scripts import create_worker
from buildbot_worker_msgproto.scripts.runner import CheckConnectionOptions
from buildbot_worker_msgproto.scripts.runner import CreateWorkerOptions


def _create(basedir: str, *args: str) -> None:
    options = CreateWorkerOptions()
    options.parseOptions(["--quiet", *args, basedir, "master.example:9990", "w1", "pw"])
    assert create_worker.createWorker(options) == 0


def test_settings_come_from_the_workers_tac(tmp_path):
    basedir = str(tmp_path / "w")
    _create(basedir, "--transport", "websocket", "--transport-option", "path=/x")
    log = os.path.join(basedir, "twistd.log")
    settings = check_settings.from_tac(basedir)
    assert (settings.name, settings.password, settings.transport) == ("w1", "pw", "websocket")
    (target,) = settings.targets
    assert (target.host, target.port, target.options) == ("master.example", 9990,
                                                          {"path": "/x"})
    assert not os.path.exists(log)  # the worker's log is not touched


def test_settings_of_a_worker_with_several_masters(tmp_path):
    basedir = str(tmp_path / "w")
    options = CreateWorkerOptions()
    options.parseOptions(["--quiet", basedir, "m1:9989,m2:9990", "w1", "pw"])
    assert create_worker.createWorker(options) == 0
    targets = check_settings.from_tac(basedir).targets
    assert [(t.host, t.port) for t in targets] == [("m1", 9989), ("m2", 9990)]


def test_a_stock_buildbot_worker_tac_is_read_too(tmp_path):
    from buildbot_worker.scripts import create_worker as stock
    from buildbot_worker.scripts import runner

    basedir = str(tmp_path / "stock")
    options = runner.CreateWorkerOptions()
    options.parseOptions(["--quiet", basedir, "127.0.0.1:9989", "w2", "secret"])
    assert stock.createWorker(options) == 0
    settings = check_settings.from_tac(basedir)
    assert (settings.name, settings.password, settings.protocol) == ("w2", "secret", "pb")


@pytest.mark.parametrize("text, problem", [
    (None, "cannot read"),
    ("raise RuntimeError('boom')", "does not run: RuntimeError: boom"),
    ("x = 1", "makes 0 Worker objects"),
])
def test_unreadable_tacs_are_reported(tmp_path, text, problem):
    if text is not None:
        (tmp_path / "buildbot.tac").write_text(text)
    with pytest.raises(check_settings.SettingsError, match=problem):
        check_settings.from_tac(str(tmp_path))


def test_the_command_line_takes_create_workers_connection_options(tmp_path):
    options = CheckConnectionOptions()
    options.parseOptions(["--transport", "amp", "--timeout", "5", "h:1", "w1", "pw"])
    assert options.worker["transport"] == "amp"
    assert (options.worker["host"], options.worker["port"]) == ("h", 1)
    assert options["timeout"] == 5.0
    options = CheckConnectionOptions()
    options.parseOptions([str(tmp_path)])
    assert options.worker is None and options["basedir"] == str(tmp_path)


@pytest.mark.parametrize("argv, problem", [
    (["--use-tls", "basedir"], "leave out --use-tls"),
    (["--transport", "amp", "basedir"], "leave out --transport"),
    (["--timeout", "0", "basedir"], "--timeout"),
    (["h:1", "w1"], "<passwd> may only be left out"),  # create-worker's own check
    (["a", "b", "c", "d"], "<master> <name>"),
])
def test_bad_command_lines(argv, problem):
    with pytest.raises(usage.UsageError, match=problem):
        CheckConnectionOptions().parseOptions(argv)


def _report(**fields) -> Report:
    return Report(worker="w1", where="m:9989", transport="tcp", route="direct", timeout=5,
                  **fields)


@pytest.mark.parametrize("fields, outcome, words", [
    ({"authenticated": True}, Outcome.OK, "not attached"),
    ({"failure": Failure(net_error.DNSLookupError("m"))}, Outcome.NAME_RESOLUTION, "resolve"),
    ({"failure": Failure(net_error.ConnectionRefusedError())}, Outcome.CONNECTION_REFUSED,
     "nothing listens"),
    ({"failure": Failure(net_error.TCPTimedOutError())}, Outcome.TIMEOUT, "within 5 s"),
    ({"timed_out": "authenticating"}, Outcome.TIMEOUT, "while authenticating"),
    ({"failure": Failure(ProxyError("refused CONNECT: HTTP/1.1 407"))}, Outcome.PROXY_REFUSED,
     "407"),
    ({"failure": Failure(CertificateRejected("not trusted"))}, Outcome.TLS_VERIFICATION,
     "not trusted"),
    ({"close_code": "authentication_failed"}, Outcome.WRONG_PASSWORD, "wrong password"),
    ({"close_code": "unknown_worker"}, Outcome.UNKNOWN_WORKER, "does not know worker 'w1'"),
    ({"offered": (b"pb", b"none")}, Outcome.PB_ONLY, "offers only PB (dialects: pb, none)"),
    ({"close_code": "unknown_type", "close_reason": "unknown message type 'check'"},
     Outcome.MASTER_TOO_OLD, "authentication was not tried"),
    ({"close_code": "certificate_mismatch", "close_reason": "not for w1"}, Outcome.REFUSED,
     "does not name this worker"),
    ({"close_code": "master_not_authenticated", "close_reason": "impostor"},
     Outcome.MASTER_NOT_AUTHENTICATED, "man in the middle"),
    ({"close_code": "protocol_error", "close_reason": "x"}, Outcome.FAILED, "protocol_error"),
    ({"failure": Failure(ConnectionError("(405, \"RESOURCE_LOCKED - cannot obtain exclusive "
                                         "access to locked queue\")"))},
     Outcome.QUEUE_IN_USE, "in use, by the running worker"),
    ({"lost_reason": "closed"}, Outcome.FAILED, "ended before authentication"),
])
def test_each_report_has_its_code_and_one_line(fields, outcome, words):
    code, line = diagnose(_report(**fields))
    assert code is outcome
    assert words in line and "\n" not in line


def test_ssh_failures_have_their_codes():
    from buildbot_worker_msgproto.reach.ssh_channel import HostKeyRejected
    from buildbot_worker_msgproto.reach.ssh_channel import SSHLoginRefused

    assert diagnose(_report(failure=Failure(HostKeyRejected("NOT the one"))))[0] \
        is Outcome.SSH_HOST_KEY
    assert diagnose(_report(failure=Failure(SSHLoginRefused("no key"))))[0] \
        is Outcome.SSH_REFUSED


def test_exit_codes_are_distinct():
    assert len({int(o) for o in Outcome}) == len(Outcome)
