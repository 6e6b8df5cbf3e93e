"""Sphinx configuration of the buildbot-msgproto documentation site.

Build it (warnings are errors, as in CI)::

    sphinx-build -W -b html docs docs/_build/html
"""

from __future__ import annotations

import sys
from importlib import metadata
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent / "_ext"))

project = "buildbot-msgproto"
author = "buildbot-msgproto contributors"
copyright = "buildbot-msgproto contributors, GPL-2.0-only"  # noqa: A001 - Sphinx's name
try:
    release = metadata.version("buildbot-msgproto")
except metadata.PackageNotFoundError:  # building from a checkout that is not installed
    release = "unknown"
version = release

extensions = ["rst_links"]
root_doc = "index"
exclude_patterns = ["_build", "_ext", "schemas"]
nitpicky = True
#: pages link to each other as plain ``file.rst`` links (see _ext/rst_links.py)
rst_link_aliases = {"../bench/README": "benchmarks"}
#: the JSON Schemas the protocol pages refer to, published with the site
html_schemas = "schemas"

html_theme = "sphinx_rtd_theme"
html_title = f"buildbot-msgproto {release}"
html_show_sourcelink = True
html_theme_options = {"navigation_depth": 3, "collapse_navigation": False}
html_static_path = ["_static"]
html_css_files = ["tables.css"]
