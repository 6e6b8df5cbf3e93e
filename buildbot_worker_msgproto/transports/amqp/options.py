"""The options of the amqp transport, declared with their defaults, the names both sides
agree on, the broker permissions they need (docs/transports/amqp.rst), and readable
errors."""

from __future__ import annotations

import dataclasses
import re
from typing import Any
from urllib.parse import urlsplit

import pika
from pika import exceptions as pika_exceptions
from twisted.internet import defer

from buildbot_worker_msgproto.reach.tls import load_trust_root
from buildbot_worker_msgproto.transports.options import TransportOptions
from buildbot_worker_msgproto.transports.options import option

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
#: Bounds for one connection attempt and for a graceful close (seconds).
CONNECT_TIMEOUT = 30.0
CLOSE_TIMEOUT = 10.0


@dataclasses.dataclass(frozen=True)
class Names:
    """The exchange and queue names both sides must agree on."""

    exchange: str = DEFAULT_EXCHANGE
    master_queue: str = DEFAULT_MASTER_QUEUE
    worker_queue_prefix: str = DEFAULT_WORKER_QUEUE_PREFIX

    def worker_queue(self, user: str) -> str:
        return self.worker_queue_prefix + user


#: Longest exchange or queue name accepted (bytes; AMQP allows 255, a worker's queue
#: adds its user name to the prefix).
MAX_NAME = 200


def _check_names(options: TransportOptions, keys: tuple[str, ...]) -> None:
    for key in keys:
        if len(getattr(options, key).encode()) > MAX_NAME:
            raise options.error(key, f"is too long for an AMQP name (at most {MAX_NAME} "
                                     "bytes)")


@dataclasses.dataclass(frozen=True)
class AmqpMasterOptions(TransportOptions):
    """The master's broker connection and its exchange and queue."""

    label = "amqp master"

    url: str = option(
        DEFAULT_URL,
        doc="Broker, master's AMQP user and password, virtual host (URL-encoded; ``%2F`` is "
            "``/``).  ``amqps://`` connects with TLS (port 5671 by default), verifying the "
            "broker's certificate against the system's trust roots or ``ca_file``.")
    exchange: str = option(DEFAULT_EXCHANGE, doc="The direct exchange workers publish to.")
    queue: str = option(
        DEFAULT_MASTER_QUEUE,
        doc="The masters' shared queue (bound to the exchange under its own name; one master "
            "consumes it at a time).")
    worker_queue_prefix: str = option(
        DEFAULT_WORKER_QUEUE_PREFIX,
        doc="A worker's queue is this prefix followed by its AMQP user name.")
    prefetch: int = option(
        DEFAULT_PREFETCH, minimum=1, maximum=65535,
        doc="Unacknowledged deliveries the broker may push to the master at once.")
    heartbeat: int = option(
        DEFAULT_HEARTBEAT, minimum=0, maximum=65535,
        doc="AMQP heartbeat with the broker in seconds (``0`` turns it off).")
    ca_file: str | None = option(
        None, default_doc="(none: the system's CAs)",
        doc="``amqps://`` only: PEM file of the CAs that verify the broker's certificate, "
            "instead of the system's.")

    def check(self) -> None:
        super().check()
        _check_names(self, ("exchange", "queue", "worker_queue_prefix"))
        scheme = urlsplit(self.url).scheme
        if scheme not in ("amqp", "amqps"):
            raise ValueError(f"the amqp 'url' must start with amqp:// or amqps://, "
                             f"not {self.url!r}")
        try:
            pika.URLParameters(self.url)
        except Exception as e:
            raise ValueError(f"invalid amqp 'url': {e}")
        if self.ca_file is not None:
            if scheme != "amqps":
                raise ValueError("the amqp 'ca_file' needs an amqps:// 'url'")
            load_trust_root(self.ca_file)  # a clear error now rather than at connect time

    @property
    def names(self) -> Names:
        return Names(self.exchange, self.queue, self.worker_queue_prefix)


@dataclasses.dataclass(frozen=True)
class AmqpWorkerOptions(TransportOptions):
    """The worker's broker account and the names the master uses."""

    label = "amqp worker"

    user: str = option(DEFAULT_USER, doc="The worker's AMQP user (see above).")
    password: str = option(DEFAULT_PASSWORD, empty=True,
                           doc="The worker's AMQP password (see above).")
    vhost: str = option(DEFAULT_VHOST, doc="The virtual host, as the master's URL names it.")
    exchange: str = option(DEFAULT_EXCHANGE, doc="Must equal the master's ``exchange``.")
    master_queue: str = option(
        DEFAULT_MASTER_QUEUE,
        doc="Must equal the master's ``queue``; it is the routing key of the worker's frames.")
    worker_queue_prefix: str = option(DEFAULT_WORKER_QUEUE_PREFIX,
                                      doc="Must equal the master's.")
    prefetch: int = option(DEFAULT_PREFETCH, minimum=1, maximum=65535,
                           doc="As on the master, for the worker's queue.")
    heartbeat: int = option(DEFAULT_HEARTBEAT, minimum=0, maximum=65535,
                            doc="As on the master.")

    def check(self) -> None:
        super().check()
        _check_names(self, ("exchange", "master_queue", "worker_queue_prefix"))

    @property
    def names(self) -> Names:
        return Names(self.exchange, self.master_queue, self.worker_queue_prefix)


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
