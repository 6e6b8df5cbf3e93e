"""Parity builders: one builder per group of worker commands Buildbot uses.

This module is used in two processes:

* the pytest process imports it (as ``e2e.parity_cfg``) for the constants and for
  :func:`parity_builders_py`, the master.cfg snippet, and :func:`prepare_master_data`;
* the master process imports it as a top-level module ``parity_cfg`` (the snippet puts this
  directory on ``sys.path``) and calls :func:`make_builders`, so the custom steps below are
  real, linted code rather than text. Hence: no relative imports here.

Worker-side paths of the file-system commands (mkdir/rmdir/cpdir/stat/glob/listdir/rmfile)
are relative to the *builder* directory (``<worker basedir>/<builder name>``), while shell
and transfer commands are relative to the workdir ``build`` inside it.
"""

from __future__ import annotations

import hashlib
import json
import os
import stat

from buildbot.plugins import steps
from buildbot.plugins import util
from buildbot.process import remotecommand
from buildbot.process.buildstep import BuildStep
from buildbot.process.results import SUCCESS
from buildbot.process.results import WARNINGS
from buildbot.steps.worker import CompositeStepMixin
from twisted.internet import defer

# ---- worker names used by the parity master ----------------------------------------------
MAIN_WORKER = "w1"
RECONNECT_WORKER = "w_reconnect"
LEFTOVER_WORKER = "w_leftover"
ALL_WORKERS = (MAIN_WORKER, RECONNECT_WORKER, LEFTOVER_WORKER)

# ---- values the tests check for ----------------------------------------------------------
ENV_VALUE = "env-value-\u00e9-123"
ENV_LIST = ["list-a", "list-b"]
STDIN_DATA = "stdin-line-1\nstdin line 2 with spaces\n"
UNICODE_ARG = "h\u00e9llo w\u00f6rld \u2713"
BIG_OUTPUT_LINES = 100000
EXIT_CODE = 3
SHELL_TIMEOUT = 2
SHELL_MAXTIME = 2
INTERRUPT_SLEEP = "67"  # default; the test forces a unique 'sleep_secs' to find it in /proc
SETPROP_VALUE = "parity-prop-value"
SECRET_NAME = "token"
SECRET_VALUE = "s3cr3t-T0ken-value-9f8e7d"
WORKER_ENV_VAR = "PARITY_WORKER_ENV"
WORKER_ENV_VALUE = "worker-env-value-42"
UPLOAD_SIZE = 5 * 1024 * 1024 + 123  # not a multiple of any block size
DOWNLOAD_SIZE = 5 * 1024 * 1024 + 77
SMALL_TEXT = "small file\nsecond line\n"
STRING_DOWNLOAD = "string download \u2713\nline 2\n"
JSON_DOWNLOAD = {"a": 1, "b": [1, 2, "three"], "c": {"nested": True, "u": "\u00fc"}}
CONTENT_TEXT = "first line\n\u00fcn\u00efc\u00f8d\u00e9 \u2713\nlast line"
BIG_CONTENT_LINES = 30000  # > 32 KiB: getFileContentFromWorker needs several chunks
STAMP_MTIME = 1000000000
UPLOAD_MODE = 0o640
DOWNLOAD_MODE = 0o750

# ---- master-side data files (in <data_dir>) ---------------------------------------------
DOWNLOAD_FILE = "download.bin"
SMALL_FILE = "small.txt"
EMPTY_FILE = "empty.bin"
MISSING_FILE = "does-not-exist.bin"
UPLOADS_DIR = "uploads"  # <data_dir>/uploads/<builder>/<buildnumber>/...

PARITY_BUILDERS = (
    "shell",
    "interrupt",
    "filecmds",
    "uploads",
    "upload_errors",
    "downloads",
    "download_errors",
    "getcontent",
    "secrets",
    "setprop",
    "workerinfo",
)
RECONNECT_BUILDER = "reconnect"
LEFTOVER_BUILDER = "leftover"


def big_content_text() -> str:
    return "".join(f"{i}\n" for i in range(1, BIG_CONTENT_LINES + 1))


def prepare_master_data(data_dir: str) -> dict[str, str]:
    """Write the master-side files the download builders send; returns {name: sha256}."""
    os.makedirs(os.path.join(data_dir, UPLOADS_DIR), exist_ok=True)
    files = {
        DOWNLOAD_FILE: os.urandom(DOWNLOAD_SIZE),
        SMALL_FILE: SMALL_TEXT.encode("utf-8"),
        EMPTY_FILE: b"",
    }
    shas = {}
    for name, data in files.items():
        with open(os.path.join(data_dir, name), "wb") as f:
            f.write(data)
        shas[name] = hashlib.sha256(data).hexdigest()
    return shas


def upload_dir(data_dir: str, builder: str, buildnumber: int) -> str:
    """Where the upload builders put build ``buildnumber``'s files on the master."""
    return os.path.join(data_dir, UPLOADS_DIR, builder, str(buildnumber))


def parity_builders_py(data_dir: str) -> str:
    """master.cfg snippet adding all parity builders (see harness.make_master_cfg)."""
    from master_tests.e2e import harness  # in the pytest process only

    return harness.cfg_import_py("parity_cfg") + (
        f"c['builders'].extend(_parity_cfg.make_builders({os.path.abspath(data_dir)!r}))\n"
    )


# ==========================================================================================
# Custom steps (run inside the master)
# ==========================================================================================


class FsProbe(CompositeStepMixin, BuildStep):
    """glob, listdir, stat, rmfile, mkdir and rmdir (of a list) through CompositeStepMixin."""

    name = "fsprobe"
    logEnviron = False

    @defer.inlineCallbacks
    def run(self):
        yield self.addLogForRemoteCommands("fsprobe")
        found = yield self.runGlob("build/fsroot/a/*.log")
        self.setProperty("glob_result", sorted(os.path.basename(p) for p in found), "FsProbe")

        listing = yield self.runRemoteCommand(
            "listdir",
            {"dir": "build/fsroot/a"},
            evaluateCommand=lambda cmd: cmd.updates["files"][-1],
        )
        self.setProperty("listdir_result", sorted(listing), "FsProbe")

        st = yield self.runRemoteCommand(
            "stat",
            {"file": "build/fsroot/a/b/f1.txt"},
            evaluateCommand=lambda cmd: cmd.updates["stat"][-1],
        )
        self.setProperty("stat_size", st[stat.ST_SIZE], "FsProbe")
        self.setProperty("stat_isreg", bool(stat.S_ISREG(st[stat.ST_MODE])), "FsProbe")

        exists = yield self.pathExists("build/fsroot/a/b/f1.txt")
        missing = yield self.pathExists("build/fsroot/nope.txt")
        self.setProperty("path_exists", bool(exists), "FsProbe")
        self.setProperty("path_missing_exists", bool(missing), "FsProbe")

        yield self.runRmFile("build/fsroot/a/g2.log")

        yield self.runMkdir("build/fsroot/l1")
        yield self.runMkdir("build/fsroot/l2")
        yield self.runRmdir(["build/fsroot/l1", "build/fsroot/l2"])
        return SUCCESS


class RawCommands(BuildStep):
    """A failing stat through a bare RemoteCommand: rc must come back non-zero."""

    name = "raw_stat_missing"

    @defer.inlineCallbacks
    def run(self):
        cmd = remotecommand.RemoteCommand("stat", {"file": "build/fsroot/nope.txt"})
        yield self.runCommand(cmd)
        self.setProperty("raw_stat_missing_rc", cmd.rc, "RawCommands")
        return SUCCESS if cmd.didFail() else WARNINGS


class GetContent(CompositeStepMixin, BuildStep):
    """getFileContentFromWorker: small unicode file, multi-chunk file, missing file."""

    name = "getcontent"
    logEnviron = False

    @defer.inlineCallbacks
    def run(self):
        content = yield self.getFileContentFromWorker("content.txt", abandonOnFailure=True)
        self.setProperty("file_content", content, "GetContent")
        big = yield self.getFileContentFromWorker("big_content.txt", abandonOnFailure=True)
        self.setProperty("big_content_len", len(big), "GetContent")
        self.setProperty(
            "big_content_sha256", hashlib.sha256(big.encode("utf-8")).hexdigest(), "GetContent"
        )
        missing = yield self.getFileContentFromWorker("missing-content.txt")
        self.setProperty("missing_content_is_none", missing is None, "GetContent")
        return SUCCESS


class ConnInfo(BuildStep):
    """Record which master-side connection class serves this build's worker."""

    name = "conninfo"

    def run(self):
        conn = self.worker.conn
        cls = type(conn)
        self.setProperty("worker_conn_class", f"{cls.__module__}.{cls.__qualname__}", "ConnInfo")
        return defer.succeed(SUCCESS)


def _extract_streams(rc, stdout, stderr):
    return {"sp_rc": rc, "sp_stdout": stdout.strip(), "sp_stderr": stderr.strip()}


# ==========================================================================================
# Builders
# ==========================================================================================


def _sh(name, command, **kw):
    return steps.ShellCommand(name=name, command=command, **kw)


def _shell_factory():
    return util.BuildFactory(
        [
            _sh(
                "env",
                'echo "PARITY_ENV=$PARITY_ENV"; echo "PARITY_LIST=$PARITY_LIST"',
                env={"PARITY_ENV": ENV_VALUE, "PARITY_LIST": ENV_LIST},
            ),
            _sh("stdin", ["cat"], initialStdin=STDIN_DATA),
            _sh("streams", "echo to-stdout-marker; echo to-stderr-marker >&2"),
            _sh(
                "no_stdout",
                "echo hidden-stdout-marker; echo shown-stderr-marker >&2",
                want_stdout=False,
            ),
            _sh(
                "no_stderr",
                "echo shown-stdout-marker; echo hidden-stderr-marker >&2",
                want_stderr=False,
            ),
            _sh("logfiles_prep", "rm -f file.txt"),
            _sh(
                "logfiles",
                util.Interpolate(
                    'echo "logfile line 1 of build %(prop:buildnumber)s" > file.txt; sleep 0.3; '
                    'echo "logfile line 2" >> file.txt; echo stdio-done'
                ),
                logfiles={"mylog": "file.txt"},
            ),
            _sh("bigoutput", ["seq", "1", str(BIG_OUTPUT_LINES)]),
            _sh("unicode", ["echo", UNICODE_ARG]),
            _sh(
                "exitcode",
                f"echo before-exit; exit {EXIT_CODE}",
                decodeRC={0: SUCCESS, 3: WARNINGS},
            ),
            _sh("timeout", ["sleep", "30"], timeout=SHELL_TIMEOUT),
            _sh("maxtime", "while true; do echo tick; sleep 0.2; done", maxTime=SHELL_MAXTIME),
        ]
    )


def _interrupt_factory():
    return util.BuildFactory(
        [
            _sh(
                "sleep",
                ["sleep", util.Property("sleep_secs", default=INTERRUPT_SLEEP)],
                timeout=120,
            ),
            _sh("after_sleep", "echo should-not-run"),
        ]
    )


def _filecmds_factory():
    return util.BuildFactory(
        [
            steps.RemoveDirectory(name="rmdir_initial", dir="build/fsroot"),
            steps.MakeDirectory(name="mkdir", dir="build/fsroot/a/b"),
            _sh("check_mkdir", "test -d fsroot/a/b && echo MKDIR_OK"),
            _sh(
                "populate",
                "printf 'hello f1' > fsroot/a/b/f1.txt && echo g1 > fsroot/a/g1.log "
                "&& echo g2 > fsroot/a/g2.log",
            ),
            steps.CopyDirectory(name="cpdir", src="build/fsroot/a", dest="build/fsroot/copy"),
            _sh("check_cpdir", "cat fsroot/copy/b/f1.txt && echo && ls fsroot/copy"),
            steps.FileExists(name="exists_file", file="build/fsroot/a/b/f1.txt"),
            steps.FileExists(
                name="exists_missing",
                file="build/fsroot/nope.txt",
                haltOnFailure=False,
                flunkOnFailure=False,
            ),
            steps.FileExists(
                name="exists_dir", file="build/fsroot/a", haltOnFailure=False, flunkOnFailure=False
            ),
            FsProbe(),
            RawCommands(),
            _sh(
                "check_rmfile",
                "test -e fsroot/a/g2.log && echo RMFILE_FAILED || echo RMFILE_OK; "
                "test -e fsroot/l1 -o -e fsroot/l2 && echo RMDIRS_FAILED || echo RMDIRS_OK",
            ),
            steps.RemoveDirectory(name="rmdir_copy", dir="build/fsroot/copy"),
            _sh("check_rmdir", "test -e fsroot/copy && echo RMDIR_FAILED || echo RMDIR_OK"),
        ]
    )


def _uploads_factory(data_dir):
    def dest(*parts):
        base = os.path.join(data_dir, UPLOADS_DIR, "uploads")
        return util.Interpolate(os.path.join(base, "%(prop:buildnumber)s", *parts))

    return util.BuildFactory(
        [
            _sh(
                "gen_big",
                f"head -c {UPLOAD_SIZE} /dev/urandom > big.bin && sha256sum big.bin",
            ),
            steps.FileUpload(
                name="upload_big", workersrc="big.bin", masterdest=dest("big.bin"), mode=UPLOAD_MODE
            ),
            _sh("gen_stamp", f"echo stamp > stamp.txt && touch -d @{STAMP_MTIME} stamp.txt"),
            steps.FileUpload(
                name="upload_stamp",
                workersrc="stamp.txt",
                masterdest=dest("stamp.txt"),
                keepstamp=True,
            ),
            _sh(
                "gen_tree",
                "rm -rf tree && mkdir -p tree/sub/deeper tree/empty && echo a > tree/a.txt "
                "&& head -c 1048576 /dev/urandom > tree/sub/b.bin "
                "&& echo deep > tree/sub/deeper/c.txt "
                "&& (cd tree && find . -type f | sort | xargs sha256sum)",
            ),
            steps.DirectoryUpload(name="upload_tree", workersrc="tree", masterdest=dest("tree")),
            steps.DirectoryUpload(
                name="upload_tree_gz", workersrc="tree", masterdest=dest("tree_gz"), compress="gz"
            ),
            _sh(
                "gen_multi",
                "rm -rf m1.txt m2.bin mdir && echo one > m1.txt "
                "&& head -c 300000 /dev/urandom > m2.bin && mkdir -p mdir && echo x > mdir/x.txt "
                "&& sha256sum m1.txt m2.bin mdir/x.txt",
            ),
            steps.MultipleFileUpload(
                name="upload_multi",
                workersrcs=["m1.txt", "m2.bin", "mdir"],
                masterdest=dest("multi"),
            ),
            steps.MultipleFileUpload(
                name="upload_glob",
                workersrcs=["m*.txt", "m*.bin"],
                masterdest=dest("globbed"),
                glob=True,
            ),
        ]
    )


def _upload_errors_factory(data_dir):
    def dest(name):
        base = os.path.join(data_dir, UPLOADS_DIR, "upload_errors")
        return util.Interpolate(os.path.join(base, "%(prop:buildnumber)s", name))

    return util.BuildFactory(
        [
            steps.FileUpload(
                name="upload_missing",
                workersrc="does-not-exist.bin",
                masterdest=dest("missing.bin"),
                haltOnFailure=False,
            ),
            _sh("gen", "head -c 200000 /dev/urandom > big.bin"),
            steps.FileUpload(
                name="upload_maxsize",
                workersrc="big.bin",
                masterdest=dest("truncated.bin"),
                maxsize=1000,
                haltOnFailure=False,
            ),
            steps.DirectoryUpload(
                name="upload_dir_missing",
                workersrc="no-such-dir",
                masterdest=dest("nodir"),
                haltOnFailure=False,
            ),
            # the master's close fails: its destination is a directory that is not empty
            steps.MasterShellCommand(
                name="block_dest",
                command=["mkdir", "-p", dest(os.path.join("blocked.bin", "inside"))],
            ),
            steps.FileUpload(
                name="upload_close_fails",
                workersrc="big.bin",
                masterdest=dest("blocked.bin"),
                haltOnFailure=False,
            ),
            _sh("alive", "echo still-alive", alwaysRun=True),
        ]
    )


def _downloads_factory(data_dir):
    return util.BuildFactory(
        [
            _sh("clean", "rm -rf down.bin sub str.txt j.json empty.bin"),
            steps.FileDownload(
                name="download_big",
                mastersrc=os.path.join(data_dir, DOWNLOAD_FILE),
                workerdest="down.bin",
                mode=DOWNLOAD_MODE,
            ),
            _sh("check_big", "sha256sum down.bin && stat -c 'mode=%a size=%s' down.bin"),
            steps.FileDownload(
                name="download_nested",
                mastersrc=os.path.join(data_dir, SMALL_FILE),
                workerdest="sub/dir/small.txt",
            ),
            _sh("check_nested", "cat sub/dir/small.txt"),
            steps.FileDownload(
                name="download_empty",
                mastersrc=os.path.join(data_dir, EMPTY_FILE),
                workerdest="empty.bin",
            ),
            _sh("check_empty", "stat -c 'size=%s' empty.bin"),
            steps.StringDownload(STRING_DOWNLOAD, name="string_download", workerdest="str.txt"),
            _sh("check_string", "cat str.txt"),
            steps.JSONStringDownload(JSON_DOWNLOAD, name="json_download", workerdest="j.json"),
            _sh("check_json", "cat j.json"),
        ]
    )


def _download_errors_factory(data_dir):
    return util.BuildFactory(
        [
            steps.FileDownload(
                name="download_missing",
                mastersrc=os.path.join(data_dir, MISSING_FILE),
                workerdest="x.bin",
                haltOnFailure=False,
            ),
            steps.FileDownload(
                name="download_maxsize",
                mastersrc=os.path.join(data_dir, DOWNLOAD_FILE),
                workerdest="truncated.bin",
                maxsize=1000,
                haltOnFailure=False,
            ),
            _sh("alive", "echo still-alive", alwaysRun=True),
        ]
    )


def _getcontent_factory():
    return util.BuildFactory(
        [
            _sh("write", ["sh", "-c", 'printf "%s" "$1" > content.txt', "sh", CONTENT_TEXT]),
            _sh(
                "write_big",
                f"seq 1 {BIG_CONTENT_LINES} > big_content.txt; rm -f missing-content.txt",
            ),
            GetContent(),
        ]
    )


def _secrets_factory():
    secret = f"%(secret:{SECRET_NAME})s"
    return util.BuildFactory(
        [
            _sh(
                "secret",
                util.Interpolate(
                    f'echo "token={secret}"; printf "%%s" "{secret}" | sha256sum; '
                    'echo "env=$SECRET_ENV"'
                ),
                env={"SECRET_ENV": util.Interpolate(secret)},
            ),
        ]
    )


def _setprop_factory():
    return util.BuildFactory(
        [
            steps.SetPropertyFromCommand(
                name="setprop", command=f"echo {SETPROP_VALUE}", property="from_cmd"
            ),
            steps.SetPropertyFromCommand(
                name="setprop_extract",
                command="echo out-line; echo err-line >&2",
                extract_fn=_extract_streams,
            ),
            _sh("use_prop", util.Interpolate("echo got=%(prop:from_cmd)s")),
        ]
    )


def _workerinfo_factory():
    return util.BuildFactory(
        [
            steps.SetPropertiesFromEnv(name="from_env", variables=[WORKER_ENV_VAR]),
            _sh("pwd", "pwd"),
            ConnInfo(),
        ]
    )


def _hello_factory():
    return util.BuildFactory([_sh("hello", ["echo", "hello from", util.Property("workername")])])


def make_builders(data_dir: str) -> list:
    """All BuilderConfigs of the parity master (called inside the master process)."""
    main = [MAIN_WORKER]
    factories = {
        "shell": _shell_factory(),
        "interrupt": _interrupt_factory(),
        "filecmds": _filecmds_factory(),
        "uploads": _uploads_factory(data_dir),
        "upload_errors": _upload_errors_factory(data_dir),
        "downloads": _downloads_factory(data_dir),
        "download_errors": _download_errors_factory(data_dir),
        "getcontent": _getcontent_factory(),
        "secrets": _secrets_factory(),
        "setprop": _setprop_factory(),
        "workerinfo": _workerinfo_factory(),
    }
    assert tuple(factories) == PARITY_BUILDERS
    builders = [
        util.BuilderConfig(name=n, workernames=main, factory=f) for n, f in factories.items()
    ]
    builders.append(
        util.BuilderConfig(
            name=RECONNECT_BUILDER, workernames=[RECONNECT_WORKER], factory=_hello_factory()
        )
    )
    builders.append(
        util.BuilderConfig(
            name=LEFTOVER_BUILDER, workernames=[LEFTOVER_WORKER], factory=_hello_factory()
        )
    )
    return builders


def json_download_text() -> str:
    """What JSONStringDownload writes (json.dumps of the object)."""
    return json.dumps(JSON_DOWNLOAD)
