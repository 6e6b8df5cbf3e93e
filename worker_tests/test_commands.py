"""protocol/commands.py: in step with buildbot-worker, and the generated docs in step with it."""

from __future__ import annotations

import copy
import json
import pathlib

import jsonschema
import pytest
from buildbot_worker.commands import base as worker_base
from buildbot_worker.commands import registry as worker_registry
from buildbot_worker.pb import ProtocolCommandPb

from buildbot_worker_msgproto.bot import BotMsg
from buildbot_worker_msgproto.bot import ProtocolCommandMsg
from buildbot_worker_msgproto.protocol import command_schema
from buildbot_worker_msgproto.protocol.commands import COMMAND_VERSION
from buildbot_worker_msgproto.protocol.commands import COMMANDS
from buildbot_worker_msgproto.protocol.commands import MSGPACK_ALIASES
from buildbot_worker_msgproto.protocol.commands import NO_DEFAULT
from buildbot_worker_msgproto.protocol.commands import REGISTRY
from buildbot_worker_msgproto.protocol.commands import UPDATE_REGISTRY
from buildbot_worker_msgproto.protocol.commands import VERSION_GATES
from buildbot_worker_msgproto.protocol.commands import WORKER_INFO_KEYS
from buildbot_worker_msgproto.protocol.commands import command_for
from buildbot_worker_msgproto.protocol.commands import resolve_paths

DOCS = pathlib.Path(__file__).resolve().parent.parent / "docs"
REGENERATE = "python -m buildbot_worker_msgproto.protocol.command_schema docs"

#: Arguments as Buildbot's master sends them (steps/worker.py, steps/transfer.py,
#: process/remotecommand.py), relative paths and absolute ones.
MASTER_ARGS = {
    "shell": [{"workdir": "build", "command": ["true"]},
              {"workdir": "/abs/dir", "command": "true"}],
    "uploadFile": [{"workdir": "build", "workersrc": "~/f.txt", "writer": True,
                    "maxsize": None, "blocksize": 262144, "keepstamp": False}],
    "uploadDirectory": [{"workdir": "build", "workersrc": "tree", "writer": True,
                         "maxsize": None, "blocksize": 16384, "compress": None}],
    "downloadFile": [{"workdir": "build", "workerdest": "a/b.bin", "reader": True,
                      "maxsize": None, "blocksize": 16384, "mode": None},
                     {"workdir": "build", "workerdest": "/abs/b.bin", "reader": True,
                      "maxsize": 10, "blocksize": 16384, "mode": 420}],
    "stat": [{"file": "build/x"}, {"file": "x", "workdir": "build", "logEnviron": False}],
    "glob": [{"path": "build/*.txt", "logEnviron": True}],
    "listdir": [{"dir": "build"}],
    "mkdir": [{"dir": "build/a/b", "logEnviron": True},
              {"dir": ["build/a", "/abs/b"], "logEnviron": False}],
    "rmdir": [{"dir": "build/a"}, {"dir": ["build/a", "build/b"], "timeout": 60}],
    "rmfile": [{"path": "build/a.txt", "logEnviron": True},
               {"path": ["build/a.txt", "~/b.txt", "/abs/c.txt"]}],
    "cpdir": [{"fromdir": "build/a", "todir": "build/b", "timeout": 120}],
}


def test_every_command_of_buildbot_worker_is_declared():
    names = set(worker_registry.getAllCommandNames())
    assert names == set(REGISTRY) | set(MSGPACK_ALIASES)
    assert worker_base.command_version == COMMAND_VERSION
    assert set(MSGPACK_ALIASES.values()) <= set(REGISTRY)


@pytest.mark.parametrize("spec", COMMANDS, ids=lambda s: s.name)
def test_declared_paths_are_the_ones_our_worker_computes(spec):
    """The path rules give exactly what ProtocolCommandMsg.protocol_args_setup makes
    (PB's translation, plus the lists Buildbot's msgpack protocol takes)."""
    for args in MASTER_ARGS[spec.name]:
        command = ProtocolCommandMsg.__new__(ProtocolCommandMsg)
        command.basedir = "/worker/builder"
        command.command_ref = None
        translated = copy.deepcopy(args)
        command.protocol_args_setup(spec.name, translated)
        resolved = resolve_paths(spec, args, "/worker/builder")
        assert resolved, spec.name
        for name, value in resolved.items():
            assert translated[name] == value, (spec.name, args, name)


@pytest.mark.parametrize("spec", COMMANDS, ids=lambda s: s.name)
def test_pb_translation_is_ours_for_single_paths(spec):
    """Where PB's own translation works (no lists but rmdir's), ours is the same."""
    for args in MASTER_ARGS[spec.name]:
        if spec.name in ("mkdir", "rmfile") and any(isinstance(v, list) for v in args.values()):
            continue
        ours = ProtocolCommandMsg.__new__(ProtocolCommandMsg)
        pb = ProtocolCommandPb.__new__(ProtocolCommandPb)
        ours.basedir = pb.basedir = "/worker/builder"
        ours.command_ref = None
        translated_ours, translated_pb = copy.deepcopy(args), copy.deepcopy(args)
        ours.protocol_args_setup(spec.name, translated_ours)
        pb.protocol_args_setup(spec.name, translated_pb)
        for key in ("writer", "reader"):  # PB's are the master's references, ours a channel
            translated_ours.pop(key, None)
            translated_pb.pop(key, None)
        assert translated_ours == translated_pb, (spec.name, args)


@pytest.mark.parametrize("spec", COMMANDS, ids=lambda s: s.name)
def test_the_master_arguments_match_the_declaration(spec):
    schema = command_schema.command_schema(spec)
    for args in MASTER_ARGS[spec.name]:
        jsonschema.Draft202012Validator(schema).validate(args)


@pytest.mark.parametrize("spec", COMMANDS, ids=lambda s: s.name)
def test_buildbot_worker_requires_what_the_declaration_requires(spec):
    """Arguments buildbot-worker's command needs (after path translation) are required."""
    factory = worker_registry.getFactory(spec.name)
    needed = set(getattr(factory, "requiredArgs", [])) - {rule.name for rule in spec.paths}
    assert needed <= set(spec.required), (spec.name, needed - set(spec.required))


@pytest.mark.parametrize("spec", COMMANDS, ids=lambda s: s.name)
def test_updates_and_defaults_are_well_formed(spec):
    assert "rc" in spec.updates and "elapsed" in spec.updates
    assert set(spec.updates) <= set(UPDATE_REGISTRY)
    for argument in spec.arguments:
        assert not (argument.required and argument.default is not NO_DEFAULT), argument
    for rule in spec.paths:
        assert set(rule.parts) <= {a.name for a in spec.arguments}, rule
    assert command_for(spec.name) is spec


def test_version_gates_name_declared_commands():
    for gate in VERSION_GATES:
        assert gate.command in REGISTRY
        assert [int(p) for p in gate.version.split(".")] <= [
            int(p) for p in COMMAND_VERSION.split(".")]


def test_our_worker_info_matches_the_schema(tmp_path):
    bot = BotMsg(str(tmp_path))
    (tmp_path / "info").mkdir()
    (tmp_path / "info" / "admin").write_text("someone <a@example.invalid>\n")
    info = bot.on_get_worker_info({})
    jsonschema.Draft202012Validator(command_schema.worker_info_schema()).validate(info)
    assert set(info["worker_commands"]) >= set(REGISTRY)
    assert {k.key for k in WORKER_INFO_KEYS} - set(info) == {"host", "access_uri"}


# ----------------------------------------------------------------------------- generated files
@pytest.mark.parametrize("relative", sorted(command_schema.all_files()))
def test_generated_schema_files_are_current(relative):
    path = DOCS / "schemas" / relative
    assert path.read_text(encoding="utf-8") == command_schema.all_files()[relative], (
        f"{path} is stale: run `{REGENERATE}`")


def test_no_stray_generated_files():
    expected = set(command_schema.all_files())
    for folder in ("commands", "results"):
        for path in (DOCS / "schemas" / folder).iterdir():
            assert f"{folder}/{path.name}" in expected, f"{path} is not generated"


@pytest.mark.parametrize("relative", sorted(command_schema.all_files()))
def test_generated_schemas_are_valid(relative):
    jsonschema.Draft202012Validator.check_schema(
        json.loads(command_schema.all_files()[relative]))


def test_commands_rst_reference_is_generated():
    text = (DOCS / "commands.rst").read_text(encoding="utf-8")
    assert command_schema.rst_block(text) == command_schema.rst_reference().strip(
        "\n") + "\n", f"run `{REGENERATE}`"


def test_write_all_is_idempotent(tmp_path):
    docs = tmp_path / "docs"
    (docs / "schemas").mkdir(parents=True)
    (docs / "commands.rst").write_text((DOCS / "commands.rst").read_text(encoding="utf-8"),
                                       encoding="utf-8")
    assert command_schema.main([str(docs)]) == 0
    assert len(list((docs / "schemas" / "commands").iterdir())) == len(COMMANDS)
    assert command_schema.write_all(docs) == []
    assert command_schema.main([]) == 2
