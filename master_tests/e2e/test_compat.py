"""Backward compatibility through the PB dialect negotiation, with real builds.

- a stock buildbot-worker (PB) attaches to the master's msg port and builds;
- our worker attaches to a stock Buildbot master (``c['protocols']['pb']``), falling
  back to PB by itself, and builds;
- our worker with ``--protocol pb`` uses PB even against a msg master;
- PB and msg workers share one master port at the same time.

The worker's handshake timeout (30 s) is longer than the attach waits used here,
so a fallback that waited for a timeout instead of negotiating would fail.
"""

from __future__ import annotations

import os

import pytest

from . import harness
from .multi_worker_env import check_hello_build
from .multi_worker_env import hello_builders_py

BUILDERS_PY = hello_builders_py("""\
            steps.StringDownload('payload-' + name, workerdest='p.txt'),
            steps.FileUpload(workersrc='p.txt', masterdest=name + '.txt'),
""")

STOCK = harness.ProtocolSpec(name="stock-pb", protocols_py="", worker_py="")
OURS_PB = harness.ProtocolSpec(
    name="ours-forced-pb", protocols_py="", worker_py="",
    create_prefix=("buildbot-worker-msgproto", "create-worker"),
    create_options=("--protocol", "pb"))
OURS = harness.PROTOCOLS["msg"]
ATTACH_TIMEOUT = 20  # < the 30 s handshake timeout: proves no timeout wait


def _start(root: str, protocols_py: str, workers: dict[str, tuple[str, harness.ProtocolSpec]]):
    port = harness.free_port()
    www_port = harness.free_port()
    cfg = harness.make_master_cfg(protocols_py, [w for w, _ in workers.values()], port,
                                  www_port, BUILDERS_PY)
    master = harness.Master(os.path.join(root, "master"), cfg, www_port=www_port,
                            master_port=port)
    master.create()
    procs = {name: harness.Worker.for_protocol(spec, os.path.join(root, name), port, name, "pw")
             for name, (_, spec) in workers.items()}
    for w in procs.values():
        w.create()
    master.start()
    for w in procs.values():
        w.start()
    return master, procs


def _check_build(master: harness.Master, name: str) -> None:
    check_hello_build(master, name, ATTACH_TIMEOUT)
    with open(os.path.join(master.basedir, name + ".txt"), encoding="utf-8") as f:
        assert f.read() == "payload-" + name


@pytest.fixture
def run(tmp_path):
    started = []

    def start(protocols_py, workers):
        master, procs = _start(str(tmp_path), protocols_py, workers)
        started.append((master, procs))
        return master, procs

    yield start
    for master, procs in started:
        for w in procs.values():
            w.stop()
        master.stop()


MSG_PORT = "{'msg': {'port': 'tcp:{PORT}:interface=127.0.0.1'}}"
PB_PORT = "{'pb': {'port': 'tcp:{PORT}:interface=127.0.0.1'}}"


def test_stock_pb_worker_on_msg_port(run):
    master, _ = run(MSG_PORT, {"old": ("worker.MsgWorker('old', 'pw')", STOCK)})
    _check_build(master, "old")
    log = master.log_text()
    assert "worker 'old' attaching from" in log  # Buildbot's PB attach line
    assert "attaching over msgproto" not in log


def test_our_worker_falls_back_to_pb_on_stock_master(run):
    master, procs = run(PB_PORT, {"new": ("worker.Worker('new', 'pw')", OURS)})
    _check_build(master, "new")
    assert "falling back to PB" in procs["new"].log_text()


def test_forced_pb_on_msg_master(run):
    master, procs = run(MSG_PORT, {"forced": ("worker.MsgWorker('forced', 'pw')", OURS_PB)})
    _check_build(master, "forced")
    assert "attaching over msgproto" not in master.log_text()


def test_pb_and_msg_workers_share_one_port(run):
    master, procs = run(MSG_PORT, {
        "old": ("worker.MsgWorker('old', 'pw')", STOCK),
        "new": ("worker.MsgWorker('new', 'pw')", OURS),
    })
    _check_build(master, "old")
    _check_build(master, "new")
    log = master.log_text()
    assert "worker 'new' attaching over msgproto" in log
    assert "worker 'old' attaching from" in log
    assert "Connected to buildmaster over msgproto" in procs["new"].log_text()
