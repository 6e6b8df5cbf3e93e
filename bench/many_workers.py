"""Run many buildbot workers in ONE process and ONE reactor, all started at the same moment.

    python bench/many_workers.py --protocol pb|msgpack_experimental_v7|msg \\
        --port PORT --count 200 --root DIR [--prefix mw] [--passwd pw]
    python bench/many_workers.py --protocol msg --transport zmq|amp|websocket|amqp|tcp \\
        [--transport-option KEY=VALUE ...] --port PORT --count 500 --first 501 --root DIR \\
        [--start-at EPOCH] [--started-file FILE]

Worker ``i`` (``--first`` .. ``--first + --count - 1``, 1-based) is named
``<prefix><i:03d>`` and uses basedir ``DIR/<name>``. The stock ``buildbot_worker.bot.Worker``
serves 'pb' and 'msgpack_experimental_v7'; ``buildbot_worker_msgproto.Worker`` serves 'msg',
over ``--transport`` (default tcp: negotiated on the master's port). ``--port`` (and
``--host``) is where the workers connect: the master's port for tcp/pb/msgpack, the
transport's own port for amp/websocket/zmq, the broker's port for amqp.
``--transport-option`` values may contain ``{name}``, replaced by each worker's name (e.g.
``user={name}``: each worker its own AMQP user).

Right before the services are started the script writes ``time.time()`` to
``--started-file`` (default ``DIR/started``; the benchmark measures from there). With
``--start-at EPOCH`` the services start at that wall-clock time (or at once if it has
passed), so that several such processes start their workers at the same moment.
Logs go to ``DIR/many_workers.log`` (``--log`` to change). SIGTERM/SIGINT stop every
worker and the reactor.
"""

from __future__ import annotations

import argparse
import os
import sys
import time

PROTOCOLS = ("pb", "msgpack_experimental_v7", "msg")
TRANSPORTS = ("tcp", "amp", "websocket", "zmq", "amqp")


def worker_name(prefix: str, i: int) -> str:
    return f"{prefix}{i:03d}"


def parse_options(items: list[str]) -> dict[str, str]:
    out = {}
    for item in items:
        key, sep, value = item.partition("=")
        if not sep or not key:
            raise SystemExit(f"--transport-option needs KEY=VALUE, got {item!r}")
        out[key] = value
    return out


def build_services(args: argparse.Namespace):
    from twisted.application import service

    options = parse_options(args.transport_option)
    masters = [(host, int(port)) for host, _, port in
               (item.rpartition(":") for item in args.masters.split(","))] \
        if args.masters else None
    if args.protocol == "msg":
        from buildbot_worker_msgproto import Worker

        def extra(name: str) -> dict:
            return {
                "protocol": "msg",
                "transport": args.transport,
                "transport_options": {k: v.replace("{name}", name) for k, v in options.items()},
                "masters": masters,
            }
    else:
        if args.transport != "tcp" or options:
            raise SystemExit(f"--protocol {args.protocol} only runs over --transport tcp")
        from buildbot_worker.bot import Worker

        def extra(name: str) -> dict:
            return {"protocol": args.protocol}

        if args.protocol == "msgpack_experimental_v7":
            import buildbot_worker.msgpack

            buildbot_worker.msgpack.BuildbotWebSocketClientProtocol.debug = False

    top = service.MultiService()
    for i in range(args.first, args.first + args.count):
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
            **extra(name),
        )
        w.setServiceParent(top)
    return top


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--protocol", choices=PROTOCOLS, required=True)
    p.add_argument("--transport", choices=TRANSPORTS, default="tcp",
                   help="transport of the msg protocol (default tcp)")
    p.add_argument("--transport-option", action="append", default=[], metavar="KEY=VALUE",
                   help="transport option, repeatable; '{name}' in VALUE is the worker name")
    p.add_argument("--host", default="127.0.0.1")
    p.add_argument("--port", type=int, required=True)
    p.add_argument("--masters", default=None, metavar="HOST:PORT,HOST:PORT",
                   help="msg: every worker knows these masters (failover), first preferred")
    p.add_argument("--count", type=int, default=200)
    p.add_argument("--first", type=int, default=1, help="index of the first worker (1)")
    p.add_argument("--root", required=True)
    p.add_argument("--prefix", default="mw")
    p.add_argument("--passwd", default="pw")
    p.add_argument("--keepalive", type=int, default=600)
    p.add_argument("--start-at", type=float, default=None,
                   help="wall-clock time (time.time()) at which to start the workers")
    p.add_argument("--started-file", default=None,
                   help="where to write the start time (default ROOT/started)")
    p.add_argument("--log", default=None, help="log file (default ROOT/many_workers.log)")
    args = p.parse_args(argv)

    os.makedirs(args.root, exist_ok=True)
    started_file = args.started_file or os.path.join(args.root, "started")
    logpath = args.log or os.path.join(args.root, "many_workers.log")
    logfile = open(logpath, "a", encoding="utf-8")  # noqa: SIM115

    from twisted.internet import reactor
    from twisted.python import log

    log.startLogging(logfile, setStdout=False)
    top = build_services(args)

    def start() -> None:
        with open(started_file, "w", encoding="utf-8") as f:
            f.write(f"{time.time():.6f}\n")
        top.startService()

    def when_running() -> None:
        delay = 0.0 if args.start_at is None else max(0.0, args.start_at - time.time())
        reactor.callLater(delay, start)

    reactor.callWhenRunning(when_running)
    reactor.addSystemEventTrigger(
        "before", "shutdown", lambda: top.stopService() if top.running else None)
    reactor.run()  # installs SIGTERM/SIGINT handlers that stop the reactor
    return 0


if __name__ == "__main__":
    sys.exit(main())
