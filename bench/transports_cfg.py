"""The msg transports in the benchmark: master options, worker options, the RabbitMQ broker.

Used by ``bench/run_bench.py --per-transport``. Each transport is enabled exactly as a user
would (docs/transports/*.rst): the master gets
``c['protocols']['msg']['transports'] = {name: options}`` (nothing for ``tcp``, which is
negotiated on the msg/PB port itself), a worker is created with
``buildbot-worker-msgproto create-worker --transport NAME --transport-option K=V ...
<host:port of that transport>`` and the many-workers process gets the same options.

AMQP needs a broker: :class:`BenchBroker` starts a private one (``scripts/rabbitmq``, via
``master_tests/rabbitmq.py``'s :class:`Broker`) on free loopback ports. The master user, the
vhost and the single-worker user ``w1`` are provisioned at boot from a definitions file; the
N users of the many-workers phase (one AMQP user per worker connection: each worker
declares the exclusive queue ``msgproto.worker.<user>``) are added in ONE
``rabbitmqctl import_definitions`` call with plaintext ``password`` fields (RabbitMQ 3.10
hashes them on import; ``master_tests/rabbitmq.py`` pre-hashes, both work), each with the
permissions docs/transports/amqp.rst prescribes.
"""

from __future__ import annotations

import contextlib
import dataclasses
import json
import os
import secrets
import shutil
import subprocess
import tempfile
import time
from typing import Any

from buildbot_worker_msgproto.transports.amqp import Names
from buildbot_worker_msgproto.transports.amqp import master_permissions
from buildbot_worker_msgproto.transports.amqp import worker_permissions
from master_tests import rabbitmq
from master_tests.e2e.harness import free_port

TRANSPORTS = ("tcp", "amp", "websocket", "zmq", "amqp")
BROKER_VHOST = "msgproto-bench"
BROKER_MASTER_USER = "msgproto-master"
WS_PATH = "/msg"


@dataclasses.dataclass
class Endpoint:
    """How one master listens for a transport and how workers reach it."""

    transport: str
    #: python source of c['protocols']['msg']['transports'] ('' for tcp)
    master_transports_py: str
    #: host:port the workers connect to (the transport's port, or the broker's)
    host: str
    port: int
    #: worker transport options ('{name}' = the worker's name, for AMQP users)
    worker_options: dict[str, str]
    #: the master's own listening ports for workers (to count inbound connections)
    master_ports: tuple[int, ...]


def endpoint(transport: str, msg_port: int, broker: BenchBroker | None) -> Endpoint:
    """Master and worker settings of ``transport`` for a master whose msg port is
    ``msg_port``; a fresh free port for the transport's own listener."""
    if transport == "tcp":
        return Endpoint("tcp", "", "127.0.0.1", msg_port, {}, (msg_port,))
    if transport == "amqp":
        if broker is None:
            raise RuntimeError("no RabbitMQ broker (see the amqp broker failure above)")
        return Endpoint("amqp", repr({"amqp": broker.master_options()}), "127.0.0.1",
                        broker.port, broker.worker_options(), (msg_port,))
    tport = free_port()
    if transport == "amp":
        master = {"amp": {"port": f"tcp:{tport}:interface=127.0.0.1"}}
        opts: dict[str, str] = {}
    elif transport == "websocket":
        master = {"websocket": {"port": f"tcp:{tport}:interface=127.0.0.1", "path": WS_PATH}}
        opts = {"path": WS_PATH}
    elif transport == "zmq":
        master = {"zmq": {"port": tport, "interface": "127.0.0.1"}}
        opts = {}
    else:
        raise ValueError(f"unknown transport {transport!r}; choose from {', '.join(TRANSPORTS)}")
    return Endpoint(transport, repr(master), "127.0.0.1", tport, opts, (msg_port, tport))


def master_protocols_py(ep: Endpoint) -> str:
    """c['protocols'] for a master offering msg (on {PORT}) plus the transport."""
    base = "'port': 'tcp:{PORT}:interface=127.0.0.1'"
    if ep.master_transports_py:
        return "{'msg': {" + base + ", 'transports': " + ep.master_transports_py + "}}"
    return "{'msg': {" + base + "}}"


def create_options(ep: Endpoint, name: str) -> tuple[str, ...]:
    """create-worker options selecting the transport for worker ``name``."""
    out = ["--transport", ep.transport]
    for key, value in ep.worker_options.items():
        out += ["--transport-option", f"{key}={value.replace('{name}', name)}"]
    return tuple(out)


def many_workers_options(ep: Endpoint) -> list[str]:
    out = ["--transport", ep.transport]
    for key, value in ep.worker_options.items():
        out += ["--transport-option", f"{key}={value}"]
    return out


# --------------------------------------------------------------------------------------------
# RabbitMQ
# --------------------------------------------------------------------------------------------


class BenchBroker:
    """A private RabbitMQ broker for one benchmark run (started once, stopped at the end)."""

    def __init__(self, root: str) -> None:
        self.root = root
        self.port = free_port()
        self.names = Names()
        self.master_password = secrets.token_hex(8)
        #: every worker AMQP user of the benchmark has this password (its own user name)
        self.worker_password = secrets.token_hex(8)
        self.users: set[str] = set()
        self.import_seconds: dict[int, float] = {}  # users added -> seconds (import + check)
        directory = os.path.join(root, "rabbitmq")
        os.makedirs(directory, exist_ok=True)
        definitions = os.path.join(directory, "boot-definitions.json")
        with open(definitions, "w", encoding="utf-8") as f:
            json.dump(self._definitions(["w1"], master=True), f, indent=1)
        self.users.add("w1")
        env = {"MSGPROTO_RABBITMQ_NODENAME": f"msgproto-bench-{self.port}@localhost",
               "MSGPROTO_RABBITMQ_EPMD_PORT": str(free_port()),
               "MSGPROTO_RABBITMQ_DIST_PORT": str(free_port()),
               "MSGPROTO_RABBITMQ_DEFINITIONS": definitions}
        self.broker = rabbitmq.Broker(
            host="127.0.0.1", port=self.port, vhost=BROKER_VHOST,
            master_user=BROKER_MASTER_USER, master_password=self.master_password,
            workers={}, names=self.names, directory=os.path.join(directory, "broker"),
            env=env)
        self.start_seconds: float | None = None

    def _definitions(self, users: list[str], master: bool = False) -> dict[str, Any]:
        out_users = []
        perms = []
        if master:
            out_users.append({"name": BROKER_MASTER_USER, "password": self.master_password,
                              "tags": []})
            perms.append(dict(zip(("configure", "write", "read"),
                                  master_permissions(self.names)),
                              user=BROKER_MASTER_USER, vhost=BROKER_VHOST))
        for name in users:
            out_users.append({"name": name, "password": self.worker_password, "tags": []})
            perms.append(dict(zip(("configure", "write", "read"),
                                  worker_permissions(name, self.names)),
                              user=name, vhost=BROKER_VHOST))
        doc: dict[str, Any] = {"users": out_users, "permissions": perms}
        if master:
            doc["vhosts"] = [{"name": BROKER_VHOST}]
        return doc

    # -- lifecycle
    def start(self) -> None:
        if not rabbitmq.installed():
            raise RuntimeError(f"rabbitmq-server is not installed ({rabbitmq.RABBITMQ_BIN})")
        t0 = time.monotonic()
        self.broker.start()
        self.start_seconds = time.monotonic() - t0

    def stop(self) -> None:
        self.broker.stop()

    def cleanup(self) -> None:
        shutil.rmtree(os.path.join(self.root, "rabbitmq"), ignore_errors=True)

    def log_tail(self, lines: int = 40) -> str:
        return self.broker.log_tail(lines)

    # -- users
    def ensure_users(self, names: list[str], timeout: float = 120.0) -> float | None:
        """Create the AMQP users ``names`` (missing ones) with one import_definitions call;
        waits (bounded) until the last of them authenticates and has its permissions.
        Returns the seconds it took, None if there was nothing to do."""
        missing = [n for n in names if n not in self.users]
        if not missing:
            return None
        t0 = time.monotonic()
        fd, path = tempfile.mkstemp(prefix="users-", suffix=".json",
                                    dir=os.path.dirname(self.broker.directory))
        with os.fdopen(fd, "w", encoding="utf-8") as f:
            json.dump(self._definitions(missing), f)
        self.broker.ctl("import_definitions", path)
        # the import runs asynchronously in the broker: the users come first, then the
        # permissions; check the last permission
        last = missing[-1]
        deadline = time.monotonic() + timeout
        while True:
            with contextlib.suppress(RuntimeError, subprocess.TimeoutExpired):
                out = self.broker.ctl("list_user_permissions", "--silent", last)
                if BROKER_VHOST in out:
                    break
            if time.monotonic() > deadline:
                raise RuntimeError(f"{len(missing)} AMQP users were not imported within "
                                   f"{timeout:.0f}s\n{self.log_tail()}")
            time.sleep(0.5)
        dt = time.monotonic() - t0
        self.users.update(missing)
        self.import_seconds[len(missing)] = round(dt, 2)
        return dt

    # -- options
    def master_options(self) -> dict[str, Any]:
        return self.broker.master_options()

    def worker_options(self) -> dict[str, str]:
        """Worker transport options; the AMQP user is the worker's own name."""
        return {"user": "{name}", "password": self.worker_password, "vhost": BROKER_VHOST,
                "exchange": self.names.exchange, "master_queue": self.names.master_queue,
                "worker_queue_prefix": self.names.worker_queue_prefix, "heartbeat": "10"}

    def beam_pid(self) -> int | None:
        """pid of the broker's Erlang VM (a child of the rabbitmq-server script)."""
        try:
            with open(os.path.join(self.broker.directory, "server.pid"), encoding="ascii") as f:
                top = int(f.read().strip())
        except (OSError, ValueError):
            return None
        for entry in os.listdir("/proc"):
            if not entry.isdigit():
                continue
            try:
                with open(f"/proc/{entry}/stat", encoding="ascii", errors="replace") as f:
                    fields = f.read().rsplit(")", 1)[1].split()
                with open(f"/proc/{entry}/comm", encoding="ascii", errors="replace") as f:
                    comm = f.read().strip()
            except OSError:
                continue
            if int(fields[1]) == top and comm.startswith("beam"):
                return int(entry)
        return None


# --------------------------------------------------------------------------------------------
# sockets of a process
# --------------------------------------------------------------------------------------------


def _tcp_table() -> dict[int, tuple[int, str]]:
    """{socket inode: (local port, state hex)} of all TCP sockets of our network namespace."""
    out: dict[int, tuple[int, str]] = {}
    for name in ("tcp", "tcp6"):
        try:
            with open(f"/proc/net/{name}", encoding="ascii") as f:
                next(f)
                for line in f:
                    parts = line.split()
                    if len(parts) < 10:
                        continue
                    port = int(parts[1].rsplit(":", 1)[1], 16)
                    out[int(parts[9])] = (port, parts[3])
        except OSError:
            continue
    return out


def socket_counts(pid: int, worker_ports: tuple[int, ...] = ()) -> dict[str, int] | None:
    """Open fds of ``pid`` and how many are sockets (readlink 'socket:[inode]'), split into
    TCP LISTEN, ESTABLISHED TCP connections to one of ``worker_ports`` (inbound worker
    connections), other TCP, and non-TCP (unix, netlink, ...)."""
    fd_dir = f"/proc/{pid}/fd"
    try:
        entries = os.listdir(fd_dir)
    except OSError:
        return None
    inodes = []
    for entry in entries:
        with contextlib.suppress(OSError):
            target = os.readlink(os.path.join(fd_dir, entry))
            if target.startswith("socket:"):
                inodes.append(int(target[len("socket:["):-1]))
    table = _tcp_table()
    listen = inbound = other_tcp = non_tcp = 0
    for inode in inodes:
        if inode not in table:
            non_tcp += 1
            continue
        port, state = table[inode]
        if state == "0A":
            listen += 1
        elif state == "01" and port in worker_ports:
            inbound += 1
        else:
            other_tcp += 1
    return {"fds": len(entries), "sockets": len(inodes), "tcp_listen": listen,
            "tcp_inbound": inbound, "tcp_other": other_tcp, "non_tcp": non_tcp}
