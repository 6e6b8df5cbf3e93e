"""AMQP 0-9-1 through a RabbitMQ broker, with pika's Twisted adapter.

Topology (docs/transports/amqp.rst has the full story and the broker permissions):

- the master declares a durable direct exchange (``msgproto``) and consumes from its
  own exclusive queue (``msgproto.master``), bound to the exchange under its own name;
- each worker connection declares an exclusive queue named after its AMQP user
  (``msgproto.worker.<user>``), publishes to the exchange, and the master answers
  through the default exchange.

One worker session is one AMQP connection.  Every message carries the session id in
``correlation_id`` and a marker in ``type`` (``open``, ``frame``, ``close``, ``abort``);
worker messages also carry ``user_id``, which the broker validates against the
connection's user, so the master attributes frames to (user, session) and makes one
receiver per worker session when its ``open`` marker arrives, like a ROUTER socket.
The master derives the reply queue from the validated user, never from the message.

Publisher confirms and mandatory publishing on both sides, manual consumer acks: a frame
is delivered, or its sender's transport reports closed.  The broker connection is
re-established by itself on both sides; sessions do not survive a broker restart.
"""

from __future__ import annotations

import contextlib
import dataclasses
import re
import secrets
from typing import Any
from typing import Callable
from urllib.parse import urlsplit

import pika
from pika import exceptions as pika_exceptions
from pika.adapters.twisted_connection import TwistedProtocolConnection
from twisted.application import service
from twisted.application.internet import backoffPolicy
from twisted.internet import defer
from twisted.internet import protocol
from twisted.internet import task
from twisted.internet.endpoints import HostnameEndpoint
from twisted.internet.endpoints import clientFromString
from twisted.internet.endpoints import wrapClientTLS
from twisted.python import log

from buildbot_worker_msgproto.transports.base import ClientTarget
from buildbot_worker_msgproto.transports.base import FrameReceiver
from buildbot_worker_msgproto.transports.base import FrameTransport
from buildbot_worker_msgproto.transports.base import ReceiverFactory
from buildbot_worker_msgproto.transports.base import TransportGuarantees
from buildbot_worker_msgproto.transports.endpoints import client_endpoint
from buildbot_worker_msgproto.transports.tls import load_trust_root

NAME = "amqp"

DEFAULT_URL = "amqp://guest:guest@127.0.0.1:5672/%2F"
DEFAULT_PORT = 5672
DEFAULT_TLS_PORT = 5671
DEFAULT_EXCHANGE = "msgproto"
DEFAULT_MASTER_QUEUE = "msgproto.master"
DEFAULT_WORKER_QUEUE_PREFIX = "msgproto.worker."
DEFAULT_VHOST = "/"
DEFAULT_USER = "guest"
DEFAULT_PASSWORD = "guest"
#: Unacknowledged deliveries the broker may push to one consumer.
DEFAULT_PREFETCH = 64
#: AMQP heartbeat with the broker, in seconds (0 disables it).
DEFAULT_HEARTBEAT = 30
#: RabbitMQ's default ``max_message_size`` (3.8+): the largest frame a broker takes.
BROKER_MAX_MESSAGE = 128 * 1024 * 1024
#: Bounds for one connection attempt and for a graceful close.
CONNECT_TIMEOUT = 30.0
CLOSE_TIMEOUT = 10.0
#: Unconfirmed bytes above which a sender reports "not writable", and below which
#: it reports "writable" again; each message counts its body plus MESSAGE_OVERHEAD.
HIGH_WATER = 4 * 1024 * 1024
LOW_WATER = 1024 * 1024
MESSAGE_OVERHEAD = 256
#: How the master retries its broker connection (seconds; the worker uses its own policy).
MASTER_RETRY = backoffPolicy(initialDelay=0.5, maxDelay=10.0)

#: Message markers in the AMQP ``type`` property.
OPEN, FRAME, CLOSE, ABORT = "open", "frame", "close", "abort"

MASTER_OPTIONS = {"url": DEFAULT_URL, "exchange": DEFAULT_EXCHANGE,
                  "queue": DEFAULT_MASTER_QUEUE,
                  "worker_queue_prefix": DEFAULT_WORKER_QUEUE_PREFIX,
                  "prefetch": DEFAULT_PREFETCH, "heartbeat": DEFAULT_HEARTBEAT,
                  # amqps:// only: PEM file of the CAs that verify the broker certificate,
                  # instead of the system's (None: the system's trusted CAs)
                  "ca_file": None}
WORKER_OPTIONS = {"user": DEFAULT_USER, "password": DEFAULT_PASSWORD, "vhost": DEFAULT_VHOST,
                  "exchange": DEFAULT_EXCHANGE, "master_queue": DEFAULT_MASTER_QUEUE,
                  "worker_queue_prefix": DEFAULT_WORKER_QUEUE_PREFIX,
                  "prefetch": DEFAULT_PREFETCH, "heartbeat": DEFAULT_HEARTBEAT}


# ---------------------------------------------------------------------- options


def _options(options: dict[str, Any], defaults: dict[str, Any], side: str) -> dict[str, Any]:
    unknown = sorted(set(options) - set(defaults))
    if unknown:
        raise ValueError(f"unknown amqp {side} options {unknown}; known: {sorted(defaults)}")
    merged = dict(defaults, **options)
    for key in ("prefetch", "heartbeat"):
        value = merged[key]
        try:
            merged[key] = int(value)
        except (TypeError, ValueError):
            raise ValueError(f"amqp option {key!r} must be an integer, not {value!r}")
        low = 1 if key == "prefetch" else 0
        if not low <= merged[key] <= 65535:
            raise ValueError(f"amqp option {key!r} must be between {low} and 65535")
    for key, value in merged.items():
        if key in ("prefetch", "heartbeat") or (key == "ca_file" and value is None):
            continue
        if not isinstance(value, str) or (not value and key != "password"):
            raise ValueError(f"amqp option {key!r} must be a non-empty string")
        if key not in ("url", "password", "vhost", "user", "ca_file") \
                and len(value.encode()) > 200:
            raise ValueError(f"amqp option {key!r} is too long for an AMQP name")
    return merged


def validate_options(options: dict[str, Any]) -> None:
    """Master side: ``url``, ``exchange``, ``queue``, ``worker_queue_prefix``,
    ``prefetch``, ``heartbeat``, ``ca_file`` (all optional; defaults in
    :data:`MASTER_OPTIONS`)."""
    merged = _options(options, MASTER_OPTIONS, "master")
    scheme = urlsplit(merged["url"]).scheme
    if scheme not in ("amqp", "amqps"):
        raise ValueError(f"the amqp 'url' must start with amqp:// or amqps://, "
                         f"not {merged['url']!r}")
    try:
        pika.URLParameters(merged["url"])
    except Exception as e:
        raise ValueError(f"invalid amqp 'url': {e}")
    if merged["ca_file"] is not None:
        if scheme != "amqps":
            raise ValueError("the amqp 'ca_file' needs an amqps:// 'url'")
        load_trust_root(merged["ca_file"])  # a clear error now rather than at connect time


@dataclasses.dataclass(frozen=True)
class Names:
    """The exchange and queue names both sides must agree on."""

    exchange: str = DEFAULT_EXCHANGE
    master_queue: str = DEFAULT_MASTER_QUEUE
    worker_queue_prefix: str = DEFAULT_WORKER_QUEUE_PREFIX

    def worker_queue(self, user: str) -> str:
        return self.worker_queue_prefix + user


def worker_permissions(user: str, names: Names = Names()) -> tuple[str, str, str]:
    """The ``rabbitmqctl set_permissions`` regexes (configure, write, read) of a worker:
    declare and read only its own queue, publish only to the master's exchange."""
    own = re.escape(names.worker_queue(user))
    return f"^{own}$", f"^{re.escape(names.exchange)}$", f"^{own}$"


def master_permissions(names: Names = Names()) -> tuple[str, str, str]:
    """The regexes (configure, write, read) of the master's AMQP user."""
    exchange, queue = re.escape(names.exchange), re.escape(names.master_queue)
    return (f"^({exchange}|{queue})$", f"^({queue}|amq\\.default)$",
            f"^({exchange}|{queue})$")


def describe(error: Any) -> str:
    """A readable reason, with a hint for the usual misconfigurations."""
    if isinstance(error, defer.CancelledError):
        return "cancelled"
    if isinstance(error, defer.TimeoutError):
        return f"no answer within {CONNECT_TIMEOUT:g} s"
    if isinstance(error, pika_exceptions.UnroutableError):
        return "the message could not be routed: no master is consuming (is it running?)"
    if isinstance(error, pika_exceptions.ProbableAuthenticationError):
        return "the broker refused the user name or password"
    if isinstance(error, pika_exceptions.ProbableAccessDeniedError):
        return "the user may not access that virtual host"
    if isinstance(error, pika_exceptions.ChannelClosed):
        hint = {403: " (check the user's permissions, docs/transports/amqp.rst)",
                404: " (has the master declared its exchange? is it connected?)",
                405: " (is another worker using the same AMQP user?)",
                406: " (a frame above the broker's max_message_size?)"}
        return f"{error.reply_code} {error.reply_text}{hint.get(error.reply_code, '')}"
    text = str(error) or type(error).__name__
    if type(error).__module__.split(".")[0] in ("OpenSSL", "service_identity"):
        # the master's amqps:// check of the broker certificate (chain, host name)
        text = (f"TLS: the broker certificate was rejected: {text} (is it issued by a CA "
                f"of the amqp 'ca_file', or of the system's, and valid for the broker host?)")
    return text if len(text) < 400 else text[:400] + "..."


# ---------------------------------------------------------------------- broker link


class _PikaProtocol(TwistedProtocolConnection):
    """pika's Twisted protocol, remembering why opening failed and when it is lost."""

    def __init__(self, parameters: pika.connection.Parameters, reactor: Any) -> None:
        super().__init__(parameters, custom_reactor=reactor)
        self.open_error: Any = None
        self._lost_waiters: list[defer.Deferred] = []
        self.lost_reason: str | None = None

    def _on_connection_failed(self, connection: Any, error: Any = None) -> None:
        self.open_error = error
        super()._on_connection_failed(connection, error)

    def connectionLost(self, reason: Any = protocol.connectionDone) -> None:  # noqa: N802
        ready = self.ready
        if ready is not None:
            ready.addErrback(lambda _: None)  # the attempt reports it; avoid "unhandled"
        super().connectionLost(reason)
        self.lost_reason = reason.getErrorMessage() if reason is not None else "lost"
        waiters, self._lost_waiters = self._lost_waiters, []
        for d in waiters:
            d.callback(self.lost_reason)

    def when_lost(self) -> defer.Deferred:
        if self.lost_reason is not None:
            return defer.succeed(self.lost_reason)
        d: defer.Deferred = defer.Deferred()
        self._lost_waiters.append(d)
        return d


class _OneProtocolFactory(protocol.Factory):
    noisy = False

    def __init__(self, proto: protocol.Protocol) -> None:
        self.proto = proto

    def buildProtocol(self, addr: Any) -> protocol.Protocol:  # noqa: N802
        return self.proto


class _Link:
    """One broker connection with one channel in confirm mode."""

    def __init__(self, reactor: Any, proto: _PikaProtocol, channel: Any) -> None:
        self.reactor = reactor
        self.proto = proto
        self.channel = channel
        self.on_returned: Callable[[Any, Any], None] | None = None
        channel.add_on_return_callback(self._returned)
        channel.on_closed.addBoth(self._channel_closed)

    def when_lost(self) -> defer.Deferred:
        return self.proto.when_lost()

    @property
    def is_lost(self) -> bool:
        return self.proto.lost_reason is not None

    def _returned(self, message: Any) -> None:
        if self.on_returned is not None:
            self.on_returned(message.method, message.properties)

    def _channel_closed(self, reason: Any) -> None:
        # A channel error (permissions, a vanished exchange...) ends the link as a whole.
        if isinstance(reason, pika_exceptions.ChannelClosedByBroker) and not self.is_lost:
            log.msg(f"msgproto: amqp: the broker closed the channel: {describe(reason)}")
            self.close()

    def publish(self, exchange: str, routing_key: str, body: bytes,
                properties: Any) -> defer.Deferred:
        try:
            return self.channel.basic_publish(exchange=exchange, routing_key=routing_key,
                                              body=body, properties=properties,
                                              mandatory=True)
        except Exception as e:  # e.g. the channel is closing
            return defer.fail(e)

    async def consume(self, queue: str, on_message: Callable[[Any, bytes], None]) -> None:
        queue_object, _tag = await self.channel.basic_consume(queue=queue, auto_ack=False,
                                                              exclusive=True)
        self._drain(queue_object, on_message)

    def _drain(self, queue_object: Any, on_message: Callable[[Any, bytes], None]) -> None:
        # Iterative, so a backlog of deliveries does not grow the stack.
        while True:
            d = queue_object.get()
            if not d.called:
                d.addCallbacks(self._delivered_later, lambda _: None,
                               callbackArgs=(queue_object, on_message))
                return
            box: list[Any] = []
            d.addCallbacks(box.append, lambda _: None)  # an error: the consumer is gone
            if not box or not self._deliver(box[0], on_message):
                return

    def _delivered_later(self, message: Any, queue_object: Any,
                         on_message: Callable[[Any, bytes], None]) -> None:
        if self._deliver(message, on_message):
            self._drain(queue_object, on_message)

    def _deliver(self, message: Any, on_message: Callable[[Any, bytes], None]) -> bool:
        try:
            on_message(message.properties, message.body)
        except Exception:
            log.err(None, "msgproto: amqp: error handling a delivery")
        if self.channel.is_open:
            self.channel.basic_ack(delivery_tag=message.method.delivery_tag)
            return True
        return False

    def close(self) -> defer.Deferred:
        """Close gracefully (pending publishes are flushed); abort if that hangs."""
        if self.is_lost:
            return defer.succeed(self.proto.lost_reason)
        with contextlib.suppress(Exception):  # already closing
            self.proto.close()
        timer = self.reactor.callLater(CLOSE_TIMEOUT, self.abort)
        d = self.when_lost()

        def cancel_timer(result: Any) -> Any:
            if timer.active():
                timer.cancel()
            return result

        return d.addBoth(cancel_timer)

    def abort(self) -> None:
        transport = self.proto.transport
        if transport is not None and not self.is_lost:
            transport.abortConnection()


async def _open_link(reactor: Any, endpoint: Any, parameters: pika.connection.Parameters,
                     prefetch: int) -> _Link:
    proto = _PikaProtocol(parameters, reactor)
    try:
        await endpoint.connect(_OneProtocolFactory(proto))
        try:
            await proto.ready
        except Exception as e:
            raise ConnectionError(describe(proto.open_error or e))
        channel = await proto.channel()
        await channel.confirm_delivery()
        await channel.basic_qos(prefetch_count=prefetch)
        return _Link(reactor, proto, channel)
    except BaseException:
        if proto.transport is not None and proto.lost_reason is None:
            proto.transport.abortConnection()
        raise


class _Flow:
    """Unconfirmed publishes of one sender: writability and "all sent" waiters."""

    def __init__(self) -> None:
        self.receiver: FrameReceiver | None = None
        self.pending = 0
        self.pending_bytes = 0
        self.writable = True
        self._drained: list[defer.Deferred] = []

    def track(self, d: defer.Deferred, size: int) -> defer.Deferred:
        size += MESSAGE_OVERHEAD
        self.pending += 1
        self.pending_bytes += size
        if self.writable and self.pending_bytes > HIGH_WATER:
            self._set_writable(False)
        d.addBoth(self._settled, size)
        return d

    def _settled(self, result: Any, size: int) -> Any:
        self.pending -= 1
        self.pending_bytes -= size
        if not self.writable and self.pending_bytes <= LOW_WATER:
            self._set_writable(True)
        if self.pending == 0:
            waiters, self._drained = self._drained, []
            for d in waiters:
                d.callback(None)
        return result

    def _set_writable(self, writable: bool) -> None:
        self.writable = writable
        if self.receiver is not None:
            self.receiver.writable_changed(writable)

    def drained(self) -> defer.Deferred:
        """Fires once every publish so far is confirmed, refused or lost."""
        if self.pending == 0:
            return defer.succeed(None)
        d: defer.Deferred = defer.Deferred()
        self._drained.append(d)
        return d


class _Reconnecting(service.Service):
    """Keeps one broker link up: connect, wait until lost, back off, reconnect."""

    def __init__(self, reactor: Any, connect: Callable[[], Any], retry_policy: Any,
                 label: str) -> None:
        self.reactor = reactor
        self.connect = connect
        self.retry_policy = retry_policy or backoffPolicy()
        self.label = label
        self.link: _Link | None = None
        self.first_attempt: defer.Deferred = defer.Deferred()
        self._loop: defer.Deferred | None = None
        self._attempt: defer.Deferred | None = None
        self._sleeping: defer.Deferred | None = None

    def startService(self) -> None:  # noqa: N802
        super().startService()
        self._loop = defer.ensureDeferred(self._run())
        self._loop.addErrback(log.err, f"{self.label}: reconnect loop failed")

    async def _run(self) -> None:
        failures = 0
        while self.running:
            self._attempt = defer.ensureDeferred(self.connect())
            self._attempt.addTimeout(CONNECT_TIMEOUT, self.reactor)
            try:
                link = await self._attempt
            except Exception as e:
                self._fire_first(e)
                if not self.running:
                    break
                failures += 1
                delay = self.retry_policy(failures)
                log.msg(f"{self.label}: cannot connect: {describe(e)}; "
                        f"retrying in {delay:.1f} s")
                await self._sleep(delay)
                continue
            finally:
                self._attempt = None
            failures = 0
            self.link = link
            self._fire_first(None)
            if not self.running:  # stopped while connecting
                await link.close()
            reason = await link.when_lost()
            self.link = None
            if not self.running:
                break
            failures += 1
            delay = self.retry_policy(failures)
            log.msg(f"{self.label}: broker connection lost ({reason}); "
                    f"reconnecting in {delay:.1f} s")
            await self._sleep(delay)

    def _fire_first(self, error: Exception | None) -> None:
        if not self.first_attempt.called:
            self.first_attempt.callback(error)

    async def _sleep(self, seconds: float) -> None:
        if not self.running:
            return
        self._sleeping = task.deferLater(self.reactor, seconds, lambda: None)
        try:
            await self._sleeping
        except defer.CancelledError:
            pass
        finally:
            self._sleeping = None

    async def stop_link(self) -> None:
        """Stop reconnecting, then close the current link (subclass hooks run first)."""
        if self._sleeping is not None:
            self._sleeping.cancel()
        if self._attempt is not None:
            self._attempt.cancel()
        if self.link is not None:
            await self.link.close()
        if self._loop is not None:
            await self._loop

    def stopService(self) -> defer.Deferred:  # noqa: N802
        super().stopService()
        return defer.ensureDeferred(self.stop_link())


# ---------------------------------------------------------------------- worker side


class AmqpClientTransport(FrameTransport):
    """The worker's end of one session: one broker connection."""

    def __init__(self, link: _Link, names: Names, user: str, where: str,
                 encrypted: bool) -> None:
        self.link = link
        self.names = names
        self.user = user
        self.where = where
        self.sid = secrets.token_hex(16)
        self.guarantees = TransportGuarantees(ordered=True, reliable=True,
                                              max_frame_size=BROKER_MAX_MESSAGE,
                                              encrypted=encrypted, detects_disconnect=False)
        self.receiver: FrameReceiver | None = None
        self.flow = _Flow()
        self._open = True
        self._receiving = True
        self._reported = False
        self._early: list[tuple[str, bytes]] = []
        self._properties = {kind: pika.BasicProperties(type=kind, correlation_id=self.sid,
                                                       user_id=user, delivery_mode=1)
                            for kind in (OPEN, FRAME, CLOSE, ABORT)}
        link.on_returned = self._returned
        link.when_lost().addCallback(self._lost)

    def publish_open(self) -> defer.Deferred:
        return self._publish(OPEN)

    def attach(self, receiver: FrameReceiver) -> None:
        """Hand the open transport to its receiver (and anything that came early)."""
        self.receiver = receiver
        self.flow.receiver = receiver
        receiver.transport_opened(self)
        early, self._early = self._early, []
        for kind, body in early:
            self._message_kind(kind, body)

    # -- incoming
    def on_message(self, properties: Any, body: bytes) -> None:
        if properties.correlation_id != self.sid:
            return  # left over from an earlier session
        if self.receiver is None:
            self._early.append((properties.type or FRAME, body))
            return
        self._message_kind(properties.type or FRAME, body)

    def _message_kind(self, kind: str, body: bytes) -> None:
        if kind == FRAME:
            if not self._receiving:
                return
            if len(body) > self.receiver.max_incoming_frame_size():
                self._receiving = False
                self.receiver.frame_rejected(len(body))
                return
            self.receiver.frame_received(body)
        elif kind in (CLOSE, ABORT):
            self._open = self._receiving = False
            self._report_closed("closed by the master" if kind == CLOSE
                                else "aborted by the master")
            self.link.close()

    def _returned(self, method: Any, properties: Any) -> None:
        if self._open and self.receiver is not None:
            log.msg(f"msgproto: amqp: no master consumes from {self.names.master_queue!r} "
                    f"at {self.where}; closing the session")
            self._open = self._receiving = False
            self._report_closed("the master is not connected to the broker")
            self.link.close()

    def _lost(self, reason: str) -> None:
        self._open = self._receiving = False
        self._report_closed(reason)

    def _report_closed(self, reason: str) -> None:
        if not self._reported and self.receiver is not None:
            self._reported = True
            self.receiver.transport_closed(reason)

    # -- FrameTransport
    def _publish(self, kind: str, body: bytes = b"") -> defer.Deferred:
        d = self.link.publish(self.names.exchange, self.names.master_queue, body,
                              self._properties[kind])
        return self.flow.track(d, len(body))

    def send_frames(self, frames: list[bytes]) -> None:
        if not self._open:
            return
        for frame in frames:
            self._publish(FRAME, frame).addErrback(self._refused)

    def _refused(self, failure: Any) -> None:
        if failure.check(pika_exceptions.UnroutableError):
            return  # reported by _returned
        if failure.check(pika_exceptions.NackError) and self._open:
            log.msg("msgproto: amqp: the broker refused a frame; closing the session")
            self._open = self._receiving = False
            self._report_closed("the broker refused a frame")
            self.link.close()

    def close(self) -> None:
        if not self._open:
            return
        self._open = self._receiving = False
        self._publish(CLOSE).addErrback(lambda _: None)
        self.flow.drained().addBoth(lambda _: self.link.close())

    def abort(self) -> None:
        if self.link.is_lost:
            return
        if self._open:
            self._open = self._receiving = False
            self._publish(ABORT).addErrback(lambda _: None)
        self.link.close()

    def peer(self) -> str:
        return f"amqp:{self.where}"


class _WorkerLink(_Reconnecting):
    """The worker's reconnecting broker connection; one session per connection."""

    def __init__(self, reactor: Any, target: ClientTarget, new_receiver: ReceiverFactory,
                 retry_policy: Any) -> None:
        options = _options(target.options, WORKER_OPTIONS, "worker")
        self.names = Names(options["exchange"], options["master_queue"],
                           options["worker_queue_prefix"])
        self.user = options["user"]
        self.prefetch = options["prefetch"]
        # ``target.tls`` (CA file, pin, client certificate) implies TLS, as in client_endpoint
        use_tls = target.use_tls or target.tls is not None
        port = target.port or (DEFAULT_TLS_PORT if use_tls else DEFAULT_PORT)
        self.target = dataclasses.replace(target, port=port, use_tls=use_tls)
        self.where = (target.connection_string
                      or f"{target.host or 'localhost'}:{port}") + f" vhost {options['vhost']}"
        self.parameters = pika.ConnectionParameters(
            virtual_host=options["vhost"],
            credentials=pika.PlainCredentials(options["user"], options["password"]),
            heartbeat=options["heartbeat"],
            client_properties={"connection_name": f"msgproto worker {options['user']}"})
        self.new_receiver = new_receiver
        self.transport: AmqpClientTransport | None = None
        # an SSH tunnel is set up once: its checks and log line at startup, and its
        # SSH connection shared while a link is open
        self.endpoint = client_endpoint(reactor, self.target) if target.ssh else None
        super().__init__(reactor, self._connect, retry_policy, "msgproto-worker: amqp")

    async def _connect(self) -> _Link:
        endpoint = self.endpoint or client_endpoint(self.reactor, self.target)
        link = await _open_link(self.reactor, endpoint, self.parameters, self.prefetch)
        try:
            queue = self.names.worker_queue(self.user)
            await link.channel.queue_declare(queue=queue, exclusive=True, auto_delete=True)
            transport = AmqpClientTransport(link, self.names, self.user, self.where,
                                            encrypted=self.target.use_tls)
            await link.consume(queue, transport.on_message)
            await transport.publish_open()
        except BaseException:
            await link.close()
            raise
        self.transport = transport
        transport.attach(self.new_receiver())
        return link

    async def stop_link(self) -> None:
        if self._sleeping is not None:
            self._sleeping.cancel()
        if self._attempt is not None:
            self._attempt.cancel()
        transport = self.transport
        if transport is not None and transport._open and not transport.link.is_lost:
            transport.close()  # tell the master, then close the connection
            lost = transport.link.when_lost().addTimeout(CLOSE_TIMEOUT, self.reactor)
            try:
                await lost
            except defer.TimeoutError:
                transport.link.abort()
        await super().stop_link()


def client_service(reactor: Any, target: ClientTarget, new_receiver: ReceiverFactory,
                   retry_policy: Any = None) -> service.Service:
    """The worker's reconnecting AMQP client; ``target`` host:port is the broker's.

    ``target.options``: ``user``, ``password``, ``vhost``, ``exchange``, ``master_queue``,
    ``worker_queue_prefix``, ``prefetch``, ``heartbeat`` (defaults: :data:`WORKER_OPTIONS`).
    """
    return _WorkerLink(reactor, target, new_receiver, retry_policy)


# ---------------------------------------------------------------------- master side


class AmqpPeer(FrameTransport):
    """The master's end of one worker session (a (user, session id) pair)."""

    def __init__(self, listening: AmqpListening, user: str, sid: str) -> None:
        self.listening = listening
        self.user = user
        self.sid = sid
        self.queue = listening.names.worker_queue(user)
        self.guarantees = TransportGuarantees(ordered=True, reliable=True,
                                              max_frame_size=BROKER_MAX_MESSAGE,
                                              encrypted=listening.encrypted,
                                              detects_disconnect=False)
        self.receiver: FrameReceiver | None = None
        self.flow = _Flow()
        self._open = True
        self._receiving = True
        self._reported = False
        self._properties = {kind: pika.BasicProperties(type=kind, correlation_id=sid,
                                                       delivery_mode=1)
                            for kind in (FRAME, CLOSE, ABORT)}

    def attach(self, receiver: FrameReceiver) -> None:
        self.receiver = receiver
        self.flow.receiver = receiver
        receiver.transport_opened(self)

    def deliver(self, body: bytes) -> None:
        if not self._receiving:
            return
        if len(body) > self.receiver.max_incoming_frame_size():
            self._receiving = False
            self.receiver.frame_rejected(len(body))
            return
        self.receiver.frame_received(body)

    def gone(self, reason: str) -> None:
        """The worker closed, vanished or the broker link is down."""
        self._open = self._receiving = False
        self.listening.forget(self)
        self._report_closed(reason)

    def _report_closed(self, reason: str) -> None:
        if not self._reported:
            self._reported = True
            self.receiver.transport_closed(reason)

    def _publish(self, kind: str, body: bytes = b"") -> defer.Deferred:
        d = self.listening.publish(self.queue, body, self._properties[kind])
        return self.flow.track(d, len(body))

    # -- FrameTransport
    def send_frames(self, frames: list[bytes]) -> None:
        if not self._open:
            return
        for frame in frames:
            self._publish(FRAME, frame).addErrback(self._refused)

    def _refused(self, failure: Any) -> None:
        if failure.check(pika_exceptions.NackError) and self._open:
            self._publish(ABORT).addErrback(lambda _: None)
            self.gone("the broker refused a frame")

    def close(self) -> None:
        if not self._open:
            return
        self._open = self._receiving = False
        self.listening.forget(self)
        self._publish(CLOSE).addErrback(lambda _: None)
        self.flow.drained().addBoth(lambda _: self._report_closed("closed"))

    def abort(self) -> None:
        if not self._open:
            return
        self._open = self._receiving = False
        self.listening.forget(self)
        self._publish(ABORT).addErrback(lambda _: None)
        self.listening.reactor.callLater(0, self._report_closed, "aborted")

    def peer(self) -> str:
        return f"amqp:{self.user}"


class AmqpListening(_Reconnecting):
    """The master's broker connection: consumes its queue, one receiver per session."""

    def __init__(self, reactor: Any, options: dict[str, Any],
                 new_receiver: ReceiverFactory) -> None:
        options = _options(options, MASTER_OPTIONS, "master")
        self.names = Names(options["exchange"], options["queue"],
                           options["worker_queue_prefix"])
        self.prefetch = options["prefetch"]
        self.parameters = pika.URLParameters(options["url"])
        self.parameters.heartbeat = options["heartbeat"]
        self.parameters.client_properties = {"connection_name": "msgproto master"}
        self.encrypted = urlsplit(options["url"]).scheme == "amqps"
        self.ca_file = options["ca_file"]
        self.host = self.parameters.host
        self.port = self.parameters.port
        self.vhost = self.parameters.virtual_host
        self.new_receiver = new_receiver
        self.peers: dict[str, AmqpPeer] = {}
        self._refused: dict[str, None] = {}
        self._stopped: defer.Deferred | None = None
        super().__init__(reactor, self._connect, MASTER_RETRY, "msgproto: amqp")

    def _endpoint(self) -> Any:
        if self.encrypted and self.ca_file:
            # Twisted's client TLS (chain and host name or IP address checked, SNI) with
            # the CAs of ca_file as the only trust roots
            from twisted.internet.ssl import optionsForClientTLS

            options = optionsForClientTLS(self.host, trustRoot=load_trust_root(self.ca_file))
            return wrapClientTLS(options, HostnameEndpoint(self.reactor, self.host, self.port))
        host = self.host.replace(":", r"\:")
        kind = "tls" if self.encrypted else "tcp"
        return clientFromString(self.reactor, f"{kind}:host={host}:port={self.port}")

    async def _connect(self) -> _Link:
        link = await _open_link(self.reactor, self._endpoint(), self.parameters,
                                self.prefetch)
        try:
            channel = link.channel
            await channel.exchange_declare(exchange=self.names.exchange,
                                           exchange_type="direct", durable=True)
            await channel.queue_declare(queue=self.names.master_queue, exclusive=True,
                                        auto_delete=True)
            await channel.queue_bind(queue=self.names.master_queue,
                                     exchange=self.names.exchange,
                                     routing_key=self.names.master_queue)
            link.on_returned = self._returned
            await link.consume(self.names.master_queue, self._message)
        except BaseException:
            await link.close()
            raise
        link.when_lost().addCallback(self._link_lost)
        log.msg(f"msgproto: amqp: consuming from {self.names.master_queue!r} "
                f"on {self.address()}")
        return link

    async def start(self) -> AmqpListening:
        self.startService()
        error = await self.first_attempt
        if error is not None:
            log.msg(f"msgproto: amqp: the broker at {self.address()} is not reachable yet "
                    f"({describe(error)}); workers can attach once it is")
        return self

    # -- the broker's deliveries
    def _message(self, properties: Any, body: bytes) -> None:
        user, sid = properties.user_id, properties.correlation_id
        if not user or not sid:
            return  # not from a msgproto worker: user_id is how we know who sent it
        kind = properties.type or FRAME
        peer = self.peers.get(user)
        if kind == OPEN:
            if peer is not None:
                if peer.sid == sid:
                    return
                peer.gone("superseded by a new session of the same AMQP user")
            peer = self.peers[user] = AmqpPeer(self, user, sid)
            peer.attach(self.new_receiver())
        elif peer is None or peer.sid != sid:
            if kind == FRAME:
                self._refuse(user, sid)
        elif kind == FRAME:
            peer.deliver(body)
        elif kind in (CLOSE, ABORT):
            peer.gone("closed by the worker" if kind == CLOSE else "aborted by the worker")

    def _refuse(self, user: str, sid: str) -> None:
        """A frame of a session we do not know (e.g. from before our own reconnect):
        tell that session once that it is over."""
        if sid in self._refused:
            return
        self._refused[sid] = None
        while len(self._refused) > 1000:
            del self._refused[next(iter(self._refused))]
        properties = pika.BasicProperties(type=CLOSE, correlation_id=sid, delivery_mode=1)
        self.publish(self.names.worker_queue(user), b"", properties).addErrback(
            lambda _: None)

    def _returned(self, method: Any, properties: Any) -> None:
        prefix = self.names.worker_queue_prefix
        if not method.routing_key.startswith(prefix):
            return
        peer = self.peers.get(method.routing_key[len(prefix):])
        if peer is not None and peer.sid == properties.correlation_id:
            peer.gone("the worker's queue is gone (its broker connection closed)")

    def _link_lost(self, reason: str) -> None:
        for peer in list(self.peers.values()):
            peer.gone(f"broker connection lost: {reason}")

    # -- for the peers
    def publish(self, queue: str, body: bytes, properties: Any) -> defer.Deferred:
        if self.link is None:
            return defer.fail(ConnectionError("not connected to the broker"))
        return self.link.publish("", queue, body, properties)

    def forget(self, peer: AmqpPeer) -> None:
        if self.peers.get(peer.user) is peer:
            del self.peers[peer.user]

    # -- Listening
    def stop(self) -> defer.Deferred:
        """Close every session (telling its worker), then the broker connection."""
        if self._stopped is None:
            self._stopped = self.stopService()
        return self._stopped

    def stopService(self) -> defer.Deferred:  # noqa: N802
        service.Service.stopService(self)
        for peer in list(self.peers.values()):
            if self.link is not None:
                peer._publish(CLOSE).addErrback(lambda _: None)
            peer.gone("the master stopped listening")
        return defer.ensureDeferred(self.stop_link())

    def address(self) -> str:
        return f"amqp://{self.host}:{self.port}/{self.vhost} queue {self.names.master_queue}"


async def listen(reactor: Any, options: dict[str, Any],
                 new_receiver: ReceiverFactory) -> AmqpListening:
    """Connect to the broker and consume the master queue (reconnecting by itself)."""
    validate_options(options)
    return await AmqpListening(reactor, options, new_receiver).start()
