"""What Buildbot's web UI and ``/api/v2/workers`` show of a msg worker's connection.

Buildbot stores a worker's info (``workerinfo``: admin, host, access_uri, version) when it
attaches; the worker page shows every key of it as a column.  A msg connection adds its
own keys (:data:`FIELDS`), all plain strings or numbers because the UI renders values as
they are:

``msg_protocol``    protocol, version and negotiated features, e.g. ``msg v1 (blob, resume)``
``msg_transport``   ``tcp``, ``amp``, ``websocket``, ``zmq`` or ``amqp``
``msg_encryption``  the master's view (``TLS (TLSv1.3, TLS_AES_256_GCM_SHA384)``, ``CURVE``,
                    ``none``...), and the worker's when it differs (an SSH tunnel, its
                    side of a broker)
``msg_auth``        ``password``, ``TLS client certificate (CN=...)``, ``password + ...``
``msg_master``      the name of the master the worker is attached to
``msg_rtt_ms``      smoothed round-trip time in milliseconds
``msg_resumes``     how often the session resumed after a lost connection
``msg_last_resume`` when it last did (UTC), absent before the first resume

The round-trip time comes from a ``keepalive`` request every ``rtt_probe_interval``
seconds (default 60), timed until its answer: the worker answers it at once, so the time
is the network's round trip plus the worker's event-loop delay, as Buildbot's own
keepalive measures responsiveness.  Heartbeats cannot give it: a ``ping`` is not answered
and acks wait up to ``ack_delay``.  The smoothing is TCP's (RFC 6298: 1/8 of each new
sample).  The info is written to the database, and announced to the UI, only when a value
changed (the round-trip time: by more than 20 % and 0.5 ms), never per message.
"""

from __future__ import annotations

import time
from typing import Any
from typing import Callable

from twisted.internet import defer
from twisted.internet import task
from twisted.python import log

from buildbot_msgproto import client_certs
from buildbot_worker_msgproto.driver import SessionDriver
from buildbot_worker_msgproto.protocol import auth

FIELDS = ("msg_protocol", "msg_transport", "msg_encryption", "msg_auth", "msg_master",
          "msg_rtt_ms", "msg_resumes", "msg_last_resume")

#: Weight of a new sample in the smoothed round-trip time (RFC 6298's alpha).
RTT_GAIN = 1 / 8
#: A new smoothed round-trip time is published if it differs by more than this fraction...
RTT_CHANGE = 0.2
#: ... and by more than this many milliseconds from the published one.
RTT_CHANGE_MS = 0.5

#: Writes the changed fields to Buildbot's worker info (returns a Deferred).
Publisher = Callable[[dict[str, Any]], Any]


class RoundTrip:
    """A smoothed round-trip time in milliseconds (None before the first sample)."""

    def __init__(self) -> None:
        self.ms: float | None = None

    def add(self, seconds: float) -> None:
        sample = max(0.0, seconds) * 1000.0
        self.ms = sample if self.ms is None else self.ms + RTT_GAIN * (sample - self.ms)


def rtt_changed(published: float | None, current: float | None) -> bool:
    """Whether ``current`` (ms) differs enough from ``published`` to be written."""
    if current is None or published is None:
        return current != published
    difference = abs(current - published)
    return difference > RTT_CHANGE_MS and difference > RTT_CHANGE * published


def _auth(driver: SessionDriver) -> str:
    transport = driver.transport
    parts = []
    if driver.session.auth_mechanism == auth.SCRAM:
        parts.append("password")
    cert = client_certs.peer_certificate(transport) if transport is not None else None
    if cert is not None:
        parts.append(f"TLS client certificate ({cert.subject.rfc4514_string() or '-'})")
    elif driver.session.auth_mechanism == auth.CLIENT_CERTIFICATE:
        parts.append("TLS client certificate")
    curve_key = getattr(transport, "curve_key_name", None)
    if curve_key:
        parts.append(f"CURVE key {curve_key}")
    return " + ".join(parts) or str(driver.session.auth_mechanism)


def _encryption(driver: SessionDriver) -> str:
    transport = driver.transport
    ours = transport.encryption() if transport is not None else "?"
    theirs = driver.session.peer_encryption
    return ours if not theirs or theirs == ours else f"{ours} (worker: {theirs})"


def connection_fields(master_name: str, driver: SessionDriver,
                      rtt_ms: float | None) -> dict[str, Any]:
    """The :data:`FIELDS` of ``driver``'s session as they are now."""
    session = driver.session
    features = ", ".join(sorted(session.features))
    transport = driver.transport
    fields: dict[str, Any] = {
        "msg_protocol": f"msg v{session.version}" + (f" ({features})" if features else ""),
        "msg_transport": getattr(transport, "transport_name", "?"),
        "msg_encryption": _encryption(driver),
        "msg_auth": _auth(driver),
        "msg_master": master_name,
        "msg_rtt_ms": None if rtt_ms is None else round(rtt_ms, 2),
        "msg_resumes": session.resumes,
        "msg_last_resume": None,
    }
    if session.last_resumed_at is not None:
        fields["msg_last_resume"] = time.strftime("%Y-%m-%d %H:%M:%S UTC",
                                                  time.gmtime(session.last_resumed_at))
    return fields


class ConnectionStatus:
    """Keeps one msg connection's :data:`FIELDS` current in Buildbot's worker info.

    ``start()`` once the worker is attached, ``refresh()`` when something changed (a
    resume), ``stop()`` when it is detached.  Writes go through ``publish`` one at a time.
    """

    def __init__(self, reactor: Any, master_name: str, driver: SessionDriver,
                 interval: float, publish: Publisher) -> None:
        self.reactor = reactor
        self.master_name = master_name
        self.driver = driver
        self.interval = interval
        self.publish = publish
        self.rtt = RoundTrip()
        self.published: dict[str, Any] = {}
        self._loop: task.LoopingCall | None = None
        self._writing = False
        self._dirty = False
        self._stopped = False

    def start(self) -> None:
        self.refresh()
        if self.interval > 0:
            self._loop = task.LoopingCall(self.probe)
            self._loop.clock = self.reactor
            self._loop.start(self.interval, now=True)

    def stop(self) -> None:
        self._stopped = True
        if self._loop is not None and self._loop.running:
            self._loop.stop()
        self._loop = None

    def probe(self) -> None:
        """Time one ``keepalive`` request (not while suspended: it would wait for the
        resume; a sample that spans a resume is dropped)."""
        session = self.driver.session
        if self._stopped or not session.is_open:
            return
        sent_at, resumes = self.reactor.seconds(), session.resumes
        d = self.driver.request("keepalive")

        def answered(_: Any) -> None:
            if session.resumes == resumes:
                self.rtt.add(self.reactor.seconds() - sent_at)
                self.refresh()

        d.addCallbacks(answered, lambda f: None)

    def refresh(self) -> None:
        """Publish the fields if they changed enough (see :func:`rtt_changed`)."""
        if self._writing:
            self._dirty = True  # again once the write in flight is done
            return
        if self._stopped or self.driver.transport is None:
            return
        fields = connection_fields(self.master_name, self.driver, self.rtt.ms)
        published = self.published
        changed = {k: v for k, v in fields.items() if k != "msg_rtt_ms" and published.get(k) != v}
        if rtt_changed(published.get("msg_rtt_ms"), fields["msg_rtt_ms"]) \
                or "msg_rtt_ms" not in published:
            changed["msg_rtt_ms"] = fields["msg_rtt_ms"]
        if not changed:
            return
        self._writing = True
        d = defer.maybeDeferred(self.publish, changed)

        def written(_: Any) -> None:
            self.published.update(changed)

        def done(_: Any) -> None:
            self._writing = False
            if self._dirty:
                self._dirty = False
                self.refresh()

        d.addCallback(written)
        d.addErrback(lambda f: log.msg(f"msgproto: could not store the connection status "
                                       f"of {self.driver.peer}: {f.getErrorMessage()}"))
        d.addBoth(done)
