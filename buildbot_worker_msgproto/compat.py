"""Every place where the worker side touches private buildbot-worker or Twisted internals.

Each touch is a small function here, with a test in ``worker_tests/test_compat_internals.py``
that fails loudly (naming the internal) when buildbot-worker changes underneath it.
"""

from __future__ import annotations

from typing import Any

from buildbot_worker.scripts import create_worker as upstream_create_worker

#: buildbot-worker's error for a worker directory it cannot create.
CreateWorkerError = upstream_create_worker.CreateWorkerError


def stock_worker_tac(config: dict[str, Any]) -> str:
    """The buildbot.tac text ``buildbot-worker create-worker`` writes for ``config``."""
    return upstream_create_worker._make_tac(config)


def write_worker_dir(basedir: str, tac: str, quiet: bool) -> None:
    """Create a worker directory as ``buildbot-worker create-worker`` does (the directory,
    ``buildbot.tac`` with ``tac``, the ``info/`` files); CreateWorkerError on failure."""
    upstream_create_worker._makeBaseDir(basedir, quiet)
    upstream_create_worker._makeBuildbotTac(basedir, tac, quiet)
    upstream_create_worker._makeInfoFiles(basedir, quiet)


def running_process(builder: Any) -> Any:
    """The Twisted process transport of the shell command a builder runs, or None.

    buildbot-worker keeps the running ``ProtocolCommand`` in
    ``WorkerForBuilderPb.protocol_command``; its ``command`` is the worker command, whose
    ``command`` is the ``RunProcess`` of a shell command, whose ``process`` is the
    transport that ``pauseProducing`` stops reading (so the child blocks on a full pipe).
    """
    protocol_command = getattr(builder, "protocol_command", None)
    worker_command = getattr(protocol_command, "command", None)
    run_process = getattr(worker_command, "command", None)
    return getattr(run_process, "process", None)


#: Bytes a framed stream connection reads per ``recv`` and writes per ``send``, and keeps
#: buffered before it reports itself not writable (Twisted's defaults: 64 KiB, 128 KiB and
#: 64 KiB).  A 256 KiB file block then takes one reactor turn instead of four reads or two
#: sends (bench/README.rst, "A push sized to the path, larger socket reads, whole blocks").
STREAM_IO_BYTES = 1 << 20


def enlarge_socket_io(tcp_transport: Any, size: int = STREAM_IO_BYTES) -> None:
    """Make a Twisted TCP connection read and write ``size`` bytes per system call.

    ``bufferSize`` is the public attribute of Twisted's ``FileDescriptor`` that
    ``tcp.Connection.doRead`` passes to ``recv`` and above which the write buffer pauses
    the registered producer; ``SEND_LIMIT`` is the class constant ``doWrite`` sends at
    most per call.  Both are read on every call, so instance attributes override them.
    """
    tcp_transport.bufferSize = size
    tcp_transport.SEND_LIMIT = size
