"""Hypothesis strategies derived from the message specs, and shared test helpers.

Everything here is generated from :mod:`buildbot_worker_msgproto.protocol.messages`,
so a new message type or field is fuzzed without touching the tests.
"""

from __future__ import annotations

import json
import os
from typing import Any

from hypothesis import strategies as st

from buildbot_worker_msgproto.protocol.messages import BLOB
from buildbot_worker_msgproto.protocol.messages import ENVELOPE_FIELDS
from buildbot_worker_msgproto.protocol.messages import MESSAGES
from buildbot_worker_msgproto.protocol.messages import REPLY_TO
from buildbot_worker_msgproto.protocol.messages import REQUEST_ID
from buildbot_worker_msgproto.protocol.messages import Field
from buildbot_worker_msgproto.protocol.messages import Kind
from buildbot_worker_msgproto.protocol.messages import MessageSpec

#: How many times more examples the ``long`` hypothesis profile runs.
LONG_FACTOR = 10
_FACTOR = LONG_FACTOR if os.environ.get("MSGPROTO_HYPOTHESIS_PROFILE") == "long" else 1


def examples(n: int) -> int:
    """``max_examples`` for a test: ``n`` normally, ``LONG_FACTOR * n`` in the long profile."""
    return n * _FACTOR


# ----------------------------------------------------------------------------- JSON values
def _floats(integral: bool = True) -> st.SearchStrategy[float]:
    floats = st.floats(allow_nan=False, allow_infinity=False)
    return floats if integral else floats.filter(lambda f: not f.is_integer())


def json_scalars(integral_floats: bool = True) -> st.SearchStrategy[Any]:
    return (st.none() | st.booleans() | st.integers(min_value=-(2**70), max_value=2**70)
            | _floats(integral_floats) | st.text(max_size=20))


def json_values(integral_floats: bool = True, max_leaves: int = 8) -> st.SearchStrategy[Any]:
    """Any JSON value that survives a round trip through ``json``."""
    return st.recursive(
        json_scalars(integral_floats),
        lambda children: (st.lists(children, max_size=4)
                          | st.dictionaries(st.text(max_size=10), children, max_size=4)),
        max_leaves=max_leaves)


JSON_VALUES = json_values()


# ----------------------------------------------------------------------------- fields
def field_values(field: Field) -> st.SearchStrategy[Any]:
    """Values the codec accepts for ``field``."""
    if "any" in field.types:
        return JSON_VALUES
    options = []
    for type_name in field.types:
        if type_name == "string":
            options.append(st.text(max_size=40))
        elif type_name == "integer":
            options.append(st.integers(min_value=field.minimum, max_value=2**62))
        elif type_name == "number":
            options.append(st.integers(min_value=field.minimum, max_value=2**62))
            options.append(st.floats(min_value=field.minimum, allow_nan=False,
                                     allow_infinity=False))
        elif type_name == "boolean":
            options.append(st.booleans())
        elif type_name == "object":
            options.append(st.dictionaries(st.text(max_size=10), JSON_VALUES, max_size=4))
        elif type_name == "array":
            options.append(st.lists(JSON_VALUES, max_size=4))
        elif type_name == "null":
            options.append(st.none())
        else:  # pragma: no cover - a new JSON type needs a strategy here
            raise AssertionError(f"no strategy for JSON type {type_name!r}")
    return st.one_of(options)


def all_fields(spec: MessageSpec) -> tuple[Field, ...]:
    fields = ENVELOPE_FIELDS
    if spec.kind is Kind.REQUEST:
        fields += (REQUEST_ID,)
    return fields + spec.fields


def _fields_dict(fields: tuple[Field, ...]) -> st.SearchStrategy[dict[str, Any]]:
    required = {f.name: field_values(f) for f in fields if f.required}
    optional = {f.name: field_values(f) for f in fields if not f.required}
    return st.fixed_dictionaries(required, optional=optional)


def extra_fields(spec: MessageSpec) -> st.SearchStrategy[dict[str, Any]]:
    """Unknown fields, which receivers must ignore."""
    # every envelope name, also those not declared for this spec (e.g. ``blob``)
    known = {f.name for f in all_fields(spec)} | {BLOB.name, REQUEST_ID.name, REPLY_TO.name}
    return st.dictionaries(st.text(max_size=10).filter(lambda k: k not in known),
                           JSON_VALUES, max_size=3)


@st.composite
def messages_of(draw: st.DrawFn, spec: MessageSpec, extras: bool = True) -> dict[str, Any]:
    """A message of type ``spec`` that the codec accepts (envelope included)."""
    message = draw(extra_fields(spec)) if extras else {}
    fields = all_fields(spec)
    message.update(draw(_fields_dict(tuple(f for f in fields if f.name != "type"))))
    message["type"] = spec.type
    return message


def valid_messages(extras: bool = True) -> st.SearchStrategy[dict[str, Any]]:
    """A message of any registered type that the codec accepts."""
    return st.one_of([messages_of(spec, extras) for spec in MESSAGES])


def bodies_of(spec: MessageSpec) -> st.SearchStrategy[dict[str, Any]]:
    """The body of a ``spec`` message as passed to ``Session.send_*`` (no envelope)."""
    return _fields_dict(spec.fields)


def frame(message: dict[str, Any]) -> bytes:
    """Encode like a peer might: compact JSON, UTF-8 (not necessarily ASCII)."""
    return json.dumps(message, separators=(",", ":"), ensure_ascii=False).encode("utf-8")


@st.composite
def mutated_frames(draw: st.DrawFn, base: bytes) -> bytes:
    """``base`` with random byte-level damage: flips, cuts, insertions, splices."""
    data = bytearray(base)
    for _ in range(draw(st.integers(1, 4))):
        op = draw(st.sampled_from(["flip", "delete", "insert", "truncate", "dup"]))
        if not data:
            data.extend(draw(st.binary(min_size=1, max_size=8)))
            continue
        pos = draw(st.integers(0, len(data) - 1))
        if op == "flip":
            data[pos] ^= draw(st.integers(1, 255))
        elif op == "delete":
            del data[pos:pos + draw(st.integers(1, 8))]
        elif op == "insert":
            data[pos:pos] = draw(st.binary(min_size=1, max_size=8)
                                 | st.sampled_from([b"[", b"{", b'"', b"\\", b"NaN", b"\xff",
                                                    b"1e400", b"true", b",", b"}"]))
        elif op == "truncate":
            del data[pos:]
        else:
            end = min(len(data), pos + draw(st.integers(1, 16)))
            data[pos:pos] = data[pos:end]
    return bytes(data)


@st.composite
def field_mutations(draw: st.DrawFn, message: dict[str, Any],
                    integral_floats: bool = True) -> dict[str, Any]:
    """``message`` with one field replaced by, or removed for, an arbitrary JSON value."""
    mutated = dict(message)
    key = draw(st.sampled_from(sorted(mutated)))
    if draw(st.booleans()):
        del mutated[key]
    else:
        mutated[key] = draw(json_values(integral_floats))
    return mutated
