"""ZeroMQ CURVE for the zmq transport: key files, authorized keys, and the ZAP handler.

With ``curve_secret_key`` and ``curve_authorized_keys`` the master's ROUTER is a CURVE
server and every connecting worker's public key is checked by a :class:`ZapHandler`
that runs in the reactor, bound in the listener's own ZeroMQ context; a refused worker's
connection is closed by ZeroMQ during its handshake, before any message reaches the
master.  The worker's DEALER is a CURVE client with ``curve_secret_key`` and
``curve_server_key``.  See docs/security/curve.rst.
"""

from __future__ import annotations

import contextlib
import dataclasses
import os
from typing import Any

import zmq as pyzmq
import zmq.auth as pyzmq_auth
from twisted.python import log
from zmq.utils import z85

#: Where libzmq sends its ZAP requests (RFC 27), one handler per context.
ZAP_ENDPOINT = "inproc://zeromq.zap.01"
#: The ``ZMQ_ZAP_DOMAIN`` of a CURVE listener: its ZAP handler answers only for it.
ZAP_DOMAIN = b"msgproto"
#: A refused worker's DEALER reconnects every 100 ms: log its refusal once per this many s.
ZAP_LOG_INTERVAL = 60.0


@dataclasses.dataclass(frozen=True)
class CurveKeys:
    """One side's CURVE key pair (Z85) and, on a worker, the master's public key."""

    public: bytes
    secret: bytes = dataclasses.field(repr=False)
    server: bytes | None = None

    def apply(self, sock: Any) -> None:
        """Make ``sock`` a CURVE client (``server`` set) or server; before bind/connect."""
        if self.server is None:
            sock.set(pyzmq.CURVE_SERVER, 1)
        else:
            sock.set(pyzmq.CURVE_SERVERKEY, self.server)
        sock.set(pyzmq.CURVE_PUBLICKEY, self.public)
        sock.set(pyzmq.CURVE_SECRETKEY, self.secret)


def _check_z85(key: bytes | None, what: str, path: str) -> bytes:
    if key is None or len(key) != 40:
        raise ValueError(f"zmq option: {path!r} has no valid CURVE {what} "
                         "(40 Z85 characters, as written by gen-keys)")
    try:
        z85.decode(key)
    except Exception:
        raise ValueError(f"zmq option: the CURVE {what} in {path!r} is not Z85") from None
    return key


def load_key_file(option: str, path: Any, secret: bool) -> tuple[bytes, bytes | None]:
    """(public, secret) from a ZeroMQ certificate file (``zmq.auth`` format)."""
    if not isinstance(path, (str, os.PathLike)) or not str(path):
        raise ValueError(f"zmq option {option!r} must be the path of a key file, got {path!r}")
    if not os.path.isfile(path):
        raise ValueError(f"zmq option {option!r}: no such key file {str(path)!r}")
    try:
        public, secret_key = pyzmq_auth.load_certificate(path)
    except (OSError, ValueError) as e:
        raise ValueError(f"zmq option {option!r}: cannot read {str(path)!r}: {e}") from None
    public = _check_z85(public, "public key", str(path))
    if secret:
        if secret_key is None:
            raise ValueError(f"zmq option {option!r}: {str(path)!r} holds no secret key (give "
                             "the .key_secret file, not the public .key file)")
        secret_key = _check_z85(secret_key, "secret key", str(path))
        if pyzmq.curve_public(secret_key) != public:
            raise ValueError(f"zmq option {option!r}: the public key in {str(path)!r} does "
                             "not belong to its secret key")
    return public, secret_key


def _need_curve() -> None:
    if not pyzmq.has("curve"):
        raise ValueError("this libzmq was built without CURVE support "
                         f"(libzmq {pyzmq.zmq_version()}); CURVE options cannot be used")


def _half(options: dict[str, Any], side: str) -> bool:
    """True if CURVE is configured (both options), False if not (neither); else refuse."""
    names = list(options)
    given = [name for name in names if options[name] not in (None, "")]
    if len(given) == 1:
        missing = next(name for name in names if name not in given)
        raise ValueError(f"zmq {side} option {given[0]!r} needs {missing!r} as well: CURVE "
                         f"needs both {names[0]!r} and {names[1]!r} (or neither)")
    return bool(given)


def master_curve(secret_key: str | None,
                 authorized_keys: str | None) -> tuple[CurveKeys, str] | None:
    """The master's key pair (from the ``curve_secret_key`` file) and the directory of
    authorized worker keys (``curve_authorized_keys``), or None if neither is given."""
    if not _half({"curve_secret_key": secret_key,
                  "curve_authorized_keys": authorized_keys}, "master"):
        return None
    _need_curve()
    public, secret = load_key_file("curve_secret_key", secret_key, True)
    directory = authorized_keys
    if not isinstance(directory, (str, os.PathLike)) or not os.path.isdir(directory):
        raise ValueError("zmq option 'curve_authorized_keys' must be a directory of worker "
                         f"public key files (*.key), got {directory!r}")
    AuthorizedKeys(str(directory)).load()  # refuse unreadable key files at config time
    return CurveKeys(public, secret), str(directory)


def worker_curve(secret_key: str | None, server_key: str | None) -> CurveKeys | None:
    """The worker's key pair (from the ``curve_secret_key`` file) and the master's public
    key (``curve_server_key``), or None if neither is given."""
    if not _half({"curve_secret_key": secret_key, "curve_server_key": server_key}, "worker"):
        return None
    _need_curve()
    public, secret = load_key_file("curve_secret_key", secret_key, True)
    server, _ = load_key_file("curve_server_key", server_key, False)
    return CurveKeys(public, secret, server)


class AuthorizedKeys:
    """The public keys of ``directory/*.key`` (file name without ``.key``: the key's name).

    Read again whenever the directory's modification time changes, so adding or removing
    a key file takes effect at the next connection attempt, without a restart.
    """

    def __init__(self, directory: str) -> None:
        self.directory = directory
        self.keys: dict[bytes, str] = {}  # binary (32 bytes) public key -> name
        self._stamp: int | None = None

    def load(self) -> dict[bytes, str]:
        keys = {}
        for entry in sorted(os.listdir(self.directory)):
            if not entry.endswith(".key"):
                continue
            path = os.path.join(self.directory, entry)
            public, _ = load_key_file("curve_authorized_keys", path, False)
            keys[z85.decode(public)] = entry[:-len(".key")]
        return keys

    def lookup(self, key: bytes) -> str | None:
        """The name of the binary public ``key``, None if it is not authorized."""
        try:
            stamp: int | None = os.stat(self.directory).st_mtime_ns
        except OSError:
            stamp = None
        if stamp != self._stamp:
            self._stamp = stamp
            try:
                self.keys = self.load()
            except (OSError, ValueError) as e:  # keep the last good set; logged once
                log.msg(f"msgproto: zmq CURVE: cannot reload {self.directory} "
                        f"(keeping the {len(self.keys)} key(s) read before): {e}")
        return self.keys.get(key)


class ZapHandler:
    """ZeroMQ authentication (ZAP, RFC 27) of CURVE clients, in the reactor: no thread.

    libzmq asks ``inproc://zeromq.zap.01`` of the socket's context about every CURVE
    handshake and waits for the answer before the connection may carry messages.  Only one
    socket per context can bind that endpoint, so each CURVE listener has a ZeroMQ context
    of its own and its handler in it, bound before its ROUTER accepts anyone.

    It is a ROUTER rather than the usual REP: a reply that cannot be sent cannot leave it
    stuck in REP's strict receive/send alternation.  A refused client gets status 400;
    libzmq then sends it a CURVE ERROR and closes the connection, so nothing it sent ever
    reaches the application.  ``context`` makes the socket (see
    :class:`buildbot_worker_msgproto.transports.zmq_socket.ZmqContext`).
    """

    def __init__(self, context: Any, keys: AuthorizedKeys) -> None:
        self.reactor = context.reactor
        self.keys = keys
        self._logged: dict[bytes, float] = {}
        self.conn = context.socket(pyzmq.ROUTER, self, linger=0)
        try:
            self.conn.socket.bind(ZAP_ENDPOINT)
        except pyzmq.ZMQError as e:
            self.conn.close(0)
            raise RuntimeError(f"zmq CURVE: cannot bind the ZAP handler at {ZAP_ENDPOINT} "
                               f"(another one runs in this context?): {e}") from None

    def close(self) -> None:
        # zmq_close releases an inproc endpoint later, in the reaper thread; an explicit
        # unbind releases it at once.
        if self.conn.socket is not None:
            with contextlib.suppress(pyzmq.ZMQError):
                self.conn.socket.unbind(ZAP_ENDPOINT)
        self.conn.close(0)

    # --- from the socket
    def message_received(self, parts: list[Any]) -> None:
        frames = [part.bytes for part in parts]
        if len(frames) < 3 or frames[1] != b"":
            return  # not a ZAP request: nothing to answer
        routing, request = frames[0], frames[2:]
        if len(request) < 6 or request[0] != b"1.0":
            request_id = request[1] if len(request) > 1 else b""
            self._reply(routing, request_id, b"400", b"malformed ZAP request", b"")
            return
        _, request_id, domain, address, _identity, mechanism, *credentials = request
        if domain != ZAP_DOMAIN:
            self._reply(routing, request_id, b"400", b"unknown ZAP domain", b"")
            return
        name = None
        if mechanism == b"CURVE" and len(credentials) == 1:
            name = self.keys.lookup(credentials[0])
        if name is None:
            self._refused(address, mechanism, credentials)
            self._reply(routing, request_id, b"400", b"unknown key", b"")
        else:
            self._reply(routing, request_id, b"200", b"OK", name.encode("utf-8"))

    def _refused(self, address: bytes, mechanism: bytes, credentials: list[bytes]) -> None:
        key = (z85.encode(credentials[0])
               if mechanism == b"CURVE" and len(credentials) == 1 and len(credentials[0]) == 32
               else mechanism)
        now = self.reactor.seconds()
        if now - self._logged.get(key, -ZAP_LOG_INTERVAL) >= ZAP_LOG_INTERVAL:
            self._logged[key] = now
            if len(self._logged) > 1000:
                self._logged.clear()
            log.msg(f"msgproto: zmq CURVE: refused {address.decode(errors='replace')}: "
                    f"public key {key.decode(errors='replace')} is not in "
                    f"{self.keys.directory} (logged at most every "
                    f"{ZAP_LOG_INTERVAL:.0f} s per key)")

    def _reply(self, routing: bytes, request_id: bytes, status: bytes, text: bytes,
               user_id: bytes) -> None:
        with contextlib.suppress(pyzmq.ZMQError):  # the asking connection went away
            self.conn.send_parts([routing, b"", b"1.0", request_id, status, text, user_id, b""])

    def writable_again(self) -> None:
        pass
