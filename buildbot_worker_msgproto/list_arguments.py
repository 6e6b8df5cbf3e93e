"""Lists of paths where PB's argument translation takes one path: ``mkdir`` and ``rmfile``.

Buildbot's ``msgpack_experimental_v7`` master turns ``mkdir``'s ``dir`` into a list of
paths whether it is one path or a list (``buildbot/worker/protocols/msgpack.py``), so
``CompositeStepMixin.runMkdir([...])`` works there; buildbot-worker's PB translation
(``ProtocolCommandPb.protocol_args_setup``) joins the basedir with ``dir`` and fails on a
list.  ``rmdir`` takes a list in both.  Here ``mkdir`` and ``rmfile`` also take a list,
each item resolved as the single path would be (``rmfile``: ``~`` expanded), and
``rmfile`` removes every file of its list (:class:`RemoveFiles`).
"""

from __future__ import annotations

import os
from typing import Any

from buildbot_worker.commands import fs


def translate(command: str, args: dict[str, Any], basedir: str) -> bool:
    """Turn a list-valued ``mkdir.dir`` or ``rmfile.path`` into absolute paths under the
    builder directory ``basedir``, in place; False (nothing done) for anything else."""
    if command == "mkdir" and isinstance(args.get("dir"), list):
        args["paths"] = [os.path.join(basedir, str(item)) for item in args.pop("dir")]
        return True
    if command == "rmfile" and isinstance(args.get("path"), list):
        args["path"] = [os.path.join(basedir, os.path.expanduser(str(item)))
                        for item in args["path"]]
        return True
    return False


class RemoveFiles(fs.RemoveFile):
    """``rmfile`` with a list of paths: removes each one, going on after a failure (as
    ``rmdir`` does); each failure sends a ``header`` line, ``rc`` is 0 or the errno of the
    last failure."""

    def start(self) -> None:
        paths = self.args["path"]
        if not isinstance(paths, list):
            super().start()
            return
        rc = 0
        for pathname in paths:
            try:
                os.remove(pathname)
            except OSError as e:
                self.log_msg(f"remove file {pathname} failed: {e}")
                self.sendStatus([("header", f"{self.header}: {e.strerror}: {pathname}\n")])
                rc = e.errno or 1
        self.sendStatus([("rc", rc)])


def command_for(command: Any) -> Any:
    """The worker command to run instead of ``command`` (a buildbot-worker command object
    already made from translated arguments): :class:`RemoveFiles` for ``rmfile`` with a
    list, else ``command`` itself."""
    if type(command) is fs.RemoveFile and isinstance(command.args.get("path"), list):
        return RemoveFiles(command.protocol_command, command.command_id, command.args)
    return command
