"""The worker's end of the negotiated port, with a fake clock and an in-memory transport."""

from __future__ import annotations

import pytest
from twisted.internet import task
from twisted.internet.address import IPv4Address
from twisted.internet.testing import StringTransport
from twisted.spread import pb

from buildbot_worker_msgproto.client import MAX_OFFER_BYTES
from buildbot_worker_msgproto.client import MsgClientFactory
from buildbot_worker_msgproto.client import WorkerSessions
from buildbot_worker_msgproto.driver import MessageHandler
from buildbot_worker_msgproto.protocol import codec
from buildbot_worker_msgproto.protocol import negotiation
from buildbot_worker_msgproto.protocol.limits import DEFAULT_LIMITS
from buildbot_worker_msgproto.protocol.limits import MSG_DIALECT
from buildbot_worker_msgproto.transports.tcp import FramedProtocol

ADDR = IPv4Address("TCP", "127.0.0.1", 9989)


class Policy:
    """Counts what the sessions report to the retry policy."""

    def __init__(self) -> None:
        self.failures: list[int] = []

    def check_failures(self, failures: int) -> None:
        self.failures.append(failures)


@pytest.fixture
def clock():
    return task.Clock()


def connect(clock: task.Clock, password: str | None = "secret"):
    policy = Policy()
    sessions = WorkerSessions(MessageHandler(), "w1", password, clock, DEFAULT_LIMITS,
                              retry_policy=policy)
    pb_factory = pb.PBClientFactory()
    proto = MsgClientFactory(sessions, pb_factory).buildProtocol(ADDR)
    transport = StringTransport(peerAddress=ADDR)
    proto.makeConnection(transport)
    return proto, transport, sessions, policy


def test_msg_offer_is_chosen_and_hello_follows_in_a_frame(clock):
    proto, transport, sessions, _ = connect(clock)
    offer = negotiation.encode_offer()
    proto.dataReceived(offer[:5])
    assert transport.value() == b"" and proto.inner is None
    proto.dataReceived(offer[5:])
    choice = negotiation.encode_string(MSG_DIALECT)
    sent = transport.value()
    assert sent.startswith(choice) and isinstance(proto.inner, FramedProtocol)
    frame = sent[len(choice) + 4:]
    assert codec.decode(frame, 1 << 20)["type"] == "hello"
    assert sessions.driver is not None and sessions.driver.transport is proto.inner


def test_a_stock_master_gets_the_pb_broker_with_the_offer_replayed(clock):
    proto, transport, sessions, _ = connect(clock)
    proto.dataReceived(negotiation.encode_offer((b"pb", b"none")))
    assert isinstance(proto.inner, pb.Broker) and sessions.driver is None
    # the broker answered the replayed offer itself, choosing pb as against any master
    assert transport.value().startswith(negotiation.encode_string(b"pb"))


def test_a_certificate_only_worker_does_not_fall_back_to_pb(clock):
    proto, transport, sessions, policy = connect(clock, password=None)
    proto.dataReceived(negotiation.encode_offer((b"pb", b"none")))
    assert transport.disconnected and proto.inner is None
    assert sessions.failed_logins == 1 and policy.failures == [1]


@pytest.mark.parametrize("data", [b"\x01\x82x",  # a string, not a list
                                  b"\x7f\x7f\x7f\x7f\x7f\x80",  # prefix too long
                                  b"\x03\x80" + b"\x7f\x02\x82" + b"x" * (MAX_OFFER_BYTES + 1)])
def test_something_that_is_not_a_master_is_dropped(clock, data):
    proto, transport, sessions, _ = connect(clock)
    proto.dataReceived(data)
    assert transport.disconnected and proto.inner is None and sessions.driver is None


def test_a_silent_master_is_dropped_at_the_handshake_timeout(clock):
    proto, transport, _, _ = connect(clock)
    clock.advance(DEFAULT_LIMITS.handshake_timeout - 0.01)
    assert not transport.disconnected
    clock.advance(0.02)
    assert transport.disconnected
