"""A minimal msg worker written from the specification alone (``docs/``).

This module is the conformance check of the spec: it uses only the Python standard
library (no Twisted, no buildbot-worker, nothing of this package) and takes everything
it can from the spec's own tables, loaded from ``docs/schemas/``:

* every message it sends and receives is checked against ``schemas/<type>.json``;
* the commands it offers, their versions (``worker_commands``), required arguments,
  defaults and path rules come from ``schemas/commands/*.json``;
* its ``get_worker_info`` answer is checked against ``schemas/results/``.

The rest (banana dialect negotiation, framing, SCRAM, sequence numbers, heartbeats,
binary side frames, transfer sequences, update rules) follows the text of
``docs/protocol.rst`` and ``docs/commands.rst``.  A test drives a real Buildbot master
with it (``master_tests/e2e/test_spec_conformance.py``).
"""

from __future__ import annotations

import base64
import bz2
import contextlib
import glob
import gzip
import hashlib
import hmac
import io
import json
import os
import pathlib
import re
import select
import shutil
import socket
import struct
import subprocess
import tarfile
import threading
import time
from typing import Any
from typing import Callable

DOCS = pathlib.Path(__file__).resolve().parent.parent / "docs"
DIALECT = b"msgproto-v1"
MAX_OFFER_BYTES = 1024  # protocol.rst 2.2: the worker's bound on an incomplete offer
TRANSFER_WINDOW = 16  # protocol.rst 12: requests in flight per transfer


class SpecError(AssertionError):
    """The master did something the spec does not allow (or the spec is wrong)."""


# ----------------------------------------------------------------------------- spec tables
class Tables:
    """The spec's machine-readable tables, loaded from ``docs/schemas``."""

    def __init__(self, docs: pathlib.Path = DOCS) -> None:
        schemas = docs / "schemas"
        self.messages = {p.stem: json.loads(p.read_text("utf-8"))
                         for p in schemas.glob("*.json")}
        self.commands = {p.stem: json.loads(p.read_text("utf-8"))
                         for p in (schemas / "commands").glob("*.json")}
        self.results = {p.stem: json.loads(p.read_text("utf-8"))
                        for p in (schemas / "results").glob("*.json")}

    def check_message(self, message: dict[str, Any]) -> None:
        schema = self.messages.get(message.get("type"))
        if schema is None:
            raise SpecError(f"message of unknown type {message.get('type')!r}")
        problems = validate(message, schema)
        if problems:
            raise SpecError(f"{message['type']} does not match its schema: {problems}")

    def worker_commands(self) -> dict[str, str]:
        return {name: s["x-msgproto"]["version"] for name, s in self.commands.items()}


_JSON_TYPES: dict[str, Callable[[Any], bool]] = {
    "string": lambda v: isinstance(v, str),
    "integer": lambda v: isinstance(v, int) and not isinstance(v, bool),
    "number": lambda v: isinstance(v, (int, float)) and not isinstance(v, bool),
    "boolean": lambda v: isinstance(v, bool),
    "object": lambda v: isinstance(v, dict),
    "array": lambda v: isinstance(v, list),
    "null": lambda v: v is None,
}


def validate(value: Any, schema: dict[str, Any], where: str = "$") -> list[str]:
    """The JSON Schema keywords the spec's schemas use, checked; a list of problems."""
    problems: list[str] = []
    types = schema.get("type")
    if types is not None:
        names = [types] if isinstance(types, str) else types
        if not any(_JSON_TYPES[n](value) for n in names):
            return [f"{where}: {value!r:.60} is not {names}"]
    if "const" in schema and value != schema["const"]:
        problems.append(f"{where}: must be {schema['const']!r}")
    if "minimum" in schema and _JSON_TYPES["number"](value) and value < schema["minimum"]:
        problems.append(f"{where}: {value} < {schema['minimum']}")
    if "pattern" in schema and isinstance(value, str) and not re.search(schema["pattern"],
                                                                       value):
        problems.append(f"{where}: {value!r} does not match {schema['pattern']}")
    if isinstance(value, dict):
        problems += [f"{where}: {key!r} missing" for key in schema.get("required", ())
                     if key not in value]
        properties = schema.get("properties", {})
        extra = schema.get("additionalProperties", True)
        for key, item in value.items():
            if key in properties:
                problems += validate(item, properties[key], f"{where}.{key}")
            elif extra is False:
                problems.append(f"{where}: unexpected {key!r}")
            elif isinstance(extra, dict):
                problems += validate(item, extra, f"{where}.{key}")
    if isinstance(value, list) and "items" in schema:
        for i, item in enumerate(value):
            problems += validate(item, schema["items"], f"{where}[{i}]")
    return problems


# ----------------------------------------------------------------------------- banana, SCRAM
def _banana_header(data: bytes, pos: int, type_byte: int) -> tuple[int, int] | None:
    """(value, position after the type byte) of a banana header, None if incomplete."""
    value, shift = 0, 0
    for i in range(pos, min(len(data), pos + 5)):
        byte = data[i]
        if byte < 0x80:
            value |= byte << shift
            shift += 7
            continue
        if byte != type_byte or i == pos:
            raise SpecError(f"bad banana header at byte {i}")
        return value, i + 1
    if len(data) >= pos + 5:
        raise SpecError("banana header longer than 4 digits")
    return None


def parse_offer(data: bytes) -> tuple[list[bytes], int] | None:
    """The dialects of a complete banana offer and its length, None if incomplete."""
    header = _banana_header(data, 0, 0x80)
    if header is None:
        return None
    count, pos = header
    dialects = []
    for _ in range(count):
        string = _banana_header(data, pos, 0x82)
        if string is None or len(data) < string[1] + string[0]:
            return None
        dialects.append(data[string[1]:string[1] + string[0]])
        pos = string[1] + string[0]
    return dialects, pos


def banana_string(value: bytes) -> bytes:
    digits, n = bytearray(), len(value)
    while True:
        digits.append(n & 0x7F)
        n >>= 7
        if not n:
            break
    return bytes(digits) + b"\x82" + value


def _hmac(key: bytes, data: bytes) -> bytes:
    return hmac.new(key, data, hashlib.sha256).digest()


def scram(password: str, version: int, worker: str, client_nonce: str, nonce: str,
          salt_b64: str, iterations: int) -> tuple[str, bytes]:
    """(authenticate.proof, the ServerSignature welcome must carry): protocol.rst 6.3."""
    transcript = json.dumps(["msgproto-scram", version, worker, client_nonce, nonce, salt_b64,
                             iterations], separators=(",", ":"), ensure_ascii=True).encode()
    salted = hashlib.pbkdf2_hmac("sha256", password.encode("utf-8"),
                                 base64.b64decode(salt_b64, validate=True), iterations, 32)
    client_key = _hmac(salted, b"Client Key")
    signature = _hmac(hashlib.sha256(client_key).digest(), transcript)
    proof = bytes(a ^ b for a, b in zip(client_key, signature))
    return base64.b64encode(proof).decode("ascii"), _hmac(_hmac(salted, b"Server Key"),
                                                          transcript)


# ----------------------------------------------------------------------------- the worker
class Pending:
    """A request of ours waiting for its answer."""

    def __init__(self) -> None:
        self.done = threading.Event()
        self.result: Any = None
        self.blob: bytes | None = None
        self.error: tuple[str, str] | None = None

    def wait(self, timeout: float = 60.0) -> Any:
        if not self.done.wait(timeout):
            raise SpecError("no answer to our request")
        if self.error is not None:
            raise SpecError(f"request failed: {self.error}")
        return self.result


class SpecWorker:
    """One worker session over TCP (the master's PB/msg port), spec-driven."""

    def __init__(self, port: int, name: str, password: str, basedir: str,
                 features: tuple[str, ...] = ("blob",), tables: Tables | None = None,
                 host: str = "127.0.0.1") -> None:
        self.tables = tables or Tables()
        self.name = name
        self.password = password
        self.basedir = os.path.abspath(basedir)
        self.features = features
        self.sock = socket.create_connection((host, port), timeout=30)
        self.sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        self._buffer = b""
        self._send_lock = threading.Lock()
        self.seq = 0  # last seq sent
        self.peer_seq = 0  # last seq received
        self._acked = 0
        self._next_id = 0
        self._pending: dict[int, Pending] = {}
        self.builders: dict[str, str] = {}  # name -> builder directory
        self.commands: dict[Any, dict[str, Any]] = {}  # command_id -> state
        self.blobs = False
        self.heartbeat_interval = 10.0
        self.last_sent = time.monotonic()
        #: every master request, in order: (type, message) -- for the attach sequence
        self.requests_seen: list[tuple[str, dict[str, Any]]] = []
        self.errors: list[BaseException] = []
        self.closed: tuple[str, str] | None = None
        self._thread: threading.Thread | None = None
        os.makedirs(self.basedir, exist_ok=True)

    # -- bytes and frames ----------------------------------------------------------------
    def _recv_exactly(self, n: int, deadline: float) -> bytes:
        while len(self._buffer) < n:
            timeout = deadline - time.monotonic()
            if timeout <= 0:
                raise TimeoutError
            readable, _, _ = select.select([self.sock], [], [], min(timeout, 0.5))
            if readable:
                data = self.sock.recv(1 << 20)
                if not data:
                    raise ConnectionError("closed by the master")
                self._buffer += data
        data, self._buffer = self._buffer[:n], self._buffer[n:]
        return data

    def _read_frame(self, deadline: float) -> bytes:
        (length,) = struct.unpack("!I", self._recv_exactly(4, deadline))
        return self._recv_exactly(length, time.monotonic() + 30)

    def send(self, message_type: str, body: dict[str, Any], blob: bytes | None = None,
             request: bool = False) -> Pending | None:
        """Send one message (with its side frame); a :class:`Pending` for requests."""
        with self._send_lock:
            pending = None
            self.seq += 1
            message = {"type": message_type, "seq": self.seq, "ack": self.peer_seq}
            if request:
                self._next_id += 1
                message["id"] = self._next_id
                pending = self._pending[self._next_id] = Pending()
            message.update(body)
            if blob is not None:
                message["blob"] = len(blob)
            self.tables.check_message(message)
            frame = json.dumps(message, separators=(",", ":"), ensure_ascii=True).encode()
            data = struct.pack("!I", len(frame)) + frame
            if blob is not None:
                data += struct.pack("!I", len(blob)) + blob
            self.sock.sendall(data)
            self._acked = self.peer_seq
            self.last_sent = time.monotonic()
            return pending

    def request(self, message_type: str, blob: bytes | None = None, **body: Any) -> Pending:
        pending = self.send(message_type, body, blob, request=True)
        assert pending is not None
        return pending

    def _receive(self, deadline: float) -> dict[str, Any]:
        message = json.loads(self._read_frame(deadline))
        self.tables.check_message(message)
        if message["seq"] != self.peer_seq + 1:
            raise SpecError(f"seq {message['seq']} after {self.peer_seq}")
        if not self.seq >= message["ack"]:
            raise SpecError(f"ack {message['ack']} of frames we never sent")
        self.peer_seq = message["seq"]
        if "blob" in message:  # protocol.rst 10: the next frame is the side frame
            message["blob"] = self._read_frame(time.monotonic() + 30)
        return message

    # -- connection and handshake ---------------------------------------------------------
    def connect(self, timeout: float = 30.0) -> dict[str, Any]:
        """Negotiate the dialect and authenticate; returns the welcome message."""
        deadline = time.monotonic() + timeout
        offer = None
        while offer is None:
            offer = parse_offer(self._buffer)
            if offer is None:
                if len(self._buffer) > MAX_OFFER_BYTES:
                    raise SpecError("dialect offer too long")
                self._buffer += self._more(deadline)
        dialects, used = offer
        self._buffer = self._buffer[used:]
        if DIALECT not in dialects:
            raise SpecError(f"the master does not offer {DIALECT!r}: {dialects}")
        self.sock.sendall(banana_string(DIALECT))
        client_nonce = base64.b64encode(os.urandom(24)).decode("ascii")
        self.send("hello", {"versions": [1], "worker": self.name, "nonce": client_nonce,
                            "max_frame_size": 16 * 1024 * 1024,
                            "features": list(self.features)})
        challenge = self._receive(deadline)
        if challenge["type"] != "challenge":
            raise SpecError(f"expected challenge, got {challenge}")
        if not challenge["nonce"].startswith(client_nonce) or challenge["version"] != 1:
            raise SpecError("bad challenge")
        proof, server_signature = scram(self.password, challenge["version"], self.name,
                                        client_nonce, challenge["nonce"], challenge["salt"],
                                        challenge["iterations"])
        self.send("authenticate", {"proof": proof})
        welcome = self._receive(deadline)
        if welcome["type"] != "welcome":
            raise SpecError(f"expected welcome, got {welcome}")
        if not hmac.compare_digest(base64.b64decode(welcome["signature"]), server_signature):
            raise SpecError("the master does not know our password")
        self.blobs = "blob" in welcome.get("features", [])
        self.heartbeat_interval = welcome["heartbeat_interval"]
        return welcome

    def _more(self, deadline: float) -> bytes:
        readable, _, _ = select.select([self.sock], [], [], max(0.0, deadline - time.monotonic()))
        if not readable:
            raise TimeoutError("no dialect offer")
        data = self.sock.recv(4096)
        if not data:
            raise ConnectionError("closed before the dialect offer")
        return data

    # -- the open session -----------------------------------------------------------------
    def start(self) -> SpecWorker:
        """Run the session in a thread (until the master closes it or :meth:`stop`)."""
        self._thread = threading.Thread(target=self._run, name=f"spec-worker-{self.name}",
                                        daemon=True)
        self._thread.start()
        return self

    def stop(self, code: str = "shutdown", reason: str = "spec worker stopping") -> None:
        if self.closed is None:
            with contextlib.suppress(OSError):
                self.send("close", {"code": code, "reason": reason})
            self.closed = (code, reason)
        for command in list(self.commands.values()):
            process = command.get("process")
            if process is not None and process.poll() is None:
                process.kill()
        self.sock.close()
        if self._thread is not None and self._thread is not threading.current_thread():
            self._thread.join(10)

    def _run(self) -> None:
        try:
            while self.closed is None:
                try:
                    message = self._receive(time.monotonic() + 0.5)
                except TimeoutError:
                    self._heartbeat()
                    continue
                self._dispatch(message)
                self._heartbeat()
        except (ConnectionError, OSError) as e:
            if self.closed is None:
                self.closed = ("connection_lost", str(e))
        except BaseException as e:  # a spec violation: remember it, close
            self.errors.append(e)
            self.stop("protocol_error", str(e)[:500])

    def _heartbeat(self) -> None:
        if time.monotonic() - self.last_sent >= self.heartbeat_interval:
            self.send("ping", {})
        elif self.peer_seq - self._acked >= 64:
            self.send("ack", {})

    def _dispatch(self, message: dict[str, Any]) -> None:
        kind = self.tables.messages[message["type"]]["x-msgproto"]["kind"]
        if message["type"] == "close":
            self.closed = (message["code"], message["reason"])
        elif kind == "request":
            self.requests_seen.append((message["type"], message))
            handler = getattr(self, f"on_{message['type']}", None)
            if handler is None:
                self.send("error", {"reply_to": message["id"], "code": "unknown_command",
                                    "message": f"not implemented: {message['type']}"})
                return
            try:
                result = handler(message)
            except Exception as e:
                self.send("error", {"reply_to": message["id"], "code": "failed",
                                    "message": f"{type(e).__name__}: {e}"[:4096]})
            else:
                self.send("response", {"reply_to": message["id"], "result": result})
                if message["type"] == "shutdown":
                    self.stop("shutdown", "shutdown requested by the master")
        elif kind == "response":
            pending = self._pending.pop(message.get("reply_to"), None)
            if pending is None:
                if message["type"] == "error":
                    return  # a complaint about one of our messages: the spec says log it
                raise SpecError(f"answer to no request of ours: {message}")
            if message["type"] == "error":
                pending.error = (message["code"], message["message"])
            else:
                pending.result = message.get("result")
                pending.blob = message["blob"] if isinstance(message.get("blob"),
                                                             bytes) else None
            pending.done.set()

    # -- master requests ------------------------------------------------------------------
    def on_print(self, message: dict[str, Any]) -> None:
        return None

    def on_keepalive(self, message: dict[str, Any]) -> None:
        return None

    def on_shutdown(self, message: dict[str, Any]) -> None:
        return None

    def on_get_worker_info(self, message: dict[str, Any]) -> dict[str, Any]:
        info = {"worker_commands": self.tables.worker_commands(), "version": "spec-worker-1",
                "basedir": self.basedir, "system": os.name,
                "environ": {k: v for k, v in os.environ.items()}, "numcpus": os.cpu_count(),
                "delete_leftover_dirs": False, "admin": "spec worker", "host": "spec host"}
        problems = validate(info, self.tables.results["get_worker_info"])
        if problems:
            raise SpecError(f"our worker info does not match the schema: {problems}")
        return info

    def on_set_builder_list(self, message: dict[str, Any]) -> list[str]:
        self.builders = {}
        for name, builddir in message["builders"]:
            path = os.path.join(self.basedir, builddir)
            os.makedirs(path, exist_ok=True)
            self.builders[name] = path
        return sorted(self.builders)

    def on_start_command(self, message: dict[str, Any]) -> None:
        schema = self.tables.commands.get(message["command"])
        if schema is None:
            raise KeyError(f"unknown command {message['command']!r}")
        if message["builder"] not in self.builders:
            raise KeyError(f"no builder {message['builder']!r}")
        problems = validate(message["args"], schema)
        if problems:
            raise ValueError(f"bad arguments: {problems}")
        args = {k: v["default"] for k, v in schema["properties"].items() if "default" in v}
        args.update(message["args"])
        builder_dir = self.builders[message["builder"]]
        for rule in schema["x-msgproto"]["paths"]:
            values = [args.get(part) or "" for part in rule["parts"]]
            listed = rule["each"] and isinstance(values[-1], list)
            items = values[-1] if listed else [values[-1]]
            paths = [os.path.join(builder_dir, *values[:-1],
                                  os.path.expanduser(i) if rule["expand_user"] else i)
                     for i in items]
            args[f"_{rule['name']}"] = paths if listed or rule["as_list"] else paths[0]
        command = {"id": message["command_id"], "name": message["command"], "args": args,
                   "schema": schema, "interrupted": False, "lines": {}}
        self.commands[message["command_id"]] = command
        # start_command is answered once the command has started; updates come after
        threading.Thread(target=self._run_command, args=(command,), daemon=True).start()
        return None

    def on_interrupt_command(self, message: dict[str, Any]) -> None:
        command = self.commands.get(message["command_id"])
        if command is not None:
            command["interrupted"] = True
            process = command.get("process")
            if process is not None and process.poll() is None:
                process.kill()
        return None

    # -- commands -------------------------------------------------------------------------
    def _update(self, command: dict[str, Any], *items: tuple[str, Any]) -> None:
        allowed = command["schema"]["x-msgproto"]["updates"]
        for key, value in items:
            if key not in allowed or validate(value, allowed[key]):
                raise SpecError(f"{command['name']} may not send update {key}={value!r:.60}")
        self.send("update", {"command_id": command["id"], "updates": [list(i) for i in items]})

    def _text(self, command: dict[str, Any], key: str, data: bytes | str) -> None:
        """Text updates are whole lines, each ending in a newline (commands.rst 4)."""
        text = data.decode("utf-8", "replace") if isinstance(data, bytes) else data
        text = text.replace("\r\n", "\n")
        if text and not text.endswith("\n"):
            text += "\n"
        if text:
            self._update(command, (key, text))

    def _run_command(self, command: dict[str, Any]) -> None:
        started = time.monotonic()
        failure = None
        try:
            rc = getattr(self, f"command_{command['name']}")(command)
            self._update(command, ("rc", rc))
        except Exception as e:
            failure = {"type": type(e).__name__, "message": str(e), "traceback": repr(e)}
            self._update(command, ("rc", 1))
        self._update(command, ("elapsed", time.monotonic() - started))
        self.send("complete", {"command_id": command["id"], "failure": failure})
        self.commands.pop(command["id"], None)

    def command_shell(self, command: dict[str, Any]) -> int:
        args = command["args"]
        argv = args["command"]
        if isinstance(argv, list):
            argv = [item[1] if isinstance(item, list) else item for item in argv]
        env = dict(os.environ)
        for key, value in (args["env"] or {}).items():
            if value is None:
                env.pop(key, None)
            elif isinstance(value, list):
                env[key] = os.pathsep.join(value)
            else:
                env[key] = re.sub(r"\$\{([0-9a-zA-Z_]*)\}",
                                  lambda m: os.environ.get(m.group(1), ""), value)
        workdir = args["_workdir"]
        os.makedirs(workdir, exist_ok=True)
        self._text(command, "header", f"{argv!r}\n in dir {workdir}\n")
        process = command["process"] = subprocess.Popen(
            argv, cwd=workdir, env=env, shell=isinstance(argv, str),
            stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=subprocess.PIPE)
        stdin = (args["initial_stdin"] or "").encode()
        try:
            out, err = process.communicate(stdin, timeout=args["maxTime"] or 3600)
        except subprocess.TimeoutExpired:
            process.kill()
            out, err = process.communicate()
            self._update(command, ("failure_reason", "timeout"))
        if args["want_stdout"]:
            self._text(command, "stdout", out)
        if args["want_stderr"]:
            self._text(command, "stderr", err)
        return -1 if process.returncode < 0 else process.returncode

    def _upload(self, command: dict[str, Any], stream: io.BufferedIOBase) -> None:
        """write_file blocks, pipelined up to TRANSFER_WINDOW (commands.rst 6)."""
        args = command["args"]
        remaining = args["maxsize"]
        in_flight: list[Pending] = []
        while not command["interrupted"]:
            size = args["blocksize"] if remaining is None else min(args["blocksize"],
                                                                   remaining)
            block = stream.read(size) if size > 0 else b""
            if not block:
                break
            if remaining is not None:
                remaining -= len(block)
            if self.blobs:
                in_flight.append(self.request("write_file", blob=block,
                                              command_id=command["id"]))
            else:
                in_flight.append(self.request("write_file", command_id=command["id"],
                                              data=base64.b64encode(block).decode("ascii")))
            if len(in_flight) >= TRANSFER_WINDOW:
                in_flight.pop(0).wait()
        for pending in in_flight:
            pending.wait()

    def command_uploadFile(self, command: dict[str, Any]) -> int:  # noqa: N802
        path = command["args"]["_path"]
        self._text(command, "header", f"sending {path}\n")
        with open(path, "rb") as f:
            self._upload(command, f)
        self.request("close_writer", command_id=command["id"]).wait()
        if command["args"]["keepstamp"]:
            st = os.stat(path)
            self.request("utime_file", command_id=command["id"], access_time=st.st_atime,
                         modified_time=st.st_mtime).wait()
        return 0

    def command_uploadDirectory(self, command: dict[str, Any]) -> int:  # noqa: N802
        path = command["args"]["_path"]
        archive = io.BytesIO()
        with tarfile.open(fileobj=archive, mode="w", format=tarfile.PAX_FORMAT) as tar:
            tar.add(path, arcname="")
        data = archive.getvalue()
        compress = command["args"]["compress"]
        if compress == "gz":
            data = gzip.compress(data)
        elif compress == "bz2":
            data = bz2.compress(data)
        self._text(command, "header", f"sending {path}\n")
        self._upload(command, io.BytesIO(data))
        self.request("unpack_writer", command_id=command["id"]).wait()
        return 0

    def _read(self, pending: Pending) -> bytes:
        result = pending.wait()
        if pending.blob is not None:
            return pending.blob
        return base64.b64decode(result or "", validate=True)

    def command_downloadFile(self, command: dict[str, Any]) -> int:  # noqa: N802
        args = command["args"]
        path = args["_path"]
        os.makedirs(os.path.dirname(path), exist_ok=True)
        remaining = args["maxsize"]
        rc = 0
        with open(path, "wb") as f:
            if args["mode"] is not None:
                os.chmod(path, args["mode"])
            # reads are pipelined; the master answers them in order (commands.rst 6)
            reads = [self.request("read_file", command_id=command["id"],
                                  length=args["blocksize"]) for _ in range(TRANSFER_WINDOW)]
            while reads:
                block = self._read(reads.pop(0))
                if not block:
                    break
                if remaining is not None:
                    block, remaining = block[:remaining], remaining - len(block)
                    if remaining < 0:
                        rc = 1
                        break
                f.write(block)
                reads.append(self.request("read_file", command_id=command["id"],
                                          length=args["blocksize"]))
            for pending in reads:  # answered before close_reader: empty at the end
                pending.done.wait(30)
        self.request("close_reader", command_id=command["id"]).wait()
        return rc

    def _errno_command(self, command: dict[str, Any], action: Callable[[], Any]) -> int:
        try:
            action()
        except OSError as e:
            self._text(command, "header", f"{command['name']}: {e.strerror}: {e.filename}\n")
            return e.errno or 1
        return 0

    def command_stat(self, command: dict[str, Any]) -> int:
        def stat() -> None:
            st = os.stat(command["args"]["_path"])
            self._update(command, ("stat", [int(v) for v in tuple(st)]))
        return self._errno_command(command, stat)

    def command_glob(self, command: dict[str, Any]) -> int:
        files = glob.glob(command["args"]["_path"], recursive=True)
        self._update(command, ("files", files))
        return 0

    def command_listdir(self, command: dict[str, Any]) -> int:
        return self._errno_command(command, lambda: self._update(
            command, ("files", os.listdir(command["args"]["_path"]))))

    def command_mkdir(self, command: dict[str, Any]) -> int:
        return self._errno_command(command, lambda: [
            os.makedirs(p, exist_ok=True) for p in command["args"]["_paths"]])

    def command_rmdir(self, command: dict[str, Any]) -> int:
        for path in command["args"]["_paths"]:
            if os.path.isdir(path) and not os.path.islink(path):
                shutil.rmtree(path, ignore_errors=True)
            elif os.path.lexists(path):
                os.remove(path)
        return 0

    def command_rmfile(self, command: dict[str, Any]) -> int:
        paths = command["args"]["_path"]
        rc = 0  # a list: every file is tried, rc is the last failure's errno
        for path in paths if isinstance(paths, list) else [paths]:
            rc = self._errno_command(command, lambda p=path: os.remove(p)) or rc
        return rc

    def command_cpdir(self, command: dict[str, Any]) -> int:
        args = command["args"]
        return self._errno_command(command, lambda: shutil.copytree(
            args["_from_path"], args["_to_path"], symlinks=True))
