"""Twisted glue between a sans-IO Session, a frame transport and the reactor clock.

Used unchanged by the master and the worker.  Requests and notifications are
routed to a handler object whose methods are *declared* as responders with
:func:`responder` / :func:`listener`, in the style of Twisted AMP, instead of an
if/elif chain on message names.
"""

from __future__ import annotations

import base64
from typing import Any
from typing import Callable

from twisted.internet import defer
from twisted.internet import error
from twisted.python import failure
from twisted.python import log

from buildbot_worker_msgproto.protocol import events as ev
from buildbot_worker_msgproto.protocol.errors import FrameTooLarge
from buildbot_worker_msgproto.protocol.errors import LocalProtocolError
from buildbot_worker_msgproto.protocol.messages import Kind
from buildbot_worker_msgproto.protocol.messages import spec_for
from buildbot_worker_msgproto.protocol.session import Session
from buildbot_worker_msgproto.transports.base import FrameTransport


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

    def session_ended(self, driver: SessionDriver, code: str, reason: str,
                      by_peer: bool) -> None:
        """The session is over (called exactly once per driver that was opened)."""


class SessionDriver:
    """Runs one :class:`Session` over one :class:`FrameTransport`; a FrameReceiver."""

    def __init__(self, session: Session, handler: MessageHandler, reactor: Any,
                 label: str = "msgproto") -> None:
        self.session = session
        self.handler = handler
        self.reactor = reactor
        self.label = label
        self.transport: FrameTransport | None = None
        self._waiting: dict[int, defer.Deferred] = {}
        self._timer = None
        self._timer_at: float | None = None
        self._ended = False
        self._writable_waiters: list[defer.Deferred] = []
        self.writable = True
        self.peer = "?"
        #: Called as ``callback(code, reason, by_peer)`` when the session ends.
        self.end_callbacks: list[Callable[[str, str, bool], None]] = []

    # ------------------------------------------------------------------ FrameReceiver
    def transport_opened(self, transport: FrameTransport) -> None:
        self.transport = transport
        self.peer = transport.peer()
        self.session.start(self.reactor.seconds())
        self._after()

    def frame_received(self, frame: bytes) -> None:
        events = self.session.receive_frame(frame, self.reactor.seconds())
        self._after()
        self._handle(events)

    def frame_rejected(self, size: int) -> None:
        self._handle(self.session.fail(FrameTooLarge(size, self.max_incoming_frame_size()),
                                       self.reactor.seconds()))
        self._after()

    def transport_closed(self, reason: str) -> None:
        self._cancel_timer()
        if not self.session.is_closed:
            self.session.close("connection_lost", reason, self.reactor.seconds())
            self.session.frames_to_send()  # nowhere to send them
            self._end("connection_lost", reason, by_peer=True)
        self.transport = None

    def max_incoming_frame_size(self) -> int:
        return self.session.max_incoming_frame_size

    def writable_changed(self, writable: bool) -> None:
        self.writable = writable
        if writable:
            waiters, self._writable_waiters = self._writable_waiters, []
            for d in waiters:
                d.callback(None)

    def wait_writable(self) -> defer.Deferred:
        """Fires once the transport can take more data (at once if it can now)."""
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
        A response that carries a side frame fires the Deferred with its bytes.
        """
        if not self.session.is_open:
            return defer.fail(SessionLost(f"cannot send {message_type!r}: session not open"))
        request_id = self.session.send_request(message_type, body, self.reactor.seconds(),
                                               blob)
        d = defer.Deferred()
        self._waiting[request_id] = d
        self._after()
        return d

    def notify(self, message_type: str, **body: Any) -> None:
        """Send a notification (dropped with a log line if the session is gone)."""
        if not self.session.is_open:
            log.msg(f"{self.label}: dropping {message_type!r} for {self.peer}: session not open")
            return
        self.session.send_notification(message_type, body, self.reactor.seconds())
        self._after()

    def answer_hello(self, credentials: Any) -> None:
        """Master: continue the handshake (None for an unknown worker)."""
        if self.session.is_closed:
            return
        self._handle(self.session.answer_hello(credentials, self.reactor.seconds()))
        self._after()

    def accept_certificate(self) -> None:
        """Master: open a certificate login (the caller checked the client certificate)."""
        if self.session.is_closed:
            return
        self._handle(self.session.accept_certificate(self.reactor.seconds()))
        self._after()

    def close(self, code: str = "normal", reason: str = "closing") -> None:
        """Close the session cleanly (send ``close``, flush, drop the transport)."""
        if not self.session.is_closed:
            self.session.close(code, reason, self.reactor.seconds())
            self._after()
            self._end(code, reason, by_peer=False)

    def abort(self) -> None:
        """Drop the transport at once."""
        if self.transport is not None:
            self.transport.abort()

    # ------------------------------------------------------------------ internals
    def _after(self) -> None:
        """Flush queued frames and keep the single session timer in step."""
        frames = self.session.frames_to_send()
        if frames and self.transport is not None:
            self.transport.send_frames(frames)
        if self.session.is_closed:
            self._cancel_timer()
            if self.transport is not None:
                self.transport.close()
            return
        deadline = self.session.next_deadline()
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
            except Exception:
                log.err(failure.Failure(), f"{self.label}: error handling {event!r}")

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
        elif isinstance(event, ev.Closed):
            self._end(event.code, event.reason, event.by_peer)

    def _answer(self, event: ev.RequestReceived) -> None:
        method = self.handler.request_handler(event.type)
        if method is None:
            self._send_error(event.request_id, "unknown_command",
                             f"this side does not implement {event.type!r}")
            return
        d = defer.maybeDeferred(method, event.message)

        def ok(result: Any) -> None:
            if self.session.is_open:
                blob = None
                if isinstance(result, Binary):
                    if self.session.blobs_enabled:
                        result, blob = None, result.data
                    else:
                        result = base64.b64encode(result.data).decode("ascii")
                try:
                    self.session.send_response(event.request_id, result, self.reactor.seconds(),
                                               blob)
                except LocalProtocolError as e:
                    self._send_error(event.request_id, "failed", str(e))
                self._after()

        def failed(f: failure.Failure) -> None:
            if not f.check(SessionLost, RemoteError):
                log.err(f, f"{self.label}: {event.type!r} request from {self.peer} failed")
            self._send_error(event.request_id, "failed", f.getErrorMessage())

        d.addCallbacks(ok, failed)
        d.addErrback(log.err, f"{self.label}: answering {event.type!r}")

    def _send_error(self, request_id: int, code: str, message: str) -> None:
        if self.session.is_open:
            self.session.send_error(request_id, code, message[:4096], self.reactor.seconds())
            self._after()

    def _notified(self, event: ev.NotificationReceived) -> None:
        method = self.handler.notification_handler(event.type)
        if method is None:
            log.msg(f"{self.label}: ignoring {event.type!r} from {self.peer}: no listener")
            return
        d = defer.maybeDeferred(method, event.message)
        d.addErrback(log.err, f"{self.label}: handling {event.type!r} from {self.peer}")

    def _end(self, code: str, reason: str, by_peer: bool) -> None:
        if self._ended:
            return
        self._ended = True
        self.writable_changed(True)  # release anyone waiting to send
        waiting, self._waiting = self._waiting, {}
        for d in waiting.values():
            d.errback(SessionLost(f"session ended ({code}): {reason}"))
        if code not in ("normal", "shutdown"):
            who = "peer" if by_peer else "we"
            log.msg(f"{self.label}: session with {self.peer} ended, {who} closed it: "
                    f"{code}: {reason}")
        self.handler.session_ended(self, code, reason, by_peer)
        for callback in self.end_callbacks:
            try:
                callback(code, reason, by_peer)
            except Exception:
                log.err(failure.Failure(), f"{self.label}: in a session-end callback")
