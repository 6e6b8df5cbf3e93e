"""JSON Schemas (draft 2020-12) of every message type, generated from :mod:`.messages`.

The schemas in ``docs/schemas/`` are produced by this module and checked by the test
suite, so they cannot drift from the specs the codec validates against::

    python -m buildbot_worker_msgproto.protocol.schema docs/schemas

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

from buildbot_worker_msgproto.protocol.messages import ENVELOPE_FIELDS
from buildbot_worker_msgproto.protocol.messages import MESSAGES
from buildbot_worker_msgproto.protocol.messages import REQUEST_ID
from buildbot_worker_msgproto.protocol.messages import Field
from buildbot_worker_msgproto.protocol.messages import Kind
from buildbot_worker_msgproto.protocol.messages import MessageSpec

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
    fields = ENVELOPE_FIELDS
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


def main(argv: list[str] | None = None) -> int:
    args = sys.argv[1:] if argv is None else argv
    if len(args) != 1:
        print("usage: python -m buildbot_worker_msgproto.protocol.schema OUTPUT_DIRECTORY",
              file=sys.stderr)
        return 2
    for path in write_schemas(args[0]):
        print(path)
    return 0


if __name__ == "__main__":
    sys.exit(main())
