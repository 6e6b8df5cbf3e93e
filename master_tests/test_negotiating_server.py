"""The master's end of the negotiated port, with a fake clock and an in-memory transport."""

from __future__ import annotations

import pytest
from twisted.internet import task
from twisted.internet.address import IPv4Address
from twisted.internet.testing import StringTransport
from twisted.spread import pb

from buildbot_msgproto.compat import PreNegotiatedBroker
from buildbot_msgproto.negotiation import NegotiatingServerFactory
from buildbot_worker_msgproto.driver import MessageHandler
from buildbot_worker_msgproto.driver import SessionDriver
from buildbot_worker_msgproto.protocol import negotiation
from buildbot_worker_msgproto.protocol.limits import MSG_DIALECT
from buildbot_worker_msgproto.protocol.session import Role
from buildbot_worker_msgproto.protocol.session import Session
from buildbot_worker_msgproto.transports.tcp import FramedProtocol

ADDR = IPv4Address("TCP", "127.0.0.1", 40000)
TIMEOUT = 5.0


@pytest.fixture
def clock():
    return task.Clock()


def connect(clock: task.Clock, serve_pb: bool = True):
    drivers: list[SessionDriver] = []

    def new_driver() -> SessionDriver:
        drivers.append(SessionDriver(Session(Role.MASTER, now=clock.seconds()),
                                     MessageHandler(), clock))
        return drivers[-1]

    factory = NegotiatingServerFactory(pb.PBServerFactory(pb.Root()), new_driver, clock,
                                       TIMEOUT, serve_pb=serve_pb)
    proto = factory.buildProtocol(ADDR)
    transport = StringTransport(peerAddress=ADDR)
    proto.makeConnection(transport)
    return proto, transport, drivers


def test_offers_msg_first_then_pb(clock):
    _, transport, _ = connect(clock)
    assert transport.value() == negotiation.encode_offer((MSG_DIALECT, b"pb", b"none"))
    _, transport, _ = connect(clock, serve_pb=False)
    assert transport.value() == negotiation.encode_offer((MSG_DIALECT,))


def test_msg_choice_becomes_framing_with_a_new_session_and_keeps_the_rest(clock):
    proto, transport, drivers = connect(clock)
    choice = negotiation.encode_string(MSG_DIALECT)
    proto.dataReceived(choice[:2])  # split anywhere: waits for the rest
    assert proto.inner is None and not drivers
    proto.dataReceived(choice[2:] + b"\x00\x00\x00")  # and the start of a frame
    assert isinstance(proto.inner, FramedProtocol) and len(drivers) == 1
    assert proto.inner._unprocessed == b"\x00\x00\x00"  # handed on, not lost
    clock.advance(TIMEOUT * 2)  # the negotiation timer is gone
    assert not transport.disconnecting


def test_pb_choice_is_replayed_into_a_pre_negotiated_broker(clock):
    proto, transport, drivers = connect(clock)
    proto.dataReceived(negotiation.encode_string(b"pb"))
    assert isinstance(proto.inner, PreNegotiatedBroker) and not drivers
    assert proto.inner.currentDialect == b"pb"


@pytest.mark.parametrize("data", [negotiation.encode_string(b"zzz"),  # not offered
                                  b"\x01\x02\x03\x04\x05\x06\x82",  # prefix too long
                                  b"\x01\x80"])  # a list, not a string
def test_a_bad_choice_aborts_the_connection(clock, data):
    proto, transport, drivers = connect(clock)
    proto.dataReceived(data)
    assert transport.disconnected and proto.inner is None and not drivers


def test_silence_is_aborted_at_the_negotiation_timeout(clock):
    proto, transport, _ = connect(clock)
    clock.advance(TIMEOUT - 0.01)
    assert not transport.disconnected
    clock.advance(0.02)
    assert transport.disconnected and proto.inner is None


def test_connection_lost_cancels_the_timer(clock):
    proto, transport, _ = connect(clock)
    proto.connectionLost(None)
    assert not clock.getDelayedCalls()
