"""Fuzzing at scale: the codec and a master session against hostile peers.

The two main properties run 10,000 examples each on every run (100,000 with
``MSGPROTO_HYPOTHESIS_PROFILE=long``); each example is cheap, so the whole file stays
well under a minute on two cores.  Properties checked, for every handshake state and the
open state of a master session:

* ``receive_frame`` never raises, whatever the bytes;
* memory stays bounded: at most one frame is queued per frame received, every queued
  frame fits the outgoing limit, the pending-request tables never grow from peer input
  beyond one entry per received request;
* a session that fails ends CLOSED having queued exactly one ``close`` frame, and is
  silent afterwards.

Plus targeted families: deeply nested JSON within the frame limit, invalid UTF-8,
replayed authentication, and updates addressed to another worker's commands.
"""

from __future__ import annotations

import json
from collections.abc import Iterable
from typing import Any

import pytest
from hypothesis import HealthCheck
from hypothesis import example
from hypothesis import given
from hypothesis import settings
from hypothesis import strategies as st

from buildbot_worker_msgproto.protocol import codec
from buildbot_worker_msgproto.protocol.events import Authenticated
from buildbot_worker_msgproto.protocol.events import Closed
from buildbot_worker_msgproto.protocol.events import RequestReceived
from buildbot_worker_msgproto.protocol.messages import MESSAGES
from buildbot_worker_msgproto.protocol.messages import Kind
from buildbot_worker_msgproto.protocol.messages import MessageSpec
from buildbot_worker_msgproto.protocol.session import Session
from buildbot_worker_msgproto.protocol.session import State
from worker_tests.strategies import examples
from worker_tests.strategies import frame
from worker_tests.test_codec import decode_or_protocol_error
from worker_tests.test_session import CREDENTIALS
from worker_tests.test_session import _master_in
from worker_tests.test_session import decoded
from worker_tests.test_session import deliver
from worker_tests.test_session import make_master
from worker_tests.test_session import make_worker

#: Examples of each of the two big properties (x10 in the ``long`` profile).
BIG_RUN = examples(10_000)
FUZZ = settings(max_examples=BIG_RUN, deadline=None,
                suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large])
MASTER_STATES = ["await_hello", "await_credentials", "await_authenticate", "open", "closed"]
#: Requests the master has outstanding when a fuzzed OPEN session starts.
MASTER_REQUESTS = 3

# Byte sequences that are never valid UTF-8: lone continuation, overlong encodings,
# surrogates encoded directly, code points beyond U+10FFFF, truncated sequences.
BAD_UTF8 = [b"\x80", b"\xbf", b"\xc0\xaf", b"\xc1\xbf", b"\xe0\x80\xaf", b"\xed\xa0\x80",
            b"\xed\xbf\xbf", b"\xf4\x90\x80\x80", b"\xf5\x80\x80\x80", b"\xff", b"\xfe",
            b"\xe2\x82", b"\xf0\x9f\x98"]


# ============================================================================= codec
# The big properties must stay cheap per example: rich recursive strategies
# (``valid_messages``) cost ~10 ms an example, so they draw from a fixed corpus of valid
# frames (one per message type and a genuine handshake) and damage it with a single draw.
_SAMPLE_VALUES = {"string": "x", "integer": 1, "number": 1.5, "boolean": True, "object": {},
                  "array": [], "null": None, "any": {"k": [1, "v", None]}}


def _seed_message(spec: MessageSpec) -> dict[str, Any]:
    message: dict[str, Any] = {"type": spec.type, "seq": 1, "ack": 0}
    if spec.kind is Kind.REQUEST:
        message["id"] = 1
    for field in spec.fields:
        if field.required or field.name in ("reply_to",):
            value = _SAMPLE_VALUES["any" if "any" in field.types else field.types[0]]
            if field.minimum is not None and isinstance(value, (int, float)):
                value = max(value, field.minimum)
            message[field.name] = value
    codec.validate(message, spec)
    return message


SEED_MESSAGES = [_seed_message(spec) for spec in MESSAGES]
_OPS = ("flip", "delete", "insert", "truncate", "dup")
_INSERTS = (b"[", b"{", b'"', b"\\", b"NaN", b"\xff", b"1e400", b"true", b",", b"}", b"\x00")


def _damage(data: bytes, edits: list[tuple[int, int, int]]) -> bytes:
    """Apply (op, position, amount) edits cheaply; the same bytes for the same edits."""
    out = bytearray(data)
    for op, pos, amount in edits:
        if not out:
            out.extend(b"{")
        pos %= len(out)
        op = _OPS[op % len(_OPS)]
        if op == "flip":
            out[pos] ^= amount % 255 + 1
        elif op == "delete":
            del out[pos:pos + amount % 8 + 1]
        elif op == "insert":
            out[pos:pos] = _INSERTS[amount % len(_INSERTS)]
        elif op == "truncate":
            del out[pos:]
        else:
            out[pos:pos] = out[pos:pos + amount % 16 + 1]
    return bytes(out)


_EDITS = st.lists(st.tuples(st.integers(0, 4), st.integers(0, 1 << 16), st.integers(0, 255)),
                  min_size=1, max_size=4)
SEED_FRAMES = st.sampled_from([frame(m) for m in SEED_MESSAGES])

CODEC_INPUT = st.one_of(
    st.binary(max_size=256),
    st.builds(_damage, SEED_FRAMES, _EDITS),
    SEED_FRAMES,
)


@FUZZ
@given(data=CODEC_INPUT, limit=st.sampled_from([64, 8 * 1024, 1 << 30]))
@example(data=b"[" * 100_000, limit=1 << 30)
@example(data=b'{"type":"ping","seq":1,"ack":0,"x":"\xed\xa0\x80"}', limit=1 << 30)
def test_codec_decode_never_raises_anything_else(data, limit):
    message = decode_or_protocol_error(data, limit)
    if message is not None:
        assert len(data) <= limit
        # Whatever decodes can be sent again (no NaN, no unencodable values).
        codec.encode(message)


# ============================================================================= session
def _nested(depth: int, kind: str) -> bytes:
    if kind == "array":
        return b"[" * depth + b"]" * depth
    return b'{"a":' * depth + b"1" + b"}" * depth


@st.composite
def nested_frames(draw: st.DrawFn, session: Session, max_depth: int = 8000) -> bytes:
    """A frame with a deeply nested value (as a whole, or in an unknown/any field)."""
    kind = draw(st.sampled_from(["array", "object"]))
    room = session.max_incoming_frame_size - 100  # envelope and closing brace
    depth = draw(st.integers(1, min(max_depth, room // (2 if kind == "array" else 6))))
    value = _nested(depth, kind)
    where = draw(st.sampled_from(["whole", "extra", "result"]))
    if where == "whole":
        return value
    envelope = (f'"seq":{session.recv_seq + 1},"ack":{session.send_seq}').encode()
    if where == "extra":
        return b'{"type":"ping",' + envelope + b',"x":' + value + b"}"
    return (b'{"type":"response",' + envelope + b',"reply_to":'
            + str(draw(st.integers(1, MASTER_REQUESTS))).encode() + b',"result":' + value + b"}")


@st.composite
def bad_utf8_frames(draw: st.DrawFn, session: Session) -> bytes:
    """A well-formed frame, in sequence, with invalid UTF-8 spliced into it."""
    message = dict(draw(st.sampled_from(SEED_MESSAGES)))
    message["seq"] = session.recv_seq + 1
    message["ack"] = session.send_seq
    data = bytearray(frame(message))
    pos = draw(st.integers(0, len(data)))
    data[pos:pos] = draw(st.sampled_from(BAD_UTF8))
    return bytes(data)


@st.composite
def replies(draw: st.DrawFn, session: Session) -> bytes:
    """A response or error, in sequence, to a request the master may or may not have sent."""
    reply_to = draw(st.integers(0, MASTER_REQUESTS + 2))
    if draw(st.booleans()):
        message: dict[str, Any] = {"type": "response", "reply_to": reply_to, "result": None}
    else:
        message = {"type": "error", "reply_to": reply_to, "code": "x", "message": "y"}
    message["seq"] = session.recv_seq + 1
    message["ack"] = session.send_seq
    return codec.encode(message)


def _recorded_exchange() -> tuple[bytes, bytes]:
    """The hello and authenticate frames of a genuine, successful handshake."""
    master, worker = make_master(), make_worker()
    worker.start(0)
    [hello] = worker.frames_to_send()
    master.receive_frame(hello, 0)
    master.answer_hello(CREDENTIALS, 0)
    deliver(master, worker)
    [authenticate] = worker.frames_to_send()
    master.receive_frame(authenticate, 0)
    assert master.is_open
    return hello, authenticate


RECORDED = _recorded_exchange()


@st.composite
def in_sequence(draw: st.DrawFn, session: Session, damaged: bool = False) -> bytes:
    """A corpus message with the envelope the peer would send next (maybe damaged)."""
    message = dict(draw(st.sampled_from(SEED_MESSAGES)))
    message["seq"] = session.recv_seq + 1
    message["ack"] = draw(st.integers(0, session.send_seq))
    if message["type"] == "response" and message.get("reply_to") == 1:
        message["reply_to"] = draw(st.integers(0, MASTER_REQUESTS + 2))
    data = codec.encode(message)
    return _damage(data, draw(_EDITS)) if damaged else data


def any_hostile_frame(session: Session) -> st.SearchStrategy[bytes]:
    return st.one_of(
        st.binary(max_size=64),
        st.builds(_damage, SEED_FRAMES, _EDITS),
        in_sequence(session),
        in_sequence(session, damaged=True),
        nested_frames(session, max_depth=1500),
        bad_utf8_frames(session),
        replies(session),
        st.sampled_from(RECORDED),
    )


def _master_with_requests(state: str) -> tuple[Session, Session]:
    master, worker = _master_in(state)
    if master.is_open:
        for _ in range(MASTER_REQUESTS):
            master.send_request("keepalive", {}, 0)
        deliver(master, worker)
    return master, worker


def check_session_against(session: Session, frames: Iterable[bytes], now: float = 0.5) -> None:
    """Feed ``frames``; assert the robustness, boundedness and close properties.

    ``frames`` may be a generator that draws each frame only once the previous one was
    received, so that in-sequence frames see the session's current sequence numbers.
    """
    pending_before = session.pending_requests
    requests_received = len(session._peer_requests)
    closes_sent = 0
    for f in frames:
        was_closed = session.is_closed
        events = session.receive_frame(f, now)  # must not raise, whatever f is
        sent = session.frames_to_send()
        # bounded: one frame at most in reply to one frame, each within the limit
        assert len(sent) <= 1
        assert all(len(s) <= session.max_outgoing_frame_size for s in sent)
        requests_received += sum(isinstance(e, RequestReceived) for e in events)
        assert session.pending_requests <= pending_before
        assert len(session._peer_requests) <= requests_received
        if was_closed:
            assert events == [] and sent == []
            continue
        messages = decoded(sent)
        closes = [e for e in events if isinstance(e, Closed)]
        assert len(closes) <= 1
        if session.is_closed:
            assert closes and events[-1] is closes[0]
            assert session.pending_requests == 0 and not session._peer_requests
            if closes[0].by_peer:
                assert sent == []
            else:
                assert [m["type"] for m in messages] == ["close"]
                assert messages[0]["code"] == closes[0].code == session.close_code
                closes_sent += 1
        else:
            assert not closes
            assert "close" not in [m["type"] for m in messages]
        if any(isinstance(e, Authenticated) for e in events):
            # only a genuine authenticate could do that, and the replay is not one
            raise AssertionError(f"hostile frame authenticated: {f!r:.300}")
    assert closes_sent <= 1


@FUZZ
@given(state=st.sampled_from(MASTER_STATES), data=st.data())
def test_master_session_survives_hostile_peers(state, data):
    master, worker = _master_with_requests(state)
    assert master.state.value == state
    strategy = any_hostile_frame(master)
    count = data.draw(st.integers(1, 4), label="frames")
    check_session_against(master, (data.draw(strategy) for _ in range(count)))


# ============================================================================= families
@pytest.mark.parametrize("state", MASTER_STATES)
@settings(max_examples=examples(200), deadline=None)
@given(data=st.data())
def test_deeply_nested_json_within_the_frame_limit(state, data):
    master, worker = _master_with_requests(state)
    f = data.draw(nested_frames(master))
    assert len(f) <= master.max_incoming_frame_size
    check_session_against(master, [f])
    if master.is_closed and state != "closed":
        assert master.close_code in ("bad_frame", "unexpected_message", "bad_sequence",
                                     "bad_message", "bad_reply")


@pytest.mark.parametrize("state", MASTER_STATES)
@settings(max_examples=examples(200), deadline=None)
@given(data=st.data())
def test_invalid_utf8_closes_with_bad_frame(state, data):
    master, worker = _master_with_requests(state)
    f = data.draw(bad_utf8_frames(master))
    with pytest.raises(UnicodeDecodeError):
        f.decode("utf-8")
    check_session_against(master, [f])
    if state != "closed":
        assert master.close_code == "bad_frame"


@settings(max_examples=examples(300), deadline=None)
@given(prefix=st.sampled_from(["none", "fresh_hello", "replayed_hello"]),
       now=st.floats(0, 1e6))
def test_replayed_authenticate_never_opens_a_new_session(prefix, now):
    """A recorded ``authenticate`` fails in any new master session (fresh master nonce)."""
    hello, authenticate = RECORDED
    master = make_master(now=now)
    if prefix == "fresh_hello":  # the same worker's new hello: a different client nonce
        worker = make_worker()
        worker.start(now)
        master.receive_frame(worker.frames_to_send()[0], now)
    elif prefix == "replayed_hello":
        master.receive_frame(hello, now)
    if master.state is State.AWAIT_CREDENTIALS:
        master.answer_hello(CREDENTIALS, now)
        master.frames_to_send()
    events = master.receive_frame(authenticate, now)
    assert not any(isinstance(e, Authenticated) for e in events)
    assert master.is_closed
    # Without a hello first, the replay is out of sequence (or out of place).
    expected = ("authentication_failed",) if prefix != "none" else ("bad_sequence",
                                                                    "unexpected_message")
    assert master.close_code in expected
    assert [m["type"] for m in decoded(master.frames_to_send())] == ["close"]


def test_replayed_authenticate_in_a_session_that_is_already_open():
    master, worker = _master_in("open")
    _, authenticate = RECORDED
    message = json.loads(authenticate)
    message["seq"] = master.recv_seq + 1
    message["ack"] = master.send_seq
    events = master.receive_frame(codec.encode(message), 0)
    assert isinstance(events[-1], Closed) and master.close_code == "unexpected_message"


# ============================================================================= commands
class _Command:
    def __init__(self) -> None:
        self.updates: list = []
        self.completed = False

    def remote_update_msgpack(self, updates: list) -> None:
        self.updates.extend(updates)

    def remote_complete(self, failure: Any = None) -> None:
        self.completed = True


def test_updates_for_another_workers_commands_are_ignored():
    """Commands are looked up per connection: w2 cannot address w1's command."""
    pytest.importorskip("buildbot")
    import types

    from twisted.internet import defer
    from twisted.internet import task

    from buildbot_msgproto.connection import MsgConnection
    from buildbot_msgproto.connection import UnknownCommand
    from buildbot_worker_msgproto.protocol.limits import Limits

    class Driver:
        handler = None
        peer = "127.0.0.1:1"

        class session:  # noqa: N801 - a namespace standing in for the Session
            is_closed = False
            limits = Limits()

        def request(self, *args: Any, **kwargs: Any) -> defer.Deferred:
            return defer.succeed(None)

    class Worker:
        def __init__(self, name: str) -> None:
            self.workername = name

    conns, commands = {}, {}
    for command_id, name in ((41, "w1"), (42, "w2")):
        master = types.SimpleNamespace(reactor=task.Clock())
        conns[name] = MsgConnection(master=master, worker=Worker(name), driver=Driver())
        commands[name] = _Command()
        conns[name].remoteStartCommand(commands[name], "b", command_id, "shell",
                                       {"command": ["true"]})
    # w2 sends output and a completion for w1's command 41: ignored, not delivered.
    conns["w2"].on_update({"command_id": 41, "updates": [["stdout", "FORGED\n"]]})
    conns["w2"].on_complete({"command_id": 41})
    assert commands["w1"].updates == [] and not commands["w1"].completed
    with pytest.raises(UnknownCommand):
        conns["w2"].on_write_file({"command_id": 41, "data": ""})
    # Each connection still reaches its own command.
    conns["w1"].on_update({"command_id": 41, "updates": [["stdout", "real\n"]]})
    conns["w2"].on_complete({"command_id": 42})
    assert commands["w1"].updates == [("stdout", ("real\n",))]
    assert commands["w2"].completed and commands["w2"].updates == []
