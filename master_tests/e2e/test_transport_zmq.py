"""Real builds over the ZeroMQ transport (one master ROUTER socket, a worker DEALER)."""

from __future__ import annotations

from .transport_suite import TransportEnv
from .transport_suite import TransportSuite


class TestZmq(TransportSuite):
    transport = "zmq"

    def master_transports_py(self) -> str:
        return "{'zmq': {'port': {TPORT}, 'interface': '127.0.0.1'}}"

    def worker_create_options(self, env: TransportEnv) -> tuple[str, ...]:
        # the documented defaults, spelled out: worker options arrive as strings
        return ("--transport-option", "sndhwm=1000", "--transport-option", "rcvhwm=1000")
