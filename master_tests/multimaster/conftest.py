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


class ClusterFactory:
    """Makes started clusters for one test; ``close()`` stops them all."""

    def __init__(self, protocol, database, router, root) -> None:
        self.args = (protocol, database, router)
        self.root = root
        self.envs: list[MultiMasterEnv] = []

    def __call__(self, **options) -> MultiMasterEnv:
        env = MultiMasterEnv(str(self.root / f"cluster{len(self.envs)}"), *self.args,
                             **options)
        self.envs.append(env)
        return env.start()

    def e2e_diagnostics(self) -> str:
        return "\n".join(env.e2e_diagnostics() for env in self.envs)

    def close(self) -> None:
        for env in self.envs:
            env.close()


@pytest.fixture
def make_cluster(protocol, postgres_server, wamp_router, tmp_path):  # noqa: F811
    """Factory: ``make_cluster(**MultiMasterEnv options)`` -> a started cluster of this
    test's own (for tests that stop masters), closed after the test (masters and workers
    stopped, database dropped)."""
    factory = ClusterFactory(protocol, postgres_server, wamp_router, tmp_path)
    try:
        yield factory
    finally:
        factory.close()
