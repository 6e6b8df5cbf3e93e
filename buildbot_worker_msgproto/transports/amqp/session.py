"""One amqp session's transport, either side: markers and frames published with publisher
confirms (mandatory, so an unroutable one comes back), writability from the unconfirmed
bytes, and the end of the session."""

from __future__ import annotations

from typing import Any

import pika
from pika import exceptions as pika_exceptions
from twisted.internet import defer
from twisted.python import log

from buildbot_worker_msgproto.security import tls_info
from buildbot_worker_msgproto.transports.amqp.broker import PublishFlow
from buildbot_worker_msgproto.transports.amqp.options import BROKER_MAX_MESSAGE
from buildbot_worker_msgproto.transports.messaging import Marker
from buildbot_worker_msgproto.transports.messaging import MessageTransport
from buildbot_worker_msgproto.transports.messaging import plain_guarantees


def _ignore(_: Any) -> None:
    return None


class AmqpSession(MessageTransport):
    """What both ends of an amqp session do; a subclass says where messages go
    (:meth:`_send`) and how the session lets go of the broker (:meth:`_finished`)."""

    transport_name = "amqp"

    def __init__(self, reactor: Any, sid: str, encrypted: bool,
                 user_id: str | None = None) -> None:
        super().__init__(reactor, plain_guarantees(BROKER_MAX_MESSAGE, encrypted))
        self.sid = sid
        self.flow = PublishFlow(self.set_writable)
        self._properties = {marker: pika.BasicProperties(
            type=marker.value, correlation_id=sid, user_id=user_id, delivery_mode=1)
            for marker in Marker}

    def _send(self, body: bytes, properties: Any) -> defer.Deferred:
        """Publish one message of this session (fires once the broker confirmed it)."""
        raise NotImplementedError

    def encryption(self) -> str:
        """This side's connection to the broker: the broker, not the other side, is the
        end of this side's TLS."""
        link = self._broker_link()
        proto = getattr(link, "proto", None)
        return f"{tls_info.describe(proto, self.guarantees.encrypted)} to the broker"

    def _broker_link(self) -> Any:
        """The :class:`BrokerLink` this side talks to the broker through (or None)."""
        return None

    def publish(self, marker: Marker, body: bytes = b"") -> defer.Deferred:
        """Publish a marker or a frame, counted in the flow until confirmed."""
        return self.flow.track(self._send(body, self._properties[marker]), len(body))

    # --- FrameTransport
    def send_frames(self, frames: list[bytes]) -> None:
        if self.closing:
            return
        for frame in frames:
            self.publish(Marker.FRAME, frame).addErrback(self._refused)

    def _refused(self, failure: Any) -> None:
        if failure.check(pika_exceptions.NackError) and not self.closing:
            log.msg(f"msgproto: amqp: the broker refused a frame for {self.describe()}; "
                    "closing the session")
            self.end("the broker refused a frame", tell_peer=True)

    def close(self) -> None:
        """Send ``close`` and end once everything published is confirmed."""
        if self.closing:
            return
        self.closing = True
        self.receiving = False
        self.publish(Marker.CLOSE).addErrback(_ignore)
        self.flow.drained().addBoth(lambda _: self.end("closed"))

    def abort(self) -> None:
        self.end("aborted", tell_peer=True)

    def _finished(self, tell_peer: bool) -> Any:
        if tell_peer:
            self.publish(Marker.ABORT).addErrback(_ignore)
        return self._release()

    def _release(self) -> Any:
        """Let go of the broker: the link (worker) or the table entry (master)."""
        raise NotImplementedError


class AmqpClientTransport(AmqpSession):
    """The worker's end of one session: one broker connection, publishing to the master's
    queue through the exchange, as its AMQP user (the broker checks ``user_id``)."""

    peer_role = "master"

    def __init__(self, link: Any, names: Any, user: str, broker: str, vhost: str,
                 encrypted: bool, sid: str) -> None:
        super().__init__(link.reactor, sid, encrypted, user_id=user)
        self.link = link
        self.names = names
        self.user = user
        self.broker = broker
        self.vhost = vhost
        self._early: list[tuple[Marker, bytes]] = []
        link.on_returned = self._returned
        link.when_lost().addCallback(self._lost)

    def start(self, factory: Any) -> Any:
        proto = super().start(factory)
        early, self._early = self._early, []
        for marker, body in early:  # what came between consuming and now
            self.received(marker, body)
        return proto

    def on_message(self, properties: Any, body: bytes) -> None:
        if properties.correlation_id != self.sid:
            return  # left over from an earlier session
        marker = Marker.parse(properties.type or Marker.FRAME.value)
        if marker is None:
            return
        if self.protocol is None:
            self._early.append((marker, body))
        else:
            self.received(marker, body)

    def _returned(self, method: Any, properties: Any) -> None:
        if not self.closing and self.protocol is not None:
            log.msg(f"msgproto: amqp: no master consumes from {self.names.master_queue!r} "
                    f"at {self.broker} vhost {self.vhost}; closing the session")
            self.end("the master is not connected to the broker")

    def _lost(self, reason: str) -> None:
        if not self.closed:
            log.msg(f"msgproto-worker: amqp: broker connection lost ({reason})")
            self.end(f"broker connection lost: {reason}")

    def _send(self, body: bytes, properties: Any) -> defer.Deferred:
        return self.link.publish(self.names.exchange, self.names.master_queue, body,
                                 properties)

    def _broker_link(self) -> Any:
        return self.link

    def _release(self) -> defer.Deferred:
        return self.link.close()  # fires once the connection is gone

    def peer(self) -> str:
        return self.broker

    def describe(self) -> str:
        return (f"{self.broker} (amqp broker, vhost {self.vhost}, user {self.user}, "
                f"session {self.sid[:12]})")


class AmqpPeer(AmqpSession):
    """The master's end of one worker session (a (user, session id) pair), answering
    through the default exchange to the queue of the user the broker validated."""

    peer_role = "worker"

    def __init__(self, listening: Any, user: str, sid: str) -> None:
        super().__init__(listening.reactor, sid, listening.encrypted)
        self.listening = listening
        self.slot = self.user = user
        self.session = sid
        self.queue = listening.names.worker_queue(user)

    def _send(self, body: bytes, properties: Any) -> defer.Deferred:
        return self.listening.publish(self.queue, body, properties)

    def _broker_link(self) -> Any:
        return self.listening.link

    def _release(self) -> None:
        self.listening.forget(self)

    def peer(self) -> str:
        # Buildbot's host:port: the AMQP user "at" the broker both use
        return f"{self.user}@{self.listening.host}:{self.listening.port}"

    def describe(self) -> str:
        return f"{self.peer()} (amqp user {self.user}, session {self.sid[:12]})"
