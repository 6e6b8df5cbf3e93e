"""create-worker refuses a transport (or an SSH tunnel) whose extra is not installed, and
names the extra to install."""

from __future__ import annotations

import os
import subprocess
import sys

import pytest
from twisted.python import usage

from buildbot_worker_msgproto.scripts.runner import CreateWorkerOptions
from buildbot_worker_msgproto.transports import registry

CLI = os.path.join(os.path.dirname(sys.executable), "buildbot-worker-msgproto")


def _hide(monkeypatch: pytest.MonkeyPatch, *libraries: str) -> None:
    """Make ``libraries`` unimportable (None in sys.modules) and forget our modules that
    imported them, as on a machine where they are not installed."""
    for name in list(sys.modules):
        if name in libraries or name.startswith(tuple(f"{lib}." for lib in libraries)):
            monkeypatch.setitem(sys.modules, name, None)
    for name in libraries:
        monkeypatch.setitem(sys.modules, name, None)
    for name in list(sys.modules):
        if name.startswith(("buildbot_worker_msgproto.transports.",
                            "buildbot_worker_msgproto.reach.ssh")) \
                and not name.endswith((".registry", ".base", ".stream", ".tcp")):
            monkeypatch.delitem(sys.modules, name)


@pytest.mark.parametrize("transport, library", [
    ("zmq", "zmq"), ("websocket", "autobahn"), ("amqp", "pika")])
def test_a_transport_without_its_extra_is_refused(monkeypatch, tmp_path, transport, library):
    _hide(monkeypatch, library)
    with pytest.raises(usage.UsageError) as raised:
        CreateWorkerOptions().parseOptions(
            ["--transport", transport, str(tmp_path / "w"), "127.0.0.1:9989", "w", "pw"])
    assert f"pip install 'buildbot-msgproto[{transport}]'" in str(raised.value)
    assert f"needs the {transport!r} extra" in str(raised.value)
    assert not (tmp_path / "w").exists()


@pytest.mark.parametrize("transport", ["tcp", "amp"])
def test_transports_without_an_extra_need_nothing_more(monkeypatch, transport):
    _hide(monkeypatch, "zmq", "autobahn", "pika")
    assert registry.missing_extra(transport) is None


def test_an_ssh_tunnel_without_the_ssh_extra_is_refused(monkeypatch, tmp_path):
    _hide(monkeypatch, "twisted.conch")
    with pytest.raises(usage.UsageError, match=r"pip install 'buildbot-msgproto\[ssh\]'"):
        CreateWorkerOptions().parseOptions(
            ["--ssh-tunnel", "bb@127.0.0.1", str(tmp_path / "w"), "127.0.0.1:9989", "w",
             "pw"])


def test_the_command_line_names_the_extra(tmp_path):
    """The real command, where ``import zmq`` fails as it does when pyzmq is missing."""
    shadow = tmp_path / "shadow" / "zmq"
    shadow.mkdir(parents=True)
    (shadow / "__init__.py").write_text("raise ImportError(\"No module named 'zmq'\")\n")
    env = dict(os.environ, PYTHONPATH=str(tmp_path / "shadow"))
    result = subprocess.run([CLI, "create-worker", "--transport", "zmq", str(tmp_path / "w"),
                             "127.0.0.1:9989", "w", "pw"], env=env, capture_output=True,
                            text=True, timeout=60)
    assert result.returncode == 1, result
    assert "pip install 'buildbot-msgproto[zmq]'" in result.stdout
    assert not (tmp_path / "w").exists()
