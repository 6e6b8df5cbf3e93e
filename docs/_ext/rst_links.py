"""Sphinx extension: plain reStructuredText links between pages become document links.

The pages link to each other as ```protocol.rst <protocol.rst>`__``, which works when
they are read as files (on a forge, in an editor) and in plain docutils.  In the Sphinx
site each such link to a ``.rst`` file becomes a ``:doc:`` cross-reference, so it
points at the generated HTML page and a link to a missing page is a warning (an error
under ``sphinx-build -W``).  Links to ``.rst`` files outside ``docs/`` are mapped with
``rst_link_aliases`` (``{"../bench/README": "benchmarks"}``).

``html_schemas`` names a directory (relative to ``conf.py``) copied into the HTML
output under the same name, so the site carries the JSON Schemas the pages mention.
"""

from __future__ import annotations

import posixpath
import shutil
from pathlib import Path
from typing import Any

from docutils import nodes
from sphinx import addnodes
from sphinx.util import logging

logger = logging.getLogger(__name__)


def _is_local_rst(uri: str) -> bool:
    return bool(uri) and "://" not in uri and not uri.startswith(("#", "mailto:")) \
        and uri.partition("#")[0].endswith(".rst")


def rewrite_links(app: Any, doctree: nodes.document) -> None:
    docname = app.env.docname
    for reference in list(doctree.findall(nodes.reference)):
        uri = reference.get("refuri", "")
        if not _is_local_rst(uri):
            continue
        path, _, anchor = uri.partition("#")
        if anchor:
            logger.warning("link %r: anchors in links to pages are not supported", uri,
                           location=reference)
        target = posixpath.normpath(posixpath.join(posixpath.dirname(docname), path[:-4]))
        target = app.config.rst_link_aliases.get(target, target)
        xref = addnodes.pending_xref("", refdomain="std", reftype="doc",
                                     reftarget="/" + target, refexplicit=True,
                                     refdoc=docname, refwarn=True)
        xref += nodes.inline(reference.astext(), reference.astext())
        reference.replace_self(xref)


def copy_schemas(app: Any, exception: BaseException | None) -> None:
    if exception is not None or app.builder.format != "html" or not app.config.html_schemas:
        return
    source = Path(app.confdir) / app.config.html_schemas
    shutil.copytree(source, Path(app.outdir) / Path(app.config.html_schemas).name,
                    dirs_exist_ok=True)


def setup(app: Any) -> dict[str, Any]:
    app.add_config_value("rst_link_aliases", {}, "env")
    app.add_config_value("html_schemas", "", "html")
    app.connect("doctree-read", rewrite_links)
    app.connect("build-finished", copy_schemas)
    return {"parallel_read_safe": True, "parallel_write_safe": True}
