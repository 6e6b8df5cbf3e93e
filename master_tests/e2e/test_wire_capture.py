"""What an eavesdropper on the worker connection sees: a byte-recording relay in the middle.

A real master and our real worker talk through a TCP relay running in this test process
(127.0.0.1 only).  The relay forwards both directions unchanged and appends every byte
to one buffer per direction.  The worker has a distinctive password; the build runs a
ShellCommand that uses a secret from a secrets provider (``%(secret:...)s``), uploads a
file the worker generates and downloads a file from the master.

- plain msg over tcp: the worker password never crosses the wire in any common encoding
  (raw, JSON-escaped, hex, base64 at every alignment, UTF-16), in either direction.  The
  secret value *does* travel in the command arguments (the worker needs it to run the
  command; only TLS hides it), and that is asserted as the honest baseline, together
  with proof that the capture works (``"type":"hello"`` and the file contents are seen);
- msg over TLS (``ssl:`` strport, worker ``--tls-ca-file``): neither the password nor
  the secret nor the transferred file contents nor any JSON appear on the wire.
"""

from __future__ import annotations

import base64
import contextlib
import hashlib
import json
import os
import socket
import struct
import threading

import pytest

from buildbot_worker_msgproto.protocol import negotiation
from buildbot_worker_msgproto.protocol.limits import MSG_DIALECT

from . import harness
from .test_tls import Certs

WORKER = "w1"
#: distinctive, and with characters that JSON escapes (quote, backslash, non-ASCII)
PASSWD = 'wire-PW-\u00e9"Kx93\\never-on-the-wire-Qv81'
SECRET_NAME = "wire_token"
SECRET_VALUE = "wire-SECRET-value-7Hq2-zz91"
DOWNLOAD_CONTENT = b"download-payload-Mw4t: master file content travelling to the worker\n"
#: generated on the worker by a printf loop, so the full text never appears in any args
UPLOAD_CONTENT = b"".join(b"upload-payload-%d-Zq7P\n" % i for i in range(1, 4))

BUILDERS_PY_TEMPLATE = """
c['builders'].append(util.BuilderConfig(
    name='wire', workernames=WORKER_NAMES,
    factory=util.BuildFactory([
        steps.ShellCommand(name='use_secret', command=util.Interpolate(
            'printf %%s "%(secret:{secret})s" | sha256sum; echo secret-step-done')),
        steps.FileDownload(name='download', mastersrc={download_src!r}, workerdest='dl.txt'),
        steps.ShellCommand(name='make_upload', command=['sh', '-c',
            'for i in 1 2 3; do printf "upload-payload-%s-Zq7P\\\\n" "$i"; done > up.txt; '
            'sha256sum dl.txt']),
        steps.FileUpload(name='upload', workersrc='up.txt', masterdest={upload_dest!r}),
        steps.FileDownload(name='big1', mastersrc={big_src!r}, workerdest='big1.bin'),
        steps.FileDownload(name='big2', mastersrc={big_src!r}, workerdest='big2.bin'),
        steps.ShellCommand(name='check_big', command=['sha256sum', 'big1.bin', 'big2.bin']),
    ])))
"""
#: Downloaded twice: the master pushes its initial window (``MASTER_INITIAL_WINDOW``) of
#: the first, the worker reads the rest announcing its download window (its initial 4 MiB),
#: and the master pushes that much of the second: all of it.
BIG_CONTENT = hashlib.sha256(b"big").digest() * (3 * 2**20 // 32)
MASTER_INITIAL_WINDOW = 2**20


# --------------------------------------------------------------------------------------------
# the relay
# --------------------------------------------------------------------------------------------


class RecordingRelay:
    """Listens on 127.0.0.1, forwards every connection to ``target_port`` and records
    every byte: ``to_master`` (worker -> master) and ``to_worker`` (master -> worker)."""

    def __init__(self, target_port: int) -> None:
        self.target_port = target_port
        #: one (worker -> master, master -> worker) pair of buffers per relayed connection
        self.streams: list[tuple[bytearray, bytearray]] = []
        self._lock = threading.Lock()
        self._stopped = threading.Event()
        self._sockets: list[socket.socket] = []
        self._threads: list[threading.Thread] = []
        self._listener = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        self._listener.bind(("127.0.0.1", 0))
        self._listener.listen(16)
        self._listener.settimeout(0.2)
        self.port = self._listener.getsockname()[1]
        self._start_thread(self._accept_loop)

    def _start_thread(self, target, *args) -> None:
        t = threading.Thread(target=target, args=args, daemon=True)
        self._threads.append(t)
        t.start()

    def _accept_loop(self) -> None:
        while not self._stopped.is_set():
            try:
                client, _ = self._listener.accept()
            except socket.timeout:
                continue
            except OSError:
                return
            try:
                upstream = socket.create_connection(("127.0.0.1", self.target_port), timeout=10)
            except OSError:
                client.close()
                continue
            client.settimeout(None)
            upstream.settimeout(None)
            with self._lock:
                if self._stopped.is_set():
                    client.close()
                    upstream.close()
                    return
                to_master, to_worker = bytearray(), bytearray()
                self.streams.append((to_master, to_worker))
                self._sockets += [client, upstream]
            self._start_thread(self._pump, client, upstream, to_master)
            self._start_thread(self._pump, upstream, client, to_worker)

    def _pump(self, src: socket.socket, dst: socket.socket, record: bytearray) -> None:
        while True:
            try:
                data = src.recv(65536)
            except OSError:
                break
            if not data:
                break
            with self._lock:
                record += data
            try:
                dst.sendall(data)
            except OSError:
                break
        with contextlib.suppress(OSError):
            dst.shutdown(socket.SHUT_WR)

    @property
    def connections(self) -> int:
        with self._lock:
            return len(self.streams)

    def captured(self) -> tuple[bytes, bytes]:
        """All bytes of all connections: (worker -> master, master -> worker)."""
        with self._lock:
            return (b"".join(bytes(a) for a, _ in self.streams),
                    b"".join(bytes(b) for _, b in self.streams))

    def connection_streams(self) -> list[tuple[bytes, bytes]]:
        with self._lock:
            return [(bytes(a), bytes(b)) for a, b in self.streams]

    def stop(self) -> None:
        self._stopped.set()
        with contextlib.suppress(OSError):
            self._listener.close()
        with self._lock:
            sockets = list(self._sockets)
        for s in sockets:
            with contextlib.suppress(OSError):
                s.shutdown(socket.SHUT_RDWR)
            with contextlib.suppress(OSError):
                s.close()
        for t in self._threads:
            t.join(timeout=5)
        alive = [t for t in self._threads if t.is_alive()]
        assert not alive, f"relay threads still running: {alive}"


# --------------------------------------------------------------------------------------------
# encodings an eavesdropper would look for
# --------------------------------------------------------------------------------------------


def _b64_forms(raw: bytes) -> dict[str, bytes]:
    """Base64 text that must appear if ``raw`` is base64-encoded inside a longer blob:
    for each of the three alignments, the encoding of the 3-byte-aligned middle part."""
    forms = {}
    for shift in range(3):
        part = raw[shift:]
        part = part[: len(part) - len(part) % 3]
        if len(part) < 9:
            continue
        forms[f"base64@{shift}"] = base64.b64encode(part)
        forms[f"urlsafe-base64@{shift}"] = base64.urlsafe_b64encode(part)
    return forms


def encodings(value: str | bytes) -> dict[str, bytes]:
    text = value.decode("utf-8") if isinstance(value, bytes) else value
    raw = text.encode("utf-8")
    forms = {
        "raw": raw,
        "json-escaped": json.dumps(text)[1:-1].encode("ascii"),
        "json-escaped-utf8": json.dumps(text, ensure_ascii=False)[1:-1].encode("utf-8"),
        "hex": raw.hex().encode(),
        "HEX": raw.hex().upper().encode(),
        "utf-16-le": text.encode("utf-16-le"),
        "utf-16-be": text.encode("utf-16-be"),
    }
    forms.update(_b64_forms(raw))
    return forms


def found_forms(value: str | bytes, captured: bytes) -> list[str]:
    """Names of the encodings of ``value`` found in ``captured``."""
    return [name for name, form in encodings(value).items() if form in captured]


def appears_raw_or_b64(value: bytes, captured: bytes) -> bool:
    return value in captured or any(f in captured for f in _b64_forms(value).values())


def worker_frames(stream: bytes) -> list[dict]:
    """The JSON messages of one plain worker -> master connection: the dialect choice,
    then length-prefixed frames (docs/protocol.rst, section 2); a binary side frame is
    put into its message's ``blob`` field (as latin-1 text, so it is searched too)."""
    choice = negotiation.encode_string(MSG_DIALECT)
    assert stream.startswith(choice), stream[:40]
    return _frames(stream[len(choice):])


def master_frames(stream: bytes) -> list[dict]:
    """The JSON messages of one plain master -> worker connection: the dialect offer,
    then frames, as :func:`worker_frames`."""
    parsed = negotiation.parse_offer(stream)
    assert parsed is not None, stream[:40]
    return _frames(parsed[1])


def _frames(rest: bytes) -> list[dict]:
    frames, at = [], 0
    while len(rest) - at >= 4:
        (length,) = struct.unpack_from("!I", rest, at)
        if len(rest) < at + 4 + length:
            break  # cut by the worker's shutdown
        message = json.loads(rest[at + 4:at + 4 + length])
        at += 4 + length
        if isinstance(message.get("blob"), int) and len(rest) - at >= 4:
            # the next frame is the message's binary side frame (feature 'blob')
            (blob_length,) = struct.unpack_from("!I", rest, at)
            message["blob"] = rest[at + 4:at + 4 + blob_length].decode("latin-1")
            at += 4 + blob_length
        frames.append(message)
    return frames


def _paths_containing(obj, needle: str, path: tuple = ()) -> list[tuple]:
    """JSON paths (tuples of keys/indexes) of the strings in ``obj`` containing ``needle``."""
    if isinstance(obj, str):
        return [path] if needle in obj else []
    if isinstance(obj, dict):
        items = obj.items()
    elif isinstance(obj, list):
        items = enumerate(obj)
    else:
        return []
    return [p for k, v in items for p in _paths_containing(v, needle, (*path, k))]


# --------------------------------------------------------------------------------------------
# environment
# --------------------------------------------------------------------------------------------


class WireEnv:
    def __init__(self, root: str, tls: bool) -> None:
        self.root = root
        self.tls = tls
        self.master: harness.Master | None = None
        self.worker: harness.Worker | None = None
        self.relay: RecordingRelay | None = None

    def run(self) -> dict:
        """Start master, relay and worker; run the build; stop worker and relay.
        Returns the finished build dict."""
        port = harness.free_port()
        www_port = harness.free_port()
        data = os.path.join(self.root, "data")
        os.makedirs(data)
        self.download_src = os.path.join(data, "download.txt")
        with open(self.download_src, "wb") as f:
            f.write(DOWNLOAD_CONTENT)
        self.upload_dest = os.path.join(data, "uploaded.txt")
        self.big_src = os.path.join(data, "big.bin")
        with open(self.big_src, "wb") as f:
            f.write(BIG_CONTENT)
        secrets_dir = harness.write_secrets(os.path.join(self.root, "secrets"),
                                            {SECRET_NAME: SECRET_VALUE})
        extra_args: tuple[str, ...] = ()
        if self.tls:
            certs = Certs(os.path.join(self.root, "certs"))
            protocols_py = repr({"msg": {"port": certs.strport(port),
                                         "initial_transfer_window": MASTER_INITIAL_WINDOW}})
            extra_args = ("--tls-ca-file", certs.ca_file)
        else:
            protocols_py = repr({"msg": {"port": f"tcp:{port}:interface=127.0.0.1",
                                         "initial_transfer_window": MASTER_INITIAL_WINDOW}})
        spec = harness.PROTOCOLS["msg"]
        builders_py = BUILDERS_PY_TEMPLATE.format(
            secret=SECRET_NAME, download_src=self.download_src, upload_dest=self.upload_dest,
            big_src=self.big_src)
        cfg = harness.make_master_cfg(protocols_py, spec.master_worker_py(WORKER, PASSWD),
                                      port, www_port, builders_py, secrets_dir=secrets_dir)
        self.master = harness.Master(os.path.join(self.root, "master"), cfg,
                                     www_port=www_port, master_port=port)
        self.master.create()
        self.master.start()
        self.relay = RecordingRelay(port)
        self.worker = harness.Worker.for_protocol(
            spec, os.path.join(self.root, "worker"), self.relay.port, WORKER, PASSWD,
            extra_create_args=extra_args)
        self.worker.create()
        tac = self.worker.tac_text()
        assert f"port = {self.relay.port}" in tac, tac  # really goes through the relay
        self.worker.start()
        self.master.wait_worker_connected(WORKER, 30, worker=self.worker)
        build = self.master.run_build("wire", timeout=90)
        self.worker.stop()
        self.relay.stop()
        return build

    def close(self) -> None:
        if self.worker is not None:
            self.worker.stop()
        if self.relay is not None:
            self.relay.stop()
        if self.master is not None:
            self.master.stop()

    def e2e_diagnostics(self) -> str:
        parts = []
        if self.master is not None:
            parts.append(self.master.diagnostics(60))
        if self.worker is not None:
            parts.append(self.worker.diagnostics(40))
        return "\n".join(parts)


@pytest.fixture
def wire_env(request, tmp_path):
    env = WireEnv(str(tmp_path), tls=request.param == "tls")
    try:
        yield env
    finally:
        env.close()


def _check_build(env: WireEnv, build: dict) -> None:
    m = env.master
    assert build["results"] == harness.SUCCESS, m.build_summary(build["buildid"])
    secret_log = m.build_log_text(build["buildid"], "use_secret", streams="o")
    assert hashlib.sha256(SECRET_VALUE.encode()).hexdigest() in secret_log, secret_log
    assert "secret-step-done" in secret_log
    upload_log = m.build_log_text(build["buildid"], "make_upload", streams="o")
    assert hashlib.sha256(DOWNLOAD_CONTENT).hexdigest() in upload_log, upload_log
    with open(env.upload_dest, "rb") as f:
        assert f.read() == UPLOAD_CONTENT
    big_log = m.build_log_text(build["buildid"], "check_big", streams="o")
    assert big_log.count(hashlib.sha256(BIG_CONTENT).hexdigest()) == 2, big_log
    assert f"worker '{WORKER}' attaching over msgproto" in m.log_text()


def _password_report(to_master: bytes, to_worker: bytes) -> list[str]:
    return ([f"worker->master: {n}" for n in found_forms(PASSWD, to_master)]
            + [f"master->worker: {n}" for n in found_forms(PASSWD, to_worker)])


def _run_captured(env: WireEnv, label: str) -> tuple[dict, bytes, bytes]:
    """Run the build through the relay and check it; (build, bytes worker->master, bytes
    master->worker), after at least one connection."""
    build = env.run()
    _check_build(env, build)
    to_master, to_worker = env.relay.captured()
    print(f"{label}: {env.relay.connections} connection(s), {len(to_master)} bytes "
          f"worker->master, {len(to_worker)} bytes master->worker")
    assert env.relay.connections >= 1
    return build, to_master, to_worker


@pytest.mark.parametrize("wire_env", ["tcp"], indirect=True)
def test_plain_tcp_never_sends_the_password(wire_env):
    build, to_master, to_worker = _run_captured(wire_env, "plain tcp")
    # the capture really works: handshake and transfers are visible in clear
    assert len(to_master) > 0 and len(to_worker) > 0
    assert b'"type":"hello"' in to_master, to_master[:300]
    assert b'"type":"start_command"' in to_worker
    assert appears_raw_or_b64(UPLOAD_CONTENT, to_master)
    assert appears_raw_or_b64(DOWNLOAD_CONTENT, to_worker)
    # ... and the password is nowhere in it
    assert _password_report(to_master, to_worker) == []
    # Honest baseline: on a plain connection the secret value travels (in clear) inside the
    # command arguments, because the worker needs it to run the command.  Only TLS hides it.
    assert SECRET_VALUE.encode() in to_worker
    # The worker sends it back in one place only: stock buildbot-worker echoes the command
    # line it runs in the 'header' stream of its first update (PB does the same).  The
    # command's own output carries only the hash.
    echoes = []
    for stream, _ in wire_env.relay.connection_streams():
        for frame in worker_frames(stream):
            for path in _paths_containing(frame, SECRET_VALUE):
                echoes.append((frame["type"], path[:2], frame["updates"][path[1]][0]
                               if path[:1] == ("updates",) else None))
    assert echoes and all(e == ("update", ("updates", e[1][1]), "header") for e in echoes), \
        echoes
    # and the master redacts it before storing the log
    full_log = wire_env.master.build_log_text(build["buildid"], "use_secret")
    assert SECRET_VALUE not in full_log and "<wire_token>" in full_log, full_log
    _check_one_round_trip_transfers(wire_env.relay.connection_streams())


def _check_one_round_trip_transfers(streams: list[tuple[bytes, bytes]]) -> None:
    """pipelined_close and pushed_download on the wire (docs/commands.rst 7.4, 7.5): the
    upload's ``complete`` went out before the master answered its ``close_writer``; the
    download's bytes came pushed right behind its ``start_command``, before any answer
    to a ``read_file``."""
    [(to_master, to_worker)] = streams
    from_worker, from_master = worker_frames(to_master), master_frames(to_worker)
    assert "pipelined_close" in from_master[1]["features"], from_master[1]
    assert "pushed_download" in from_master[1]["features"], from_master[1]
    close = next(f for f in from_worker if f["type"] == "close_writer")
    complete = next(f for f in from_worker
                    if f["type"] == "complete" and f["command_id"] == close["command_id"])
    answer = next(f for f in from_master if f.get("reply_to") == close["id"])
    # the complete's ack shows what the worker had received when it sent it
    assert complete["ack"] < answer["seq"], (complete, answer)
    start = next(f for f in from_master if f["type"] == "start_command" and f.get("push"))
    pushed = [f for f in from_master
              if f["type"] == "file_data" and f["command_id"] == start["command_id"]]
    assert pushed and pushed[-1]["last"] and pushed[-1]["eof"], pushed
    assert DOWNLOAD_CONTENT.decode("latin-1") in "".join(f["blob"] for f in pushed)
    reads = {f["id"] for f in from_worker
             if f["type"] == "read_file" and f["command_id"] == start["command_id"]}
    assert all(f["seq"] > pushed[-1]["seq"] for f in from_master if f.get("reply_to") in reads)
    _check_push_sized_by_the_worker(from_worker, from_master)


def _check_push_sized_by_the_worker(from_worker: list[dict], from_master: list[dict]) -> None:
    """The first big download: the master's initial window pushed, the rest read with
    the worker's window announced; the second: pushed up to that window (docs/commands.rst
    7.5), here the whole file with its end."""
    big = [f for f in from_master if f["type"] == "start_command" and f.get("push")
           and f["args"].get("workerdest", "").startswith("big")]
    assert len(big) == 2, [f["args"] for f in big]

    def pushed(start: dict) -> list[dict]:
        return [f for f in from_master
                if f["type"] == "file_data" and f["command_id"] == start["command_id"]]

    def reads(start: dict) -> list[dict]:
        return [f for f in from_worker
                if f["type"] == "read_file" and f["command_id"] == start["command_id"]]

    first, second = pushed(big[0]), pushed(big[1])
    assert sum(len(f["blob"]) for f in first) == MASTER_INITIAL_WINDOW
    assert first[-1]["last"] and not first[-1]["eof"]
    assert reads(big[0]) and all(f["window"] == 4 * 2**20 for f in reads(big[0])), reads(big[0])
    assert sum(len(f["blob"]) for f in second) == len(BIG_CONTENT)
    assert second[-1]["last"] and second[-1]["eof"]
    # the worker read ahead while the push flowed; those reads found the end
    asked = {f["id"] for f in reads(big[1])}
    assert all(f.get("blob", "") == "" for f in from_master if f.get("reply_to") in asked)


@pytest.mark.parametrize("wire_env", ["tls"], indirect=True)
def test_tls_hides_password_secret_and_file_contents(wire_env):
    _, to_master, to_worker = _run_captured(wire_env, "tls")
    # enough traffic for a handshake, a build and both transfers
    assert len(to_master) > len(UPLOAD_CONTENT) and len(to_worker) > len(DOWNLOAD_CONTENT)
    # it is TLS from the first byte: a handshake record carrying the ClientHello
    assert to_master[:1] == b"\x16" and to_master[1:2] == b"\x03", to_master[:16]
    assert to_worker[:1] == b"\x16" and to_worker[1:2] == b"\x03", to_worker[:16]
    both = {"worker->master": to_master, "master->worker": to_worker}
    leaks = []
    for direction, captured in both.items():
        leaks += [f"{direction}: password {n}" for n in found_forms(PASSWD, captured)]
        leaks += [f"{direction}: secret {n}" for n in found_forms(SECRET_VALUE, captured)]
        for label, content in (("upload", UPLOAD_CONTENT), ("download", DOWNLOAD_CONTENT)):
            if appears_raw_or_b64(content, captured):
                leaks.append(f"{direction}: {label} file content")
        for marker in (b'"type":', b'"type"', b"msgproto-v1", b"upload-payload",
                       b"download-payload", b"secret-step-done"):
            if marker in captured:
                leaks.append(f"{direction}: plaintext {marker!r}")
    assert leaks == []


def test_detector_finds_every_encoding():
    """The leak checks above are not vacuous: each encoding, embedded at any offset in
    other bytes, is found."""
    for value in (PASSWD, SECRET_VALUE):
        for name, form in encodings(value).items():
            for pad in range(3):
                blob = b"x" * pad + form + b"y"
                assert name in found_forms(value, blob), (value, name, pad)
        raw = value.encode()
        for pad in range(3):
            assert found_forms(value, base64.b64encode(b"p" * pad + raw + b"q")), pad
            assert appears_raw_or_b64(raw, base64.b64encode(b"p" * pad + raw))
