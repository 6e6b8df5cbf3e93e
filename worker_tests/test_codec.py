"""The JSON codec: round trips, validation, and robustness against arbitrary input."""

from __future__ import annotations

import json

import pytest
from hypothesis import example
from hypothesis import given
from hypothesis import settings
from hypothesis import strategies as st

from buildbot_worker_msgproto.protocol import codec
from buildbot_worker_msgproto.protocol.errors import FrameTooLarge
from buildbot_worker_msgproto.protocol.errors import LocalProtocolError
from buildbot_worker_msgproto.protocol.errors import ProtocolError
from buildbot_worker_msgproto.protocol.messages import MESSAGES
from buildbot_worker_msgproto.protocol.messages import REGISTRY
from buildbot_worker_msgproto.protocol.messages import Kind
from worker_tests.strategies import JSON_VALUES
from worker_tests.strategies import all_fields
from worker_tests.strategies import examples
from worker_tests.strategies import field_mutations
from worker_tests.strategies import frame
from worker_tests.strategies import messages_of
from worker_tests.strategies import mutated_frames
from worker_tests.strategies import valid_messages

BIG = 1 << 30
PING = {"type": "ping", "seq": 1, "ack": 0}


def decode_error(data: bytes, limit: int = BIG) -> ProtocolError:
    with pytest.raises(ProtocolError) as info:
        codec.decode(data, limit)
    return info.value


def decode_or_protocol_error(data: bytes, limit: int = BIG) -> dict | None:
    """decode(); anything but a dict or a ProtocolError fails the test."""
    try:
        message = codec.decode(data, limit)
    except ProtocolError as e:
        assert isinstance(e.code, str) and e.code
        return None
    assert isinstance(message, dict)
    return message


# ----------------------------------------------------------------------------- round trips
@pytest.mark.parametrize("spec", MESSAGES, ids=lambda s: s.type)
@settings(max_examples=examples(25))
@given(data=st.data())
def test_round_trip_every_type(spec, data):
    message = data.draw(messages_of(spec))
    encoded = codec.encode(message)
    assert codec.decode(encoded, len(encoded)) == message
    # A peer may send non-ASCII UTF-8 instead of \u escapes: same message.
    assert codec.decode(frame(message), BIG) == message


@settings(max_examples=examples(200))
@given(valid_messages())
def test_encode_is_compact_ascii_json(message):
    encoded = codec.encode(message)
    encoded.decode("ascii")
    assert encoded == json.dumps(message, separators=(",", ":")).encode("ascii")


@settings(max_examples=examples(100))
@given(valid_messages())
def test_unknown_fields_are_kept(message):
    message = dict(message, x_future_field={"nested": [1, 2.5, None]})
    assert codec.decode(codec.encode(message), BIG)["x_future_field"] == {
        "nested": [1, 2.5, None]}


# ----------------------------------------------------------------------------- robustness
@settings(max_examples=examples(300))
@given(st.binary(max_size=200))
@example(b"")
@example(b"\xef\xbb\xbf{}")
@example(b"\x00")
def test_arbitrary_bytes_only_raise_protocol_error(data):
    decode_or_protocol_error(data)


@settings(max_examples=examples(300))
@given(JSON_VALUES)
def test_arbitrary_json_values_only_raise_protocol_error(value):
    data = json.dumps(value).encode()
    message = decode_or_protocol_error(data)
    if not isinstance(value, dict):
        assert message is None


@settings(max_examples=examples(300))
@given(st.data())
def test_mutated_frames_only_raise_protocol_error(data):
    base = codec.encode(data.draw(valid_messages()))
    decode_or_protocol_error(data.draw(mutated_frames(base)))


@settings(max_examples=examples(300))
@given(st.data())
def test_field_mutations_are_accepted_or_bad_message(data):
    message = data.draw(valid_messages(extras=False))
    mutated = data.draw(field_mutations(message))
    try:
        codec.decode(json.dumps(mutated).encode(), BIG)
    except codec.UnknownMessageType:
        assert mutated.get("type") not in REGISTRY
    except ProtocolError as e:
        assert e.code == "bad_message"


# ----------------------------------------------------------------------------- specific errors
def test_invalid_utf8_is_bad_frame():
    assert decode_error(b'{"type":"ping","seq":1,"ack":0,"x":"\xff\xfe"}').code == "bad_frame"
    assert decode_error(b'{"type":"ping","seq":1,"ack":0,"x":"\xed\xa0\x80"}').code == \
        "bad_frame"  # a UTF-8 encoded surrogate


@pytest.mark.parametrize("constant", [b"NaN", b"Infinity", b"-Infinity", b"1e400", b"-1e400"])
def test_non_finite_numbers_are_bad_frame(constant):
    data = b'{"type":"ping","seq":1,"ack":0,"x":' + constant + b"}"
    assert decode_error(data).code == "bad_frame"


@pytest.mark.parametrize("data", [
    b"[" * 100000,
    b'{"a":' * 100000,
    b'{"type":"ping","seq":1,"ack":0,"x":' + b"[" * 100000 + b"]" * 100000 + b"}",
], ids=["arrays", "objects", "inside-a-message"])
def test_deep_nesting_is_bad_frame(data):
    assert decode_error(data).code == "bad_frame"


def test_huge_integer_literal_is_bad_frame():
    data = b'{"type":"ping","seq":' + b"9" * 10000 + b',"ack":0}'
    assert decode_error(data).code == "bad_frame"


def test_oversized_frame_is_frame_too_large():
    data = codec.encode(dict(PING, padding="x" * 100))
    error = decode_error(data, len(data) - 1)
    assert isinstance(error, FrameTooLarge)
    assert error.code == "frame_too_large"
    assert (error.size, error.limit) == (len(data), len(data) - 1)
    assert codec.decode(data, len(data))["padding"] == "x" * 100


@pytest.mark.parametrize("value", [[], "x", 1, None, True, 1.5])
def test_non_object_is_bad_frame(value):
    assert decode_error(json.dumps(value).encode()).code == "bad_frame"


@pytest.mark.parametrize("message", [
    {"type": "ping", "seq": True, "ack": 0},
    {"type": "ping", "seq": 1, "ack": False},
    {"type": "ping", "seq": 1.0, "ack": 0},
    {"type": "ping", "seq": 0, "ack": 0},
    {"type": "ping", "seq": 1, "ack": -1},
    {"type": "ping", "seq": "1", "ack": 0},
    {"type": 1, "seq": 1, "ack": 0},
    {"seq": 1, "ack": 0},
    {"type": "ping", "ack": 0},
    {"type": "ping", "seq": 1},
    {"type": "print", "seq": 1, "ack": 0, "message": "hi"},  # request without id
    {"type": "print", "seq": 1, "ack": 0, "id": True, "message": "hi"},
    {"type": "print", "seq": 1, "ack": 0, "id": 0, "message": "hi"},
    {"type": "print", "seq": 1, "ack": 0, "id": 1},
    {"type": "print", "seq": 1, "ack": 0, "id": 1, "message": None},
    {"type": "response", "seq": 1, "ack": 0, "result": 1},
    {"type": "error", "seq": 1, "ack": 0, "code": "x", "message": "y", "reply_to": False},
    {"type": "read_file", "seq": 1, "ack": 0, "id": 1, "command_id": "c", "length": -1},
    {"type": "update", "seq": 1, "ack": 0, "command_id": True, "updates": []},
    {"type": "update", "seq": 1, "ack": 0, "command_id": 1.5, "updates": []},
    {"type": "complete", "seq": 1, "ack": 0, "command_id": "c", "failure": []},
    {"type": "hello", "seq": 1, "ack": 0, "versions": [1], "worker": "w", "nonce": "n",
     "max_frame_size": True},
    {"type": "utime_file", "seq": 1, "ack": 0, "id": 1, "command_id": "c",
     "access_time": True, "modified_time": 1.5},
])
def test_wrong_field_types_are_bad_message(message):
    assert decode_error(json.dumps(message).encode()).code == "bad_message"


def test_optional_fields_and_unions():
    ok = [
        {"type": "complete", "seq": 1, "ack": 0, "command_id": 7, "failure": None},
        {"type": "complete", "seq": 1, "ack": 0, "command_id": "7"},
        {"type": "error", "seq": 1, "ack": 0, "code": "x", "message": "y"},
        {"type": "response", "seq": 1, "ack": 0, "reply_to": 3},
        {"type": "utime_file", "seq": 1, "ack": 0, "id": 1, "command_id": "c",
         "access_time": 1, "modified_time": 1.5},
    ]
    for message in ok:
        assert codec.decode(json.dumps(message).encode(), BIG) == message


def test_unknown_type_carries_seq_and_request_id():
    with pytest.raises(codec.UnknownMessageType) as info:
        codec.decode(b'{"type":"teleport","seq":5,"ack":2,"id":9}', BIG)
    assert (info.value.code, info.value.message_type, info.value.seq,
            info.value.request_id) == ("unknown_type", "teleport", 5, 9)
    with pytest.raises(codec.UnknownMessageType) as info:
        codec.decode(b'{"type":"teleport","seq":5,"ack":2,"id":true}', BIG)
    assert info.value.request_id is None
    # The envelope is still checked first.
    assert decode_error(b'{"type":"teleport","seq":0,"ack":2}').code == "bad_message"


def test_duplicate_keys_last_wins():
    assert codec.decode(b'{"type":"close","type":"ping","seq":1,"ack":0}', BIG)["type"] == "ping"


# ----------------------------------------------------------------------------- encode
@pytest.mark.parametrize("message", [
    dict(PING, x=object()),
    dict(PING, x=float("nan")),
    dict(PING, x=float("inf")),
    dict(PING, x=b"bytes"),
    dict(PING, x={(1, 2): 3}),
])
def test_encode_rejects_unserializable(message):
    with pytest.raises(LocalProtocolError):
        codec.encode(message)


def test_encode_rejects_cycles_and_deep_nesting():
    cycle: list = []
    cycle.append(cycle)
    with pytest.raises(LocalProtocolError):
        codec.encode(dict(PING, x=cycle))
    deep: list = []
    for _ in range(100000):
        deep = [deep]
    with pytest.raises(LocalProtocolError):
        codec.encode(dict(PING, x=deep))


def test_encode_enforces_frame_limit():
    encoded = codec.encode(PING)
    assert codec.encode(PING, len(encoded)) == encoded
    with pytest.raises(LocalProtocolError):
        codec.encode(PING, len(encoded) - 1)


def test_validate_checks_request_id():
    spec = REGISTRY["shutdown"]
    assert spec.kind is Kind.REQUEST
    codec.validate({"type": "shutdown", "seq": 1, "ack": 0, "id": 1}, spec)
    with pytest.raises(ProtocolError):
        codec.validate({"type": "shutdown", "seq": 1, "ack": 0}, spec)


def test_every_spec_lists_distinct_fields():
    for spec in MESSAGES:
        names = [f.name for f in all_fields(spec)]
        assert len(names) == len(set(names)), spec.type


# ----------------------------------------------------------------------------- base64
@settings(max_examples=examples(200))
@given(st.binary(max_size=300))
def test_b64_round_trip(data):
    text = codec.b64encode(data)
    assert text.isascii()
    assert codec.b64decode(text) == data


@pytest.mark.parametrize("text", ["a", "abc", "ab=c", "a b=", "!!!!", "YQ", "\u00e9" * 4])
def test_b64_decode_rejects_invalid(text):
    with pytest.raises(ProtocolError) as info:
        codec.b64decode(text)
    assert info.value.code == "bad_message"
