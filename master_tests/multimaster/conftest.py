"""pytest fixtures for the multi-master tests: real masters of one Buildbot cluster
(PostgreSQL + crossbar, see env.py) and real workers in subprocesses.

``protocol`` is parametrized like the end-to-end tests' (``harness.enabled_protocols()``):
stock ``worker.Worker`` masters with stock PB workers, and ``worker.MsgWorker`` masters
with ``--protocol msg`` workers.  On failure, the log tails of every master, worker,
the router and the database server are attached to the report (through
``e2e_diagnostics``, as in master_tests/e2e).
"""

from __future__ import annotations

import pytest

from master_tests.crossbar import wamp_router  # noqa: F401  (the fixture)
from master_tests.e2e import harness
from master_tests.e2e.conftest import pytest_runtest_makereport  # noqa: F401  (log tails)
from master_tests.postgres import postgres_server  # noqa: F401  (the fixture)

from .env import MultiMasterEnv


@pytest.fixture(scope="module", params=harness.enabled_protocols())
def protocol(request) -> harness.ProtocolSpec:
    """The protocol variant under test (see harness.ENABLED_PROTOCOLS)."""
    return harness.PROTOCOLS[request.param]


@pytest.fixture
def make_cluster(protocol, postgres_server, wamp_router, tmp_path):  # noqa: F811
    """Factory: ``make_cluster(**MultiMasterEnv options)`` -> a started cluster for this
    test, closed after it (masters and workers stopped, database dropped)."""
    envs: list[MultiMasterEnv] = []

    def make(**options) -> MultiMasterEnv:
        env = MultiMasterEnv(str(tmp_path / f"cluster{len(envs)}"), protocol,
                             postgres_server, wamp_router, **options)
        envs.append(env)
        return env.start()

    make.e2e_diagnostics = lambda: "\n".join(e.e2e_diagnostics() for e in envs)
    yield make
    for env in envs:
        env.close()
