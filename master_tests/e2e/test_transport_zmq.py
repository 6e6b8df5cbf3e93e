"""Real builds over the ZeroMQ transport (one master ROUTER socket, a worker DEALER),
in the clear and with CURVE encryption and authentication."""

from __future__ import annotations

import os
from typing import Any

import pytest

from buildbot_worker_msgproto.scripts import gen_keys

from .transport_suite import WORKER
from .transport_suite import TransportEnv
from .transport_suite import TransportSuite


class TestZmq(TransportSuite):
    transport = "zmq"

    def master_transports_py(self) -> str:
        return "{'zmq': {'port': {TPORT}, 'interface': '127.0.0.1'}}"

    def worker_create_options(self, env: TransportEnv) -> tuple[str, ...]:
        # the documented defaults, spelled out: worker options arrive as strings
        return ("--transport-option", "sndhwm=1000", "--transport-option", "rcvhwm=1000")


class TestZmqCurve(TransportSuite):
    """The same builds with CURVE on, keys made by gen-keys as docs/security/curve.rst says."""

    transport = "zmq"
    keys: gen_keys.Layout

    @pytest.fixture(scope="class", autouse=True)
    def curve_keys(self, tmp_path_factory: Any) -> Any:
        # autouse: made before the class-scoped ``env`` fixture reads them
        outdir = str(tmp_path_factory.mktemp("curve-keys") / "keys")
        type(self).keys = gen_keys.generate(outdir, workers=[WORKER]).layout
        return type(self).keys

    def master_transports_py(self) -> str:
        keys = type(self).keys
        workers_dir = os.path.dirname(keys.curve_worker_public(WORKER))
        return ("{'zmq': {'port': {TPORT}, 'interface': '127.0.0.1', "
                f"'curve_secret_key': {keys.curve_master_secret!r}, "
                f"'curve_authorized_keys': {workers_dir!r}}}}}")

    def worker_create_options(self, env: TransportEnv) -> tuple[str, ...]:
        keys = type(self).keys
        return ("--transport-option", f"curve_secret_key={keys.curve_worker_secret(WORKER)}",
                "--transport-option", f"curve_server_key={keys.curve_master_public}")

    def test_the_worker_came_in_with_its_curve_key(self, env: TransportEnv) -> None:
        # the transport's peer names the authorized key file the ZAP handler matched
        assert f"CURVE key {WORKER})" in env.master.log_text()
