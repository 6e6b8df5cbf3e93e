"""``buildbot-worker-msgproto``: buildbot-worker's command line with msg protocol options."""

from __future__ import annotations

import sys
from typing import NoReturn

from buildbot_worker.scripts import runner as upstream
from twisted.python import reflect
from twisted.python import usage

from buildbot_worker_msgproto.worker import PROTOCOLS
from buildbot_worker_msgproto.worker import TRANSPORTS


class CreateWorkerOptions(upstream.CreateWorkerOptions):
    """``create-worker`` with the same arguments, plus ``--protocol`` and ``--transport``."""

    subcommandFunction = "buildbot_worker_msgproto.scripts.create_worker.createWorker"
    optParameters = [
        p for p in upstream.CreateWorkerOptions.optParameters if p[0] != "protocol"
    ] + [
        ["protocol", None, "msg",
         "Protocol: 'msg' (JSON messages, falls back to PB against a stock master) or "
         "'pb' (force legacy PB)"],
        ["transport", None, "tcp", f"Transport for the msg protocol: one of {TRANSPORTS}"],
    ]

    def __init__(self) -> None:
        super().__init__()
        self["transport-options"] = {}

    def opt_transport_option(self, value: str) -> None:
        """Transport-specific KEY=VALUE (repeatable), e.g. path=/msg; see docs/transports/."""
        key, sep, option = value.partition("=")
        if not sep or not key:
            raise usage.UsageError(f"--transport-option needs KEY=VALUE, got {value!r}")
        self["transport-options"][key] = option

    def getSynopsis(self) -> str:  # noqa: N802
        return ("Usage:    buildbot-worker-msgproto create-worker [options] "
                "<basedir> <master> <name> <passwd>")

    def postOptions(self) -> None:  # noqa: N802
        super().postOptions()
        if self["protocol"] not in PROTOCOLS:
            raise usage.UsageError(f"--protocol must be one of {PROTOCOLS}")
        if self["transport"] not in TRANSPORTS:
            raise usage.UsageError(f"--transport must be one of {TRANSPORTS}")
        if self["protocol"] == "pb" and self["transport"] != "tcp":
            raise usage.UsageError("--protocol pb only runs over --transport tcp")


class Options(upstream.Options):
    synopsis = "Usage:    buildbot-worker-msgproto <command> [command options]"

    def opt_version(self) -> NoReturn:  # type: ignore[misc]  # noqa: N802
        import buildbot_worker

        import buildbot_worker_msgproto

        print(f"buildbot-msgproto version: {buildbot_worker_msgproto.__version__}")
        print(f"worker version: {buildbot_worker.version}")
        sys.exit(0)
    subCommands = [
        ["create-worker", None, CreateWorkerOptions,
         "Create and populate a directory for a new worker (msg protocol by default)"],
        ["start", None, upstream.StartOptions, "Start a worker"],
        ["stop", None, upstream.StopOptions, "Stop a worker"],
        ["restart", None, upstream.RestartOptions, "Restart a worker"],
    ]


def run() -> NoReturn:
    """Entry point of the ``buildbot-worker-msgproto`` console script."""
    config = Options()
    try:
        config.parseOptions()
    except usage.error as e:
        print(f"{sys.argv[0]}:  {e}")
        print()
        print(str(getattr(config, "subOptions", config)))
        sys.exit(1)
    subconfig = config.subOptions
    sys.exit(reflect.namedObject(subconfig.subcommandFunction)(subconfig))
