"""System programs some tests need (rabbitmq-server, sshd, chromium): skip or fail.

On a developer machine without them (and often without root to install them), the tests
that need one *skip*, saying what is missing and how to install it (``pytest -rs`` lists
the reasons; pyproject.toml turns that on).  ``scripts/run-tests`` (hence CI) sets
:data:`REQUIRE_ENV`, which turns every such skip into a failure: there the programs are
installed by ``scripts/install-system-deps`` and the tests are mandatory; so does ``CI``,
which CI services set.  The multi-master services (``master_tests/services.py``: PostgreSQL,
crossbar) go through :func:`unavailable` too.
"""

from __future__ import annotations

import os
import unittest
from typing import NoReturn

import pytest

#: Set to 1 (scripts/run-tests does): a missing system program fails its tests.
REQUIRE_ENV = "MSGPROTO_REQUIRE_SYSTEM_DEPS"


def required() -> bool:
    """True when missing system programs must fail the tests: :data:`REQUIRE_ENV` or
    ``CI`` (which CI services set) is set."""
    return any(os.environ.get(name, "").strip() not in ("", "0")
               for name in (REQUIRE_ENV, "CI"))


def unavailable(reason: str) -> NoReturn:
    """Something a test needs is not here: skip the test (unittest.SkipTest, which pytest
    and trial both report as a skip with ``reason``), or fail it when :func:`required`."""
    if required():
        pytest.fail(f"{reason}; {REQUIRE_ENV} or CI is set, so this test is mandatory "
                    "(scripts/run-tests provides it)", pytrace=False)
    raise unittest.SkipTest(reason)


def missing(program: str, install: str) -> NoReturn:
    """``program`` is not installed (see :func:`unavailable`)."""
    unavailable(f"{program} is not installed: {install} (scripts/install-system-deps as "
                "root installs it)")
