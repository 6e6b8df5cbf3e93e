"""Parity tests: every worker command Buildbot uses, end to end, with real processes.

Each test forces one builder of the parity master (see parity_cfg.py) and checks what
actually arrived: bytes on the master or worker file system, log contents per stream,
properties and results. They run over every protocol of ``harness.enabled_protocols()``
(currently stock 'pb', the reference behaviour) -- see harness.ENABLED_PROTOCOLS.
"""

from __future__ import annotations

import hashlib
import json
import os
import re
import stat
import time

import pytest

from . import harness
from . import list_args_cfg
from . import parity_cfg as P
from .harness import CANCELLED
from .harness import EXCEPTION
from .harness import FAILURE
from .harness import RESULT_NAMES
from .harness import SKIPPED
from .harness import SUCCESS
from .harness import WARNINGS

pytestmark = pytest.mark.timeout(180)

SHA_LINE = re.compile(r"^([0-9a-f]{64})\s+\*?(.+)$", re.M)


def step_results(master: harness.Master, buildid: int) -> dict[str, str]:
    return {s["name"]: RESULT_NAMES[s["results"]] for s in master.build_steps(buildid)}


def check_results(env, build: dict, expected_build: int, expected_steps: dict[str, int]) -> None:
    """Compare build and step results; on mismatch show the whole build."""
    m = env.master
    got = step_results(m, build["buildid"])
    want = {k: RESULT_NAMES[v] for k, v in expected_steps.items()}
    sub = {k: got.get(k, "<missing>") for k in want}
    assert (RESULT_NAMES[build["results"]], sub) == (RESULT_NAMES[expected_build], want), (
        m.build_summary(build["buildid"])
    )


def log(env, build: dict, step: str, logname: str = "stdio", streams: str | None = None) -> str:
    return env.master.build_log_text(build["buildid"], step, logname, streams)


def shas_from(text: str) -> dict[str, str]:
    """{path: sha256} from `sha256sum` output."""
    return {m.group(2).strip(): m.group(1) for m in SHA_LINE.finditer(text)}


def worker_builddir(env, builder: str) -> str:
    return os.path.join(env.worker.basedir, builder)


# ------------------------------------------------------------------------------------------
# 1. shell
# ------------------------------------------------------------------------------------------

SHELL_STEPS = {
    "env": SUCCESS,
    "stdin": SUCCESS,
    "streams": SUCCESS,
    "no_stdout": SUCCESS,
    "no_stderr": SUCCESS,
    "logfiles": SUCCESS,
    "bigoutput": SUCCESS,
    "unicode": SUCCESS,
    "exitcode": WARNINGS,
    "timeout": FAILURE,
    "maxtime": FAILURE,
}


def test_shell_results(parity_env):
    b = parity_env.build("shell")
    check_results(parity_env, b, FAILURE, SHELL_STEPS)


def test_shell_env(parity_env):
    b = parity_env.build("shell")
    out = log(parity_env, b, "env", streams="o")
    assert f"PARITY_ENV={P.ENV_VALUE}\n" in out
    assert f"PARITY_LIST={os.pathsep.join(P.ENV_LIST)}\n" in out


def test_shell_initial_stdin(parity_env):
    b = parity_env.build("shell")
    assert log(parity_env, b, "stdin", streams="o") == P.STDIN_DATA


def test_shell_stdout_stderr_streams(parity_env):
    b = parity_env.build("shell")
    assert log(parity_env, b, "streams", streams="o") == "to-stdout-marker\n"
    assert log(parity_env, b, "streams", streams="e") == "to-stderr-marker\n"


def test_shell_want_stdout_false(parity_env):
    b = parity_env.build("shell")
    text = log(parity_env, b, "no_stdout", streams="oe")  # the header shows the command
    assert "hidden-stdout-marker" not in text
    assert log(parity_env, b, "no_stdout", streams="e") == "shown-stderr-marker\n"


def test_shell_want_stderr_false(parity_env):
    b = parity_env.build("shell")
    text = log(parity_env, b, "no_stderr", streams="oe")
    assert "hidden-stderr-marker" not in text
    assert log(parity_env, b, "no_stderr", streams="o") == "shown-stdout-marker\n"


def test_shell_logfiles(parity_env):
    b = parity_env.build("shell")
    mylog = log(parity_env, b, "logfiles", "mylog")
    assert mylog == f"logfile line 1 of build {b['number']}\nlogfile line 2\n"
    assert log(parity_env, b, "logfiles", streams="o") == "stdio-done\n"


def test_shell_big_output(parity_env):
    b = parity_env.build("shell")
    out = log(parity_env, b, "bigoutput", streams="o")
    expected = "".join(f"{i}\n" for i in range(1, P.BIG_OUTPUT_LINES + 1))
    assert len(out) == len(expected)
    assert out == expected


def test_shell_unicode_argument(parity_env):
    b = parity_env.build("shell")
    assert log(parity_env, b, "unicode", streams="o") == P.UNICODE_ARG + "\n"


def test_shell_exit_code(parity_env):
    b = parity_env.build("shell")
    text = log(parity_env, b, "exitcode")
    assert f"program finished with exit code {P.EXIT_CODE}" in text
    assert log(parity_env, b, "exitcode", streams="o") == "before-exit\n"


def test_shell_timeout_kills(parity_env):
    b = parity_env.build("shell")
    m = parity_env.master
    s = m.step(b["buildid"], "timeout")
    text = log(parity_env, b, "timeout", streams="h")
    assert f"command timed out: {P.SHELL_TIMEOUT} seconds without output" in text
    assert "process killed by signal" in text
    assert s["complete_at"] - s["started_at"] < 20, s  # killed, not run to the end (30 s)


def test_shell_max_time_kills(parity_env):
    b = parity_env.build("shell")
    s = parity_env.master.step(b["buildid"], "maxtime")
    text = log(parity_env, b, "maxtime")
    assert f"command timed out: {P.SHELL_MAXTIME} seconds elapsed" in text
    assert "tick\n" in log(parity_env, b, "maxtime", streams="o")
    assert s["complete_at"] - s["started_at"] < 20, s


# ------------------------------------------------------------------------------------------
# 2. interrupt
# ------------------------------------------------------------------------------------------


@pytest.mark.timeout(90)
def test_interrupt(parity_env):
    m = parity_env.master
    # unique argument, so concurrent runs cannot confuse the /proc checks below
    secs = f"{P.INTERRUPT_SLEEP}.{os.getpid()}{int(time.time() * 1000) % 100000:05d}"
    sleep_argv = ["sleep", secs]
    brid = m.force_build("interrupt", {"sleep_secs": secs})
    build = m.wait_build_started(brid, timeout=30)
    bid = build["buildid"]

    def sleeping():
        steps = {s["name"]: s for s in m.build_steps(bid)}
        s = steps.get("sleep")
        return s is not None and s["started_at"] and harness.find_processes(sleep_argv)

    harness.wait_for(sleeping, 30, "the 'sleep' step to run on the worker", 0.1)
    t0 = time.monotonic()
    m.stop_build(bid, reason="e2e interrupt")
    b = m.wait_build(brid, timeout=30)
    elapsed = time.monotonic() - t0
    assert elapsed < 20, f"stopping took {elapsed:.1f}s"
    summary = m.build_summary(bid)
    assert b["results"] in (CANCELLED, EXCEPTION), summary
    steps = {s["name"]: s for s in m.build_steps(bid)}
    assert steps["sleep"]["results"] in (CANCELLED, EXCEPTION, FAILURE), summary
    assert steps["sleep"]["complete_at"] - steps["sleep"]["started_at"] < 30, summary
    after = steps.get("after_sleep")
    assert after is None or after["results"] in (SKIPPED, CANCELLED), summary
    # the worker really killed the process
    harness.wait_for(
        lambda: not harness.find_processes(sleep_argv), 15, "the interrupted sleep to die"
    )
    # the worker stays connected and usable
    assert m.worker_data(P.MAIN_WORKER)["connected_to"]


# ------------------------------------------------------------------------------------------
# 3. file commands (mkdir, rmdir, cpdir, stat, glob, listdir, rmfile)
# ------------------------------------------------------------------------------------------


def test_file_commands(parity_env):
    b = parity_env.build("filecmds")
    check_results(
        parity_env,
        b,
        SUCCESS,
        {
            "rmdir_initial": SUCCESS,
            "mkdir": SUCCESS,
            "check_mkdir": SUCCESS,
            "cpdir": SUCCESS,
            "check_cpdir": SUCCESS,
            "exists_file": SUCCESS,
            "exists_missing": FAILURE,
            "exists_dir": FAILURE,
            "fsprobe": SUCCESS,
            "raw_stat_missing": SUCCESS,
            "check_rmfile": SUCCESS,
            "rmdir_copy": SUCCESS,
            "check_rmdir": SUCCESS,
        },
    )
    m = parity_env.master
    assert "MKDIR_OK" in log(parity_env, b, "check_mkdir", streams="o")
    assert log(parity_env, b, "check_cpdir", streams="o") == "hello f1\nb\ng1.log\ng2.log\n"
    assert log(parity_env, b, "check_rmfile", streams="o") == "RMFILE_OK\nRMDIRS_OK\n"
    assert log(parity_env, b, "check_rmdir", streams="o") == "RMDIR_OK\n"

    props = m.build_properties(b["buildid"])
    assert props["glob_result"] == ["g1.log", "g2.log"]
    assert props["listdir_result"] == ["b", "g1.log", "g2.log"]
    assert props["stat_size"] == len("hello f1")
    assert props["stat_isreg"] is True
    assert props["path_exists"] is True
    assert props["path_missing_exists"] is False
    assert props["raw_stat_missing_rc"] not in (0, None)

    # and the worker's file system agrees
    root = os.path.join(worker_builddir(parity_env, "filecmds"), "build", "fsroot")
    assert os.path.isfile(os.path.join(root, "a", "b", "f1.txt"))
    assert os.path.isfile(os.path.join(root, "a", "g1.log"))
    assert not os.path.exists(os.path.join(root, "a", "g2.log"))
    assert not os.path.exists(os.path.join(root, "copy"))
    assert not os.path.exists(os.path.join(root, "l1"))


def test_list_arguments(parity_env, protocol):
    """mkdir, rmfile and rmdir of lists (Buildbot's msgpack takes mkdir and rmdir lists):
    msg takes them all; PB's own translation fails on a mkdir list, as it always did."""
    b = parity_env.build(list_args_cfg.BUILDER)
    if protocol.name == "pb":
        assert b["results"] in (EXCEPTION, FAILURE), parity_env.master.build_summary(b["buildid"])
        return
    assert b["results"] == SUCCESS, parity_env.master.build_summary(b["buildid"])
    props = parity_env.master.build_properties(b["buildid"])
    assert props["lists_ok"] is True
    assert re.fullmatch(r"127\.0\.0\.1:[1-9][0-9]*", props["peer"]), props["peer"]
    root = os.path.join(worker_builddir(parity_env, list_args_cfg.BUILDER), "build",
                        "listroot")
    assert sorted(os.listdir(root)) == []  # made, then removed again, on the worker


# ------------------------------------------------------------------------------------------
# 4. uploads
# ------------------------------------------------------------------------------------------


def _tree_shas(root: str) -> dict[str, str]:
    out = {}
    for dirpath, _dirs, files in os.walk(root):
        for f in files:
            path = os.path.join(dirpath, f)
            out["./" + os.path.relpath(path, root)] = harness.sha256_file(path)
    return out


def test_uploads(parity_env):
    b = parity_env.build("uploads")
    check_results(
        parity_env,
        b,
        SUCCESS,
        {
            "upload_big": SUCCESS,
            "upload_stamp": SUCCESS,
            "upload_tree": SUCCESS,
            "upload_tree_gz": SUCCESS,
            "upload_multi": SUCCESS,
            "upload_glob": SUCCESS,
        },
    )
    dest = P.upload_dir(parity_env.data_dir, "uploads", b["number"])

    # FileUpload: 5 MB, byte-exact, with mode
    produced = shas_from(log(parity_env, b, "gen_big", streams="o"))
    big = os.path.join(dest, "big.bin")
    assert os.path.getsize(big) == P.UPLOAD_SIZE
    assert harness.sha256_file(big) == produced["big.bin"]
    assert stat.S_IMODE(os.stat(big).st_mode) == P.UPLOAD_MODE

    # FileUpload keepstamp
    stamp = os.path.join(dest, "stamp.txt")
    assert int(os.stat(stamp).st_mtime) == P.STAMP_MTIME
    with open(stamp, encoding="utf-8") as f:
        assert f.read() == "stamp\n"

    # DirectoryUpload (plain and gz): same files, same bytes, empty dir kept
    tree_worker = shas_from(log(parity_env, b, "gen_tree", streams="o"))
    assert set(tree_worker) == {"./a.txt", "./sub/b.bin", "./sub/deeper/c.txt"}
    for name in ("tree", "tree_gz"):
        assert _tree_shas(os.path.join(dest, name)) == tree_worker, name
        assert os.path.isdir(os.path.join(dest, name, "empty")), name

    # MultipleFileUpload (files + a directory), and with glob=True
    multi = shas_from(log(parity_env, b, "gen_multi", streams="o"))
    for rel in ("m1.txt", "m2.bin", "mdir/x.txt"):
        assert harness.sha256_file(os.path.join(dest, "multi", rel)) == multi[rel], rel
    assert sorted(os.listdir(os.path.join(dest, "globbed"))) == ["m1.txt", "m2.bin"]
    for rel in ("m1.txt", "m2.bin"):
        assert harness.sha256_file(os.path.join(dest, "globbed", rel)) == multi[rel], rel


def test_upload_errors(parity_env):
    b = parity_env.build("upload_errors")
    check_results(
        parity_env,
        b,
        EXCEPTION,
        {
            "upload_missing": FAILURE,
            "gen": SUCCESS,
            "upload_maxsize": FAILURE,
            "upload_dir_missing": FAILURE,
            "block_dest": SUCCESS,
            "upload_close_fails": EXCEPTION,
            "alive": SUCCESS,
        },
    )
    assert "does-not-exist.bin" in log(parity_env, b, "upload_missing")
    assert "Maximum filesize reached" in log(parity_env, b, "upload_maxsize")
    assert log(parity_env, b, "alive", streams="o") == "still-alive\n"
    dest = P.upload_dir(parity_env.data_dir, "upload_errors", b["number"])
    assert not os.path.exists(os.path.join(dest, "missing.bin"))
    truncated = os.path.join(dest, "truncated.bin")
    assert not os.path.exists(truncated) or os.path.getsize(truncated) <= 1000
    # the failed close left the master's directory as it was, and no file in its place
    assert os.listdir(os.path.join(dest, "blocked.bin")) == ["inside"]
    assert parity_env.master.worker_data(P.MAIN_WORKER)["connected_to"]


# ------------------------------------------------------------------------------------------
# 5. downloads
# ------------------------------------------------------------------------------------------


def test_downloads(parity_env):
    b = parity_env.build("downloads")
    check_results(
        parity_env,
        b,
        SUCCESS,
        {
            "download_big": SUCCESS,
            "check_big": SUCCESS,
            "download_nested": SUCCESS,
            "check_nested": SUCCESS,
            "download_empty": SUCCESS,
            "check_empty": SUCCESS,
            "string_download": SUCCESS,
            "check_string": SUCCESS,
            "json_download": SUCCESS,
            "check_json": SUCCESS,
        },
    )
    out = log(parity_env, b, "check_big", streams="o")
    assert shas_from(out)["down.bin"] == parity_env.data_sha256[P.DOWNLOAD_FILE]
    assert f"mode={P.DOWNLOAD_MODE:o} size={P.DOWNLOAD_SIZE}\n" in out
    assert log(parity_env, b, "check_nested", streams="o") == P.SMALL_TEXT
    assert log(parity_env, b, "check_empty", streams="o") == "size=0\n"
    assert log(parity_env, b, "check_string", streams="o") == P.STRING_DOWNLOAD
    assert json.loads(log(parity_env, b, "check_json", streams="o")) == P.JSON_DOWNLOAD

    # also byte-compare what landed on the worker
    wb = os.path.join(worker_builddir(parity_env, "downloads"), "build")
    assert (
        harness.sha256_file(os.path.join(wb, "down.bin")) == parity_env.data_sha256[P.DOWNLOAD_FILE]
    )
    with open(os.path.join(wb, "j.json"), encoding="utf-8") as f:
        assert f.read() == P.json_download_text()
    with open(os.path.join(wb, "str.txt"), encoding="utf-8") as f:
        assert f.read() == P.STRING_DOWNLOAD


def test_download_errors(parity_env):
    b = parity_env.build("download_errors")
    check_results(
        parity_env,
        b,
        FAILURE,
        {"download_missing": FAILURE, "download_maxsize": FAILURE, "alive": SUCCESS},
    )
    assert "not available at master" in log(parity_env, b, "download_missing", "stderr")
    assert "Maximum filesize reached" in log(parity_env, b, "download_maxsize")
    assert log(parity_env, b, "alive", streams="o") == "still-alive\n"
    assert not os.path.exists(
        os.path.join(worker_builddir(parity_env, "download_errors"), "build", "x.bin")
    )
    # master and worker both survived
    assert parity_env.master.is_running and parity_env.worker.is_running
    assert parity_env.master.worker_data(P.MAIN_WORKER)["connected_to"]


# ------------------------------------------------------------------------------------------
# 6. getFileContentFromWorker
# ------------------------------------------------------------------------------------------


def test_get_file_content_from_worker(parity_env):
    b = parity_env.build("getcontent")
    check_results(parity_env, b, SUCCESS, {"write": SUCCESS, "getcontent": SUCCESS})
    props = parity_env.master.build_properties(b["buildid"])
    assert props["file_content"] == P.CONTENT_TEXT
    big = P.big_content_text()
    assert props["big_content_len"] == len(big)
    assert props["big_content_sha256"] == hashlib.sha256(big.encode()).hexdigest()
    assert props["missing_content_is_none"] is True


# ------------------------------------------------------------------------------------------
# 7. secrets
# ------------------------------------------------------------------------------------------


def test_secrets_redacted(parity_env):
    b = parity_env.build("secrets")
    check_results(parity_env, b, SUCCESS, {"secret": SUCCESS})
    full = log(parity_env, b, "secret")  # headers (command line, environment) included
    assert P.SECRET_VALUE not in full
    out = log(parity_env, b, "secret", streams="o")
    assert f"token=<{P.SECRET_NAME}>\n" in out
    assert f"env=<{P.SECRET_NAME}>\n" in out
    # ... but the command really ran with the secret value
    assert shas_from(out)["-"] == hashlib.sha256(P.SECRET_VALUE.encode()).hexdigest()
    props = parity_env.master.build_properties(b["buildid"])
    assert P.SECRET_VALUE not in json.dumps(props)
    # the step's state string (rendered command) must be redacted too
    step = parity_env.master.step(b["buildid"], "secret")
    assert P.SECRET_VALUE not in step["state_string"]


# ------------------------------------------------------------------------------------------
# 8. SetPropertyFromCommand
# ------------------------------------------------------------------------------------------


def test_set_property_from_command(parity_env):
    b = parity_env.build("setprop")
    check_results(
        parity_env,
        b,
        SUCCESS,
        {"setprop": SUCCESS, "setprop_extract": SUCCESS, "use_prop": SUCCESS},
    )
    props = parity_env.master.build_properties(b["buildid"])
    assert props["from_cmd"] == P.SETPROP_VALUE
    assert props["sp_stdout"] == "out-line"
    assert props["sp_stderr"] == "err-line"
    assert props["sp_rc"] == 0
    assert log(parity_env, b, "use_prop", streams="o") == f"got={P.SETPROP_VALUE}\n"


# ------------------------------------------------------------------------------------------
# worker info (transferred at connection time)
# ------------------------------------------------------------------------------------------


def test_worker_info(parity_env):
    b = parity_env.build("workerinfo")
    check_results(
        parity_env, b, SUCCESS, {"from_env": SUCCESS, "pwd": SUCCESS, "conninfo": SUCCESS}
    )
    m = parity_env.master
    props = m.build_properties(b["buildid"])
    assert props[P.WORKER_ENV_VAR] == P.WORKER_ENV_VALUE  # from the worker's environ
    builddir = worker_builddir(parity_env, "workerinfo")
    assert props["builddir"] == builddir  # from the worker's basedir
    assert props["workername"] == P.MAIN_WORKER
    assert log(parity_env, b, "pwd", streams="o") == os.path.join(builddir, "build") + "\n"

    import buildbot_worker

    info = m.worker_data(P.MAIN_WORKER)["workerinfo"]
    # stock PB sends info/* files verbatim (trailing newline included); compare stripped
    assert info["admin"].strip() == f"E2E Admin <{P.MAIN_WORKER}@example.invalid>"
    assert info["host"].strip() == f"e2e host of {P.MAIN_WORKER}"
    assert info["version"] == buildbot_worker.version


def test_protocol_in_use(parity_env, protocol):
    """Guard against a silent fallback: the build's worker connection is the protocol's."""
    b = parity_env.build("workerinfo")
    conn_class = parity_env.master.build_properties(b["buildid"])["worker_conn_class"]
    assert conn_class.startswith(protocol.conn_class_prefix), conn_class


# ------------------------------------------------------------------------------------------
# 9. reconnect
# ------------------------------------------------------------------------------------------


@pytest.mark.timeout(150)
def test_reconnect(parity_env, extra_worker):
    m = parity_env.master
    name = P.RECONNECT_WORKER
    w = extra_worker(name)
    w.start()
    m.wait_worker_connected(name, 30, worker=w)

    def hello_ok(build):
        assert build["results"] == SUCCESS, m.build_summary(build["buildid"])
        text = m.build_log_text(build["buildid"], "hello", streams="o")
        assert text == f"hello from {name}\n"

    hello_ok(m.run_build(P.RECONNECT_BUILDER))

    w.stop()
    m.wait_worker_disconnected(name, 30)

    # a build requested while the worker is away waits for it ...
    brid = m.force_build(P.RECONNECT_BUILDER)
    time.sleep(1.0)
    assert m.builds_for_request(brid) == []

    w.start()
    m.wait_worker_connected(name, 30, worker=w)
    # ... and runs once it is back; then a fresh one runs too
    hello_ok(m.wait_build(brid, timeout=60))
    hello_ok(m.run_build(P.RECONNECT_BUILDER))

    # restart() (graceful stop + start)
    w.restart()
    m.wait_worker_connected(name, 30, worker=w)
    hello_ok(m.run_build(P.RECONNECT_BUILDER))

    # abrupt death (SIGKILL, no goodbye): the master must notice the lost connection
    before = m.log_text().count(f"worker {name!r} (")
    w.kill()
    if parity_env.protocol.name == "msg":
        # msg suspends the session for its resume window instead of detaching; the
        # restarted worker's new login ends it at once (docs/failure-behaviour.rst)
        def noticed() -> bool:
            text = m.log_text()
            return text.count(f"worker {name!r} (") > before and "connection lost" in text
        harness.wait_for(noticed, 30, "the master to notice the lost connection", 0.2,
                         m.diagnostics)
    else:
        m.wait_worker_disconnected(name, 30)
    w.start()
    m.wait_worker_connected(name, 30, worker=w)
    hello_ok(m.run_build(P.RECONNECT_BUILDER))


@pytest.mark.timeout(150)
def test_reconnect_after_master_restart(make_master):
    m = make_master.master(["hello"], ["wm"])
    m.start()
    w = make_master.worker(m, "wm")
    w.start()
    m.wait_worker_connected("wm", 30, worker=w)
    b = m.run_build("hello")
    assert b["results"] == SUCCESS, m.build_summary(b["buildid"])

    m.restart()
    # the worker notices, retries (backoff starts at ~1s) and reconnects by itself
    m.wait_worker_connected("wm", 60, worker=w)
    b = m.run_build("hello")
    assert b["results"] == SUCCESS, m.build_summary(b["buildid"])
    assert m.build_log_text(b["buildid"], "hello", streams="o") == "hello from wm\n"


# ------------------------------------------------------------------------------------------
# 10. delete_leftover_dirs
# ------------------------------------------------------------------------------------------


@pytest.mark.timeout(90)
def test_delete_leftover_dirs(parity_env, extra_worker):
    m = parity_env.master
    name = P.LEFTOVER_WORKER
    w = extra_worker(name, extra_create_args=("--delete-leftover-dirs",))
    stray = os.path.join(w.basedir, "stray_dir")
    os.makedirs(os.path.join(stray, "sub"))
    with open(os.path.join(stray, "sub", "f.txt"), "w") as f:
        f.write("x")
    stray_file = os.path.join(w.basedir, "stray_file.txt")
    with open(stray_file, "w") as f:
        f.write("files are not touched")

    w.start()
    m.wait_worker_connected(name, 30, worker=w)
    harness.wait_for(
        lambda: not os.path.exists(stray),
        15,
        "the leftover directory to be deleted",
        diagnostics=w.diagnostics,
    )
    assert os.path.isfile(stray_file)
    assert os.path.isdir(os.path.join(w.basedir, "info"))
    b = m.run_build(P.LEFTOVER_BUILDER)
    assert b["results"] == SUCCESS, m.build_summary(b["buildid"])
    assert os.path.isdir(os.path.join(w.basedir, P.LEFTOVER_BUILDER))

    # control: the main worker was created without the option and kept its stray dir
    assert os.path.isdir(os.path.join(parity_env.worker.basedir, "stray_keep", "sub"))
