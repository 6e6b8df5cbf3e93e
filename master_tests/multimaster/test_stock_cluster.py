"""Buildbot's distributed mode: two masters, one PostgreSQL database, the crossbar router
between them, workers spread over the masters.

What a user of several masters relies on: a build forced through any master runs on
whichever master has a free worker for it, and every master's web UI and data API show
every build.  Then one worker name on both masters at once: stock masters
(``worker.Worker``) accept it twice, which one test asserts as stock Buildbot's UNWANTED
behaviour; MsgWorker masters lease it to one master (``buildbot_msgproto/lease.py``).
"""

from __future__ import annotations

import time

import pytest

from master_tests.e2e import harness

from .env import MultiMasterEnv

A, B = 0, 1
#: worker name -> the master it connects to
HOME = {"wa": A, "wb": B}
DUPLICATE = "wdup"


@pytest.fixture(scope="module")
def cluster(protocol, postgres_server, wamp_router, tmp_path_factory):  # noqa: F811
    env = MultiMasterEnv(str(tmp_path_factory.mktemp(f"multimaster-{protocol.name}")),
                         protocol, postgres_server, wamp_router, count=2,
                         worker_names=[*HOME, DUPLICATE], spread=list(HOME),
                         max_builds={DUPLICATE: 1})
    try:
        env.start()
        for name, index in HOME.items():
            env.add_worker(name, index)
        yield env
    finally:
        env.close()


def hello_text(master: harness.Master, build: dict) -> str:
    return master.step_log_text(master.step(build["buildid"], "hello")["stepid"])


def test_both_masters_share_one_database(cluster):
    """Each master lists both masters, active, from the shared database."""
    ids = {cluster.masterid(A), cluster.masterid(B)}
    assert len(ids) == 2
    for master in cluster.masters:
        listed = {m["masterid"]: m for m in master.api_get("masters")["masters"]}
        assert ids <= set(listed), listed
        assert all(listed[i]["active"] for i in ids), listed


@pytest.mark.parametrize(("forced_on", "runs_on"), [(A, B), (B, A)])
def test_build_forced_on_one_master_runs_on_the_master_of_its_worker(cluster, forced_on,
                                                                      runs_on):
    """A build request made through one master reaches the other master (over the WAMP
    router), which runs it on its worker; both masters' APIs show the same build."""
    worker = next(name for name, index in HOME.items() if index == runs_on)
    brid = cluster.masters[forced_on].force_build(f"on-{worker}")
    build = cluster.masters[runs_on].wait_build(brid, timeout=60)
    assert build["results"] == harness.SUCCESS, \
        cluster.masters[runs_on].build_summary(build["buildid"])
    assert build["masterid"] == cluster.masterid(runs_on)
    seen = cluster.masters[forced_on].get_build(build["buildid"])
    assert seen["masterid"] == cluster.masterid(runs_on)
    assert seen["properties"]["workername"][0] == worker
    assert f"hello-from-{worker}" in hello_text(cluster.masters[forced_on], seen)


def test_builds_spread_over_both_masters(cluster):
    """Two builds of one builder held running at once: one runs through each master
    (each worker runs one build of a builder at a time), and master B's data API shows the
    build that ran through master A, with its steps and log."""
    gates = [cluster.gate(), cluster.gate()]
    master_a, master_b = cluster.masters
    brids = [master_a.force_build("spread", {"gate": gate}) for gate in gates]
    running = [master_a.wait_build_started(brid, timeout=60) for brid in brids]
    assert {b["masterid"] for b in running} == {cluster.masterid(A), cluster.masterid(B)}
    listed = {b["buildid"]: b for b in master_b.api_get("builds", builderid=running[0]
                                                        ["builderid"])["builds"]}
    assert {b["buildid"] for b in running} <= set(listed)
    assert not any(listed[b["buildid"]]["complete"] for b in running)
    for gate in gates:
        cluster.release(gate)
    for brid in brids:
        build = master_b.wait_build(brid, timeout=60)
        assert build["results"] == harness.SUCCESS, master_b.build_summary(build["buildid"])
        worker = build["properties"]["workername"][0]
        assert build["masterid"] == cluster.masterid(HOME[worker])
        assert f"hello-from-{worker}" in hello_text(master_b, build)


def test_same_worker_name_on_two_stock_masters__todays_unwanted_behaviour(cluster, protocol):
    """TODAY'S UNWANTED BEHAVIOUR of stock Buildbot 4.x (``worker.Worker``, PB), asserted
    so that it is seen to change: one worker name, configured on both masters with
    ``max_builds=1``, connects to both at once; both accept it (the workers API lists both
    masterids in ``connected_to``) and each runs a build on it at the same time.
    ``worker.MsgWorker`` has one owner instead: see the next test."""
    if protocol.name != "pb":
        pytest.skip("stock masters only: MsgWorker masters lease each worker to one master")
    cluster.add_worker(DUPLICATE, A, basedir_name=f"{DUPLICATE}-a")
    cluster.add_worker(DUPLICATE, B, basedir_name=f"{DUPLICATE}-b")
    both = {cluster.masterid(A), cluster.masterid(B)}
    for master in cluster.masters:
        assert cluster.connected_to(master.worker_data(DUPLICATE)) == both
    gates = [cluster.gate(), cluster.gate()]
    master_a = cluster.masters[A]
    brids = [master_a.force_build(f"on-{DUPLICATE}", {"gate": gate}) for gate in gates]
    running = [master_a.wait_build_started(brid, timeout=60) for brid in brids]
    # two builds at once on a worker with max_builds=1, one through each master
    assert {b["masterid"] for b in running} == both
    assert not any(master_a.get_build(b["buildid"])["complete"] for b in running)
    for gate in gates:
        cluster.release(gate)
    for brid in brids:
        assert master_a.wait_build(brid, timeout=60)["results"] == harness.SUCCESS


#: how long a held build must stay the only one of its worker (a second master that had
#: accepted the worker would start the other request within a fraction of a second)
ALONE_SECONDS = 3.0


def test_one_master_owns_a_msg_worker(cluster, protocol):
    """With ``worker.MsgWorker`` and ``c['multiMaster']``, a worker belongs to one master
    (its lease in the shared database): the same worker name logging in to the second
    master is refused, the workers API shows one master, and the worker's builds run one
    after the other on its owner."""
    if protocol.name != "msg":
        pytest.skip("MsgWorker masters only: stock masters accept the worker twice")
    cluster.add_worker(DUPLICATE, A, basedir_name=f"{DUPLICATE}-a")
    cluster.add_worker(DUPLICATE, B, basedir_name=f"{DUPLICATE}-b", attach=False)
    master_a, master_b = cluster.masters
    harness.wait_for(lambda: f"refusing worker {DUPLICATE!r}" in master_b.log_text(), 30,
                     f"master B to refuse worker {DUPLICATE}", 0.1, cluster.e2e_diagnostics)
    for master in cluster.masters:
        assert cluster.connected_to(master.worker_data(DUPLICATE)) == {cluster.masterid(A)}
    gate_of = {}
    for _ in range(2):
        gate = cluster.gate()
        gate_of[master_a.force_build(f"on-{DUPLICATE}", {"gate": gate})] = gate

    def running() -> list[dict]:
        return [b for brid in gate_of for b in master_a.builds_for_request(brid)]

    first = harness.wait_for(running, 60, "a build of the owned worker", 0.1)
    assert len(first) == 1 and first[0]["masterid"] == cluster.masterid(A), first
    deadline = time.monotonic() + ALONE_SECONDS
    while time.monotonic() < deadline:
        assert len(running()) == 1, f"a second build ran at the same time: {running()}"
        time.sleep(0.2)
    first_brid = first[0]["buildrequestid"]
    second_brid = next(brid for brid in gate_of if brid != first_brid)
    cluster.release(gate_of[first_brid])
    done = master_a.wait_build(first_brid, timeout=60)
    cluster.release(gate_of[second_brid])
    then = master_a.wait_build(second_brid, timeout=60)
    for build in (done, then):
        assert build["results"] == harness.SUCCESS, master_a.build_summary(build["buildid"])
        assert build["masterid"] == cluster.masterid(A)
    assert then["started_at"] >= done["complete_at"]


def test_three_masters_of_a_cluster_of_its_own(make_cluster):
    """A third master joins like the others: a build forced through master 0 for the
    worker of master 2 runs there and master 1 shows it."""
    trio = make_cluster(count=3, worker_names=["w3"])
    trio.add_worker("w3", 2)
    brid = trio.masters[0].force_build("on-w3")
    build = trio.masters[1].wait_build(brid, timeout=60)
    assert build["results"] == harness.SUCCESS, trio.masters[1].build_summary(build["buildid"])
    assert build["masterid"] == trio.masterid(2)
    assert len({trio.masterid(i) for i in range(3)}) == 3
