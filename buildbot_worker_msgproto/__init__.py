"""buildbot-msgproto: a JSON message protocol between Buildbot masters and workers.

This package holds the worker side and the shared sans-IO protocol core
(:mod:`buildbot_worker_msgproto.protocol`); the master side lives in
``buildbot_msgproto`` and imports the core from here, because worker hosts do
not install buildbot.
"""

from __future__ import annotations

__version__ = "0.1.0"

__all__ = ["Worker", "__version__"]


def __getattr__(name: str):
    # Lazy so that importing the protocol core does not pull in Twisted services.
    if name == "Worker":
        from buildbot_worker_msgproto.worker import Worker

        return Worker
    raise AttributeError(name)
