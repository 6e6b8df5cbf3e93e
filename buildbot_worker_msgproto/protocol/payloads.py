"""Typed codecs for the payload fields that both sides build and read.

Each shape is defined once here and used by the worker (which encodes) and the master
(which decodes): ``update.updates`` items, ``complete.failure``, and file blocks, which
travel as a binary side frame when the session negotiated ``blob`` and as base64 text
otherwise (docs/protocol.rst sections 10 and 11).  Decoders raise
:class:`~buildbot_worker_msgproto.protocol.errors.ProtocolError` (``bad_message``) for a
malformed payload: the session is then closed, so build output is never silently lost.
"""

from __future__ import annotations

import traceback
from collections.abc import Iterable
from typing import Any

from buildbot_worker_msgproto.protocol.codec import b64decode
from buildbot_worker_msgproto.protocol.codec import b64encode
from buildbot_worker_msgproto.protocol.codes import CloseCode
from buildbot_worker_msgproto.protocol.errors import ProtocolError

#: Update keys whose value is log text: a plain string on the wire, a 1-tuple in the
#: shapes buildbot-worker produces and Buildbot's ``remote_update_msgpack`` consumes.
TEXT_KEYS = frozenset({"stdout", "stderr", "header"})
#: The update key whose value is ``[logname, text]`` on the wire.
LOG_KEY = "log"
#: Longest traceback a failure carries (its end is kept: the innermost frames).
MAX_TRACEBACK = 16384


def _bad(message: str) -> ProtocolError:
    return ProtocolError(message, code=CloseCode.BAD_MESSAGE)


# ---------------------------------------------------------------------- update items
def encode_updates(items: Iterable[tuple[str, Any]]) -> list[list[Any]]:
    """buildbot-worker's update items (text as ``(text,)``, log as ``(name, (text,))``)
    as the wire's ``[key, value]`` pairs (text as a string, log as ``[name, text]``)."""
    encoded = []
    for key, value in items:
        if key in TEXT_KEYS:
            encoded.append([key, value[0]])
        elif key == LOG_KEY:
            logname, data = value
            encoded.append([key, [logname, data[0]]])
        else:
            encoded.append([key, value])
    return encoded


def decode_updates(items: Any) -> list[tuple[str, Any]]:
    """The wire's ``[key, value]`` pairs as Buildbot's ``remote_update_msgpack`` items."""
    if not isinstance(items, list):
        raise _bad("update.updates must be a list of [key, value] pairs")
    decoded = []
    for item in items:
        if not (isinstance(item, list) and len(item) == 2 and isinstance(item[0], str)):
            raise _bad(f"malformed update item {item!r:.200}")
        key, value = item
        if key in TEXT_KEYS:
            if not isinstance(value, str):
                raise _bad(f"update {key!r} must carry text")
            value = (value,)
        elif key == LOG_KEY:
            if not (isinstance(value, list) and len(value) == 2
                    and all(isinstance(v, str) for v in value)):
                raise _bad("update 'log' must carry [logname, text]")
            value = (value[0], (value[1],))
        decoded.append((key, value))
    return decoded


# ---------------------------------------------------------------------- failures
def encode_failure(failure: Any) -> dict[str, str] | None:
    """A command's failure (a Twisted Failure, an exception, or None) as
    ``complete.failure``: ``{type, message, traceback}``, or None on success."""
    if failure is None:
        return None
    exc_type = getattr(failure, "type", None) or type(failure)
    type_name = getattr(exc_type, "__name__", None) or str(exc_type)
    try:
        tb = failure.getTraceback()
    except Exception:
        tb = "".join(traceback.format_exception_only(type(failure), failure))
    return {"type": type_name, "message": str(getattr(failure, "value", failure)),
            "traceback": tb[-MAX_TRACEBACK:]}


def decode_failure(value: Any) -> str | None:
    """``complete.failure`` as the text Buildbot's ``remote_complete`` takes (None: success)."""
    if value is None:
        return None
    if not isinstance(value, dict) or not all(
            isinstance(value.get(key, ""), str) for key in ("type", "message", "traceback")):
        raise _bad("complete.failure must be null or {type, message, traceback} strings")
    return (f"{value.get('type', 'Error')}: {value.get('message', '')}\n"
            f"{value.get('traceback', '')}")


# ---------------------------------------------------------------------- file blocks
#: The size of file blocks in flight (upload blocks, read-ahead and pushed download
#: chunks): 16x fewer messages than buildbot-worker's 16 KiB blocks, which is what a
#: broker (AMQP) or WebSocket pays for per message.
TRANSFER_BLOCK = 256 * 1024
#: Room left in a frame for the JSON envelope around a base64 block.
_ENVELOPE_ROOM = 4096


def largest_block(frame_size: int, blobs: bool) -> int:
    """The most bytes one block message may carry in frames of ``frame_size``: all of
    it in a binary side frame (``blobs``), else what fits as base64 in JSON."""
    if blobs:
        return frame_size
    return max(1, frame_size * 3 // 4 - _ENVELOPE_ROOM)


def block_out(data: bytes, blobs: bool) -> tuple[str | None, bytes | None]:
    """How a block of ``data`` travels: ``(None, bytes)`` as a binary side frame when
    ``blobs`` (the session negotiated them), else ``(base64 text, None)``."""
    if blobs:
        return None, bytes(data)
    return b64encode(data), None


def block_in(message: dict[str, Any], field: str) -> bytes:
    """The block a received message carries: its binary side frame, else base64 text in
    ``field``; ProtocolError if it carries neither."""
    blob = message.get("blob")
    if isinstance(blob, bytes):
        return blob
    text = message.get(field)
    if not isinstance(text, str):
        raise _bad(f"{message.get('type')!r} carries neither {field!r} nor a binary side frame")
    return b64decode(text)


def block_result(result: Any) -> bytes:
    """The block a response carries: the side frame's bytes (the driver hands them as the
    result), base64 text, or None/empty for no data."""
    if isinstance(result, bytes):
        return result
    if result is None:
        return b""
    if not isinstance(result, str):
        raise _bad("a block result must be base64 text or a binary side frame")
    return b64decode(result)
