"""Hostile and broken peers against a real master, while a real worker runs a real build.

Every bad input must get a clear log line and a closed connection; the master keeps
serving: the build that runs during the attacks completes with all its output, the
real worker stays attached, and a later build works.
"""

from __future__ import annotations

import struct

import pytest

from buildbot_worker_msgproto.protocol import events as ev
from buildbot_worker_msgproto.protocol.limits import MSG_DIALECT
from master_tests.rawclient import RawClient

from . import harness
from .single_worker_env import PASSWD
from .single_worker_env import WORKER
from .single_worker_env import SingleWorkerEnv
from .single_worker_env import long_and_quick_builders_py

HANDSHAKE_TIMEOUT = 3
LONG_LINES = 40


class Env(SingleWorkerEnv):
    def __init__(self, root: str) -> None:
        super().__init__(root, {"handshake_timeout": HANDSHAKE_TIMEOUT},
                         long_and_quick_builders_py(LONG_LINES))
        self.long_request = None

    def start(self) -> Env:
        super().start()
        self.long_request = self.master.force_build("long")
        self.master.wait_build_started(self.long_request, 30)
        return self

    def assert_log(self, text: str) -> None:
        log = self.master.log_text()
        assert text in log, f"{text!r} not in master log:\n{harness.tail(log, 40)}"


@pytest.fixture(scope="module")
def env(tmp_path_factory):
    yield from harness.started(Env(str(tmp_path_factory.mktemp("bad-input"))))


def _close_code(frames: list[dict]) -> str | None:
    closes = [f for f in frames if f.get("type") == "close"]
    return closes[-1]["code"] if closes else None


def _close_code_after_frame(env, frame: bytes) -> str | None:
    """Choose msg, send ``frame``: the code of the master's close."""
    with RawClient(env.port) as c:
        c.choose_msg()
        c.send_frame(frame)
        return _close_code(c.read_until_closed())


def test_malformed_json_is_rejected(env):
    assert _close_code_after_frame(env, b'{"type": "hello", "seq": 1, oops') == "bad_frame"
    env.assert_log("frame is not valid JSON")


def test_invalid_utf8_is_rejected(env):
    assert _close_code_after_frame(env, b'{"type": "hello\xff\xfe"}') == "bad_frame"
    env.assert_log("frame is not valid UTF-8")


def test_deeply_nested_json_is_rejected(env):
    assert _close_code_after_frame(env, b"[" * 10000) == "bad_frame"


def test_oversized_frame_is_rejected_without_buffering(env):
    with RawClient(env.port) as c:
        c.choose_msg()
        c.send(struct.pack("!I", 200 * 1024 * 1024) + b"{")
        assert _close_code(c.read_until_closed()) == "frame_too_large"
    env.assert_log("exceeds the limit")


def test_truncated_frame_then_silence_times_out(env):
    with RawClient(env.port, timeout=HANDSHAKE_TIMEOUT * 4) as c:
        c.choose_msg()
        c.send(struct.pack("!I", 100) + b'{"type":')
        assert _close_code(c.read_until_closed()) == "handshake_timeout"


def test_truncated_frame_then_disconnect(env):
    with RawClient(env.port) as c:
        c.choose_msg()
        c.send(struct.pack("!I", 100) + b'{"type":')
    # nothing to observe on the wire; the master must simply carry on (checked at the end)


def test_unknown_message_type_before_auth(env):
    with RawClient(env.port) as c:
        c.choose_msg()
        c.send_json({"type": "exploit", "seq": 1, "ack": 0})
        assert _close_code(c.read_until_closed()) == "unknown_type"


def test_command_before_authentication(env):
    with RawClient(env.port) as c:
        c.choose_msg()
        c.send_json({"type": "start_command", "seq": 1, "ack": 0, "id": 1, "builder": "long",
                     "command_id": "1", "command": "shell",
                     "args": {"command": ["touch", "/tmp/pwned"], "workdir": "."}})
        assert _close_code(c.read_until_closed()) == "unexpected_message"


def test_update_for_running_command_before_authentication(env):
    """Forged output for the running build's command must never reach Buildbot."""
    with RawClient(env.port) as c:
        c.choose_msg()
        c.send_json({"type": "update", "seq": 1, "ack": 0, "command_id": "0",
                     "updates": [["stdout", "FORGED\n"]]})
        assert _close_code(c.read_until_closed()) == "unexpected_message"


def test_wrong_password(env):
    with RawClient(env.port) as c:
        c.choose_msg()
        session, events = c.handshake(WORKER, "wrong-password")
        assert session.is_closed
        assert not any(isinstance(e, ev.Authenticated) for e in events)
        assert any(isinstance(e, ev.Closed) and e.code == "authentication_failed"
                   for e in events), events
    env.assert_log(f"authentication failed for worker '{WORKER}' from 127.0.0.1")


def test_unknown_worker(env):
    with RawClient(env.port) as c:
        c.choose_msg()
        session, events = c.handshake("nobody", "whatever")
        assert any(isinstance(e, ev.Closed) and e.code == "authentication_failed"
                   for e in events), events
    env.assert_log("authentication failed for worker 'nobody'")


def test_duplicate_login_is_rejected_while_the_real_worker_lives(env):
    with RawClient(env.port, timeout=30) as c:
        c.choose_msg()
        session, events = c.handshake(WORKER, PASSWD)
        assert session.is_open, events
        frames = c.read_until_closed()
        assert _close_code(frames) == "duplicate_worker", frames
    env.assert_log("rejecting worker 'w1'")


def test_silent_peer_is_dropped_after_negotiation_timeout(env):
    with RawClient(env.port, timeout=HANDSHAKE_TIMEOUT * 4) as c:
        c.read_offer()
        c.wait_closed(HANDSHAKE_TIMEOUT * 4)
    env.assert_log("chose no dialect within")


def test_silent_peer_after_choosing_msg_is_dropped(env):
    with RawClient(env.port, timeout=HANDSHAKE_TIMEOUT * 4) as c:
        c.choose_msg()
        assert _close_code(c.read_until_closed()) == "handshake_timeout"


def test_garbage_dialect_choice(env):
    with RawClient(env.port) as c:
        c.read_offer()
        c.send(b"GET / HTTP/1.1\r\nHost: x\r\n\r\n")
        c.wait_closed(10)
    env.assert_log("bad dialect negotiation")


def test_unoffered_dialect_choice(env):
    with RawClient(env.port) as c:
        c.read_offer()
        c.send(b"\x05\x82evil!")
        c.wait_closed(10)
    env.assert_log("which was not offered")


def test_master_offers_msg_first(env):
    with RawClient(env.port) as c:
        assert c.read_offer()[:2] == [MSG_DIALECT, b"pb"]


def test_master_kept_serving(env):
    """Runs last: the build that ran during the attacks is intact, and new builds work."""
    build = env.master.wait_build(env.long_request, 120)
    assert build["results"] == harness.SUCCESS, env.master.build_summary(build["buildid"])
    text = env.master.step_log_text(env.master.step(build["buildid"], "count")["stepid"])
    lines = [line for line in text.splitlines() if line.startswith("line-")]
    assert lines == [f"line-{i}" for i in range(LONG_LINES)]
    assert "FORGED" not in text
    assert env.master.worker_data(WORKER)["connected_to"], "real worker was disconnected"
    quick = env.master.run_build("quick", timeout=60)
    assert quick["results"] == harness.SUCCESS
    log = env.master.log_text()
    assert "Traceback" not in log, harness.tail(log, 80)
