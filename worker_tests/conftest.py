"""Hypothesis profiles for the protocol tests.

The default profile keeps ``pytest worker_tests`` well under a minute on two cores.
``MSGPROTO_HYPOTHESIS_PROFILE=long`` runs ten times as many examples (every explicit
``max_examples`` in the tests goes through :func:`worker_tests.strategies.examples`).
"""

from __future__ import annotations

import os

from hypothesis import HealthCheck
from hypothesis import settings

from worker_tests.strategies import LONG_FACTOR

PROFILE_ENV = "MSGPROTO_HYPOTHESIS_PROFILE"

settings.register_profile(
    "default", max_examples=100, deadline=None,
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large])
settings.register_profile(
    "long", max_examples=100 * LONG_FACTOR, deadline=None,
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large])
settings.load_profile(os.environ.get(PROFILE_ENV, "default"))
