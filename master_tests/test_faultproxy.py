"""The fault proxy (master_tests/faultproxy.py) between two real sockets on loopback.

Each test holds both ends itself: a client socket connected to the proxy and the socket
that a plain listening "target" accepted, so it sees exactly what each end gets.  Timing
assertions are lower bounds only; "nothing arrives" is checked by a receive that must
time out.
"""

from __future__ import annotations

import hashlib
import os
import socket
import struct
import threading
import time

import pytest

from master_tests.faultproxy import FaultProxy
from master_tests.faultproxy import FaultProxyError
from master_tests.faultproxy import fault_proxy_factory  # noqa: F401 (the fixture)

WAIT = 10.0  # seconds any expected event may take on a loaded machine
SILENCE = 0.5  # seconds during which nothing may arrive


@pytest.fixture
def target():
    """A listening socket on 127.0.0.1 standing for the master (tests accept themselves)."""
    with socket.create_server(("127.0.0.1", 0)) as listener:
        listener.settimeout(WAIT)
        yield listener


@pytest.fixture
def proxy(target, fault_proxy_factory):  # noqa: F811 (the fixture)
    return fault_proxy_factory("127.0.0.1", target.getsockname()[1])


def connect(proxy: FaultProxy) -> socket.socket:
    sock = socket.create_connection(proxy.address, timeout=WAIT)
    sock.settimeout(WAIT)
    return sock


def accept(listener: socket.socket) -> socket.socket:
    sock, _ = listener.accept()
    sock.settimeout(WAIT)
    return sock


def pair(proxy: FaultProxy, target: socket.socket) -> tuple[socket.socket, socket.socket]:
    """A client connected through the proxy and the target's end of it."""
    client = connect(proxy)
    return client, accept(target)


def recv_exactly(sock: socket.socket, size: int) -> bytes:
    chunks, got = [], 0
    while got < size:
        chunk = sock.recv(min(size - got, 1 << 20))
        if not chunk:
            raise AssertionError(f"end of stream after {got} of {size} bytes")
        chunks.append(chunk)
        got += len(chunk)
    return b"".join(chunks)


def assert_silent(sock: socket.socket, seconds: float = SILENCE) -> None:
    """Nothing (no byte, no end of stream, no reset) arrives on ``sock`` for ``seconds``."""
    sock.settimeout(seconds)
    try:
        data = sock.recv(1)
    except TimeoutError:
        return
    finally:
        sock.settimeout(WAIT)
    raise AssertionError(f"expected silence, got {data!r}")


def reset_close(sock: socket.socket) -> None:
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
    sock.close()


def fill_send_buffer(sock: socket.socket, limit: int = 512 << 20) -> int:
    """Send until the kernel takes no more (at most ``limit`` bytes); returns bytes sent."""
    block = b"\x5a" * (1 << 20)
    sent = 0
    sock.setblocking(False)
    try:
        while sent < limit:
            try:
                sent += sock.send(block)
            except BlockingIOError:
                return sent
    finally:
        sock.settimeout(WAIT)
    raise AssertionError(f"{limit} bytes went out: the sender never blocked")


# ----------------------------------------------------------------------------- normal flow
def test_data_passes_both_ways_and_is_counted(proxy, target):
    client, server = pair(proxy, target)
    client.sendall(b"ping" * 10)
    assert recv_exactly(server, 40) == b"ping" * 10
    server.sendall(b"pong" * 3)
    assert recv_exactly(client, 12) == b"pong" * 3
    stats = proxy.stats()
    assert (stats.bytes_up, stats.bytes_down) == (40, 12)
    assert (stats.accepted, stats.active) == (1, 1)


def test_bulk_data_arrives_intact_both_ways(proxy, target):
    client, server = pair(proxy, target)
    payload = os.urandom(8 << 20)
    sender = threading.Thread(target=client.sendall, args=(payload,))
    sender.start()
    received = recv_exactly(server, len(payload))
    sender.join(WAIT)
    assert hashlib.sha256(received).digest() == hashlib.sha256(payload).digest()
    sender = threading.Thread(target=server.sendall, args=(payload[::-1],))
    sender.start()
    assert recv_exactly(client, len(payload)) == payload[::-1]
    sender.join(WAIT)
    stats = proxy.stats()
    assert stats.bytes_up == stats.bytes_down == len(payload)


def test_half_close_and_close_are_forwarded(proxy, target):
    client, server = pair(proxy, target)
    client.shutdown(socket.SHUT_WR)
    assert server.recv(1) == b""  # the FIN arrived ...
    server.sendall(b"still open")  # ... and the other direction still works
    assert recv_exactly(client, 10) == b"still open"
    server.close()
    assert client.recv(1) == b""
    stats = proxy.wait_until(lambda s: s.active == 0, WAIT, "connection closed")
    assert (stats.closed, stats.reset) == (1, 0)


def test_reset_is_forwarded(proxy, target):
    client, server = pair(proxy, target)
    reset_close(server)
    with pytest.raises(ConnectionResetError):
        client.recv(1)
    assert proxy.wait_until(lambda s: s.active == 0, WAIT, "reset").reset == 1


def test_a_refusing_target_resets_the_client(fault_proxy_factory):  # noqa: F811
    with socket.create_server(("127.0.0.1", 0)) as closed:
        port = closed.getsockname()[1]
    proxy = fault_proxy_factory("127.0.0.1", port)
    with pytest.raises(ConnectionResetError):  # the reset may beat connect()'s return
        connect(proxy).recv(1)
    assert proxy.stats().connect_failed == 1


def test_ipv6_loopback(fault_proxy_factory):  # noqa: F811
    try:
        listener = socket.create_server(("::1", 0), family=socket.AF_INET6)
    except OSError as exc:
        pytest.skip(f"no ::1 on this host: {exc}")
    with listener:
        listener.settimeout(WAIT)
        proxy = fault_proxy_factory("::1", listener.getsockname()[1], listen_host="::1")
        client, server = pair(proxy, listener)
        client.sendall(b"six")
        assert recv_exactly(server, 3) == b"six"


# ----------------------------------------------------------------------------- blackhole
def test_blackhole_stops_data_both_ways_and_heal_delivers_it(proxy, target):
    client, server = pair(proxy, target)
    proxy.blackhole()
    client.sendall(b"up")
    server.sendall(b"down")
    assert_silent(server)
    assert_silent(client)
    stats = proxy.stats()
    assert (stats.bytes_up, stats.bytes_down, stats.blackholed) == (0, 0, True)
    assert (stats.buffered_up, stats.buffered_down) == (0, 0)  # not even read
    proxy.heal()
    assert recv_exactly(server, 2) == b"up"
    assert recv_exactly(client, 4) == b"down"
    client.sendall(b"same connection")  # both ends kept it open: it survived
    assert recv_exactly(server, 15) == b"same connection"


def test_blackhole_blocks_senders_and_loses_nothing(proxy, target):
    client, server = pair(proxy, target)
    proxy.blackhole()
    sent_up = fill_send_buffer(client)
    sent_down = fill_send_buffer(server)
    assert proxy.stats().bytes_up == 0
    proxy.heal()
    assert recv_exactly(server, sent_up) == b"\x5a" * sent_up
    assert recv_exactly(client, sent_down) == b"\x5a" * sent_down
    stats = proxy.stats()
    assert (stats.bytes_up, stats.bytes_down) == (sent_up, sent_down)


def test_blackhole_hides_a_close_until_heal(proxy, target):
    client, server = pair(proxy, target)
    proxy.blackhole()
    client.sendall(b"last words")
    client.close()
    assert_silent(server)  # neither the data nor the FIN
    proxy.heal()
    assert recv_exactly(server, 10) == b"last words"
    assert server.recv(1) == b""


def test_blackhole_hides_a_reset_until_heal(proxy, target):
    client, server = pair(proxy, target)
    proxy.blackhole()
    reset_close(server)
    assert_silent(client)
    proxy.heal()
    with pytest.raises(ConnectionResetError):
        client.recv(1)


def test_blackhole_right_after_connect_hides_a_reset(proxy, target):
    # The proxy may not have seen its connect() to the target complete yet.
    for _ in range(20):
        client, server = pair(proxy, target)
        proxy.blackhole()
        reset_close(server)
        assert_silent(client, 0.05)
        proxy.heal()
        with pytest.raises(ConnectionResetError):
            client.recv(1)
    stats = proxy.wait_until(lambda s: s.active == 0, WAIT, "all reset")
    assert (stats.reset, stats.connect_failed) == (20, 0)


def test_blackhole_holds_data_already_in_flight(proxy, target):
    client, server = pair(proxy, target)
    proxy.set_delay(1.0)
    client.sendall(b"in flight")
    proxy.wait_until(lambda s: s.buffered_up == 9, WAIT, "data read by the proxy")
    proxy.blackhole()
    assert_silent(server, 1.2)  # its due time passed during the partition
    proxy.heal()
    assert recv_exactly(server, 9) == b"in flight"


def test_new_connection_during_blackhole_reaches_the_target_on_heal(proxy, target):
    proxy.blackhole()
    client = connect(proxy)  # the handshake with the proxy completes
    client.sendall(b"hello")
    target.settimeout(SILENCE)
    with pytest.raises(TimeoutError):
        target.accept()
    target.settimeout(WAIT)
    assert proxy.stats().accepted == 1
    proxy.heal()
    server = accept(target)
    assert recv_exactly(server, 5) == b"hello"


def test_blackhole_heals_by_itself(proxy, target):
    client, server = pair(proxy, target)
    started = time.monotonic()
    proxy.blackhole(seconds=0.5)
    client.sendall(b"later")
    assert recv_exactly(server, 5) == b"later"
    assert time.monotonic() - started >= 0.5
    assert not proxy.stats().blackholed


# ----------------------------------------------------------------------------- cut
def test_cut_resets_both_ends_and_refuses_until_restore(proxy, target):
    client, server = pair(proxy, target)
    client.sendall(b"x")
    assert recv_exactly(server, 1) == b"x"
    proxy.cut()
    with pytest.raises(ConnectionResetError):
        client.recv(1)
    with pytest.raises(ConnectionResetError):
        server.recv(1)
    with pytest.raises(ConnectionRefusedError):
        socket.create_connection(proxy.address, timeout=WAIT)
    stats = proxy.stats()
    assert (stats.cut, stats.active, stats.listening) == (1, 0, False)
    proxy.restore()
    assert proxy.stats().port == proxy.port
    client, server = pair(proxy, target)  # the same port accepts again
    client.sendall(b"back")
    assert recv_exactly(server, 4) == b"back"


def test_cut_without_refuse_accepts_at_once(proxy, target):
    client, server = pair(proxy, target)
    proxy.cut(refuse=False)
    with pytest.raises(ConnectionResetError):
        client.recv(1)
    with pytest.raises(ConnectionResetError):
        server.recv(1)
    client, server = pair(proxy, target)
    client.sendall(b"y")
    assert recv_exactly(server, 1) == b"y"


def test_cut_restores_by_itself(proxy, target):
    started = time.monotonic()
    proxy.cut(seconds=0.5)
    deadline = started + WAIT
    while True:
        try:
            client = connect(proxy)
            break
        except ConnectionRefusedError:
            assert time.monotonic() < deadline, "the proxy never listened again"
            time.sleep(0.05)
    assert time.monotonic() - started >= 0.5
    server = accept(target)
    client.sendall(b"z")
    assert recv_exactly(server, 1) == b"z"


def test_cut_during_blackhole_resets(proxy, target):
    client, server = pair(proxy, target)
    proxy.blackhole()
    proxy.cut(refuse=False)
    with pytest.raises(ConnectionResetError):
        client.recv(1)
    with pytest.raises(ConnectionResetError):
        server.recv(1)


# ----------------------------------------------------------------------------- delay
def test_delay_adds_at_least_the_latency_each_way(proxy, target):
    one_way = 0.15
    client, server = pair(proxy, target)
    proxy.set_delay(one_way)
    started = time.monotonic()
    client.sendall(b"?")
    assert recv_exactly(server, 1) == b"?"
    arrived = time.monotonic()
    server.sendall(b"!")
    assert recv_exactly(client, 1) == b"!"
    done = time.monotonic()
    assert arrived - started >= one_way
    assert done - started >= 2 * one_way
    assert proxy.stats().delay == one_way


def test_delay_keeps_bulk_data_intact_and_in_order(proxy, target):
    client, server = pair(proxy, target)
    proxy.set_delay(0.05)
    payload = os.urandom(4 << 20)
    started = time.monotonic()
    sender = threading.Thread(target=client.sendall, args=(payload,))
    sender.start()
    assert recv_exactly(server, len(payload)) == payload
    sender.join(WAIT)
    assert time.monotonic() - started >= 0.05


def test_delay_applies_to_the_close(proxy, target):
    client, server = pair(proxy, target)
    proxy.set_delay(0.2)
    started = time.monotonic()
    client.close()
    assert server.recv(1) == b""
    assert time.monotonic() - started >= 0.2


# ----------------------------------------------------------------------------- rate
def timed_transfer(client: socket.socket, server: socket.socket, payload: bytes) -> float:
    """Seconds from the first byte sent by ``client`` to the last received by ``server``."""
    started = time.monotonic()
    sender = threading.Thread(target=client.sendall, args=(payload,))
    sender.start()
    assert recv_exactly(server, len(payload)) == payload
    elapsed = time.monotonic() - started
    sender.join(WAIT)
    return elapsed


def test_rate_caps_the_bandwidth_each_way(proxy, target):
    rate = 32 << 20  # 4 MiB take 0.125 s at least
    payload = os.urandom(4 << 20)
    client, server = pair(proxy, target)
    unlimited = timed_transfer(client, server, payload)  # no assertion: machines are noisy
    proxy.set_rate(rate)
    stats = proxy.stats()
    assert (stats.rate_up, stats.rate_down) == (rate, rate)
    up = timed_transfer(client, server, payload)
    down = timed_transfer(server, client, payload)
    assert up >= 0.9 * len(payload) / rate, (up, unlimited)
    assert down >= 0.9 * len(payload) / rate, (down, unlimited)
    proxy.set_rate(None)
    assert proxy.stats().rate_up is None
    client.sendall(b"after")
    assert recv_exactly(server, 5) == b"after"


def test_rate_per_direction_and_with_delay(target, fault_proxy_factory):  # noqa: F811
    proxy = fault_proxy_factory("127.0.0.1", target.getsockname()[1], delay=0.05,
                                rate=16 << 20)
    proxy.set_rate(16 << 20, down=None)
    stats = proxy.stats()
    assert (stats.rate_up, stats.rate_down, stats.delay) == (16 << 20, None, 0.05)
    client, server = pair(proxy, target)
    payload = os.urandom(2 << 20)
    # 2 MiB at 16 MiB/s: 0.125 s on the link, then the one-way delay
    assert timed_transfer(client, server, payload) >= 0.9 * 0.125 + 0.05
    server.sendall(b"x")
    assert recv_exactly(client, 1) == b"x"
    client.close()
    assert server.recv(1) == b""


def test_bad_rate_is_refused(proxy):
    for bad in (0, -1, float("inf")):
        with pytest.raises(FaultProxyError, match="rate must be"):
            proxy.set_rate(bad)
    assert proxy.stats().rate_up is None


# ----------------------------------------------------------------------------- control
def test_bad_commands_are_refused(proxy):
    with pytest.raises(FaultProxyError, match="delay must be >= 0"):
        proxy.set_delay(-1)
    with pytest.raises(FaultProxyError, match="unknown command"):
        proxy._call("explode")
    with pytest.raises(FaultProxyError, match="needs refuse"):
        proxy.cut(refuse=False, seconds=1)
    assert proxy.stats().delay == 0.0  # and the proxy still answers


def test_stop_ends_the_process_and_frees_the_port(target):
    proxy = FaultProxy.start("127.0.0.1", target.getsockname()[1])
    with proxy:
        connect(proxy)
    assert proxy.process.poll() is not None
    with pytest.raises(ConnectionRefusedError):
        socket.create_connection(proxy.address, timeout=WAIT)
    with pytest.raises(FaultProxyError, match="exited"):
        proxy.stats()


def test_the_proxy_ends_when_its_controller_is_gone(target):
    proxy = FaultProxy.start("127.0.0.1", target.getsockname()[1])
    try:
        proxy.process.stdin.close()  # what the death of the test process does
        assert proxy.process.wait(WAIT) == 0
    finally:
        proxy.stop()


def test_bad_start_is_reported(target):
    port = target.getsockname()[1]
    with pytest.raises(FaultProxyError, match="Address already in use"):
        FaultProxy.start("127.0.0.1", port, listen_port=port)
