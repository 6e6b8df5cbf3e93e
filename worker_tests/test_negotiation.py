"""PB (banana) dialect negotiation, checked against Twisted's own banana implementation."""

from __future__ import annotations

import pytest
from hypothesis import given
from hypothesis import settings
from hypothesis import strategies as st
from twisted.internet.testing import StringTransport
from twisted.spread import banana

from buildbot_worker_msgproto.protocol import negotiation
from buildbot_worker_msgproto.protocol.errors import ProtocolError
from buildbot_worker_msgproto.protocol.limits import MSG_DIALECT
from buildbot_worker_msgproto.protocol.negotiation import MASTER_DIALECTS
from buildbot_worker_msgproto.protocol.negotiation import MAX_DIALECT_NAME
from buildbot_worker_msgproto.protocol.negotiation import MAX_DIALECTS
from buildbot_worker_msgproto.protocol.negotiation import NegotiationError
from worker_tests.strategies import examples

names = st.binary(max_size=MAX_DIALECT_NAME)
offers = st.lists(names, max_size=MAX_DIALECTS)
rests = st.binary(max_size=20)


def test_exact_bytes():
    """The bytes documented in docs/protocol.rst."""
    assert MSG_DIALECT == b"msgproto-v1"
    assert negotiation.encode_offer() == (
        b"\x03\x80" b"\x0b\x82msgproto-v1" b"\x02\x82pb" b"\x04\x82none")
    assert negotiation.encode_string(MSG_DIALECT) == b"\x0b\x82msgproto-v1"
    assert negotiation.encode_string(b"pb") == b"\x02\x82pb"


def test_matches_twisted_banana():
    assert negotiation.encode_offer() == banana.encode(list(MASTER_DIALECTS))
    assert negotiation.encode_offer((b"pb", b"none")) == banana.encode([b"pb", b"none"])
    for name in (MSG_DIALECT, b"pb", b"none", b""):
        assert negotiation.encode_string(name) == banana.encode(name)


@settings(max_examples=examples(200))
@given(offers, rests)
def test_offer_round_trip_against_banana(offer, rest):
    encoded = banana.encode(offer)
    assert negotiation.encode_offer(tuple(offer)) == encoded
    assert negotiation.parse_offer(encoded + rest) == (offer, rest)


@settings(max_examples=examples(200))
@given(st.binary(min_size=0, max_size=200), rests)
def test_choice_round_trip_against_banana(name, rest):
    encoded = banana.encode(name)
    assert negotiation.encode_string(name) == encoded
    if len(name) > MAX_DIALECT_NAME:
        with pytest.raises(NegotiationError):
            negotiation.parse_choice(encoded + rest)
    else:
        assert negotiation.parse_choice(encoded + rest) == (name, len(encoded))


@settings(max_examples=examples(100))
@given(offers, rests)
def test_offer_fed_byte_by_byte(offer, rest):
    encoded = banana.encode(offer) + rest
    buffer = b""
    results = []
    for byte in encoded:
        buffer += bytes([byte])
        results.append(negotiation.parse_offer(buffer))
    complete = len(banana.encode(offer))
    assert all(r is None for r in results[:complete - 1])
    for i, result in enumerate(results[complete - 1:]):
        assert result == (offer, rest[:i])


@settings(max_examples=examples(100))
@given(names)
def test_choice_fed_byte_by_byte(name):
    encoded = banana.encode(name)
    for i in range(len(encoded)):
        assert negotiation.parse_choice(encoded[:i]) is None
    assert negotiation.parse_choice(encoded) == (name, len(encoded))


@settings(max_examples=examples(300))
@given(st.binary(max_size=100))
def test_arbitrary_bytes_only_raise_negotiation_error(data):
    for parse in (negotiation.parse_offer, negotiation.parse_choice):
        try:
            result = parse(data)
        except NegotiationError as e:
            assert isinstance(e, ProtocolError) and e.code == "negotiation_failed"
            continue
        if result is not None:
            # A complete parse never depends on bytes after it.
            consumed = (len(data) - len(result[1]) if parse is negotiation.parse_offer
                        else result[1])
            assert parse(data[:consumed]) is not None


@pytest.mark.parametrize("data", [
    banana.encode([b"x"] * (MAX_DIALECTS + 1)),
    banana.encode([b"x" * (MAX_DIALECT_NAME + 1)]),
    b"\x01\x80\x01\x81",  # a list holding an integer
    b"\x01\x82x",  # a string where a list is expected
    b"\x01\x02\x03\x04\x05",  # a prefix of more than 4 digits
    banana.encode(12),
], ids=["too-many", "too-long", "int-item", "not-a-list", "long-prefix", "int"])
def test_offer_limits(data):
    with pytest.raises(NegotiationError) as info:
        negotiation.parse_offer(data)
    assert info.value.code == "negotiation_failed"


@pytest.mark.parametrize("data", [
    banana.encode([b"pb"]),
    banana.encode(b"x" * (MAX_DIALECT_NAME + 1)),
    b"\x7f\x7f\x7f\x7f\x7f",
    banana.encode(1),
], ids=["list", "too-long", "long-prefix", "int"])
def test_choice_limits(data):
    with pytest.raises(NegotiationError):
        negotiation.parse_choice(data)


def test_a_too_long_name_is_refused_before_its_bytes_arrive():
    # The header alone announces 65 bytes: no need to buffer them to refuse.
    with pytest.raises(NegotiationError):
        negotiation.parse_choice(negotiation._int2b128(MAX_DIALECT_NAME + 1) + b"\x82")


def test_choose():
    offer = list(MASTER_DIALECTS)
    assert negotiation.choose(offer, (MSG_DIALECT, b"pb")) == MSG_DIALECT
    assert negotiation.choose(offer, (b"pb", MSG_DIALECT)) == MSG_DIALECT  # server's order
    assert negotiation.choose(offer, (b"pb", b"none")) == b"pb"
    assert negotiation.choose([b"pb", b"none"], (MSG_DIALECT, b"pb")) == b"pb"
    assert negotiation.choose([b"other"], (MSG_DIALECT, b"pb")) is None


def _banana(is_client: bool) -> tuple[banana.Banana, StringTransport]:
    protocol = banana.Banana(isClient=is_client)
    transport = StringTransport()
    protocol.makeConnection(transport)
    return protocol, transport


def test_stock_pb_client_picks_pb_from_our_offer():
    """An unmodified Twisted PB client skips MSG_DIALECT and answers ``pb``."""
    client, transport = _banana(is_client=True)
    client.dataReceived(negotiation.encode_offer())
    answer = transport.value()
    assert negotiation.parse_choice(answer) == (b"pb", len(answer))
    assert client.currentDialect == b"pb"


def test_stock_pb_server_offer_and_our_choice():
    """Against a stock server our worker sees no MSG_DIALECT and stays a PB client."""
    server, transport = _banana(is_client=False)
    offered, rest = negotiation.parse_offer(transport.value())
    assert offered == [b"pb", b"none"] and rest == b""
    choice = negotiation.choose(offered, (MSG_DIALECT, b"pb"))
    assert choice == b"pb"
    server.dataReceived(negotiation.encode_string(choice))
    assert server.currentDialect == b"pb"
    assert transport.connected
