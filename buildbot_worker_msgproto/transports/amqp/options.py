"""The options of the amqp transport with their defaults, the names both sides agree on,
the broker permissions they need (docs/transports/amqp.rst), and readable errors."""

from __future__ import annotations

import dataclasses
import re
from typing import Any
from urllib.parse import urlsplit

import pika
from pika import exceptions as pika_exceptions
from twisted.internet import defer

from buildbot_worker_msgproto.reach.tls import load_trust_root

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


def checked(options: dict[str, Any], defaults: dict[str, Any], side: str) -> dict[str, Any]:
    """``options`` with ``defaults`` filled in, checked (the worker CLI gives strings)."""
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
    merged = checked(options, MASTER_OPTIONS, "master")
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
