"""Transport options: the one parser (types, text, ranges, messages), every transport's
declarations, and the option tables of docs/transports generated from them."""

from __future__ import annotations

import dataclasses
import pathlib
import re

import pytest

from buildbot_worker_msgproto.transports import options_doc
from buildbot_worker_msgproto.transports import registry
from buildbot_worker_msgproto.transports.options import TransportOptions
from buildbot_worker_msgproto.transports.options import declared
from buildbot_worker_msgproto.transports.options import option

DOCS = pathlib.Path(__file__).parent.parent / "docs"
REGENERATE = "python -m buildbot_worker_msgproto.transports.options_doc docs"


@dataclasses.dataclass(frozen=True)
class Sample(TransportOptions):
    label = "sample master"

    port: int | str = option(required=True, what="int or strport", doc="Where.")
    count: int = option(3, minimum=1, maximum=9, doc="How many.")
    seconds: float = option(1.5, minimum=0, unit="seconds", doc="How long.")
    switch: bool = option(False, doc="On or off, also as text.")
    strict: bool = option(False, text=False, doc="True or False only.")
    name: str = option("x", doc="A name.")
    secret: str = option("s", empty=True, doc="May be empty.")
    path: str | None = option(None, doc="Optional.")
    exact: int | None = option(None, text=False, doc="An int, never text.")

    def check(self) -> None:
        super().check()
        if self.name == "bad":
            raise self.error("name", "is bad")


def refused(values: dict, message: str) -> None:
    with pytest.raises(ValueError) as caught:
        Sample.parse(values)
    assert str(caught.value) == message


def test_defaults_and_python_values():
    sample = Sample.parse({"port": 9990})
    assert (sample.port, sample.count, sample.seconds, sample.switch, sample.strict,
            sample.name, sample.secret, sample.path, sample.exact) == (
        9990, 3, 1.5, False, False, "x", "s", None, None)
    given = Sample.parse({"port": "tcp:0", "count": 9, "seconds": 2, "switch": True,
                          "strict": True, "name": "n", "secret": "", "path": "p", "exact": 0})
    assert given.seconds == 2.0 and isinstance(given.seconds, float)
    assert (given.port, given.count, given.switch, given.strict, given.secret, given.path,
            given.exact) == ("tcp:0", 9, True, True, "", "p", 0)


def test_text_is_converted_as_the_worker_cli_gives_it():
    sample = Sample.parse({"port": "9990", "count": " 4 ", "seconds": "0", "switch": "ON",
                           "path": pathlib.Path("/a/b")})
    assert (sample.port, sample.count, sample.seconds, sample.switch, sample.path) == (
        "9990", 4, 0.0, True, "/a/b")
    for word, value in (("yes", True), ("1", True), ("true", True), ("off", False),
                        ("no", False), ("0", False), ("False", False)):
        assert Sample.parse({"port": 1, "switch": word}).switch is value
    assert Sample.parse({"port": 1, "path": ""}).path is None  # empty text: not given


def test_unknown_and_missing_keys():
    refused({"port": 1, "cuont": 2, "zz": 1},
            "unknown sample master options ['cuont', 'zz']; known: count, exact, name, path, "
            "port, seconds, secret, strict, switch")
    refused({}, "the sample transport needs a 'port' (int or strport)")
    refused({"port": None}, "the sample transport needs a 'port' (int or strport)")
    with pytest.raises(ValueError, match="must be a dict"):
        Sample.parse([("port", 1)])


@pytest.mark.parametrize("values, message", [
    ({"port": True}, "sample 'port' must be int or strport, got True"),
    ({"port": ""}, "sample 'port' must be int or strport, got ''"),
    ({"count": "many"}, "sample 'count' must be an integer, got 'many'"),
    ({"count": 2.0}, "sample 'count' must be an integer, got 2.0"),
    ({"count": True}, "sample 'count' must be an integer, got True"),
    ({"count": 0}, "sample 'count' must be between 1 and 9, got 0"),
    ({"count": "10"}, "sample 'count' must be between 1 and 9, got '10'"),
    ({"seconds": "soon"}, "sample 'seconds' must be a number of seconds, got 'soon'"),
    ({"seconds": float("inf")}, "sample 'seconds' must be a number of seconds, got inf"),
    ({"seconds": "nan"}, "sample 'seconds' must be a number of seconds, got 'nan'"),
    ({"seconds": -1}, "sample 'seconds' must be at least 0, got -1"),
    ({"switch": "maybe"}, "sample 'switch' must be on or off, got 'maybe'"),
    ({"switch": 1}, "sample 'switch' must be on or off, got 1"),
    ({"strict": "yes"}, "sample 'strict' must be True or False, got 'yes'"),
    ({"name": ""}, "sample 'name' must be a non-empty string, got ''"),
    ({"name": 5}, "sample 'name' must be a non-empty string, got 5"),
    ({"name": "bad"}, "sample 'name' is bad"),
    ({"exact": "5"}, "sample 'exact' must be an integer, got '5'"),
])
def test_wrong_values_name_the_option(values, message):
    refused({"port": 1, **values}, message)


def test_instances_check_themselves_are_frozen_and_hashable():
    with pytest.raises(ValueError, match="between 1 and 9"):
        Sample(port=1, count=10)
    sample = Sample(port=1, switch="on")
    assert sample.switch is True
    assert Sample.parse(sample) is sample
    assert sample == Sample.parse({"port": 1, "switch": True})
    assert hash(sample) == hash(Sample.parse({"port": 1, "switch": True}))
    assert sample != Sample.parse({"port": 2, "switch": True})
    with pytest.raises(dataclasses.FrozenInstanceError):
        sample.port = 2


def test_an_undeclared_field_is_refused():
    @dataclasses.dataclass(frozen=True)
    class Sloppy(TransportOptions):
        plain: int = 1

    with pytest.raises(TypeError, match="not declared with option"):
        Sloppy()


# ----------------------------------------------------------------------------- transports
def option_classes() -> list[tuple[str, str, type[TransportOptions]]]:
    found = []
    for name in registry.names():
        for side in options_doc.SIDES:
            cls = options_doc.options_class(name, side)
            if cls is not None:
                found.append((name, side, cls))
    return found


REQUIRED = {"port": 0}


@pytest.mark.parametrize("name, side, cls", option_classes(),
                         ids=[f"{n}-{s}" for n, s, _ in option_classes()])
def test_every_transport_declares_its_options(name, side, cls):
    options = declared(cls)  # raises for a field made without option()
    assert options
    assert cls.label.split()[0] == name
    assert cls.label in (name, f"{name} {side}")
    for declaration in options:
        assert declaration.spec.doc.strip()
        assert declaration.expected()
    required = {o.name: REQUIRED[o.name] for o in options if o.spec.required}
    if name == "zmq" and side == "master":
        required = {"port": 0}
    defaults = cls.parse(required)
    assert hash(defaults) == hash(cls.parse(dict(required)))
    with pytest.raises(ValueError, match=f"unknown {cls.label} options"):
        cls.parse({**required, "no_such_option": 1})


@pytest.mark.parametrize("name", [n for n, s, _ in option_classes() if s == "worker"])
def test_worker_options_written_as_text_parse_to_the_same_values(name):
    cls = options_doc.options_class(name, "worker")
    defaults = cls.parse({})
    as_text = {o.name: str(getattr(defaults, o.name)) for o in declared(cls)
               if getattr(defaults, o.name) is not None}
    assert cls.parse(as_text) == defaults


def test_transports_without_worker_options_ignore_them():
    # tcp and amp take no worker options and ignore what is given (docs/configuration.rst)
    assert options_doc.options_class("tcp", "worker") is None
    assert options_doc.options_class("amp", "worker") is None


# ----------------------------------------------------------------------------- docs
@pytest.mark.parametrize("name, side, cls", [c for c in option_classes() if c[0] != "tcp"],
                         ids=[f"{n}-{s}" for n, s, _ in option_classes() if n != "tcp"])
def test_generated_option_tables_are_current(name, side, cls):
    text = options_doc.page(DOCS, name).read_text(encoding="utf-8")
    assert options_doc.generated_block(text, side) == options_doc.rst_table(cls), (
        f"the {side} options table of docs/transports/{name}.rst is stale: run "
        f"`{REGENERATE}`")


def test_only_tcp_has_no_page():
    assert set(options_doc.PAGES) == set(registry.names()) - {"tcp"}


def test_write_all_is_idempotent(tmp_path):
    for name in options_doc.PAGES:
        target = options_doc.page(tmp_path, name)
        target.parent.mkdir(parents=True, exist_ok=True)
        text = options_doc.page(DOCS, name).read_text(encoding="utf-8")
        # a hand edit inside a generated table is undone
        target.write_text(text.replace("   * - ``", "   * - ``edited", 1), encoding="utf-8")
    assert len(options_doc.write_all(tmp_path)) == len(options_doc.PAGES)
    assert options_doc.write_all(tmp_path) == []
    for name in options_doc.PAGES:
        assert options_doc.page(tmp_path, name).read_text(encoding="utf-8") == \
            options_doc.page(DOCS, name).read_text(encoding="utf-8")
    assert options_doc.main([]) == 2


def _summary_rows(header: str) -> dict[str, str]:
    """The rows (transport -> text) of the index.rst table whose header has ``header``."""
    text = (DOCS / "transports" / "index.rst").read_text(encoding="utf-8")
    table = text[text.index(header):]
    table = table[:re.search(r"\n\n(?=\S)", table).start()]
    rows = re.split(r"\n   \* - ", table)[1:]
    return {row.split("``")[1]: row for row in rows}


@pytest.mark.parametrize("side, header", [
    ("master", "Options under ``transports[NAME]``"),
    ("worker", "``--transport-option`` / ``transport_options`` keys")])
def test_the_index_summary_names_every_option(side, header):
    rows = _summary_rows(header)
    for name in options_doc.PAGES:
        cls = options_doc.options_class(name, side)
        for declaration in declared(cls) if cls else ():
            assert f"``{declaration.name}``" in rows[name], (name, side, declaration.name)
