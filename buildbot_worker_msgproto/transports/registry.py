"""The transport backends by name, loaded on demand (their libraries are optional)."""

from __future__ import annotations

import importlib
from types import ModuleType
from typing import Any

from twisted.application.internet import ClientService

from buildbot_worker_msgproto.transports.base import ClientTarget
from buildbot_worker_msgproto.transports.base import ReceiverFactory

#: Every backend name and the module implementing it.  Each module provides
#: ``NAME``, ``MasterOptions`` and ``WorkerOptions`` (its options dataclasses, see
#: :mod:`.options`; ``WorkerOptions`` is None if the worker's are ignored),
#: ``listen(reactor, options, new_receiver)`` (awaitable, master side), and on the worker
#: side ``client_endpoint(reactor, target)`` (an object with Twisted's client endpoint
#: ``connect(factory)``) and ``client_factory(reactor, target, new_receiver)`` (the
#: protocol factory to connect with), which :func:`client_service` puts together.
BACKENDS: dict[str, str] = {
    "tcp": "buildbot_worker_msgproto.transports.tcp",
    "amp": "buildbot_worker_msgproto.transports.amp",
    "websocket": "buildbot_worker_msgproto.transports.websocket",
    "zmq": "buildbot_worker_msgproto.transports.zmq",
    "amqp": "buildbot_worker_msgproto.transports.amqp",
}


#: The extra of ``buildbot-msgproto`` that installs the libraries of each backend that
#: needs any (``pip install 'buildbot-msgproto[EXTRA]'``); the others need none.
EXTRAS: dict[str, str] = {"websocket": "websocket", "zmq": "zmq", "amqp": "amqp"}


def names() -> tuple[str, ...]:
    """All backend names, in a stable order."""
    return tuple(BACKENDS)


def load(name: str) -> ModuleType:
    """The module of backend ``name``; a clear error if unknown or its library is missing."""
    if name not in BACKENDS:
        raise ValueError(f"unknown transport {name!r}; choose one of {sorted(BACKENDS)}")
    try:
        return importlib.import_module(BACKENDS[name])
    except ImportError as e:
        raise ImportError(missing_extra_message(name, e)) from e


def missing_extra_message(name: str, error: ImportError) -> str:
    """What to tell a user whose backend ``name`` failed to import with ``error``."""
    extra = EXTRAS.get(name, "all")
    return (f"transport {name!r} needs the {extra!r} extra, which is not installed "
            f"({error}): pip install 'buildbot-msgproto[{extra}]'")


def missing_extra(name: str) -> str | None:
    """None if backend ``name`` can be used here, else why not and which extra to install."""
    try:
        load(name)
    except ImportError as e:
        return str(e)
    return None


def client_service(name: str, reactor: Any, target: ClientTarget,
                   new_receiver: ReceiverFactory, retry_policy: Any = None) -> ClientService:
    """The worker's reconnecting client of backend ``name``: Twisted's ``ClientService``
    over the backend's client endpoint, one session (``new_receiver()``) per connection,
    ``retry_policy(attempt)`` seconds between attempts.  (The negotiated port, with its
    PB fallback, is :class:`buildbot_worker_msgproto.client.MsgClientFactory`.)"""
    backend = load(name)
    return ClientService(backend.client_endpoint(reactor, target),
                         backend.client_factory(reactor, target, new_receiver),
                         retryPolicy=retry_policy, clock=reactor)
