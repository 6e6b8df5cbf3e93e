"""JSON Schemas and the reference text of the command layer, generated from :mod:`.commands`.

``docs/schemas/commands/<command>.json`` (the ``args`` of ``start_command`` for each
command, with its path rules, transfer sequence and update keys under ``x-msgproto``),
``docs/schemas/results/*.json`` (the results of ``get_worker_info`` and
``set_builder_list``) and the generated block of ``docs/commands.rst`` come from here
and are checked by the test suite::

    python -m buildbot_worker_msgproto.protocol.command_schema docs
"""

from __future__ import annotations

import json
import pathlib
import sys
from typing import Any

from buildbot_worker_msgproto.protocol.commands import BUILDER_LIST_RESULT
from buildbot_worker_msgproto.protocol.commands import COMMAND_VERSION
from buildbot_worker_msgproto.protocol.commands import COMMANDS
from buildbot_worker_msgproto.protocol.commands import MSGPACK_ALIASES
from buildbot_worker_msgproto.protocol.commands import NO_DEFAULT
from buildbot_worker_msgproto.protocol.commands import UPDATE_KEYS
from buildbot_worker_msgproto.protocol.commands import UPDATE_REGISTRY
from buildbot_worker_msgproto.protocol.commands import VERSION_GATES
from buildbot_worker_msgproto.protocol.commands import WORKER_INFO_EXTRA
from buildbot_worker_msgproto.protocol.commands import WORKER_INFO_KEYS
from buildbot_worker_msgproto.protocol.commands import Argument
from buildbot_worker_msgproto.protocol.commands import CommandSpec
from buildbot_worker_msgproto.protocol.schema import DRAFT
from buildbot_worker_msgproto.protocol.schema import ID_PREFIX
from buildbot_worker_msgproto.protocol.schema import block
from buildbot_worker_msgproto.protocol.schema import docs_main
from buildbot_worker_msgproto.protocol.schema import list_table
from buildbot_worker_msgproto.protocol.schema import render
from buildbot_worker_msgproto.protocol.schema import replace_block

VERSION_PATTERN = r"^[0-9]+(\.[0-9]+)*$"


def _typed(types: tuple[str, ...], description: str) -> dict[str, Any]:
    return {"type": types[0] if len(types) == 1 else list(types), "description": description}


def argument_schema(argument: Argument) -> dict[str, Any]:
    schema = _typed(argument.types, argument.description)
    if argument.default is not NO_DEFAULT:
        schema["default"] = argument.default
    return schema


def command_schema(spec: CommandSpec) -> dict[str, Any]:
    """The JSON Schema of ``start_command.args`` for command ``spec``."""
    return {
        "$schema": DRAFT,
        "$id": f"{ID_PREFIX}commands/{spec.name}.json",
        "title": spec.name,
        "description": spec.description,
        "type": "object",
        "properties": {a.name: argument_schema(a) for a in spec.arguments},
        "required": list(spec.required),
        "additionalProperties": True,
        "x-msgproto": {
            "version": COMMAND_VERSION,
            "paths": [{"name": r.name, "parts": list(r.parts), "expand_user": r.expand_user,
                       "each": r.each, "as_list": r.as_list} for r in spec.paths],
            "transfer": spec.transfer.value if spec.transfer else None,
            "updates": {key: _typed(UPDATE_REGISTRY[key].types,
                                    UPDATE_REGISTRY[key].description)
                        for key in spec.updates},
            "behaviour": spec.behaviour,
        },
    }


def worker_info_schema() -> dict[str, Any]:
    """The JSON Schema of the ``get_worker_info`` result."""
    properties = {k.key: _typed(k.types, k.description) for k in WORKER_INFO_KEYS}
    properties["worker_commands"]["additionalProperties"] = {
        "type": "string", "pattern": VERSION_PATTERN}
    properties["environ"]["additionalProperties"] = {"type": "string"}
    return {
        "$schema": DRAFT,
        "$id": f"{ID_PREFIX}results/get_worker_info.json",
        "title": "get_worker_info result",
        "description": "What the worker tells the master about itself.  " + WORKER_INFO_EXTRA,
        "type": "object",
        "properties": properties,
        "required": [k.key for k in WORKER_INFO_KEYS if k.required],
        "additionalProperties": True,
        "x-msgproto": {
            "command_version": COMMAND_VERSION,
            "commands": [c.name for c in COMMANDS],
            "msgpack_aliases": dict(MSGPACK_ALIASES),
            "version_gates": [{"command": g.command, "version": g.version, "below": g.below}
                              for g in VERSION_GATES],
        },
    }


def builder_list_schema() -> dict[str, Any]:
    """The JSON Schema of the ``set_builder_list`` result."""
    return {
        "$schema": DRAFT,
        "$id": f"{ID_PREFIX}results/set_builder_list.json",
        "title": "set_builder_list result",
        "description": BUILDER_LIST_RESULT,
        "type": "array",
        "items": {"type": "string"},
    }


def all_files() -> dict[str, str]:
    """``{path relative to docs/schemas: text}`` of every generated schema file."""
    files = {f"commands/{spec.name}.json": render(command_schema(spec)) for spec in COMMANDS}
    files["results/get_worker_info.json"] = render(worker_info_schema())
    files["results/set_builder_list.json"] = render(builder_list_schema())
    return files


# ----------------------------------------------------------------------------- RST reference
RST_BEGIN = ".. BEGIN GENERATED COMMAND REFERENCE (command_schema.py; do not edit by hand)"
RST_END = ".. END GENERATED COMMAND REFERENCE"


def _rst_types(types: tuple[str, ...]) -> str:
    return " or ".join(types)


def _rst_default(argument: Argument) -> str:
    if argument.required:
        return "required"
    if argument.default is NO_DEFAULT:
        return "absent"
    return f"``{json.dumps(argument.default)}``"


def _path_text(spec: CommandSpec) -> str:
    parts = []
    for rule in spec.paths:
        joined = ", ".join(f"``{p}``" for p in rule.parts)
        extra = []
        if rule.expand_user:
            extra.append("``~`` expanded in the last")
        if rule.each:
            extra.append("each item of a list")
        if rule.as_list:
            extra.append("always a list")
        suffix = f" ({'; '.join(extra)})" if extra else ""
        parts.append(f"builder directory / {joined}{suffix}")
    return "; ".join(parts)


def rst_reference() -> str:
    """The generated block of ``docs/commands.rst``."""
    lines: list[str] = ["10.1 Worker info keys", "---------------------", "",
                        "The ``get_worker_info`` result (schema: "
                        "``schemas/results/get_worker_info.json``):", ""]
    lines += list_table("22 12 10 56", ["Key", "Type", "Required", "Meaning"],
                    [[f"``{k.key}``", _rst_types(k.types), "yes" if k.required else "no",
                      k.description] for k in WORKER_INFO_KEYS])
    lines += [WORKER_INFO_EXTRA, "",
              f"A worker reports version ``\"{COMMAND_VERSION}\"`` for each command it "
              "implements.  What the master does for lower versions:", ""]
    lines += list_table("20 12 68", ["Command", "Below", "The master then"],
                    [[f"``{g.command}``", g.version, g.below] for g in VERSION_GATES])
    lines += ["10.2 Update keys", "----------------", "",
              "Items of ``update.updates``, ``[key, value]`` (section 6 for the rules on "
              "text):", ""]
    lines += list_table("18 14 68", ["Key", "Value", "Meaning"],
                    [[f"``{u.key}``", _rst_types(u.types), u.description]
                     for u in UPDATE_KEYS])
    lines += ["10.3 Commands", "-------------", ""]
    for spec in COMMANDS:
        title = f"``{spec.name}``"
        lines += [title, "~" * len(title), "", spec.description, "",
                  f":Schema: ``schemas/commands/{spec.name}.json``",
                  f":Paths: {_path_text(spec) or 'none'}",
                  f":Transfer: {spec.transfer.value if spec.transfer else 'none'}",
                  f":Updates: {', '.join(f'``{k}``' for k in spec.updates)}", ""]
        lines += list_table("18 16 14 52", ["Argument", "Type", "Default", "Meaning"],
                        [[f"``{a.name}``", _rst_types(a.types), _rst_default(a), a.description]
                         for a in spec.arguments])
        lines += [spec.behaviour, ""]
    return "\n".join(lines)


def rst_block(text: str) -> str:
    """The generated block as it stands in ``text`` (for the drift test)."""
    return block(text, RST_BEGIN, RST_END)


def update_rst(path: str | pathlib.Path) -> bool:
    """Rewrite the generated block of ``path``; True if the file changed."""
    return replace_block(path, rst_reference(), RST_BEGIN, RST_END)


def write_all(docs: str | pathlib.Path) -> list[pathlib.Path]:
    """Write every schema under ``docs/schemas`` and the block of ``docs/commands.rst``."""
    docs = pathlib.Path(docs)
    written = []
    for relative, text in sorted(all_files().items()):
        path = docs / "schemas" / relative
        path.parent.mkdir(parents=True, exist_ok=True)
        if not path.exists() or path.read_text(encoding="utf-8") != text:
            path.write_text(text, encoding="utf-8")
            written.append(path)
    if update_rst(docs / "commands.rst"):
        written.append(docs / "commands.rst")
    return written


USAGE = "usage: python -m buildbot_worker_msgproto.protocol.command_schema DOCS_DIRECTORY"


def main(argv: list[str] | None = None) -> int:
    return docs_main(write_all, USAGE, argv)


if __name__ == "__main__":
    sys.exit(main())
