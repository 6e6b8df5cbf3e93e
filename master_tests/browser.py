"""Headless Chromium (Debian's ``/usr/bin/chromium``, never a downloaded browser) for the
tests that check what Buildbot's web UI shows.

Each call runs one Chromium process in its own session with a private profile directory,
lets the page's scripts run for ``budget_ms`` of virtual time (Chromium's
``--virtual-time-budget``: the page's timers and requests run, then the page is taken as
rendered), and stops the whole process group by its id if it does not end in time.
"""

from __future__ import annotations

import os
import signal
import subprocess
import tempfile
from collections.abc import Callable

from master_tests import system_deps

#: The browser binary (MSGPROTO_CHROMIUM overrides it).
CHROMIUM = os.environ.get("MSGPROTO_CHROMIUM", "/usr/bin/chromium")
#: Seconds one browser run may take before it is killed.
RUN_TIMEOUT = 90
#: Virtual milliseconds a page gets to load its data and render.
DEFAULT_BUDGET_MS = 20000


def require() -> None:
    """Skip (or, in CI, fail) the test if Chromium is not installed."""
    if not os.access(CHROMIUM, os.X_OK):
        system_deps.missing(f"Chromium ({CHROMIUM})", "the web UI tests load Buildbot's "
                            "pages in it, headless; Debian: apt-get install chromium")


def _run(*args: str) -> str:
    require()
    with tempfile.TemporaryDirectory(prefix="msgproto-chromium-") as profile:
        command = [CHROMIUM, "--headless", "--no-sandbox", "--disable-gpu",
                   "--disable-dev-shm-usage", "--no-first-run", "--no-default-browser-check",
                   "--disable-extensions", "--disable-background-networking",
                   f"--user-data-dir={profile}", *args]
        process = subprocess.Popen(command, stdin=subprocess.DEVNULL, stdout=subprocess.PIPE,
                                   stderr=subprocess.PIPE, start_new_session=True)
        try:
            out, err = process.communicate(timeout=RUN_TIMEOUT)
        except subprocess.TimeoutExpired:
            os.killpg(process.pid, signal.SIGKILL)
            process.communicate()
            raise AssertionError(f"chromium did not finish within {RUN_TIMEOUT} s: "
                                 f"{command}") from None
        finally:
            if process.poll() is None:
                os.killpg(process.pid, signal.SIGKILL)
                process.wait()
    if process.returncode != 0:
        raise AssertionError(f"chromium failed ({process.returncode}): "
                             f"{err.decode(errors='replace')[-2000:]}")
    return out.decode("utf-8", errors="replace")


def dump_dom(url: str, budget_ms: int = DEFAULT_BUDGET_MS) -> str:
    """The page's DOM (HTML) once it rendered."""
    return _run(f"--virtual-time-budget={budget_ms}", "--dump-dom", url)


#: Loads of one page before ``dump_dom_until`` gives up: on a loaded machine Chromium's
#: virtual time can run out while Buildbot's data API calls are still in flight.
RENDER_ATTEMPTS = 4


def dump_dom_until(url: str, rendered: Callable[[str], bool],
                   attempts: int = RENDER_ATTEMPTS, budget_ms: int = DEFAULT_BUDGET_MS) -> str:
    """The page's DOM once ``rendered(dom)`` holds, loading it again (with a doubled
    budget) up to ``attempts`` times; the last DOM if it never does, for the test to show."""
    dom = ""
    for attempt in range(attempts):
        dom = dump_dom(url, budget_ms * 2 ** min(attempt, 2))
        if rendered(dom):
            break
    return dom


def screenshot(url: str, path: str, width: int = 1600, height: int = 1000,
               budget_ms: int = DEFAULT_BUDGET_MS) -> str:
    """A PNG of the rendered page at ``path``."""
    _run(f"--virtual-time-budget={budget_ms}", f"--window-size={width},{height}",
         "--hide-scrollbars", f"--screenshot={path}", url)
    return path
