"""c['protocols']['msg'] keys come from one source: the fields of ``Limits``."""

from __future__ import annotations

import dataclasses
import pathlib

import pytest

from buildbot_msgproto.config import MsgProtocolConfigError
from buildbot_msgproto.config import parse_options
from buildbot_worker_msgproto.protocol.limits import DEFAULT_LIMITS
from buildbot_worker_msgproto.protocol.limits import Limits

CONFIGURATION_RST = pathlib.Path(__file__).parent.parent / "docs" / "configuration.rst"


@pytest.mark.parametrize("field", [f.name for f in dataclasses.fields(Limits)])
def test_every_limit_can_be_set_from_master_cfg(field):
    default = getattr(DEFAULT_LIMITS, field)
    # a valid non-default value: heartbeat_timeout must stay above heartbeat_interval,
    # max_handshake_frame_size between the minimum and max_frame_size
    value = default * 2 if field != "max_handshake_frame_size" else default + 1
    options = parse_options({"port": 9989, field: value})
    assert getattr(options.limits, field) == value


@pytest.mark.parametrize("field", [f.name for f in dataclasses.fields(Limits)])
def test_every_limit_is_documented_in_configuration_rst(field):
    assert f"* - ``{field}``" in CONFIGURATION_RST.read_text(encoding="utf-8")


def test_a_bad_limit_is_refused_with_its_name():
    with pytest.raises(MsgProtocolConfigError, match="ack_every"):
        parse_options({"port": 9989, "ack_every": 0})


def test_options_are_parsed_once_per_configuration():
    from buildbot_msgproto.config import parse_options_once

    options = {"port": 9989}
    first = parse_options_once(options)
    assert parse_options_once(options) is first  # every MsgWorker of one config
    options["max_frame_size"] = 1 << 20  # changed in place: parsed again
    changed = parse_options_once(options)
    assert changed is not first and changed.limits.max_frame_size == 1 << 20
    assert parse_options_once({"port": 9989}) is not changed  # a new configuration


# ----------------------------------------------------------------------------- transports
TRANSPORTS = {"amp": {"port": 9991, "backlog": 10},
              "websocket": {"port": "tcp:9992", "path": "/ws", "auto_ping_interval": 5},
              "zmq": {"port": 9993, "sndhwm": 4}}


def test_transports_are_stored_as_parsed_options():
    options = parse_options({"port": 9989, "transports": TRANSPORTS})
    transports = options.transport_options()
    assert list(transports) == ["amp", "websocket", "zmq"]
    assert (transports["amp"].port, transports["amp"].backlog, transports["amp"].tls) == (
        9991, 10, False)
    assert transports["websocket"].auto_ping_interval == 5.0
    assert transports["websocket"].compression is False  # defaults filled in
    assert (transports["zmq"].sndhwm, transports["zmq"].rcvhwm) == (4, 1000)


def test_equal_configurations_compare_equal_for_reconfig():
    first = parse_options({"port": 9989, "transports": TRANSPORTS})
    again = parse_options({"port": 9989, "transports": {
        name: dict(values) for name, values in reversed(TRANSPORTS.items())}})
    assert first == again and hash(first) == hash(again)
    # a default written out is the same configuration
    explicit = parse_options({"port": 9989, "transports": {
        **TRANSPORTS, "amp": {**TRANSPORTS["amp"], "tls": False}}})
    assert explicit == first
    changed = parse_options({"port": 9989, "transports": {
        **TRANSPORTS, "zmq": {"port": 9993, "sndhwm": 5}}})
    assert changed != first


@pytest.mark.parametrize("transports, message", [
    ({"amp": {"port": 1, "path": "/x"}},
     r"\['transports'\]\['amp'\]: unknown amp options \['path'\]; known: backlog, port, tls"),
    ({"amp": {}}, r"\['amp'\]: the amp transport needs a 'port' \(int or strport\)"),
    ({"websocket": {"port": 1, "backlog": 0}},
     r"\['websocket'\]: websocket 'backlog' must be at least 1, got 0"),
    ({"zmq": {"port": 1, "sndhwm": "many"}},
     r"\['zmq'\]: zmq 'sndhwm' must be an integer, got 'many'"),
    ({"zmq": {"port": 1, "hwm": 1}}, r"unknown zmq master options \['hwm'\]"),
    ({"amqp": {"url": "http://x"}},
     r"the amqp 'url' must start with amqp:// or amqps://, not 'http://x'"),
])
def test_transport_errors_name_the_transport_and_the_option(transports, message):
    with pytest.raises(MsgProtocolConfigError, match=message):
        parse_options({"port": 9989, "transports": transports})


def test_status_options():
    options = parse_options({"port": 9989})
    assert (options.rtt_probe_interval, options.check_reveals_unknown_workers) == (60.0, False)
    options = parse_options({"port": 9989, "rtt_probe_interval": 0,
                             "check_reveals_unknown_workers": True})
    assert (options.rtt_probe_interval, options.check_reveals_unknown_workers) == (0.0, True)
    for key, bad in (("rtt_probe_interval", -1), ("rtt_probe_interval", "5"),
                     ("check_reveals_unknown_workers", 1)):
        with pytest.raises(MsgProtocolConfigError, match=key):
            parse_options({"port": 9989, key: bad})


@pytest.mark.parametrize("key", ["rtt_probe_interval", "check_reveals_unknown_workers"])
def test_every_other_key_is_documented_in_configuration_rst(key):
    assert f"``{key}``" in CONFIGURATION_RST.read_text(encoding="utf-8")
