"""System programs some tests need (rabbitmq-server, sshd, chromium): skip or fail.

On a developer machine without them (and often without root to install them), the tests
that need one *skip*, saying what is missing and how to install it (``pytest -rs`` lists
the reasons; pyproject.toml turns that on).  ``scripts/run-tests`` (hence CI) sets
:data:`REQUIRE_ENV`, which turns every such skip into a failure: there the programs are
installed by ``scripts/install-system-deps`` and the tests are mandatory.
"""

from __future__ import annotations

import os
import unittest
from typing import NoReturn

import pytest

#: Set to 1 (scripts/run-tests does): a missing system program fails its tests.
REQUIRE_ENV = "MSGPROTO_REQUIRE_SYSTEM_DEPS"


def required() -> bool:
    """True when missing system programs must fail the tests (CI)."""
    return os.environ.get(REQUIRE_ENV, "").strip() not in ("", "0")


def missing(program: str, install: str) -> NoReturn:
    """``program`` is not installed: skip the test (unittest.SkipTest, which pytest and
    trial both report as a skip with this reason), or fail it when :func:`required`."""
    reason = (f"{program} is not installed: {install} (scripts/install-system-deps as "
              "root installs it)")
    if required():
        pytest.fail(f"{reason}; {REQUIRE_ENV} is set, so this test is mandatory",
                    pytrace=False)
    raise unittest.SkipTest(reason)
