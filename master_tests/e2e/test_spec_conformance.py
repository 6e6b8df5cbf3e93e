"""The spec is enough: a worker written from ``docs/`` alone runs real builds on a real master.

``master_tests/spec_worker.py`` implements the worker side with the Python standard
library only, taking message schemas, the command table (versions, arguments,
defaults, path rules, update keys) and the worker-info schema from ``docs/schemas``.
Two of them log in to one real Buildbot master, one with binary side frames and one
with base64 blocks, and each runs a build with shell, download, upload, directory
upload and file-system steps.  Every step must succeed and every transferred byte
must arrive; every message either side sent must match its schema.  When this test
fails, the spec and the code disagree.
"""

from __future__ import annotations

import ast
import hashlib
import os
import pathlib
import sys
import time

import pytest

from master_tests import spec_worker
from master_tests.spec_worker import SpecWorker
from master_tests.spec_worker import Tables

from . import harness

WORKERS = {"sw-blob": ("blob",), "sw-b64": ()}
PASSWORDS = {"sw-blob": "spec-pw-1", "sw-b64": "spec-pw-\u00e9-2"}
DOWNLOAD_SIZE = 1024 * 1024 + 17  # several read_file blocks and a short last one
STRING = "spec string download\nsecond line\n"

SLEEP_BUILDER_PY = """
c['builders'].append(util.BuilderConfig(
    name='b-sleep', workernames=['sw-b64'],
    factory=util.BuildFactory([steps.ShellCommand(name='sleep', command=['sleep', '120'])])))
"""

BUILDER_PY = """
c['builders'].append(util.BuilderConfig(
    name={builder!r}, workernames=[{worker!r}],
    factory=util.BuildFactory([
        steps.ShellCommand(name='shell', command=['sh', '-c',
            'printf "hello spec\\\\nno newline at the end"; echo to-stderr >&2']),
        steps.FileDownload(name='download', mastersrc={download!r}, workerdest='dl/big.bin',
                           mode=0o640),
        steps.StringDownload({string!r}, name='string_download', workerdest='str.txt'),
        steps.ShellCommand(name='make_files', command=['sh', '-c',
            'head -c 300001 /dev/urandom > up.bin && mkdir -p tree/sub tree/empty && '
            'printf a > tree/a.txt && head -c 70000 /dev/urandom > tree/sub/b.bin']),
        steps.FileUpload(name='upload', workersrc='up.bin', masterdest={out!r} + '/up.bin',
                         keepstamp=True),
        steps.DirectoryUpload(name='dir_upload', workersrc='tree',
                              masterdest={out!r} + '/tree'),
        steps.DirectoryUpload(name='dir_upload_gz', workersrc='tree', compress='gz',
                              masterdest={out!r} + '/tree-gz'),
        steps.MakeDirectory(name='mkdir', dir='build/made/deeper'),
        steps.FileExists(name='stat', file='build/up.bin'),
        steps.CopyDirectory(name='cpdir', src='build/tree', dest='build/tree-copy'),
        steps.RemoveDirectory(name='rmdir', dir='build/tree-copy'),
        steps.MultipleFileUpload(name='glob_upload', workersrcs=['tree/*.txt'], glob=True,
                                 masterdest={out!r} + '/globbed'),
    ])))
"""


def _tree(root: str) -> dict[str, str]:
    """{relative path: sha256 or 'dir'} of a directory tree."""
    found = {}
    for directory, dirs, files in os.walk(root):
        for name in dirs:
            found[os.path.relpath(os.path.join(directory, name), root)] = "dir"
        for name in files:
            found[os.path.relpath(os.path.join(directory, name), root)] = harness.sha256_file(
                os.path.join(directory, name))
    return found


class Env:
    def __init__(self, root: str) -> None:
        self.root = root
        self.port = harness.free_port()
        www_port = harness.free_port()
        self.download = os.path.join(root, "data", "big.bin")
        os.makedirs(os.path.dirname(self.download))
        with open(self.download, "wb") as f:
            f.write(os.urandom(DOWNLOAD_SIZE))
        builders = "".join(
            BUILDER_PY.format(builder=f"b-{name}", worker=name, download=self.download,
                              string=STRING, out=self.out(name))
            for name in WORKERS) + SLEEP_BUILDER_PY
        cfg = harness.make_master_cfg(
            "{'msg': {'port': 'tcp:{PORT}:interface=127.0.0.1'}}",
            [f"worker.MsgWorker({name!r}, {PASSWORDS[name]!r})" for name in WORKERS],
            self.port, www_port, builders)
        self.master = harness.Master(os.path.join(root, "master"), cfg, www_port=www_port,
                                     master_port=self.port)
        self.tables = Tables()
        self.workers: dict[str, SpecWorker] = {}

    def out(self, name: str) -> str:
        return os.path.join(self.root, "out", name)

    def start(self) -> Env:
        self.master.create()
        self.master.start()
        for name, features in WORKERS.items():
            worker = SpecWorker(self.port, name, PASSWORDS[name],
                                os.path.join(self.root, "workers", name), features,
                                self.tables)
            self.workers[name] = worker
            worker.connect()
            worker.start()
            self.master.wait_worker_connected(name, 30)
        return self

    def stop(self) -> None:
        for worker in self.workers.values():
            worker.stop()
        self.master.stop()

    def e2e_diagnostics(self) -> str:
        errors = [f"{n}: {w.errors} closed={w.closed}" for n, w in self.workers.items()]
        return "\n".join(errors) + "\n" + self.master.diagnostics(80)


@pytest.fixture(scope="module")
def env(tmp_path_factory):
    yield from harness.started(Env(str(tmp_path_factory.mktemp("spec-conformance"))))


@pytest.fixture(scope="module")
def builds(env):
    """Both builds, run at once (one per spec worker)."""
    requests = {name: env.master.force_build(f"b-{name}") for name in WORKERS}
    return {name: env.master.wait_build(brid, 120) for name, brid in requests.items()}


@pytest.mark.parametrize("name", sorted(WORKERS))
def test_every_step_succeeds(env, builds, name):
    build = builds[name]
    summary = env.master.build_summary(build["buildid"])
    assert not env.workers[name].errors, env.workers[name].errors
    assert build["results"] == harness.SUCCESS, summary
    steps = env.master.build_steps(build["buildid"])
    assert len(steps) >= 13, summary
    assert all(s["results"] == harness.SUCCESS for s in steps), summary


@pytest.mark.parametrize("name", sorted(WORKERS))
def test_shell_output_arrives_as_sent(env, builds, name):
    buildid = builds[name]["buildid"]
    assert env.master.build_log_text(buildid, "shell", streams="o") == (
        "hello spec\nno newline at the end\n")
    assert env.master.build_log_text(buildid, "shell", streams="e") == "to-stderr\n"
    assert "program finished with exit code 0" in env.master.build_log_text(
        buildid, "shell", streams="h")


@pytest.mark.parametrize("name", sorted(WORKERS))
def test_downloads_arrive_byte_for_byte(env, builds, name):
    build_dir = env.workers[name].builders[f"b-{name}"]
    path = os.path.join(build_dir, "build", "dl", "big.bin")
    assert harness.sha256_file(path) == harness.sha256_file(env.download)
    assert os.stat(path).st_mode & 0o777 == 0o640
    with open(os.path.join(build_dir, "build", "str.txt"), encoding="utf-8") as f:
        assert f.read() == STRING


@pytest.mark.parametrize("name", sorted(WORKERS))
def test_uploads_arrive_byte_for_byte(env, builds, name):
    build_dir = os.path.join(env.workers[name].builders[f"b-{name}"], "build")
    source = os.path.join(build_dir, "up.bin")
    uploaded = os.path.join(env.out(name), "up.bin")
    assert harness.sha256_file(uploaded) == harness.sha256_file(source)
    assert int(os.stat(uploaded).st_mtime) == int(os.stat(source).st_mtime)  # keepstamp
    expected = _tree(os.path.join(build_dir, "tree"))
    assert "sub/b.bin" in expected and "empty" in expected
    assert _tree(os.path.join(env.out(name), "tree")) == expected
    assert _tree(os.path.join(env.out(name), "tree-gz")) == expected
    assert _tree(os.path.join(env.out(name), "globbed")) == {"a.txt": hashlib.sha256(
        b"a").hexdigest()}


@pytest.mark.parametrize("name", sorted(WORKERS))
def test_file_commands_did_their_work(env, builds, name):
    build_dir = os.path.join(env.workers[name].builders[f"b-{name}"], "build")
    assert os.path.isdir(os.path.join(build_dir, "made", "deeper"))
    assert not os.path.exists(os.path.join(build_dir, "tree-copy"))


@pytest.mark.parametrize("name", sorted(WORKERS))
def test_attach_sequence_is_the_documented_one(env, builds, name):
    """docs/commands.rst, "The attach sequence": what the master asks, in order."""
    seen = [(t, m.get("message")) for t, m in env.workers[name].requests_seen]
    assert seen[:4] == [("print", "attached"), ("get_worker_info", None),
                        ("set_builder_list", None), ("print", "attached")], seen
    first_command = [t for t, _ in seen].index("start_command")
    assert ("print", "ping") in seen[4:first_command], seen


def test_both_encodings_of_file_blocks_were_used(env, builds):
    assert env.workers["sw-blob"].blobs and not env.workers["sw-b64"].blobs


def test_interrupt_ends_the_command_with_rc_and_complete(env, builds):
    """commands.rst 8: interrupt_command is answered, the command still sends rc and
    complete, and the step ends CANCELLED (not hanging)."""
    worker = env.workers["sw-b64"]
    brid = env.master.force_build("b-sleep")
    build = env.master.wait_build_started(brid, 30)
    deadline = time.monotonic() + 30
    while not any(c["name"] == "shell" for c in list(worker.commands.values())):
        assert time.monotonic() < deadline, "the sleep command never started"
        time.sleep(0.1)
    env.master.stop_build(build["buildid"])
    done = env.master.wait_build(brid, 60)
    assert done["results"] == harness.CANCELLED, env.master.build_summary(done["buildid"])
    assert "interrupt_command" in [t for t, _ in worker.requests_seen]
    assert not worker.commands and not worker.errors


def test_the_spec_worker_uses_only_the_standard_library():
    tree = ast.parse(pathlib.Path(spec_worker.__file__).read_text(encoding="utf-8"))
    modules = {alias.name.split(".")[0] for node in ast.walk(tree)
               if isinstance(node, ast.Import) for alias in node.names}
    modules |= {node.module.split(".")[0] for node in ast.walk(tree)
                if isinstance(node, ast.ImportFrom) and node.module}
    assert modules - {"__future__"} <= sys.stdlib_module_names, modules


def test_shutdown_is_answered_then_the_worker_closes(env, builds):
    """commands.rst 2: shutdown gets its answer, then the worker closes with 'shutdown'."""
    worker = env.workers["sw-b64"]
    env.master.jsonrpc("workers/sw-b64", "kill", reason="conformance test")
    deadline = time.monotonic() + 30
    while worker.closed is None:
        assert time.monotonic() < deadline, "the master never sent shutdown"
        time.sleep(0.1)
    assert worker.closed[0] == "shutdown", worker.closed
    assert [t for t, _ in worker.requests_seen][-1] == "shutdown"
    env.master.wait_worker_disconnected("sw-b64", 30)
    assert not worker.errors
