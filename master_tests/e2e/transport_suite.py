"""End-to-end build suite run over one transport: subclass it once per transport.

A subclass names the transport and says how the master listens for it
(``c['protocols']['msg']['transports']``) and how the worker is created; the suite
then runs real builds through a real master and worker over that transport: a shell
step, a file download and upload checked byte for byte, an interrupted command, and
a worker reconnect; mkdir, rmfile and rmdir of lists, and the master's
``Connection.get_peer()`` in Buildbot's ``host:port`` form.
"""

from __future__ import annotations

import hashlib
import os
import re
import subprocess
import time
from collections.abc import Iterable
from collections.abc import Sequence
from typing import Any

import pytest

from buildbot_worker_msgproto.check.diagnosis import Outcome

from . import harness
from . import list_args_cfg

WORKER = "tw"
PASSWD = "transport-pw"
FILE_SIZE = 3 * 1024 * 1024 + 17

BUILDERS_PY = """
c['builders'].append(util.BuilderConfig(
    name='shell', workernames=WORKER_NAMES,
    factory=util.BuildFactory([steps.ShellCommand(
        name='shell', command=['sh', '-c', 'echo "value=$MSG_VALUE"; echo to-stderr >&2'],
        env={'MSG_VALUE': 'over-the-transport'})])))
c['builders'].append(util.BuilderConfig(
    name='transfer', workernames=WORKER_NAMES,
    factory=util.BuildFactory([
        steps.FileDownload(mastersrc=DATA_FILE, workerdest='down.bin'),
        steps.ShellCommand(name='sum', command=['sha256sum', 'down.bin']),
        steps.ShellCommand(name='make', command=['sh', '-c',
            'head -c %d /dev/urandom > up.bin; sha256sum up.bin' % FILE_SIZE]),
        steps.FileUpload(workersrc='up.bin', masterdest='uploaded.bin'),
    ])))
c['builders'].append(util.BuilderConfig(
    name='interrupt', workernames=WORKER_NAMES,
    factory=util.BuildFactory([steps.ShellCommand(name='sleep', command=['sleep', '120'])])))
"""


def _sha256(path: str) -> str:
    with open(path, "rb") as f:
        return hashlib.sha256(f.read()).hexdigest()


class TransportSuite:
    """Subclass as ``TestXxx(TransportSuite)`` and set the three hooks below."""

    transport = ""

    def master_transports_py(self) -> str:
        """Python source of ``c['protocols']['msg']['transports']``; may use {TPORT}."""
        raise NotImplementedError

    def worker_master_arg(self, env: TransportEnv) -> str:
        """The <master> argument of create-worker (host:port of this transport)."""
        return f"127.0.0.1:{env.transport_port}"

    def worker_create_options(self, env: TransportEnv) -> tuple[str, ...]:
        """Extra create-worker options, e.g. ('--transport-option', 'path=/msg')."""
        return ()

    # ------------------------------------------------------------------ fixture
    @pytest.fixture(scope="class")
    def env(self, tmp_path_factory: Any) -> Any:
        root = str(tmp_path_factory.mktemp(f"transport-{self.transport}"))
        yield from harness.started(TransportEnv(self, root))

    # ------------------------------------------------------------------ the suite
    def test_worker_uses_the_transport(self, env: TransportEnv) -> None:
        log = env.master.log_text()
        assert f"msgproto: {self.transport} transport listening on" in log
        assert "attaching over msgproto" in log

    def test_shell_step(self, env: TransportEnv) -> None:
        build = env.master.run_build("shell", timeout=60)
        assert build["results"] == harness.SUCCESS, env.master.build_summary(build["buildid"])
        text = env.master.step_log_text(env.master.step(build["buildid"], "shell")["stepid"])
        assert "value=over-the-transport" in text
        assert "to-stderr" in text

    def test_file_download_and_upload(self, env: TransportEnv) -> None:
        build = env.master.run_build("transfer", timeout=120)
        buildid = build["buildid"]
        assert build["results"] == harness.SUCCESS, env.master.build_summary(buildid)
        summed = env.master.step_log_text(env.master.step(buildid, "sum")["stepid"])
        assert env.data_sha256 in summed
        made = env.master.step_log_text(env.master.step(buildid, "make")["stepid"])
        uploaded = os.path.join(env.master.basedir, "uploaded.bin")
        assert os.path.getsize(uploaded) == FILE_SIZE
        assert _sha256(uploaded) in made

    def test_interrupt(self, env: TransportEnv) -> None:
        request = env.master.force_build("interrupt")
        build = env.master.wait_build_started(request, 60)
        time.sleep(1)
        env.master.stop_build(build["buildid"])
        started = time.monotonic()
        build = env.master.wait_build(request, 60)
        assert build["results"] in (harness.CANCELLED, harness.EXCEPTION, harness.FAILURE)
        assert time.monotonic() - started < 60

    def test_list_arguments_and_peer(self, env: TransportEnv) -> None:
        """Lists of paths work as over Buildbot's msgpack; get_peer() is host:port (over
        AMQP the host is the worker's AMQP user at the broker)."""
        build = env.master.run_build(list_args_cfg.BUILDER, timeout=60)
        assert build["results"] == harness.SUCCESS, env.master.build_summary(build["buildid"])
        props = env.master.build_properties(build["buildid"])
        assert props["lists_ok"] is True
        assert re.fullmatch(r"([\w.-]+@)?127\.0\.0\.1:[1-9][0-9]*", props["peer"]), props["peer"]

    def test_check_connection(self, env: TransportEnv) -> None:
        """check-connection of the running worker's basedir: authenticated over this
        transport, never attached, the worker undisturbed.  Over amqp the worker's broker
        user has one exclusive queue: the broker refuses the check while the worker runs
        (diagnosed, the worker untouched); once the worker stops, it authenticates."""
        command = [harness.venv_exe("buildbot-worker-msgproto"), "check-connection",
                   "--timeout", "30", env.worker.basedir]
        attached = env.master.log_text().count("attaching over msgproto")
        result = subprocess.run(command, capture_output=True, text=True, timeout=120)
        if self.transport == "amqp":
            assert result.returncode == int(Outcome.QUEUE_IN_USE), \
                result.stdout + result.stderr
            assert "its queue is in use, by the running worker" in result.stdout
            env.worker.stop()
            env.master.wait_worker_disconnected(WORKER, 60)
            try:
                result = subprocess.run(command, capture_output=True, text=True, timeout=120)
            finally:
                env.worker.start()
            env.master.wait_worker_connected(WORKER, 60, worker=env.worker)
        assert result.returncode == 0, result.stdout + result.stderr
        assert f"transport:    {self.transport}" in result.stdout
        assert "connection check of worker" in env.master.log_text()
        assert env.master.log_text().count("attaching over msgproto") == attached + (
            self.transport == "amqp")  # the restarted worker's own attach
        assert env.master.worker_data(WORKER)["connected_to"]
        assert env.master.run_build("shell", timeout=60)["results"] == harness.SUCCESS

    def test_reconnect(self, env: TransportEnv) -> None:
        env.worker.stop()
        env.master.wait_worker_disconnected(WORKER, 60)
        env.worker.start()
        env.master.wait_worker_connected(WORKER, 60, worker=env.worker)
        build = env.master.run_build("shell", timeout=60)
        assert build["results"] == harness.SUCCESS


class TransportEnv:
    """One master with the transport enabled and one worker created for it;
    ``other_workers`` are configured on the master too (with the same password)."""

    def __init__(self, suite: TransportSuite, root: str,
                 other_workers: Iterable[str] = ()) -> None:
        self.suite = suite
        self.root = root
        self.port = harness.free_port()
        self.transport_port = harness.free_port()
        self.data_file = os.path.join(root, "data.bin")
        with open(self.data_file, "wb") as f:
            f.write(os.urandom(FILE_SIZE))
        self.data_sha256 = _sha256(self.data_file)
        www_port = harness.free_port()
        transports_py = suite.master_transports_py().replace("{TPORT}",
                                                             str(self.transport_port))
        protocols_py = ("{'msg': {'port': 'tcp:{PORT}:interface=127.0.0.1', "
                        f"'transports': {transports_py}}}}}")
        extra = f"DATA_FILE = {self.data_file!r}\nFILE_SIZE = {FILE_SIZE}\n"
        workers_py = [f"worker.MsgWorker({name!r}, {PASSWD!r})"
                      for name in (WORKER, *other_workers)]
        cfg = harness.make_master_cfg(protocols_py, workers_py, self.port, www_port,
                                      extra + BUILDERS_PY + list_args_cfg.builders_py())
        self.master = harness.Master(os.path.join(root, "master"), cfg, www_port=www_port,
                                     master_port=self.port)
        self.worker = self.make_worker(WORKER, suite.worker_create_options(self), "worker")

    def make_worker(self, name: str, options: Sequence[str],
                    dirname: str | None = None) -> harness.Worker:
        """Worker ``name`` of this transport (not created yet) in ``root/dirname`` (default:
        its name), made by create-worker with ``options``."""
        basedir = os.path.join(self.root, dirname or name)
        create = [harness.venv_exe("buildbot-worker-msgproto"), "create-worker",
                  "--transport", self.suite.transport, *options,
                  basedir, self.suite.worker_master_arg(self), name, PASSWD]
        return harness.Worker(basedir, create, name=name)

    def start(self) -> None:
        harness.start_attached(self.master, self.worker, 60)

    def stop(self) -> None:
        self.worker.stop()
        self.master.stop()
