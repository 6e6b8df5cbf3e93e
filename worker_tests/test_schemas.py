"""docs/schemas/*.json: generated from messages.py, in step with the codec."""

from __future__ import annotations

import json
import pathlib

import jsonschema
import pytest
from hypothesis import given
from hypothesis import settings
from hypothesis import strategies as st

from buildbot_worker_msgproto.protocol import codec
from buildbot_worker_msgproto.protocol import schema
from buildbot_worker_msgproto.protocol.errors import ProtocolError
from buildbot_worker_msgproto.protocol.messages import MESSAGES
from buildbot_worker_msgproto.protocol.messages import REGISTRY
from worker_tests.strategies import examples
from worker_tests.strategies import field_mutations
from worker_tests.strategies import messages_of
from worker_tests.strategies import valid_messages

SCHEMA_DIR = pathlib.Path(__file__).resolve().parent.parent / "docs" / "schemas"
REGENERATE = "python -m buildbot_worker_msgproto.protocol.schema docs/schemas"

VALIDATORS = {t: jsonschema.Draft202012Validator(s) for t, s in schema.all_schemas().items()}


def schema_accepts(message: dict) -> bool:
    return VALIDATORS[message["type"]].is_valid(message)


def codec_accepts(message: dict) -> bool:
    try:
        codec.decode(json.dumps(message).encode(), 1 << 30)
    except ProtocolError:
        return False
    return True


def test_every_registered_message_has_a_schema_file():
    files = {p.stem for p in SCHEMA_DIR.glob("*.json")}
    assert files == set(REGISTRY), f"run `{REGENERATE}`"


@pytest.mark.parametrize("spec", MESSAGES, ids=lambda s: s.type)
def test_schema_files_are_exactly_what_schema_py_generates(spec):
    path = SCHEMA_DIR / f"{spec.type}.json"
    assert path.read_text(encoding="utf-8") == schema.render(schema.message_schema(spec)), (
        f"{path} is stale: run `{REGENERATE}`")


def test_every_schema_file_is_a_registered_message():
    for path in SCHEMA_DIR.iterdir():
        if path.is_dir():  # commands/ and results/: the command layer (test_commands.py)
            assert path.name in ("commands", "results"), path
            continue
        assert path.suffix == ".json", path
        data = json.loads(path.read_text(encoding="utf-8"))
        assert path.stem in REGISTRY, f"{path.name} describes no registered message"
        assert data["title"] == path.stem
        assert data["properties"]["type"]["const"] == path.stem


@pytest.mark.parametrize("message_type", sorted(VALIDATORS))
def test_schemas_are_valid_draft_2020_12(message_type):
    jsonschema.Draft202012Validator.check_schema(schema.all_schemas()[message_type])
    loaded = json.loads((SCHEMA_DIR / f"{message_type}.json").read_text(encoding="utf-8"))
    assert loaded["$schema"] == "https://json-schema.org/draft/2020-12/schema"
    assert loaded["additionalProperties"] is True


def test_schema_structure():
    start = schema.all_schemas()["start_command"]
    assert start["required"] == ["type", "seq", "ack", "id", "builder", "command_id",
                                 "command", "args"]
    assert start["properties"]["command_id"]["type"] == ["string", "integer"]
    assert start["properties"]["seq"]["minimum"] == 1
    assert start["properties"]["ack"]["minimum"] == 0
    assert "type" not in schema.all_schemas()["response"]["properties"]["result"]
    assert "id" not in schema.all_schemas()["update"]["properties"]
    assert "reply_to" not in schema.all_schemas()["error"]["required"]
    assert schema.all_schemas()["complete"]["properties"]["failure"]["type"] == [
        "object", "null"]


def test_main_writes_the_files(tmp_path, capsys):
    assert schema.main([str(tmp_path / "out")]) == 0
    written = sorted((tmp_path / "out").iterdir())
    assert [p.name for p in written] == sorted(f"{t}.json" for t in REGISTRY)
    for path in written:
        assert path.read_bytes() == (SCHEMA_DIR / path.name).read_bytes()
        assert path.read_text().endswith("}\n")
    assert schema.main([]) == 2


@settings(max_examples=examples(300))
@given(valid_messages())
def test_every_message_the_codec_accepts_validates(message):
    assert codec_accepts(message)
    VALIDATORS[message["type"]].validate(message)


@settings(max_examples=examples(300))
@given(st.data())
def test_codec_and_schema_agree_on_damaged_messages(data):
    """Replace or drop one field of a valid message: the codec and the schema agree.

    JSON Schema counts 1.0 as an integer and the codec does not, so integral floats are
    left out of the replacement values (see schema.py).
    """
    spec = data.draw(st.sampled_from(MESSAGES))
    message = data.draw(messages_of(spec, extras=False))
    mutated = data.draw(field_mutations(message, integral_floats=False))
    if mutated.get("type") != spec.type:
        return  # the type itself was changed: another schema (or none) applies
    assert codec_accepts(mutated) == schema_accepts(mutated), mutated


def test_the_documented_difference():
    message = {"type": "ping", "seq": 1.0, "ack": 0}
    assert schema_accepts(message) and not codec_accepts(message)


# ----------------------------------------------------------------------------- docs/protocol.rst
PROTOCOL_RST = SCHEMA_DIR.parent / "protocol.rst"
PROTOCOL_DIR = pathlib.Path(schema.__file__).resolve().parent


def _section(text: str, title: str) -> str:
    start = text.index(f"\n{title}\n")
    end = text.find("\n====", start + len(title) + 2 * len(title) + 4)
    return text[start:end]


def test_protocol_rst_message_reference_is_generated():
    text = PROTOCOL_RST.read_text(encoding="utf-8")
    assert schema.rst_block(text) == schema.rst_reference().strip("\n") + "\n", (
        "run `python -m buildbot_worker_msgproto.protocol.schema --rst docs/protocol.rst`")


def test_update_rst_is_idempotent(tmp_path):
    copy = tmp_path / "protocol.rst"
    copy.write_text(PROTOCOL_RST.read_text(encoding="utf-8"), encoding="utf-8")
    assert schema.update_rst(copy) is False
    assert schema.main(["--rst", str(copy)]) == 0


def test_protocol_rst_lists_every_limit_with_its_default():
    import dataclasses

    from buildbot_worker_msgproto.protocol.limits import DEFAULT_LIMITS
    from buildbot_worker_msgproto.protocol.limits import MIN_FRAME_SIZE

    limits = _section(PROTOCOL_RST.read_text(encoding="utf-8"), "12. Limits")
    for field in dataclasses.fields(DEFAULT_LIMITS):
        default = getattr(DEFAULT_LIMITS, field.name)
        row = limits[limits.index(f"* - ``{field.name}``"):]
        row = row[:row.index("\n   * - ", 1)] if "\n   * - " in row[1:] else row
        shown = f"{default:g}" if isinstance(default, float) else str(default)
        assert shown in row.replace(",", ""), (field.name, default)
    assert "``MIN_FRAME_SIZE`` = 8 KiB" in limits and MIN_FRAME_SIZE == 8 * 1024


def test_protocol_rst_lists_every_close_code():
    from buildbot_worker_msgproto.protocol.codes import CloseCode

    table = _section(PROTOCOL_RST.read_text(encoding="utf-8"), "8. Closing")
    for code in CloseCode:
        assert f"* - ``{code.value}``" in table, f"close code {code.value!r} is not documented"


def test_protocol_rst_renders_cleanly():
    docutils_core = pytest.importorskip("docutils.core")
    import io

    warnings = io.StringIO()
    docutils_core.publish_string(PROTOCOL_RST.read_text(encoding="utf-8"), writer_name="html",
                                 settings_overrides={"report_level": 1, "halt_level": 5,
                                                     "warning_stream": warnings})
    assert warnings.getvalue() == ""
