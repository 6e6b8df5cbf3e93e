"""The connection status of msg workers in Buildbot's web UI and ``/api/v2/workers``.

One real master with TLS on its negotiated port (client certificates optional, keys from
``gen-keys``) and ``rtt_probe_interval`` 1 s; its workers:

- ``tls_pw``: our worker, password plus a client certificate;
- ``certonly``: our worker logging in with its client certificate alone;
- ``proxied``: our worker (password) through a fault proxy that delays every byte by
  50 ms each way, so its round-trip time is at least 100 ms; the proxy then cuts the
  connection and the session resumes;
- ``pbworker``: a stock buildbot-worker over PB (TLS connection string), whose info must
  stay exactly what Buildbot shows.

The API's ``workerinfo`` is checked field by field, then headless Chromium loads the
worker page of the running master, takes a screenshot and the rendered page text is
checked.  With ``MSGPROTO_SCREENSHOT_DIR`` set the screenshot is copied there.
"""

from __future__ import annotations

import os
import re
import shutil

import pytest

from buildbot_worker_msgproto.scripts import gen_keys
from master_tests import browser
from master_tests.faultproxy import FaultProxy

from . import harness
from .multi_worker_env import MultiWorkerEnv

OURS = harness.PROTOCOLS["msg"]
STOCK = harness.ProtocolSpec(name="stock-pb", protocols_py="", worker_py="")
#: Buildbot's own worker info keys (AbstractWorker.attached), all a PB worker may have.
BUILDBOT_KEYS = {"admin", "host", "access_uri", "version"}
DELAY = 0.05  # seconds, each way, through the proxy
TLS = r"TLS \(TLSv1\.[23], [A-Z0-9_-]+\)"
PROTOCOL = "msg v1 (blob, pipelined_close, pushed_download, resume)"
WAIT = 60


class StatusEnv(MultiWorkerEnv):
    def __init__(self, root: str, layout: gen_keys.Layout) -> None:
        super().__init__(root)
        self.layout = layout
        self.passwords["certonly"] = (None, None)
        self.proxy = FaultProxy.start("127.0.0.1", self.port)
        self.proxy.set_delay(DELAY)

    def cert_args(self, name: str) -> tuple[str, ...]:
        return ("--tls-client-cert", self.layout.worker_cert(name),
                "--tls-client-key", self.layout.worker_key(name))

    def start(self) -> None:
        ca = ("--tls-ca-file", self.layout.ca_cert)
        stock = ("--connection-string", f"tls:host=127.0.0.1:port={self.port}"
                 f":trustRoots={os.path.dirname(self.layout.ca_cert)}")
        protocols_py = repr({"msg": {
            "port": f"tcp:{self.port}:interface=127.0.0.1", "rtt_probe_interval": 1,
            "tls_cert": self.layout.master_cert, "tls_key": self.layout.master_key,
            "tls_client_ca": self.layout.ca_cert, "client_certificates": "optional"}})
        self.start_all(protocols_py, {
            "tls_pw": (OURS, (*ca, *self.cert_args("tls_pw")), self.port),
            "certonly": (OURS, (*ca, *self.cert_args("certonly")), self.port),
            "proxied": (OURS, ca, self.proxy.address[1]),
            "pbworker": (STOCK, stock, self.port),
        })
        for name, worker in self.workers.items():
            self.master.wait_worker_connected(name, WAIT, worker=worker)

    def stop(self) -> None:
        super().stop()
        self.proxy.stop()

    def info(self, name: str) -> dict:
        return self.master.worker_data(name)["workerinfo"]

    def wait_info(self, name: str, predicate, what: str) -> dict:
        return harness.wait_for(lambda: (lambda i: i if predicate(i) else None)(self.info(name)),
                                WAIT, f"{name}'s workerinfo: {what}", 0.2,
                                lambda: f"{self.info(name)}\n{self.e2e_diagnostics()}")


@pytest.fixture(scope="module")
def env(tmp_path_factory):
    layout = gen_keys.generate(str(tmp_path_factory.mktemp("status-keys")),
                               workers=["tls_pw", "certonly", "proxied"]).layout
    yield from harness.started(StatusEnv(str(tmp_path_factory.mktemp("e2e-status")), layout))


def _measured(info: dict) -> bool:
    return isinstance(info.get("msg_rtt_ms"), (int, float))


def test_api_shows_protocol_transport_encryption_auth_master_and_rtt(env):
    master_name = env.master.api_get("masters")["masters"][0]["name"]
    for name, auth in (("tls_pw", r"password \+ TLS client certificate \(CN=tls_pw,.*\)"),
                       ("certonly", r"TLS client certificate \(CN=certonly,.*\)"),
                       ("proxied", r"password")):
        info = env.wait_info(name, _measured, "a round-trip time")
        assert info["msg_protocol"] == PROTOCOL, info
        assert info["msg_transport"] == "tcp", info
        assert re.fullmatch(TLS, info["msg_encryption"]), info
        assert re.fullmatch(auth, info["msg_auth"]), info
        assert info["msg_master"] == master_name, info
        assert info["msg_rtt_ms"] > 0, info
        assert info["msg_resumes"] == 0 and info.get("msg_last_resume") is None, info
        # Buildbot's own keys are still there
        assert info["admin"] is None or isinstance(info["admin"], str)
        assert info["version"], info


def test_rtt_follows_the_network(env):
    """Through the proxy every byte waits 2 x 50 ms on the round trip: the measured
    (smoothed) time cannot be below that; direct ones on loopback stay far below it."""
    info = env.wait_info("proxied", lambda i: _measured(i) and i["msg_rtt_ms"] >= 2000 * DELAY,
                         f"a round-trip time of at least {2000 * DELAY:g} ms")
    assert info["msg_rtt_ms"] < 60_000
    assert env.wait_info("tls_pw", _measured, "a round-trip time")["msg_rtt_ms"] < 2000 * DELAY


def test_a_resume_is_counted_and_timed(env):
    env.wait_info("proxied", _measured, "a round-trip time")
    env.proxy.cut(refuse=False)  # the worker reconnects at once and resumes its session
    info = env.wait_info("proxied", lambda i: i.get("msg_resumes") == 1, "one resume")
    assert re.fullmatch(r"\d{4}-\d\d-\d\d \d\d:\d\d:\d\d UTC", info["msg_last_resume"]), info
    assert env.master.worker_data("proxied")["connected_to"]
    assert "worker 'proxied' resumed" in env.master.log_text()


def test_a_pb_workers_info_stays_buildbots(env):
    info = env.info("pbworker")
    assert set(info) == BUILDBOT_KEYS, info
    assert info["version"], info


def _text(html: str) -> str:
    """The text of a rendered page, whitespace collapsed."""
    return " ".join(re.sub(r"<[^>]+>", " ", html).split())


def test_the_worker_page_shows_the_status_in_a_browser(env, tmp_path):
    browser.require()
    env.wait_info("tls_pw", _measured, "a round-trip time")
    workerid = env.master.worker_data("tls_pw")["workerid"]
    base = f"http://127.0.0.1:{env.master.www_port}/#/workers"
    url = f"{base}/{workerid}"
    shots = {"msgproto-worker-page.png": url, "msgproto-workers-list.png": base}
    for filename, page_url in shots.items():
        shot = browser.screenshot(page_url, str(tmp_path / filename), width=2000)
        with open(shot, "rb") as f:
            assert f.read(8) == b"\x89PNG\r\n\x1a\n"
        assert os.path.getsize(shot) > 10_000
        target = os.environ.get("MSGPROTO_SCREENSHOT_DIR")
        if target:
            os.makedirs(target, exist_ok=True)
            shutil.copy(shot, os.path.join(target, filename))
    names = ("tls_pw", "certonly", "proxied", "pbworker")
    listing = _text(browser.dump_dom_until(base, lambda dom: all(n in dom for n in names)))
    for name in names:
        assert name in listing, listing[:3000]
    columns = ("msg_protocol", "msg_transport", "msg_encryption", "msg_auth",
               "msg_master", "msg_rtt_ms", "msg_resumes")
    text = _text(browser.dump_dom_until(url, lambda dom: all(c in dom for c in columns)))
    for column in columns:
        assert column in text, text[:3000]
    assert "tls_pw" in text
    assert PROTOCOL in text
    assert re.search(TLS, text), text[:3000]
    assert re.search(r"password \+ TLS client certificate \(CN=tls_pw", text), text[:3000]
