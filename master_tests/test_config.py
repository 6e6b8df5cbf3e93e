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
