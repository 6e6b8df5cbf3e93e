"""Several masters with msg: a worker's master list, failover, and a dead master's builds.

Real masters of one Buildbot cluster (PostgreSQL + crossbar, env.py) and real msg workers
that know both masters (``create-worker ... MASTER_A,MASTER_B``).  Timeouts are scaled
down (lease 3 s, master timeout 8 s, heartbeats 1/3 s) so that each case takes seconds;
the defaults (6 s, 60 s, 10/30 s) take the same paths.
"""

from __future__ import annotations

import time

import pytest

from master_tests import rabbitmq
from master_tests.e2e import harness
from master_tests.faultproxy import FaultProxy
from master_tests.rabbitmq import amqp_broker  # noqa: F401  (the fixture)

A, B = 0, 1
LEASE = 3
MASTER_TIMEOUT = 8
MSG_OPTIONS = {"lease_seconds": LEASE, "master_timeout": MASTER_TIMEOUT,
               "heartbeat_interval": 1, "heartbeat_timeout": 3, "resume_window": 10}
EXTRA_PY = f"c['protocols']['msg'].update({MSG_OPTIONS!r})\n"
#: what issue 10 asks: the workers of a dead master are attached elsewhere within 10 s
FAILOVER_WITHIN = 10.0


@pytest.fixture
def cluster(make_cluster, protocol):
    if protocol.name != "msg":
        pytest.skip("master lists and failover are msg features")
    return make_cluster(worker_names=("w1",), extra_py=EXTRA_PY)


def wait_attached(cluster, name: str, index: int, timeout: float) -> float:
    """Seconds until worker ``name`` is connected to master ``index`` (bounded)."""
    began = time.monotonic()
    masterid = cluster.masterid(index)
    harness.wait_for(
        lambda: masterid in cluster.connected_to(cluster.masters[index].worker_data(name)),
        timeout, f"worker {name} to attach to master {index}", 0.1, cluster.e2e_diagnostics)
    return time.monotonic() - began


def test_a_worker_with_a_master_list_prefers_the_first(cluster):
    cluster.add_worker("w1", A, masters=(A, B))
    assert cluster.connected_to(cluster.masters[B].worker_data("w1")) == {cluster.masterid(A)}


def test_killed_master_its_worker_fails_over_and_its_build_runs_again(cluster):
    master_a, master_b = cluster.masters
    worker = cluster.add_worker("w1", A, masters=(A, B))
    gate = cluster.gate()
    brid = master_b.force_build("on-w1", {"gate": gate})
    first = master_b.wait_build_started(brid, timeout=60)
    assert first["masterid"] == cluster.masterid(A)
    master_a.kill()
    killed = time.monotonic()
    moved = wait_attached(cluster, "w1", B, FAILOVER_WITHIN + 20)
    print(f"worker attached to master B {moved:.1f} s after master A was killed")
    assert moved <= FAILOVER_WITHIN, f"failover took {moved:.1f} s"
    # master A is declared dead after master_timeout: its build ends RETRY, its request
    # is unclaimed and runs again on master B
    cluster.release(gate)

    def rerun() -> list[dict]:
        builds = master_b.builds_for_request(brid)
        return [b for b in builds if b["masterid"] == cluster.masterid(B) and b["complete"]]

    [again] = harness.wait_for(rerun, MASTER_TIMEOUT + 60, "the build request to run again",
                               0.2, cluster.e2e_diagnostics)
    print(f"build request ran again {time.monotonic() - killed:.1f} s after the kill")
    assert again["results"] == harness.SUCCESS, master_b.build_summary(again["buildid"])
    old = master_b.get_build(first["buildid"])
    assert old["complete"] and old["results"] == harness.RETRY
    assert "declaring it dead" in master_b.log_text()
    # the dead master shows no connected worker any more
    assert cluster.masterid(A) not in cluster.connected_to(master_b.worker_data("w1"))
    assert worker.is_running


def test_cleanly_stopped_master_its_worker_moves_on(cluster):
    master_a, master_b = cluster.masters
    cluster.add_worker("w1", A, masters=(A, B))
    master_a.stop()
    moved = wait_attached(cluster, "w1", B, FAILOVER_WITHIN + 20)
    print(f"worker attached to master B {moved:.1f} s after master A stopped")
    build = master_b.run_build("on-w1", timeout=60)
    assert build["results"] == harness.SUCCESS, master_b.build_summary(build["buildid"])
    assert build["masterid"] == cluster.masterid(B)


def test_a_worker_cut_off_from_its_live_master_resumes_there(make_cluster, protocol):
    """The link to master A is cut (RST, then refused) during a build; the worker gets
    into master B, which holds the login while A renews the worker's lease and then
    refuses it (``not_owner``).  The worker kept its session meanwhile: it resumes on A
    when the link is back, and the build ends SUCCESS there, run once."""
    if protocol.name != "msg":
        pytest.skip("master lists and failover are msg features")
    cluster = make_cluster(worker_names=("w1",), extra_py=EXTRA_PY + (
        "c['protocols']['msg']['resume_window'] = 40\n"))
    master_a, master_b = cluster.masters
    with FaultProxy.start("127.0.0.1", master_a.master_port) as proxy:
        host, port = proxy.address
        cluster.add_worker("w1", A, masters=(A, B), addresses={A: f"{host}:{port}"})
        gate = cluster.gate()
        brid = master_b.force_build("on-w1", {"gate": gate})
        first = master_b.wait_build_started(brid, timeout=60)
        assert first["masterid"] == cluster.masterid(A)
        proxy.cut(refuse=True)
        harness.wait_for(lambda: "refusing worker 'w1'" in master_b.log_text(), 30,
                         "master B to refuse worker w1 (A holds its lease)", 0.1,
                         cluster.e2e_diagnostics)
        proxy.restore()
        harness.wait_for(lambda: "'w1' resumed from" in master_a.log_text(), 30,
                         "the session to resume on master A", 0.1, cluster.e2e_diagnostics)
        cluster.release(gate)
        build = master_b.wait_build(brid, timeout=60)
    assert build["results"] == harness.SUCCESS, master_b.build_summary(build["buildid"])
    assert build["buildid"] == first["buildid"] and build["masterid"] == cluster.masterid(A)
    assert [b["buildid"] for b in master_b.builds_for_request(brid)] == [first["buildid"]]
    assert cluster.connected_to(master_b.worker_data("w1")) == {cluster.masterid(A)}


# ----------------------------------------------------------------------------- amqp
AMQP_WORKER = "w1"  # a worker user of the private broker (master_tests/rabbitmq.py)


@pytest.fixture
def amqp_cluster(make_cluster, protocol, amqp_broker):  # noqa: F811
    """Two masters serving workers through one RabbitMQ broker: the broker is the
    rendezvous, one master consumes the shared master queue at a time."""
    if protocol.name != "msg":
        pytest.skip("the amqp transport is msg only")
    if AMQP_WORKER not in rabbitmq.current().workers:
        pytest.skip("needs the private broker's worker users")
    transports = {"amqp": rabbitmq.current().master_options(heartbeat=2)}
    extra = (EXTRA_PY + f"c['protocols']['msg']['transports'] = {transports!r}\n")
    return make_cluster(worker_names=(AMQP_WORKER,), extra_py=extra)


def test_amqp_any_live_master_takes_the_workers_of_a_dead_one(amqp_cluster):
    broker = rabbitmq.current()
    options = []
    for key, value in broker.worker_options(AMQP_WORKER, heartbeat="2").items():
        options += ["--transport-option", f"{key}={value}"]
    worker = harness.Worker.for_protocol(
        amqp_cluster.protocol, f"{amqp_cluster.root}/workers/amqp", broker.port,
        AMQP_WORKER, amqp_cluster.passwd(AMQP_WORKER),
        extra_create_args=("--transport", "amqp", *options))
    amqp_cluster.workers.append(worker.create())
    worker.start()

    def owner() -> int | None:
        connected = amqp_cluster.connected_to(amqp_cluster.masters[0].worker_data(AMQP_WORKER))
        ids = [i for i in (A, B) if amqp_cluster.masterid(i) in connected]
        return ids[0] if len(ids) == 1 else None

    harness.wait_for(lambda: owner() is not None, 60, "the amqp worker to attach to a master",
                     0.2, amqp_cluster.e2e_diagnostics)
    first = owner()
    other = B if first == A else A
    amqp_cluster.masters[first].kill()
    moved = wait_attached(amqp_cluster, AMQP_WORKER, other, FAILOVER_WITHIN + 20)
    print(f"amqp worker attached to the other master {moved:.1f} s after its master died")
    assert moved <= FAILOVER_WITHIN + 2, f"failover took {moved:.1f} s"
    build = amqp_cluster.masters[other].run_build(f"on-{AMQP_WORKER}", timeout=60)
    assert build["results"] == harness.SUCCESS
