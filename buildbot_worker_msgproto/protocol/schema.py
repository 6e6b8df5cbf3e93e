"""JSON Schemas (draft 2020-12) of every message type, generated from :mod:`.messages`.

The schemas in ``docs/schemas/`` and the message reference in ``docs/protocol.rst``
are produced by this module and checked by the test suite, so they cannot drift from
the specs the codec validates against::

    python -m buildbot_worker_msgproto.protocol.schema docs/schemas
    python -m buildbot_worker_msgproto.protocol.schema --rst docs/protocol.rst

The schemas describe what :func:`~buildbot_worker_msgproto.protocol.codec.decode`
accepts, with one deliberate difference that JSON Schema cannot express: JSON Schema
counts ``1.0`` as an integer, while the codec requires integers to be written without
a fraction or exponent (``1``).  Every frame the codec accepts validates against its
schema; the converse holds up to that difference and the session's extra checks
(e.g. ``hello.versions`` must be a non-empty list of integers).
"""

from __future__ import annotations

import json
import pathlib
import sys
from typing import Any
from typing import Callable

from buildbot_worker_msgproto.protocol.messages import BLOB
from buildbot_worker_msgproto.protocol.messages import ENVELOPE_FIELDS
from buildbot_worker_msgproto.protocol.messages import MESSAGES
from buildbot_worker_msgproto.protocol.messages import REQUEST_ID
from buildbot_worker_msgproto.protocol.messages import Field
from buildbot_worker_msgproto.protocol.messages import Kind
from buildbot_worker_msgproto.protocol.messages import MessageSpec
from buildbot_worker_msgproto.protocol.messages import Phase
from buildbot_worker_msgproto.protocol.messages import Sender

DRAFT = "https://json-schema.org/draft/2020-12/schema"
ID_PREFIX = "https://buildbot-msgproto.invalid/schemas/"


def field_schema(field: Field) -> dict[str, Any]:
    """The schema of one field value."""
    schema: dict[str, Any] = {"description": field.description}
    if "any" not in field.types:
        types = list(field.types)
        schema["type"] = types[0] if len(types) == 1 else types
    if field.minimum is not None:
        schema["minimum"] = field.minimum
    return schema


def message_fields(spec: MessageSpec) -> tuple[Field, ...]:
    """Every field of a ``spec`` message, envelope first, in wire order."""
    fields = ENVELOPE_FIELDS + (BLOB,)
    if spec.kind is Kind.REQUEST:
        fields += (REQUEST_ID,)
    return fields + spec.fields


def message_schema(spec: MessageSpec) -> dict[str, Any]:
    """The JSON Schema of one message type."""
    properties: dict[str, Any] = {}
    required: list[str] = []
    for field in message_fields(spec):
        properties[field.name] = field_schema(field)
        if field.required:
            required.append(field.name)
    properties["type"]["const"] = spec.type
    return {
        "$schema": DRAFT,
        "$id": f"{ID_PREFIX}{spec.type}.json",
        "title": spec.type,
        "description": spec.description,
        "type": "object",
        "properties": properties,
        "required": required,
        # Unknown fields are ignored by receivers (forward compatibility).
        "additionalProperties": True,
        "x-msgproto": {
            "kind": spec.kind.value,
            "sender": spec.sender.value,
            "phase": spec.phase.value,
        },
    }


def all_schemas() -> dict[str, dict[str, Any]]:
    """``{message type: schema}`` for every registered message."""
    return {spec.type: message_schema(spec) for spec in MESSAGES}


def render(schema: dict[str, Any]) -> str:
    """The exact text of a schema file: pretty, sorted keys, trailing newline."""
    return json.dumps(schema, indent=2, sort_keys=True, ensure_ascii=False) + "\n"


def write_schemas(directory: str | pathlib.Path) -> list[pathlib.Path]:
    """Write ``<type>.json`` for every message into ``directory``; return the paths."""
    directory = pathlib.Path(directory)
    directory.mkdir(parents=True, exist_ok=True)
    written = []
    for message_type, schema in sorted(all_schemas().items()):
        path = directory / f"{message_type}.json"
        path.write_text(render(schema), encoding="utf-8")
        written.append(path)
    return written


# ----------------------------------------------------------------------------- RST reference
RST_BEGIN = ".. BEGIN GENERATED MESSAGE REFERENCE (schema.py --rst; do not edit by hand)"
RST_END = ".. END GENERATED MESSAGE REFERENCE"

_SENDERS = {Sender.MASTER: "master", Sender.WORKER: "worker", Sender.BOTH: "master or worker"}
_PHASES = {Phase.HANDSHAKE: "during the handshake only",
           Phase.OPEN: "only once the session is open (authenticated)",
           Phase.ANY: "at any time"}
_ANSWERS = {Kind.CONTROL: "none; see the handshake and session sections",
            Kind.REQUEST: "exactly one ``response`` or ``error`` whose ``reply_to`` is this "
                          "``id``",
            Kind.RESPONSE: "none (it is the answer)",
            Kind.NOTIFICATION: "none"}


def _rst_type(field: Field) -> str:
    text = " or ".join(field.types)
    if field.minimum is not None:
        text += f" >= {field.minimum}"
    return text


def list_table(widths: str, header: list[str], rows: list[list[str]],
               cell: Callable[[str], str] = "     - {}".format) -> list[str]:
    """The lines of a reStructuredText ``list-table`` (and a blank one): column
    ``widths``, a ``header`` row, then ``rows``; ``cell`` writes each cell after the first
    of a row."""
    lines = [".. list-table::", "   :header-rows: 1", f"   :widths: {widths}", ""]
    for row in [header, *rows]:
        lines.append(f"   * - {row[0]}")
        lines += [cell(text) for text in row[1:]]
    return lines + [""]


def rst_reference() -> str:
    """The per-message reference section of docs/protocol.rst (between the markers)."""
    lines: list[str] = []
    for spec in MESSAGES:
        title = f"``{spec.type}``"
        lines += [title, "-" * len(title), "", spec.description, "",
                  f":Kind: {spec.kind.value}",
                  f":Sent by: {_SENDERS[spec.sender]}",
                  f":When: {_PHASES[spec.phase]}",
                  f":Answer: {_ANSWERS[spec.kind]}", ""]
        fields = ((REQUEST_ID,) if spec.kind is Kind.REQUEST else ()) + spec.fields
        if not fields:
            lines += ["Fields: the envelope only.", ""]
            continue
        lines += list_table("18 22 10 50", ["Field", "Type", "Required", "Meaning"],
                            [[f"``{field.name}``", _rst_type(field),
                              "yes" if field.required else "no", field.description]
                             for field in fields])
    return "\n".join(lines)


def update_rst(path: str | pathlib.Path) -> bool:
    """Rewrite the generated block of ``path``; True if the file changed."""
    return replace_block(path, rst_reference(), RST_BEGIN, RST_END)


def rst_block(text: str) -> str:
    """The generated block as it stands in ``text`` (for the drift test)."""
    return block(text, RST_BEGIN, RST_END)


def replace_block(path: str | pathlib.Path, content: str, begin: str, end: str) -> bool:
    """Put ``content`` between the ``begin`` and ``end`` markers of ``path``; True if the
    file changed."""
    path = pathlib.Path(path)
    text = path.read_text(encoding="utf-8")
    start = text.index(begin) + len(begin)
    updated = text[:start] + "\n\n" + content + "\n" + text[text.index(end):]
    if updated == text:
        return False
    path.write_text(updated, encoding="utf-8")
    return True


def block(text: str, begin: str, end: str) -> str:
    """The text between the ``begin`` and ``end`` markers of ``text``, stripped of blank
    lines around it, with one final newline."""
    start = text.index(begin) + len(begin)
    return text[start:text.index(end)].strip("\n") + "\n"


def docs_main(write_all: Callable[[str], list[pathlib.Path]], usage: str,
              argv: list[str] | None = None) -> int:
    """The command line of a docs generator: ``DOCS_DIRECTORY``; prints the files that
    ``write_all(DOCS_DIRECTORY)`` rewrote."""
    args = sys.argv[1:] if argv is None else argv
    if len(args) != 1 or args[0].startswith("-"):
        print(usage, file=sys.stderr)
        return 2
    for path in write_all(args[0]):
        print(path)
    return 0


USAGE = ("usage: python -m buildbot_worker_msgproto.protocol.schema OUTPUT_DIRECTORY\n"
         "       python -m buildbot_worker_msgproto.protocol.schema --rst docs/protocol.rst")


def main(argv: list[str] | None = None) -> int:
    args = sys.argv[1:] if argv is None else argv
    if len(args) == 2 and args[0] == "--rst":
        print(f"{args[1]}: {'updated' if update_rst(args[1]) else 'up to date'}")
        return 0
    return docs_main(write_schemas, USAGE, args)


if __name__ == "__main__":
    sys.exit(main())
