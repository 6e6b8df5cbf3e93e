"""The command layer, declared once: worker info, builder list, update keys and commands.

A master starts work on a worker with ``start_command`` (``command`` names one of
:data:`COMMANDS`, ``args`` carries its :class:`Argument` values); the worker reports
progress with ``update`` items (:data:`UPDATE_KEYS`) and ends with ``complete``.  What
the worker says about itself in answer to ``get_worker_info`` is :data:`WORKER_INFO_KEYS`.

These declarations describe what Buildbot's master sends and expects and what
buildbot-worker's commands do; ``worker_tests/test_commands.py`` checks them against
buildbot-worker's registry.  ``docs/schemas/commands/*.json``, ``docs/schemas/results/``
and the command reference in ``docs/commands.rst`` are generated from this module
(``python -m buildbot_worker_msgproto.protocol.command_schema``) and checked by the
test suite, so code and spec cannot drift.  The end-to-end conformance test drives a
real master with a worker built from those generated files alone.
"""

from __future__ import annotations

import dataclasses
import enum
from typing import Any

#: The command version buildbot-worker 3.x/4.x reports for every command
#: (``buildbot_worker.commands.base.command_version``).  A worker should report it for
#: each command it implements: the master changes the arguments it sends to workers
#: that report older versions (:data:`VERSION_GATES`).
COMMAND_VERSION = "3.3"


class _NoDefault:
    def __repr__(self) -> str:
        return "NO_DEFAULT"


#: Marks an optional argument without a default (its absence has its own meaning).
NO_DEFAULT: Any = _NoDefault()


@dataclasses.dataclass(frozen=True)
class Argument:
    """One key of ``start_command.args`` for a command."""

    name: str
    types: tuple[str, ...]
    description: str
    required: bool = False
    #: What the worker assumes when the key is absent (optional arguments only).
    default: Any = NO_DEFAULT


@dataclasses.dataclass(frozen=True)
class PathRule:
    """How the worker makes a filesystem path from arguments.

    The values of ``parts`` (absent ones count as ``""``) are joined, in order, under the
    builder directory (``basedir`` joined with the builder's ``builddir`` from
    ``set_builder_list``) with the worker platform's path join: a component that is an
    absolute path replaces everything before it.  ``expand_user`` expands a leading
    ``~`` of the last part first.  ``each``: the last part may also be a list of paths,
    each resolved on its own, giving a list of paths.  ``as_list``: the result is a list
    even for a single path (the worker command takes a list).
    """

    name: str
    parts: tuple[str, ...]
    expand_user: bool = False
    each: bool = False
    as_list: bool = False


class Transfer(enum.Enum):
    """The file-transfer message sequence a command runs (``docs/commands.rst``)."""

    UPLOAD = "upload"  # worker -> master file: write_file*, close_writer, [utime_file]
    DIRECTORY_UPLOAD = "directory_upload"  # worker -> master tarball: write_file*, unpack_writer
    DOWNLOAD = "download"  # master -> worker file: read_file* until empty, close_reader


@dataclasses.dataclass(frozen=True)
class UpdateKey:
    """One kind of ``update`` item: ``[key, value]``."""

    key: str
    types: tuple[str, ...]
    description: str


@dataclasses.dataclass(frozen=True)
class CommandSpec:
    """The declaration of one worker command."""

    name: str
    description: str
    arguments: tuple[Argument, ...]
    #: Update keys the command sends (it always sends ``rc`` before ``complete``).
    updates: tuple[str, ...]
    paths: tuple[PathRule, ...] = ()
    transfer: Transfer | None = None
    #: What the command does, step by step, for the reference.
    behaviour: str = ""

    @property
    def required(self) -> tuple[str, ...]:
        return tuple(a.name for a in self.arguments if a.required)


@dataclasses.dataclass(frozen=True)
class InfoKey:
    """One key of the ``get_worker_info`` result."""

    key: str
    types: tuple[str, ...]
    description: str
    required: bool = False


@dataclasses.dataclass(frozen=True)
class VersionGate:
    """A master behaviour that depends on the version a worker reports for a command."""

    command: str
    version: str
    below: str


def _a(name: str, types: str, description: str, required: bool = False,
       default: Any = NO_DEFAULT) -> Argument:
    return Argument(name, tuple(types.split("|")), description, required, default)


# ----------------------------------------------------------------------------- worker info
WORKER_INFO_KEYS: tuple[InfoKey, ...] = (
    InfoKey("worker_commands", ("object",),
            "Map of every command the worker implements to its version string, e.g. "
            '{"shell": "3.3", ...}.  Versions are dotted decimal integers, compared '
            "numerically.  A command missing from the map is unknown to the master: steps "
            "that need it fail with EXCEPTION (\"worker is too old, does not know about "
            "downloadFile\"); a missing or empty map makes the master treat the worker as "
            "pre-3.0 for every command.", required=True),
    InfoKey("version", ("string",), "The worker software's version, shown in the web UI "
            "(buildbot-worker's version for this package's worker)."),
    InfoKey("basedir", ("string",), "Absolute path of the worker's base directory; the "
            "master computes the ``builddir`` build property from it."),
    InfoKey("system", ("string",), "Python's ``os.name`` of the worker: ``nt`` makes the "
            "master build Windows paths for this worker, anything else POSIX paths."),
    InfoKey("environ", ("object",), "The worker process's environment, {name: value} with "
            "string values (used by SetPropertiesFromEnv)."),
    InfoKey("numcpus", ("integer",), "Number of CPUs (a build property)."),
    InfoKey("delete_leftover_dirs", ("boolean",), "Whether the worker deletes directories "
            "of its basedir that no builder uses (see set_builder_list)."),
    InfoKey("admin", ("string",), "Contents of the worker's ``info/admin`` file: who "
            "runs it.  Shown in the web UI."),
    InfoKey("host", ("string",), "Contents of ``info/host``: a description of the "
            "machine.  Shown in the web UI."),
    InfoKey("access_uri", ("string",), "Contents of ``info/access_uri``: how to reach the "
            "machine (e.g. ssh://...).  Shown in the web UI."),
)

#: Further keys: every other file in ``info/`` (by file name) and ``os_*`` keys from
#: ``/etc/os-release`` (``os_id``, ``os_version_id``, ...), strings.  The master stores
#: every key except ``environ`` and ``worker_commands`` as a worker property.
WORKER_INFO_EXTRA = ("Every other file of the worker's ``info/`` directory, by file name, "
                     "and ``os_*`` keys from ``/etc/os-release`` (``os_id``, "
                     "``os_version_id``, ...), all strings.  The master stores every key "
                     "except ``environ`` and ``worker_commands`` as a worker property "
                     "(values must be JSON).")

# ----------------------------------------------------------------------------- updates
UPDATE_KEYS: tuple[UpdateKey, ...] = (
    UpdateKey("header", ("string",), "Text for the step log's header stream (command line, "
              "directory, elapsed time, ...)."),
    UpdateKey("stdout", ("string",), "Standard output text."),
    UpdateKey("stderr", ("string",), "Standard error text (transfers: the error message)."),
    UpdateKey("log", ("array",), "[logname, text]: text for the log file ``logname`` "
              "watched with the shell command's ``logfiles``."),
    UpdateKey("rc", ("integer",), "The command's result code: 0 success, anything else "
              "failure (a shell command's exit status, -1 if it was killed by a signal or "
              "could not start, an errno for file commands, 1 for transfers).  Sent once, "
              "before complete."),
    UpdateKey("elapsed", ("number",), "Seconds the command ran (worker clock); sent by "
              "every command just before complete."),
    UpdateKey("failure_reason", ("string",), "Why a shell command was killed: "
              "``timeout_without_output`` (``timeout``), ``timeout`` (``maxTime``) or "
              "``max_lines_failure`` (``max_lines``)."),
    UpdateKey("stat", ("array",), "The 10 numbers of Python's ``os.stat_result`` "
              "(st_mode, st_ino, st_dev, st_nlink, st_uid, st_gid, st_size, st_atime, "
              "st_mtime, st_ctime), integers."),
    UpdateKey("files", ("array",), "File names (listdir: names in the directory; glob: "
              "matching paths as the worker spells them)."),
)
UPDATE_REGISTRY: dict[str, UpdateKey] = {u.key: u for u in UPDATE_KEYS}

# ----------------------------------------------------------------------------- commands
_WORKDIR = _a("workdir", "string", "Directory, relative to the builder directory (or "
              "absolute).", required=True)
_LOG_ENVIRON = _a("logEnviron", "boolean", "Log the environment in the header (only for "
                  "commands that run a helper process).", default=True)
_TIMEOUT = _a("timeout", "number", "Seconds a helper process may run silent before it is "
              "killed.", default=120)
_MAX_TIME = _a("maxTime", "number|null", "Seconds a helper process may run in total; null "
               "for no limit.", default=None)
_MAXSIZE = _a("maxsize", "integer|null", "Most bytes to transfer; null for no limit.  "
              "Always sent by the master: buildbot-worker requires the key.", required=True)
_BLOCKSIZE = _a("blocksize", "integer", "The step's block size: a worker may read, write "
                "and send blocks of any size (ours: at least 256 KiB, at most one frame; "
                "docs/commands.rst section 7).", required=True)

COMMANDS: tuple[CommandSpec, ...] = (
    CommandSpec(
        "shell", "Run a program in a directory and stream its output.",
        (
            _WORKDIR,
            _a("command", "array|string", "The program: a list of argv strings (an item "
               "may be [\"obfuscated\", real, shown] for a secret: ``real`` is run, "
               "``shown`` logged), or one string run by ``/bin/sh -c`` (``%COMSPEC% /c`` "
               "on Windows).", required=True),
            _a("env", "object|null", "Variables to change, {name: value}: a string value "
               "is set after replacing ``${NAME}`` with the worker's own variable, a list "
               "of strings is joined with the path separator, null removes the variable; "
               "``PYTHONPATH`` is prepended to the worker's own.  null: the worker's "
               "environment unchanged.", default=None),
            _a("want_stdout", "boolean|integer", "Send stdout updates.", default=True),
            _a("want_stderr", "boolean|integer", "Send stderr updates.", default=True),
            _a("logfiles", "object", "{logname: filename or {\"filename\": f, \"follow\": "
               "bool}} relative to workdir: files watched while the program runs, sent "
               "as ``log`` updates.", default={}),
            _a("timeout", "number|null", "Seconds without output before the program is "
               "killed (``failure_reason`` timeout_without_output); null for none.  The "
               "master's default is 1200.", default=None),
            _a("maxTime", "number|null", "Seconds the program may run in total "
               "(``failure_reason`` timeout); null for no limit.", default=None),
            _a("max_lines", "integer|null", "Output lines after which the program is "
               "killed (``failure_reason`` max_lines_failure); null for no limit.",
               default=None),
            _a("sigtermTime", "number|null", "If set, send SIGTERM first and SIGKILL "
               "only this many seconds later.", default=None),
            _a("usePTY", "boolean", "Run the program in a pseudo-terminal.  Must be a "
               "boolean: masters send the string \"slave-config\" only to workers that "
               "report shell older than 3.0.", default=False),
            _a("logEnviron", "boolean", "Log the program's environment in the header.",
               default=True),
            _a("initial_stdin", "string|null", "Text written to the program's stdin, "
               "which is then closed (stdin is always closed).", default=None),
            _a("interruptSignal", "string", "Signal name (without SIG) sent on "
               "interrupt_command or timeout.", default="KILL"),
        ),
        ("header", "stdout", "stderr", "log", "rc", "failure_reason", "elapsed"),
        paths=(PathRule("workdir", ("workdir",)),),
        behaviour="Creates ``workdir`` if missing, sends the command line and directory "
                  "as ``header``, runs the program, streams ``stdout``/``stderr``/``log`` "
                  "while it runs, then sends ``rc`` (its exit status; -1 if killed by a "
                  "signal), a final ``header`` with the elapsed time, and ``elapsed``.  A "
                  "program that cannot be started gives ``stderr`` and rc -1."),
    CommandSpec(
        "uploadFile", "Send a file of the worker to the master.",
        (
            _WORKDIR,
            _a("workersrc", "string", "The file, relative to workdir (``~`` expanded).",
               required=True),
            _a("writer", "boolean", "Always true: the master's file writer, addressed by "
               "command_id in write_file / close_writer / utime_file.", required=True),
            _MAXSIZE,
            _BLOCKSIZE,
            _a("keepstamp", "boolean", "Also send the file's access and modification "
               "times (utime_file after close_writer).", default=False),
        ),
        ("header", "rc", "stderr", "elapsed"),
        paths=(PathRule("path", ("workdir", "workersrc"), expand_user=True),),
        transfer=Transfer.UPLOAD,
        behaviour="Sends ``header`` \"sending PATH\", the file in ``write_file`` blocks "
                  "(of any size), then ``close_writer`` and, with "
                  "``keepstamp``, ``utime_file``; then ``rc`` (0, or 1 on any error, "
                  "with ``stderr``) and ``elapsed``.  A file that cannot be opened gives "
                  "no write_file but still close_writer, rc 1 and stderr; more than "
                  "``maxsize`` bytes: the first ``maxsize`` bytes are sent, rc 1."),
    CommandSpec(
        "uploadDirectory", "Send a directory of the worker to the master, as a tarball.",
        (
            _WORKDIR,
            _a("workersrc", "string", "The directory, relative to workdir (``~`` "
               "expanded).", required=True),
            _a("writer", "boolean", "Always true: the master's directory writer, addressed "
               "by command_id in write_file / unpack_writer.", required=True),
            _MAXSIZE,
            _BLOCKSIZE,
            _a("compress", "string|null", "Tarball compression: null (plain tar), "
               "\"gz\" or \"bz2\".  Always sent by the master.", required=True),
        ),
        ("header", "rc", "stderr", "elapsed"),
        paths=(PathRule("path", ("workdir", "workersrc"), expand_user=True),),
        transfer=Transfer.DIRECTORY_UPLOAD,
        behaviour="Makes a tar archive (POSIX tar as Python's tarfile writes it, "
                  "compressed as ``compress`` says) whose members are the directory's "
                  "contents with paths relative to it (the directory itself is the empty "
                  "name), sends ``header`` \"sending PATH\", the archive in ``write_file`` "
                  "blocks, then ``unpack_writer`` (no close_writer: unpacking closes), "
                  "``rc`` and ``elapsed``.  A directory that cannot be read gives no "
                  "messages but ``stderr``, rc 1 and ``elapsed``."),
    CommandSpec(
        "downloadFile", "Write a file of the master to the worker.",
        (
            _WORKDIR,
            _a("workerdest", "string", "The file to write, relative to workdir (``~`` "
               "expanded); missing parent directories are created.", required=True),
            _a("reader", "boolean", "Always true: the master's file reader, addressed by "
               "command_id in read_file / close_reader.", required=True),
            _MAXSIZE,
            _BLOCKSIZE,
            _a("mode", "integer|null", "Permission bits to set on the new file (e.g. 420 "
               "for 0o644); null leaves the umask's.  Always sent by the master.",
               required=True),
        ),
        ("rc", "stderr", "elapsed"),
        paths=(PathRule("path", ("workdir", "workerdest"), expand_user=True),),
        transfer=Transfer.DOWNLOAD,
        behaviour="Creates the file, reads it from the master with ``read_file`` until a "
                  "read returns no bytes (or ``maxsize`` bytes were written), sends "
                  "``close_reader``, then ``rc`` and ``elapsed``.  A file that cannot be "
                  "created gives no read_file but still close_reader, rc 1 and "
                  "``stderr``; a file longer than ``maxsize`` is truncated, rc 1."),
    CommandSpec(
        "stat", "Report a path's os.stat() result.",
        (
            _a("file", "string", "The path, relative to workdir.", required=True),
            _a("workdir", "string", "Directory relative to the builder directory.",
               default=""),
            _LOG_ENVIRON,
        ),
        ("stat", "rc", "header", "elapsed"),
        paths=(PathRule("path", ("workdir", "file")),),
        behaviour="Sends ``stat`` and rc 0, or ``header`` \"stat: REASON: PATH\" and rc "
                  "= the errno (e.g. 2 for a missing file); then ``elapsed``."),
    CommandSpec(
        "glob", "List the paths matching a shell pattern (``**`` recurses).",
        (
            _a("path", "string", "The pattern, relative to the builder directory.",
               required=True),
            _LOG_ENVIRON,
        ),
        ("files", "rc", "header", "elapsed"),
        paths=(PathRule("path", ("path",)),),
        behaviour="Sends ``files`` (absolute paths when the resolved pattern is absolute, "
                  "which it always is) and rc 0, or ``header`` and rc = errno; then "
                  "``elapsed``."),
    CommandSpec(
        "listdir", "List the names in a directory.",
        (
            _a("dir", "string", "The directory, relative to the builder directory.",
               required=True),
            _LOG_ENVIRON,
        ),
        ("files", "rc", "header", "elapsed"),
        paths=(PathRule("path", ("dir",)),),
        behaviour="Sends ``files`` (names, in no particular order) and rc 0, or "
                  "``header`` and rc = errno; then ``elapsed``."),
    CommandSpec(
        "mkdir", "Create directories and their missing parents.",
        (
            _a("dir", "string|array", "The directory, or a list of directories (as "
               "Buildbot's msgpack protocol takes), relative to the builder directory.",
               required=True),
            _LOG_ENVIRON,
        ),
        ("rc", "header", "elapsed"),
        paths=(PathRule("paths", ("dir",), each=True, as_list=True),),
        behaviour="Creates each directory in order; one that exists already is no error.  "
                  "rc 0, or at the first failure ``header`` and rc = errno (the rest is "
                  "not tried).  Then ``elapsed``."),
    CommandSpec(
        "rmdir", "Remove directories or files, recursively (``rm -rf``).",
        (
            _a("dir", "string|array", "The path, or a list of paths, relative to the "
               "builder directory.", required=True),
            _LOG_ENVIRON,
            _TIMEOUT,
            _MAX_TIME,
        ),
        ("rc", "header", "stdout", "stderr", "elapsed"),
        paths=(PathRule("paths", ("dir",), each=True, as_list=True),),
        behaviour="Removes each path (a missing one is not an error), sending the helper "
                  "process's output; rc 0, or the last non-zero result.  Then "
                  "``elapsed``."),
    CommandSpec(
        "rmfile", "Remove files.",
        (
            _a("path", "string|array", "The file, or a list of files, relative to the "
               "builder directory (``~`` expanded).", required=True),
            _LOG_ENVIRON,
            _a("timeout", "number", "Accepted and ignored.", default=NO_DEFAULT),
        ),
        ("rc", "header", "elapsed"),
        paths=(PathRule("path", ("path",), expand_user=True, each=True),),
        behaviour="rc 0, or ``header`` and rc = errno (2 for a missing file).  With a "
                  "list, every file is tried: each failure sends a ``header`` line and rc "
                  "is the errno of the last one.  Then ``elapsed``."),
    CommandSpec(
        "cpdir", "Copy a directory tree (``cp -R -P -p``).",
        (
            _a("fromdir", "string", "Source directory, relative to the builder directory.",
               required=True),
            _a("todir", "string", "Destination, relative to the builder directory; its "
               "parent is created if missing.", required=True),
            _LOG_ENVIRON,
            _TIMEOUT,
            _MAX_TIME,
        ),
        ("rc", "header", "stdout", "stderr", "elapsed"),
        paths=(PathRule("from_path", ("fromdir",)), PathRule("to_path", ("todir",))),
        behaviour="Copies, sending the helper process's output; rc 0 or the copy's "
                  "non-zero status.  Then ``elapsed``."),
)
REGISTRY: dict[str, CommandSpec] = {c.name: c for c in COMMANDS}

#: Names buildbot-worker also registers (and reports in worker_commands) for Buildbot's
#: msgpack protocol, with an absolute ``path`` argument instead of workdir/workersrc.
#: A msg master never sends them; a worker need not implement them.
MSGPACK_ALIASES: dict[str, str] = {"upload_file": "uploadFile",
                                   "upload_directory": "uploadDirectory",
                                   "download_file": "downloadFile"}

#: Master behaviours that depend on the reported versions (Buildbot 4.x).
VERSION_GATES: tuple[VersionGate, ...] = (
    VersionGate("shell", "3.0", "shell gets ``usePTY: \"slave-config\"`` (a string) when "
                "the step leaves usePTY unset, instead of false"),
    VersionGate("shell", "2.16", "``sigtermTime`` is not sent; Git/SVN/P4 steps use "
                "older command lines"),
    VersionGate("shell", "2.15", "``interruptSignal`` is not sent (a note in the log)"),
    VersionGate("shell", "2.7", "``usePTY`` is not sent (a note in the log)"),
    VersionGate("uploadFile", "3.0", "``slavesrc`` is sent instead of ``workersrc``"),
    VersionGate("uploadFile", "2.13", "FileUpload with ``keepstamp`` fails the step"),
    VersionGate("uploadDirectory", "3.0", "``slavesrc`` is sent instead of ``workersrc``"),
    VersionGate("downloadFile", "3.0", "``slavedest`` is sent instead of ``workerdest``"),
    VersionGate("rmfile", "3.1", "``rmdir`` is run instead of ``rmfile``"),
    VersionGate("rmdir", "2.14", "source steps remove directories one at a time"),
    VersionGate("listdir", "2.16", "the Git step does not use listdir"),
)

# ----------------------------------------------------------------------------- results
#: The ``set_builder_list`` result: the builder names the worker now serves.
BUILDER_LIST_RESULT = ("Array of the names (strings) of every builder the worker now serves "
                       "-- all requested builders, not only new ones: the master attaches "
                       "only the builders named here, and an empty list attaches none.")


def command_for(name: str) -> CommandSpec | None:
    """The spec of command ``name``, or None if it is not declared."""
    return REGISTRY.get(name)


def resolve_paths(spec: CommandSpec, args: dict[str, Any], builder_dir: str,
                  join: Any = None, expand_user: Any = None) -> dict[str, Any]:
    """The paths of ``spec``'s :class:`PathRule` for ``args`` under ``builder_dir``.

    ``join`` and ``expand_user`` default to ``os.path.join`` / ``os.path.expanduser``.
    """
    import os.path

    join = join or os.path.join
    expand_user = expand_user or os.path.expanduser
    resolved: dict[str, Any] = {}
    for rule in spec.paths:
        values = [args.get(part) or "" for part in rule.parts]
        last = values[-1]
        listed = rule.each and isinstance(last, list)
        lasts = last if listed else [last]
        paths = [join(builder_dir, *values[:-1],
                      expand_user(item) if rule.expand_user else item) for item in lasts]
        resolved[rule.name] = paths if listed or rule.as_list else paths[0]
    return resolved
