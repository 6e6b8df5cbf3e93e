"""Transport options: a frozen dataclass per transport and side, checked by one parser.

A transport declares its master options (``c['protocols']['msg']['transports'][NAME]``)
and its worker options (``--transport-option KEY=VALUE``, ``transport_options``) as frozen
dataclasses of :class:`TransportOptions` whose fields are made by :func:`option`::

    @dataclasses.dataclass(frozen=True)
    class AmqpWorkerOptions(TransportOptions):
        label = "amqp worker"
        prefetch: int = option(64, minimum=1, maximum=65535,
                               doc="Unacknowledged deliveries the broker may push at once.")

The annotation is the type: ``int``, ``float``, ``bool``, ``str`` or a union of them with
``None`` (written ``int | str``; only these names are understood, so that it works on
Python 3.9).  :meth:`TransportOptions.parse` refuses unknown keys; every instance, parsed
or built in code, converts text (the worker's CLI gives strings), checks types and ranges
and then runs the class's :meth:`~TransportOptions.check` (rules across fields, files to
read).  Instances are hashable, so a master compares them on reconfig.  The option tables
of ``docs/transports/*.rst`` are generated from the declarations
(:mod:`buildbot_worker_msgproto.transports.options_doc`).
"""

from __future__ import annotations

import dataclasses
import math
import os
from collections.abc import Mapping
from typing import Any
from typing import TypeVar
from typing import get_args

#: Text accepted for a switch (``bool`` option), whatever its case.
TRUE = ("1", "on", "true", "yes")
FALSE = ("0", "off", "false", "no")

_NONE = type(None)
_TYPE_NAMES = {"int": int, "float": float, "bool": bool, "str": str, "None": _NONE}
_ARTICLES = {int: "an integer", float: "a number", bool: "on or off", str: "a string"}

Options = TypeVar("Options", bound="TransportOptions")


@dataclasses.dataclass(frozen=True)
class OptionSpec:
    """What :func:`option` declares about one field (its ``metadata['option']``)."""

    #: The meaning, one line of reStructuredText (the docs' "Meaning" column).
    doc: str
    #: The field has no default: leaving it out (or None) is refused.
    required: bool = False
    #: Bounds of a number, inclusive (None: unbounded).
    minimum: float | None = None
    maximum: float | None = None
    #: The value may be given as text (converted); False: only as its Python type.
    text: bool = True
    #: A string may be empty.
    empty: bool = False
    #: Unit of a number, for messages and docs ("seconds").
    unit: str | None = None
    #: How to name the expected value in messages and docs (default: from the type).
    what: str | None = None
    #: The docs' "Default" column (default: the default's repr).
    default_doc: str | None = None


def option(default: Any = None, *, doc: str, required: bool = False,
           minimum: float | None = None, maximum: float | None = None, text: bool = True,
           empty: bool = False, unit: str | None = None, what: str | None = None,
           default_doc: str | None = None) -> Any:
    """A dataclass field of a :class:`TransportOptions` with its declaration."""
    spec = OptionSpec(doc=doc, required=required, minimum=minimum, maximum=maximum,
                      text=text, empty=empty, unit=unit, what=what, default_doc=default_doc)
    return dataclasses.field(default=default, metadata={"option": spec})


@dataclasses.dataclass(frozen=True)
class Declared:
    """One declared option of a class: its name, types, default and :class:`OptionSpec`."""

    name: str
    types: frozenset
    default: Any
    spec: OptionSpec

    def expected(self) -> str:
        """The expected value in words: ``an integer``, ``a number of seconds``, ..."""
        if self.spec.what:
            return self.spec.what
        if self.types & {bool} and not self.spec.text:
            return "True or False"
        words = [_ARTICLES[kind] for kind in (bool, int, float, str) if kind in self.types]
        text = " or ".join(words)
        if self.spec.unit:
            text += f" of {self.spec.unit}"
        if str in self.types and not self.spec.empty:
            text = text.replace("a string", "a non-empty string")
        return text

    def bounds(self) -> str:
        """The allowed range in words, or ``''``."""
        low, high = (_number(bound) for bound in (self.spec.minimum, self.spec.maximum))
        if low is not None and high is not None:
            return f"between {low} and {high}"
        if low is not None:
            return f"at least {low}"
        if high is not None:
            return f"at most {high}"
        return ""

    def convert(self, value: Any) -> Any:
        """``value`` as this option's type; raises ValueError (or TypeError) otherwise."""
        types, spec = self.types, self.spec
        if isinstance(value, os.PathLike) and str in types:
            value = os.fspath(value)
        if value is None or (value == "" and spec.text and _NONE in types):
            if _NONE in types or spec.required:  # required: refused by the caller
                return None
        elif isinstance(value, bool):
            if bool in types:
                return value
        elif isinstance(value, str) and bool in types and spec.text:
            word = value.strip().lower()
            if word in TRUE + FALSE:
                return word in TRUE
        elif isinstance(value, int) and int in types:
            return value
        elif isinstance(value, (int, float)) and float in types:
            if math.isfinite(value):
                return float(value)
        elif isinstance(value, str):
            if str in types:
                if value or spec.empty:
                    return value
            elif spec.text and int in types:
                return int(value)
            elif spec.text and float in types and math.isfinite(float(value)):
                return float(value)
        raise ValueError(value)

    def in_bounds(self, value: Any) -> bool:
        if not isinstance(value, (int, float)) or isinstance(value, bool):
            return True
        low, high = self.spec.minimum, self.spec.maximum
        return (low is None or value >= low) and (high is None or value <= high)


def _number(value: float | None) -> float | None:
    """``value`` without a needless ``.0``."""
    return int(value) if isinstance(value, float) and value.is_integer() else value


_DECLARED: dict[type, tuple[Declared, ...]] = {}


def declared(cls: type[TransportOptions]) -> tuple[Declared, ...]:
    """The options of ``cls``, in declaration order."""
    if cls not in _DECLARED:
        options = []
        for field in dataclasses.fields(cls):
            spec = field.metadata.get("option")
            if spec is None:
                raise TypeError(f"{cls.__name__}.{field.name} is not declared with option()")
            annotation = field.type
            if isinstance(annotation, str):
                names = [name.strip() for name in annotation.split("|")]
            else:
                names = [kind.__name__ for kind in get_args(annotation) or (annotation,)]
            types = frozenset(_TYPE_NAMES[name] for name in names)
            options.append(Declared(field.name, types, field.default, spec))
        _DECLARED[cls] = tuple(options)
    return _DECLARED[cls]


class TransportOptions:
    """Base of the options dataclasses (subclasses are ``@dataclass(frozen=True)``)."""

    #: Names the options in messages: ``'amp'``, ``'zmq master'``, ``'amqp worker'``.
    label = "transport"
    #: True: a stream listener behind the master's own TLS layer (its ``tls`` option).
    tls = False

    @property
    def transport(self) -> str:
        """The transport's name (the first word of the label)."""
        return self.label.split()[0]

    @classmethod
    def parse(cls: type[Options], values: Mapping[str, Any] | Options) -> Options:
        """Options from a dict (unknown keys refused, text converted, everything checked);
        an instance of ``cls`` is returned as it is."""
        if isinstance(values, cls):
            return values
        if not isinstance(values, Mapping):
            raise ValueError(f"{cls.label} options must be a dict, got {values!r}")
        known = [option.name for option in declared(cls)]
        unknown = sorted(set(values) - set(known), key=str)
        if unknown:
            raise ValueError(f"unknown {cls.label} options {unknown}; "
                             f"known: {', '.join(sorted(known))}")
        return cls(**values)

    def __post_init__(self) -> None:
        for option in declared(type(self)):
            given = getattr(self, option.name)
            try:
                value = option.convert(given)
            except (TypeError, ValueError):
                raise self.error(option.name, f"must be {option.expected()}, "
                                              f"got {given!r}") from None
            if value is None and option.spec.required:
                raise ValueError(f"the {self.transport} transport needs a {option.name!r} "
                                 f"({option.expected()})")
            if not option.in_bounds(value):
                raise self.error(option.name, f"must be {option.bounds()}, got {given!r}")
            object.__setattr__(self, option.name, value)
        self.check()

    def check(self) -> None:
        """Rules beyond one field's type and range (subclasses call ``super().check()``);
        raises ValueError with a message that names the option."""

    def error(self, key: str, problem: str) -> ValueError:
        """A ValueError about option ``key``: ``'<transport> '<key>' <problem>'``."""
        return ValueError(f"{self.transport} {key!r} {problem}")
