"""Reading key and certificate files, with an error that names the file and its role."""

from __future__ import annotations

import os
from typing import Union

Path = Union[str, "os.PathLike[str]"]


def read_file(path: Path, what: str) -> bytes:
    """The bytes of ``path``; ValueError ``cannot read the <what> '<path>': <why>``."""
    try:
        with open(path, "rb") as f:
            return f.read()
    except OSError as e:
        raise ValueError(f"cannot read the {what} {str(path)!r}: {e.strerror or e}") from None
