"""The transport backends by name, loaded on demand (their libraries are optional)."""

from __future__ import annotations

import importlib
from types import ModuleType

#: Every backend name and the module implementing it.  Each module provides
#: ``NAME``, ``listen(reactor, options, new_receiver)`` (awaitable, master side),
#: ``client_service(reactor, target, new_receiver, retry_policy)`` (worker side) and
#: ``validate_options(options)`` (master.cfg checks).
BACKENDS: dict[str, str] = {
    "tcp": "buildbot_worker_msgproto.transports.tcp",
    "amp": "buildbot_worker_msgproto.transports.amp",
    "websocket": "buildbot_worker_msgproto.transports.websocket",
    "zmq": "buildbot_worker_msgproto.transports.zmq",
    "amqp": "buildbot_worker_msgproto.transports.amqp",
}


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
        raise ImportError(f"transport {name!r} needs a library that is not installed: {e}; "
                          "install buildbot-msgproto with its extras, e.g. "
                          f"pip install 'buildbot-msgproto[{name}]'") from e
