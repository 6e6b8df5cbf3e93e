"""ZeroMQ (pyzmq under Twisted, via txzmq): one master ROUTER socket, a DEALER per session.

Messages on the wire (the master's ROUTER adds and strips the DEALER's identity)::

    [frame]            one frame, opaque bytes
    [b"", b"open"]     control: the worker starts a session (its first message)
    [b"", b"close"]    control: this side closed the session (either direction)

ZeroMQ hides connects and disconnects, hence the control messages (the markers of
:mod:`buildbot_worker_msgproto.transports.messaging`): ``open`` makes the master create a
receiver for that identity at once, ``close`` makes the other side's receiver see
``transport_closed``.  Other verbs are ignored.  The worker's DEALER uses a fresh random
identity per session.  The master forgets an identity when its session ends, so a frame
from an identity it does not know (the late frame of an ended session, or a worker still
talking to a master that restarted) is answered with ``close``, which ends that worker's
session at once.

A vanished peer is found by the session's heartbeats (``detects_disconnect=False``) or, on
the master, by the first send to a worker whose connection is gone: ``ZMQ_ROUTER_MANDATORY``
makes that ``EHOSTUNREACH``, which ends that peer's session loudly.  A full high-water
mark (``EAGAIN``) drops nothing: frames wait, in order, in a per-peer queue here and the
receiver gets ``writable_changed(False)`` until it drains.  See ``docs/transports/zmq.rst``;
CURVE encryption is :mod:`buildbot_worker_msgproto.security.curve`.

The package: :mod:`.options` (the declared options and defaults), :mod:`.sockets` (sockets in
the reactor and the context that owns them), :mod:`.session` (a session's transport),
:mod:`.router` (master) and :mod:`.dealer` (worker).
"""

from __future__ import annotations

from buildbot_worker_msgproto.transports.zmq.dealer import DealerTransport
from buildbot_worker_msgproto.transports.zmq.dealer import ZmqClientEndpoint
from buildbot_worker_msgproto.transports.zmq.dealer import client_endpoint
from buildbot_worker_msgproto.transports.zmq.dealer import client_factory
from buildbot_worker_msgproto.transports.zmq.options import ZmqMasterOptions
from buildbot_worker_msgproto.transports.zmq.options import ZmqWorkerOptions
from buildbot_worker_msgproto.transports.zmq.router import PeerTransport
from buildbot_worker_msgproto.transports.zmq.router import RouterListening
from buildbot_worker_msgproto.transports.zmq.router import listen

NAME = "zmq"
MasterOptions = ZmqMasterOptions
WorkerOptions = ZmqWorkerOptions

__all__ = ["NAME", "DealerTransport", "MasterOptions", "PeerTransport", "RouterListening",
           "WorkerOptions", "ZmqClientEndpoint", "ZmqMasterOptions", "ZmqWorkerOptions",
           "client_endpoint", "client_factory", "listen"]
