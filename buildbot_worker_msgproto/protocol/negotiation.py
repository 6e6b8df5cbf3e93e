"""Sans-IO PB (banana) dialect negotiation, so one port serves PB and the msg protocol.

A banana server speaks first: it sends the list of dialects it knows; the client
answers with the first one it knows, in the server's order.  A master offering
``[MSG_DIALECT, b"pb", b"none"]`` is understood by every stock PB worker (it skips
the unknown name and picks ``pb``); our worker picks ``MSG_DIALECT`` and both sides
switch that connection to length-prefixed JSON frames.  Against a stock master our
worker never sees ``MSG_DIALECT`` and continues as a plain PB client.

Only the tiny subset of banana needed for this exchange is implemented here
(lists of short strings), with strict size limits.
"""

from __future__ import annotations

from buildbot_worker_msgproto.protocol.codes import CloseCode
from buildbot_worker_msgproto.protocol.errors import ProtocolError
from buildbot_worker_msgproto.protocol.limits import MSG_DIALECT

BANANA_LIST = 0x80
BANANA_STRING = 0x82
HIGH_BIT = 0x80

#: The dialects a negotiating master offers, in preference order.
MASTER_DIALECTS: tuple[bytes, ...] = (MSG_DIALECT, b"pb", b"none")

#: Bounds on what we accept during negotiation (the real offers are ~30 bytes).
MAX_PREFIX_DIGITS = 4
MAX_DIALECTS = 16
MAX_DIALECT_NAME = 64


class NegotiationError(ProtocolError):
    """The peer sent something that is not a sensible banana dialect exchange."""

    def __init__(self, message: str) -> None:
        super().__init__(message, code=CloseCode.NEGOTIATION_FAILED)


def _int2b128(value: int) -> bytes:
    if value == 0:
        return b"\0"
    digits = bytearray()
    while value:
        digits.append(value & 0x7F)
        value >>= 7
    return bytes(digits)


def encode_string(value: bytes) -> bytes:
    """Banana encoding of one byte string."""
    return _int2b128(len(value)) + bytes([BANANA_STRING]) + value


def encode_offer(dialects: tuple[bytes, ...] = MASTER_DIALECTS) -> bytes:
    """Banana encoding of the server's list of dialects."""
    return _int2b128(len(dialects)) + bytes([BANANA_LIST]) + b"".join(
        encode_string(d) for d in dialects)


def _read_header(buffer: bytes, pos: int) -> tuple[int, int, int] | None:
    """Parse a banana prefix at ``pos``: (number, type byte, position after it) or None."""
    end = pos
    while end < len(buffer) and buffer[end] < HIGH_BIT:
        end += 1
        if end - pos > MAX_PREFIX_DIGITS:
            raise NegotiationError("banana prefix too long during dialect negotiation")
    if end >= len(buffer):
        return None
    number = 0
    for i, digit in enumerate(buffer[pos:end]):
        number += digit << (7 * i)
    return number, buffer[end], end + 1


def _read_string(buffer: bytes, pos: int) -> tuple[bytes, int] | None:
    header = _read_header(buffer, pos)
    if header is None:
        return None
    length, type_byte, pos = header
    if type_byte != BANANA_STRING:
        raise NegotiationError(f"expected a banana string, got type byte {type_byte:#x}")
    if length > MAX_DIALECT_NAME:
        raise NegotiationError(f"dialect name of {length} bytes is too long")
    if len(buffer) < pos + length:
        return None
    return bytes(buffer[pos:pos + length]), pos + length


def parse_offer(buffer: bytes) -> tuple[list[bytes], bytes] | None:
    """Client side: parse the server's dialect list from the start of ``buffer``.

    Returns ``(dialects, rest)`` once complete, None if more bytes are needed.
    """
    header = _read_header(buffer, 0)
    if header is None:
        return None
    count, type_byte, pos = header
    if type_byte != BANANA_LIST:
        raise NegotiationError(f"server did not start with a dialect list (type {type_byte:#x})")
    if count > MAX_DIALECTS:
        raise NegotiationError(f"server offers {count} dialects; at most {MAX_DIALECTS} allowed")
    dialects = []
    for _ in range(count):
        item = _read_string(buffer, pos)
        if item is None:
            return None
        dialect, pos = item
        dialects.append(dialect)
    return dialects, bytes(buffer[pos:])


def parse_choice(buffer: bytes) -> tuple[bytes, int] | None:
    """Server side: parse the client's chosen dialect from the start of ``buffer``.

    Returns ``(dialect, bytes consumed)`` once complete, None if more bytes are needed.
    """
    return _read_string(buffer, 0)


def choose(offered: list[bytes], preferred: tuple[bytes, ...]) -> bytes | None:
    """Client side: banana's rule, the first offered dialect we know (None if none)."""
    for dialect in offered:
        if dialect in preferred:
            return dialect
    return None
