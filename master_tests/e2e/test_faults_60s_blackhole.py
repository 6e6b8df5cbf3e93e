"""A 60 s blackhole over tcp at the default heartbeats and window (about 80 s; marked
``fullscale``: ``-m "not fullscale"`` leaves it out); fault_suite.sixty_second_partition."""

from __future__ import annotations

import pytest

from .fault_env import fault_env  # noqa: F401 - the fixture
from .fault_suite import sixty_second_partition


@pytest.mark.fullscale
def test_sixty_second_blackhole_at_default_settings(fault_env):  # noqa: F811
    sixty_second_partition(fault_env, "blackhole")
