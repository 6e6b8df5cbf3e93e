"""buildbot-msgproto, master side: ``MsgWorker`` and the listener for ``c['protocols']['msg']``.

The protocol core is shared with the worker and lives in
:mod:`buildbot_worker_msgproto.protocol`.
"""

from buildbot_worker_msgproto import __version__

__all__ = ["__version__"]
