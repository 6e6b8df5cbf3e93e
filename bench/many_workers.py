"""Run many buildbot workers in ONE process and ONE reactor, all started at the same moment.

    python bench/many_workers.py --protocol pb|msgpack_experimental_v7|msg \\
        --port PORT --count 200 --root DIR [--prefix mw] [--passwd pw]

Worker ``i`` (1-based) is named ``<prefix><i:03d>`` and uses basedir ``DIR/<name>``. The
stock ``buildbot_worker.bot.Worker`` serves 'pb' and 'msgpack_experimental_v7';
``buildbot_worker_msgproto.Worker`` serves 'msg'. Right before the services are started the
script writes ``time.time()`` to ``DIR/started`` (the benchmark measures from there).
Logs go to ``DIR/many_workers.log``. SIGTERM/SIGINT stop every worker and the reactor.
"""

from __future__ import annotations

import argparse
import os
import sys
import time

PROTOCOLS = ("pb", "msgpack_experimental_v7", "msg")


def worker_name(prefix: str, i: int) -> str:
    return f"{prefix}{i:03d}"


def build_services(args: argparse.Namespace):
    from twisted.application import service

    if args.protocol == "msg":
        from buildbot_worker_msgproto import Worker

        extra = {"protocol": "msg"}
    else:
        from buildbot_worker.bot import Worker

        extra = {"protocol": args.protocol}
        if args.protocol == "msgpack_experimental_v7":
            import buildbot_worker.msgpack

            buildbot_worker.msgpack.BuildbotWebSocketClientProtocol.debug = False

    top = service.MultiService()
    for i in range(1, args.count + 1):
        name = worker_name(args.prefix, i)
        basedir = os.path.join(args.root, name)
        os.makedirs(basedir, exist_ok=True)
        w = Worker(
            args.host,
            args.port,
            name,
            args.passwd,
            basedir,
            args.keepalive,
            **extra,
        )
        w.setServiceParent(top)
    return top


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--protocol", choices=PROTOCOLS, required=True)
    p.add_argument("--host", default="127.0.0.1")
    p.add_argument("--port", type=int, required=True)
    p.add_argument("--count", type=int, default=200)
    p.add_argument("--root", required=True)
    p.add_argument("--prefix", default="mw")
    p.add_argument("--passwd", default="pw")
    p.add_argument("--keepalive", type=int, default=600)
    args = p.parse_args(argv)

    os.makedirs(args.root, exist_ok=True)
    logfile = open(os.path.join(args.root, "many_workers.log"), "a", encoding="utf-8")  # noqa: SIM115

    from twisted.internet import reactor
    from twisted.python import log

    log.startLogging(logfile, setStdout=False)
    top = build_services(args)

    def start() -> None:
        with open(os.path.join(args.root, "started"), "w", encoding="utf-8") as f:
            f.write(f"{time.time():.6f}\n")
        top.startService()

    reactor.callWhenRunning(start)
    reactor.addSystemEventTrigger("before", "shutdown", top.stopService)
    reactor.run()  # installs SIGTERM/SIGINT handlers that stop the reactor
    return 0


if __name__ == "__main__":
    sys.exit(main())
