"""The private buildbot-worker internals the worker side relies on (see compat.py)."""

from __future__ import annotations

import os

from buildbot_worker.scripts import create_worker as upstream

from buildbot_worker_msgproto import compat


def _config(basedir: str) -> dict:
    from buildbot_worker_msgproto.scripts.runner import CreateWorkerOptions

    options = CreateWorkerOptions()
    options.parseOptions([basedir, "127.0.0.1:9989", "w1", "secret"])
    return options


def test_buildbot_worker_create_worker_internals_exist():
    for name in ("_make_tac", "_makeBaseDir", "_makeBuildbotTac", "_makeInfoFiles",
                 "CreateWorkerError"):
        assert hasattr(upstream, name), f"buildbot_worker.scripts.create_worker.{name} is gone"


def test_stock_tac_still_has_what_create_worker_rewrites(tmp_path):
    from buildbot_worker_msgproto.scripts.create_worker import STOCK_CALL
    from buildbot_worker_msgproto.scripts.create_worker import STOCK_IMPORT

    tac = compat.stock_worker_tac(_config(str(tmp_path / "w")))
    assert STOCK_IMPORT in tac and STOCK_CALL in tac and "protocol = " in tac, \
        "buildbot-worker's buildbot.tac template changed"


def test_write_worker_dir_makes_the_directory_tac_and_info_files(tmp_path):
    basedir = str(tmp_path / "w")
    compat.write_worker_dir(basedir, "# tac\n", quiet=True)
    with open(os.path.join(basedir, "buildbot.tac"), encoding="utf-8") as f:
        assert f.read() == "# tac\n"
    assert os.path.isfile(os.path.join(basedir, "info", "admin"))
    assert os.path.isfile(os.path.join(basedir, "info", "host"))
