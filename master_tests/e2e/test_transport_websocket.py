"""Real builds over the WebSocket transport (binary messages on path /msg)."""

from __future__ import annotations

from .transport_suite import TransportEnv
from .transport_suite import TransportSuite


class TestWebSocket(TransportSuite):
    transport = "websocket"

    def master_transports_py(self) -> str:
        return "{'websocket': {'port': 'tcp:{TPORT}:interface=127.0.0.1', 'path': '/msg'}}"

    def worker_create_options(self, env: TransportEnv) -> tuple[str, ...]:
        return ("--transport-option", "path=/msg")


class TestWebSocketCompressed(TestWebSocket):
    """The same builds with permessage-deflate on both sides and another path."""

    def master_transports_py(self) -> str:
        return ("{'websocket': {'port': 'tcp:{TPORT}:interface=127.0.0.1', "
                "'path': '/buildbot/msg', 'compression': True}}")

    def worker_create_options(self, env: TransportEnv) -> tuple[str, ...]:
        return ("--transport-option", "path=/buildbot/msg",
                "--transport-option", "compression=on")
