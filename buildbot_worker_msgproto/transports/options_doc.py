"""The option tables of ``docs/transports/*.rst``, generated from the declared options
(:mod:`.options`) and checked by the test suite::

    python -m buildbot_worker_msgproto.transports.options_doc docs
"""

from __future__ import annotations

import pathlib
import sys
import textwrap

from buildbot_worker_msgproto.protocol.schema import block
from buildbot_worker_msgproto.protocol.schema import docs_main
from buildbot_worker_msgproto.protocol.schema import list_table
from buildbot_worker_msgproto.protocol.schema import replace_block
from buildbot_worker_msgproto.transports import registry
from buildbot_worker_msgproto.transports.options import Declared
from buildbot_worker_msgproto.transports.options import TransportOptions
from buildbot_worker_msgproto.transports.options import declared

#: The transports with a page of their own (``tcp`` is the master's negotiated port).
PAGES = ("amp", "websocket", "zmq", "amqp")
#: Longest line of a generated table.
WIDTH = 90
#: Side -> the backend module's attribute holding its options class.
SIDES = {"master": "MasterOptions", "worker": "WorkerOptions"}


def markers(side: str) -> tuple[str, str]:
    """The comment lines around a generated table of ``side``'s options."""
    return (f".. BEGIN GENERATED {side.upper()} OPTIONS (transports/options_doc.py; "
            "do not edit by hand)", f".. END GENERATED {side.upper()} OPTIONS")


def options_class(name: str, side: str) -> type[TransportOptions] | None:
    """The options class of transport ``name`` on ``side`` (None: it has none)."""
    return getattr(registry.load(name), SIDES[side])


def _default(option: Declared) -> str:
    if option.spec.default_doc:
        return option.spec.default_doc
    if option.spec.required:
        return "(required)"
    if option.default is None:
        return "(none)"
    return f"``{option.default!r}``"


def _value(option: Declared) -> str:
    bounds = option.bounds()
    return option.expected() + (f" ({bounds})" if bounds else "")


def rst_table(cls: type[TransportOptions]) -> str:
    """The reStructuredText table of the options of ``cls``."""
    rows = [[f"``{option.name}``", _value(option), _default(option), option.spec.doc]
            for option in declared(cls)]
    return "\n".join(list_table("20 18 18 44", ["Option", "Value", "Default", "Meaning"],
                                rows, _cell))


def _cell(text: str) -> str:
    return "\n".join(textwrap.wrap(text, width=WIDTH, initial_indent="     - ",
                                   subsequent_indent="       ", break_long_words=False,
                                   break_on_hyphens=False))


def page(docs: str | pathlib.Path, name: str) -> pathlib.Path:
    """The page of transport ``name`` under ``docs``."""
    return pathlib.Path(docs) / "transports" / f"{name}.rst"


def generated_block(text: str, side: str) -> str:
    """The generated table of ``side`` as it stands in ``text`` (for the drift test)."""
    return block(text, *markers(side))


def write_all(docs: str | pathlib.Path) -> list[pathlib.Path]:
    """Rewrite every generated table under ``docs``; the pages that changed."""
    written = []
    for name in PAGES:
        changed = False
        for side in SIDES:
            cls = options_class(name, side)
            if cls is not None:
                changed |= replace_block(page(docs, name), rst_table(cls), *markers(side))
        if changed:
            written.append(page(docs, name))
    return written


USAGE = "usage: python -m buildbot_worker_msgproto.transports.options_doc DOCS_DIRECTORY"


def main(argv: list[str] | None = None) -> int:
    return docs_main(write_all, USAGE, argv)


if __name__ == "__main__":
    sys.exit(main())
