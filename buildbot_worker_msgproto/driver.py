"""Twisted glue between a sans-IO Session, a frame transport and the reactor clock.

Used unchanged by the master and the worker.  Requests and notifications are
routed to a handler object whose methods are *declared* as responders with
:func:`responder` / :func:`listener`, in the style of Twisted AMP, instead of an
if/elif chain on message names.
"""

from __future__ import annotations

from typing import Any
from typing import Callable

from twisted.internet import defer
from twisted.internet import error
from twisted.python import failure
from twisted.python import log

from buildbot_worker_msgproto.protocol import events as ev
from buildbot_worker_msgproto.protocol import payloads
from buildbot_worker_msgproto.protocol.codes import ORDERLY
from buildbot_worker_msgproto.protocol.codes import CloseCode
from buildbot_worker_msgproto.protocol.codes import ErrorCode
from buildbot_worker_msgproto.protocol.errors import FrameTooLarge
from buildbot_worker_msgproto.protocol.errors import LocalProtocolError
from buildbot_worker_msgproto.protocol.errors import ProtocolError
from buildbot_worker_msgproto.protocol.messages import Kind
from buildbot_worker_msgproto.protocol.messages import spec_for
from buildbot_worker_msgproto.protocol.session import Session
from buildbot_worker_msgproto.transports.base import FrameTransport

#: Events of the handshake: a handler that fails on one of them closes the session.
_HANDSHAKE_EVENTS = (ev.HelloReceived, ev.Authenticated)


def _encryption(transport: FrameTransport) -> str | None:
    """The transport's own account of its protection (a worker tells the master in
    ``hello``); None if it cannot say."""
    try:
        return transport.encryption()
    except Exception as e:  # informational only: never fail a connection for it
        log.msg(f"msgproto: cannot describe the connection's encryption: {e!r}")
        return None


class RemoteError(Exception):
    """The peer answered a request with an ``error`` message."""

    def __init__(self, code: str, message: str) -> None:
        super().__init__(f"{code}: {message}")
        self.code = code
        self.message = message


class SessionLost(error.ConnectionLost):
    """The session ended before the request was answered."""


class Binary:
    """A responder result that is raw bytes: sent as a binary side frame when the
    session negotiated them, else as base64 text in ``result``."""

    __slots__ = ("data",)

    def __init__(self, data: bytes) -> None:
        self.data = data


def responder(message_type: str) -> Callable:
    """Declare a handler method as the responder for requests of ``message_type``.

    The method gets the message dict and returns the result (or a Deferred of it);
    an exception becomes an ``error`` reply.
    """
    return _declare("_msgproto_request", message_type, Kind.REQUEST)


def listener(message_type: str) -> Callable:
    """Declare a handler method as the receiver of ``message_type`` notifications."""
    return _declare("_msgproto_notification", message_type, Kind.NOTIFICATION)


def _declare(attribute: str, message_type: str, kind: Kind) -> Callable:
    spec = spec_for(message_type)
    if spec is None or spec.kind is not kind:
        raise ValueError(f"{message_type!r} is not a declared {kind.value}")

    def mark(method: Callable) -> Callable:
        setattr(method, attribute, message_type)
        return method

    return mark


class MessageHandler:
    """Base for objects that answer a session's requests and notifications."""

    _msgproto_requests: dict[str, str] = {}
    _msgproto_notifications: dict[str, str] = {}

    def __init_subclass__(cls, **kwargs: Any) -> None:
        super().__init_subclass__(**kwargs)
        requests: dict[str, str] = {}
        notifications: dict[str, str] = {}
        for klass in reversed(cls.__mro__):
            for name, value in vars(klass).items():
                if hasattr(value, "_msgproto_request"):
                    requests[value._msgproto_request] = name
                if hasattr(value, "_msgproto_notification"):
                    notifications[value._msgproto_notification] = name
        cls._msgproto_requests = requests
        cls._msgproto_notifications = notifications

    def request_handler(self, message_type: str) -> Callable | None:
        name = self._msgproto_requests.get(message_type)
        return getattr(self, name) if name else None

    def notification_handler(self, message_type: str) -> Callable | None:
        name = self._msgproto_notifications.get(message_type)
        return getattr(self, name) if name else None

    # Session lifecycle hooks; override as needed.
    def hello_received(self, driver: SessionDriver, event: ev.HelloReceived) -> None:
        """Master: look up credentials and call ``driver.answer_hello``."""

    def authenticated(self, driver: SessionDriver, event: ev.Authenticated) -> None:
        """The handshake finished."""

    def link_lost(self, driver: SessionDriver, event: ev.LinkLost) -> None:
        """The connection is gone; the session is suspended until it resumes or expires."""

    def resumed(self, driver: SessionDriver, event: ev.Resumed) -> None:
        """The session continues over a new connection."""

    def writable_changed(self, driver: SessionDriver, writable: bool) -> None:
        """The session can take more output (True) or should pause its producers."""

    def session_ended(self, driver: SessionDriver, code: str, reason: str,
                      by_peer: bool) -> None:
        """The session is over (called exactly once per driver that was opened)."""


class LinkPort:
    """The :class:`FrameReceiver` one transport connection reports to.

    It forwards to the driver whose session owns its link now: a master moves the
    port of a new connection that resumes a session to that session's driver.  A port
    that is no longer its driver's current one is ignored (its connection is dropped).
    """

    def __init__(self, driver: SessionDriver) -> None:
        self.driver = driver
        self.transport: FrameTransport | None = None
        self.link: Any = None  # the session's Link this connection carries

    def transport_opened(self, transport: FrameTransport) -> None:
        self.transport = transport
        self.driver._port_opened(self)

    def frame_received(self, frame: bytes) -> None:
        self.driver._port_frame(self, frame)

    def frame_rejected(self, size: int) -> None:
        self.driver._port_rejected(self, size)

    def transport_closed(self, reason: str) -> None:
        self.driver._port_closed(self, reason)

    def max_incoming_frame_size(self) -> int:
        return self.driver.session.max_incoming_frame_size

    def writable_changed(self, writable: bool) -> None:
        self.driver._port_writable(self, writable)


class SessionDriver:
    """Runs one :class:`Session` over its connections and the reactor clock.

    Each connection reports to a :class:`LinkPort` (``new_port()``); the driver itself
    is also a FrameReceiver for its first connection.  With ``resume`` a lost connection
    suspends the session: requests wait (their Deferreds stay pending) and the output is
    kept until a new connection resumes it, or the window expires and it ends.
    """

    def __init__(self, session: Session, handler: MessageHandler, reactor: Any,
                 label: str = "msgproto") -> None:
        self.session = session
        self.handler = handler
        self.reactor = reactor
        self.label = label
        self.port: LinkPort | None = None
        self._first_port: LinkPort | None = None
        self._waiting: dict[int, defer.Deferred] = {}
        self._timer = None
        self._timer_at: float | None = None
        self._ended = False
        self._writable_waiters: list[defer.Deferred] = []
        self._transport_writable = True
        self.writable = True
        self.peer = "?"
        #: Called as ``callback(code, reason, by_peer)`` when the session ends.
        self.end_callbacks: list[Callable[[str, str, bool], None]] = []
        #: Called with the ``LinkLost`` or ``Resumed`` event when the connection is lost
        #: (the session is suspended) or the session resumed.
        self.link_callbacks: list[Callable[[ev.Event], None]] = []

    @property
    def transport(self) -> FrameTransport | None:
        """The transport of the current connection (None while suspended)."""
        return self.port.transport if self.port is not None else None

    # ------------------------------------------------------------------ connections
    def new_port(self) -> LinkPort:
        """A receiver for a new connection of this session (its first, or a resume)."""
        return LinkPort(self)

    def _first(self) -> LinkPort:
        if self._first_port is None:
            self._first_port = self.new_port()
        return self._first_port

    # FrameReceiver, for the first connection
    def transport_opened(self, transport: FrameTransport) -> None:
        self._first().transport_opened(transport)

    def frame_received(self, frame: bytes) -> None:
        self._first().frame_received(frame)

    def frame_rejected(self, size: int) -> None:
        self._first().frame_rejected(size)

    def transport_closed(self, reason: str) -> None:
        self._first().transport_closed(reason)

    def max_incoming_frame_size(self) -> int:
        return self.session.max_incoming_frame_size

    def writable_changed(self, writable: bool) -> None:
        self._first().writable_changed(writable)

    def _port_opened(self, port: LinkPort) -> None:
        if self.session.is_closed:
            port.transport.abort()
            return
        now = self.reactor.seconds()
        if self.session.is_suspended:  # worker: this connection resumes the session
            self.session.new_link(now)
        self._use_port(port)
        self.peer = port.transport.peer()
        self.session.carried_by(port.transport.guarantees.max_frame_size)
        self.session.encryption = _encryption(port.transport)
        self.session.start(now)
        self._after()

    def _use_port(self, port: LinkPort) -> None:
        old = self.port
        self.port = port
        port.driver = self
        port.link = self.session.link
        self._transport_writable = True
        if old is not None and old is not port and old.transport is not None:
            old.link = None
            old.transport.abort()  # a half-open connection the new one replaces

    def _port_frame(self, port: LinkPort, frame: bytes) -> None:
        if port is not self.port:
            return
        events = self.session.receive_frame(frame, self.reactor.seconds())
        self._after()
        self._handle(events)

    def _port_rejected(self, port: LinkPort, size: int) -> None:
        if port is not self.port:
            return
        self.fail(FrameTooLarge(size, self.session.max_incoming_frame_size))

    def _port_closed(self, port: LinkPort, reason: str) -> None:
        if port is not self.port:
            return
        self.port = None
        events = self.session.link_lost(port.link, reason, self.reactor.seconds())
        port.link = None
        self._update_writable()
        self._after()
        self._handle(events)

    def _port_writable(self, port: LinkPort, writable: bool) -> None:
        if port is self.port:
            self._transport_writable = writable
            self._update_writable()

    def adopt(self, other: SessionDriver, event: ev.Resumed) -> None:
        """Master: take over the connection of ``other``, whose session handed its link
        to ours (``event``, a resume); ``other`` ends without a word."""
        port = other.port
        other.port = None
        other._ended = True
        other._cancel_timer()
        if port is None:  # the new connection is already gone: the link is lost again
            self._handle(self.session.link_lost(self.session.link, "closed while resuming",
                                                self.reactor.seconds()))
            return
        self._use_port(port)
        self.peer = other.peer
        self._after()
        self.handler.resumed(self, event)

    # ------------------------------------------------------------------ writability
    def _update_writable(self) -> None:
        """Writable: the connection takes more and the replay buffer has room (while
        suspended, only the buffer counts: output waits in it for the resume)."""
        writable = self._ended or (not self.session.buffer_full
                                   and (self.port is None or self._transport_writable))
        if writable == self.writable:
            return
        self.writable = writable
        if writable:
            waiters, self._writable_waiters = self._writable_waiters, []
            for d in waiters:
                d.callback(None)
        try:
            self.handler.writable_changed(self, writable)
        except Exception:
            log.err(failure.Failure(), f"{self.label}: in writable_changed")

    def wait_writable(self) -> defer.Deferred:
        """Fires once the session can take more data (at once if it can now)."""
        if self.writable or self._ended:
            return defer.succeed(None)
        d = defer.Deferred()
        self._writable_waiters.append(d)
        return d

    # ------------------------------------------------------------------ sending
    def request(self, message_type: str, blob: bytes | None = None,
                **body: Any) -> defer.Deferred:
        """Send a request; the Deferred fires with the result or fails with RemoteError.

        ``blob`` travels as a binary side frame (callers check ``session.blobs_enabled``).
        A response that carries a side frame fires the Deferred with its bytes.  While
        the session is suspended the request waits for the resume.
        """
        if not self._usable():
            return defer.fail(SessionLost(f"cannot send {message_type!r}: session not open"))
        request_id = self.session.send_request(message_type, body, self.reactor.seconds(),
                                               blob)
        d = defer.Deferred()
        self._waiting[request_id] = d
        self._after()
        return d

    def notify(self, message_type: str, blob: bytes | None = None, **body: Any) -> None:
        """Send a notification (dropped with a log line if the session is gone);
        ``blob`` as in :meth:`request`."""
        if not self._usable():
            log.msg(f"{self.label}: dropping {message_type!r} for {self.peer}: session not open")
            return
        self.session.send_notification(message_type, body, self.reactor.seconds(), blob)
        self._after()

    def _usable(self) -> bool:
        return not self._ended and (self.session.is_open or self.session.is_suspended)

    def answer_hello(self, credentials: Any, resume: Session | None = None) -> None:
        """Master: continue the handshake (None for an unknown worker), naming the
        session the worker asked to resume, if it exists."""
        if self.session.is_closed:
            return
        self._handle(self.session.answer_hello(credentials, self.reactor.seconds(), resume))
        self._after()

    def accept_certificate(self, resume: Session | None = None) -> None:
        """Master: open a certificate login (the caller checked the client certificate)."""
        if self.session.is_closed:
            return
        self._handle(self.session.accept_certificate(self.reactor.seconds(), resume))
        self._after()

    def close(self, code: str = CloseCode.NORMAL, reason: str = "closing") -> None:
        """End the session cleanly (send ``close`` if connected, flush, drop the link)."""
        if not self.session.is_closed:
            self.session.close(code, reason, self.reactor.seconds())
            self._after()
            self._end(code, reason, by_peer=False)

    def fail(self, error: ProtocolError) -> None:
        """Close the session because of ``error`` (the peer broke the protocol)."""
        if not self.session.is_closed:
            log.msg(f"{self.label}: closing the session with {self.peer}: {error.code}: {error}")
            self._handle(self.session.fail(error, self.reactor.seconds()))
            self._after()

    def abort(self) -> None:
        """Drop the current connection at once (the session may resume)."""
        if self.transport is not None:
            self.transport.abort()

    # ------------------------------------------------------------------ internals
    def _after(self) -> None:
        """Flush queued frames, end the connection if its link ended, and keep the single
        session timer in step."""
        port = self.port
        if port is not None and port.transport is not None:
            frames = self.session.frames_to_send()
            if frames:
                port.transport.send_frames(frames)
            link = port.link
            if link is not None and link.ending is not None:
                self.port = None
                port.link = None
                if link.ending == "abort":
                    port.transport.abort()
                else:
                    port.transport.close()
        self._update_writable()
        deadline = None if self._ended else self.session.next_deadline()
        if deadline is None:
            self._cancel_timer()
        elif self._timer_at is None or deadline < self._timer_at:
            self._cancel_timer()
            self._timer_at = deadline
            self._timer = self.reactor.callLater(max(0.0, deadline - self.reactor.seconds()),
                                                 self._tick)

    def _cancel_timer(self) -> None:
        if self._timer is not None and self._timer.active():
            self._timer.cancel()
        self._timer = None
        self._timer_at = None

    def _tick(self) -> None:
        self._timer = None
        self._timer_at = None
        events = self.session.tick(self.reactor.seconds())
        self._after()
        self._handle(events)

    def _handle(self, events: list[ev.Event]) -> None:
        for event in events:
            try:
                self._dispatch(event)
            except ProtocolError as e:  # a handler found the peer's message malformed
                self.fail(e)
            except Exception:
                log.err(failure.Failure(), f"{self.label}: error handling {event!r}")
                if isinstance(event, _HANDSHAKE_EVENTS):  # else it would hang until timeout
                    self.close(CloseCode.INTERNAL_ERROR,
                               f"{self.label}: internal error during the handshake")

    def _dispatch(self, event: ev.Event) -> None:
        if isinstance(event, ev.RequestReceived):
            self._answer(event)
        elif isinstance(event, ev.NotificationReceived):
            self._notified(event)
        elif isinstance(event, ev.ResponseReceived):
            d = self._waiting.pop(event.reply_to, None)
            if d is not None:
                d.callback(event.blob if event.blob is not None else event.result)
        elif isinstance(event, ev.ErrorReceived):
            d = self._waiting.pop(event.reply_to, None) if event.reply_to is not None else None
            if d is not None:
                d.errback(RemoteError(event.code, event.message))
            elif event.by_peer:
                log.msg(f"{self.label}: {self.peer} reports {event.code}: {event.message}")
            else:
                log.msg(f"{self.label}: ignored a message from {self.peer} ({event.code}): "
                        f"{event.message}")
        elif isinstance(event, ev.HelloReceived):
            self.handler.hello_received(self, event)
        elif isinstance(event, ev.Authenticated):
            self.handler.authenticated(self, event)
        elif isinstance(event, ev.AuthenticationFailed):
            log.msg(f"{self.label}: authentication failed for worker {event.worker!r} "
                    f"from {self.peer}: {event.reason}")
        elif isinstance(event, ev.LinkLost):
            log.msg(f"{self.label}: connection to {self.peer} lost ({event.code}: "
                    f"{event.reason}); the session may resume within {event.window:g} s")
            self.handler.link_lost(self, event)
            self._link_event(event)
        elif isinstance(event, ev.Resumed):
            self.handler.resumed(self, event)
            self._link_event(event)
        elif isinstance(event, ev.Closed):
            self._end(event.code, event.reason, event.by_peer)

    def _link_event(self, event: ev.Event) -> None:
        for callback in self.link_callbacks:
            try:
                callback(event)
            except Exception:
                log.err(failure.Failure(), f"{self.label}: in a link callback")

    def _answer(self, event: ev.RequestReceived) -> None:
        method = self.handler.request_handler(event.type)
        if method is None:
            self._send_error(event.request_id, ErrorCode.UNKNOWN_COMMAND,
                             f"this side does not implement {event.type!r}")
            return
        d = defer.maybeDeferred(method, event.message)

        def ok(result: Any) -> None:
            if self._usable():
                blob = None
                if isinstance(result, Binary):
                    result, blob = payloads.block_out(result.data, self.session.blobs_enabled)
                try:
                    self.session.send_response(event.request_id, result, self.reactor.seconds(),
                                               blob)
                except LocalProtocolError as e:
                    self._send_error(event.request_id, ErrorCode.FAILED, str(e))
                self._after()

        def failed(f: failure.Failure) -> None:
            if f.check(ProtocolError):
                self.fail(f.value)
                return
            if not f.check(SessionLost, RemoteError):
                log.err(f, f"{self.label}: {event.type!r} request from {self.peer} failed")
            self._send_error(event.request_id, ErrorCode.FAILED, f.getErrorMessage())

        d.addCallbacks(ok, failed)
        d.addErrback(log.err, f"{self.label}: answering {event.type!r}")

    def _send_error(self, request_id: int, code: str, message: str) -> None:
        if self._usable():
            self.session.send_error(request_id, code, message[:4096], self.reactor.seconds())
            self._after()

    def _notified(self, event: ev.NotificationReceived) -> None:
        method = self.handler.notification_handler(event.type)
        if method is None:
            log.msg(f"{self.label}: ignoring {event.type!r} from {self.peer}: no listener")
            return
        d = defer.maybeDeferred(method, event.message)
        d.addErrback(self._listener_failed, event.type)

    def _listener_failed(self, f: failure.Failure, message_type: str) -> None:
        """A malformed notification (ProtocolError) closes the session, so that nothing the
        peer sent is silently dropped; anything else is our own bug: log it."""
        if f.check(ProtocolError):
            self.fail(f.value)
        else:
            log.err(f, f"{self.label}: handling {message_type!r} from {self.peer}")

    def _end(self, code: str, reason: str, by_peer: bool) -> None:
        if self._ended:
            return
        self._ended = True
        self._cancel_timer()
        self._update_writable()  # release anyone waiting to send
        waiting, self._waiting = self._waiting, {}
        for d in waiting.values():
            d.errback(SessionLost(f"session ended ({code}): {reason}"))
        if code not in ORDERLY:
            who = "peer" if by_peer else "we"
            log.msg(f"{self.label}: session with {self.peer} ended, {who} closed it: "
                    f"{code}: {reason}")
        self.handler.session_ended(self, code, reason, by_peer)
        for callback in self.end_callbacks:
            try:
                callback(code, reason, by_peer)
            except Exception:
                log.err(failure.Failure(), f"{self.label}: in a session-end callback")
