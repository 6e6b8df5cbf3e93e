"""A builder running mkdir, rmfile and rmdir with lists of paths, as Buildbot's own steps
may over its msgpack protocol (``CompositeStepMixin.runMkdir([...])``), and recording the
master's ``Connection.get_peer()`` of the worker.

Imported by the pytest process (as ``e2e.list_args_cfg``) for :func:`builders_py` and by
the master process (as top-level ``list_args_cfg``, see :func:`builders_py`) for the
step: no relative imports here.
"""

from __future__ import annotations

from buildbot.plugins import steps
from buildbot.plugins import util
from buildbot.process.buildstep import BuildStep
from buildbot.process.buildstep import BuildStepFailed
from buildbot.process.results import SUCCESS
from buildbot.steps.worker import CompositeStepMixin
from twisted.internet import defer

BUILDER = "list_args"
#: Under the builder directory (file commands take paths relative to it).
ROOT = "build/listroot"
DIRS = (f"{ROOT}/one/two", f"{ROOT}/three")
FILES = (f"{ROOT}/f1.txt", f"{ROOT}/f2.txt")


class ListArgs(CompositeStepMixin, BuildStep):
    """mkdir of a list, rmfile of a list, rmdir of a list, each checked with stat."""

    name = "list_args"
    logEnviron = False

    @defer.inlineCallbacks
    def _all_exist(self, paths: tuple[str, ...]) -> defer.Deferred:
        found = []
        for path in paths:
            found.append((yield self.pathExists(path)))
        return found

    @defer.inlineCallbacks
    def run(self) -> defer.Deferred:
        yield self.addLogForRemoteCommands("list_args")
        self.setProperty("peer", self.build.workerforbuilder.worker.conn.get_peer(),
                         "ListArgs")
        yield self.runMkdir(list(DIRS))
        if (yield self._all_exist(DIRS)) != [True, True]:
            raise BuildStepFailed("mkdir of a list did not make both directories")
        yield self.runRmFile(list(FILES))
        if (yield self._all_exist(FILES)) != [False, False]:
            raise BuildStepFailed("rmfile of a list did not remove both files")
        yield self.runRmdir([f"{ROOT}/one", f"{ROOT}/three"])
        if (yield self._all_exist(DIRS)) != [False, False]:
            raise BuildStepFailed("rmdir of a list did not remove both directories")
        self.setProperty("lists_ok", True, "ListArgs")
        return SUCCESS


def factory() -> util.BuildFactory:
    """Two files to remove, then the list commands."""
    return util.BuildFactory([
        steps.ShellCommand(name="make_files", command=[
            "sh", "-c", "mkdir -p listroot && touch listroot/f1.txt listroot/f2.txt"]),
        ListArgs(),
    ])


def builders_py(workernames: str = "WORKER_NAMES") -> str:
    """master.cfg snippet adding the builder (``workernames``: python source of a list)."""
    from master_tests.e2e import harness  # in the pytest process only

    return harness.cfg_import_py("list_args_cfg") + (
        f"c['builders'].append(util.BuilderConfig(name={BUILDER!r}, "
        f"workernames={workernames}, factory=_list_args_cfg.factory()))\n"
    )
