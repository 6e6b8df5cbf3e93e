"""Real builds over the AMP transport."""

from __future__ import annotations

from .transport_suite import TransportSuite


class TestAmp(TransportSuite):
    transport = "amp"

    def master_transports_py(self) -> str:
        return "{'amp': {'port': 'tcp:{TPORT}:interface=127.0.0.1'}}"
