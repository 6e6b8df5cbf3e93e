"""A private crossbar WAMP router for the multi-master tests, shared by a pytest session.

Buildbot's masters exchange their messages through it (``c['mq']`` type ``wamp``).
``scripts/crossbar`` runs it from its own venv (``.venv-crossbar``, made by
``scripts/crossbar setup``, which scripts/run-tests calls) in a temporary directory, on a
free 127.0.0.1 port, with one realm open to the anonymous role; it is stopped at the end
of the session.  Tests that stop or restart a router take one of their own
(``Router.start_private()`` / ``router.stop_private()``).  Without crossbar the tests skip
with a clear message, or fail when ``CI`` or ``MSGPROTO_REQUIRE_SYSTEM_DEPS`` is set
(scripts/run-tests sets the latter; master_tests/system_deps.py)::

    from master_tests.crossbar import wamp_router  # noqa: F401  (the fixture)

    def test_x(wamp_router):
        cfg_mq = wamp_router.mq_config()
"""

from __future__ import annotations

import os
from typing import Any

from master_tests import services

#: the realm scripts/crossbar configures (MSGPROTO_CROSSBAR_REALM there; default)
REALM = "realm1"


def executable() -> str:
    """The crossbar executable scripts/crossbar runs."""
    venv = os.environ.get("MSGPROTO_CROSSBAR_VENV",
                          os.path.join(os.path.dirname(services.SCRIPTS_DIR), ".venv-crossbar"))
    return os.environ.get("MSGPROTO_CROSSBAR_BIN", os.path.join(venv, "bin", "crossbar"))


class Router(services.ScriptService):
    """One crossbar router (``scripts/crossbar``) with its files in ``directory``."""

    script = "crossbar"
    log_name = "crossbar.log"
    pid_file = "router.pid"

    @classmethod
    def missing(cls) -> str | None:
        if os.access(executable(), os.X_OK):
            return None
        return f"crossbar is not installed ({executable()}): run scripts/crossbar setup"

    @property
    def url(self) -> str:
        return f"ws://127.0.0.1:{self.port}/ws"

    def mq_config(self) -> dict[str, Any]:
        """Buildbot's ``c['mq']`` for this router."""
        return {"type": "wamp", "router_url": self.url, "realm": REALM}


shared: services.Shared[Router] = services.Shared(Router.start_private)
#: the session's router, started on first use
current = shared.current
wamp_router = shared.fixture(
    "wamp_router", "The session's private crossbar router (stopped at its end).")
