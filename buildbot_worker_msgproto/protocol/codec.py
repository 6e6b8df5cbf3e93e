"""JSON codec: one UTF-8 JSON object per frame, validated against the message specs."""

from __future__ import annotations

import base64
import binascii
import json
import math
from typing import Any

from buildbot_worker_msgproto.protocol.codes import CloseCode
from buildbot_worker_msgproto.protocol.errors import FrameTooLarge
from buildbot_worker_msgproto.protocol.errors import LocalProtocolError
from buildbot_worker_msgproto.protocol.errors import ProtocolError
from buildbot_worker_msgproto.protocol.messages import BLOB
from buildbot_worker_msgproto.protocol.messages import ENVELOPE_FIELDS
from buildbot_worker_msgproto.protocol.messages import REPLY_TO
from buildbot_worker_msgproto.protocol.messages import REQUEST_ID
from buildbot_worker_msgproto.protocol.messages import Field
from buildbot_worker_msgproto.protocol.messages import Kind
from buildbot_worker_msgproto.protocol.messages import MessageSpec
from buildbot_worker_msgproto.protocol.messages import spec_for

_ENCODER = json.JSONEncoder(separators=(",", ":"), allow_nan=False)


class UnknownMessageType(ProtocolError):
    """A well-formed frame names a message type this version does not know."""

    def __init__(self, message_type: str, seq: int, request_id: int | None,
                 blob: int | None = None) -> None:
        super().__init__(f"unknown message type {message_type!r}", code=CloseCode.UNKNOWN_TYPE)
        self.message_type = message_type
        self.seq = seq
        self.request_id = request_id
        #: Length of the binary side frame the unknown message announced (to skip it).
        self.blob = blob


def _reject_constant(name: str) -> Any:
    raise ValueError(f"{name} is not valid JSON")


def _parse_float(text: str) -> float:
    # json.loads turns 1e400 into inf: refuse it like NaN/Infinity (encode() could not
    # send such a value back, and timers computed from it would never fire).
    value = float(text)
    if not math.isfinite(value):
        raise ValueError(f"number {text[:32]} is out of range")
    return value


def encode(message: dict[str, Any], max_frame_size: int | None = None) -> bytes:
    """Serialize ``message`` to a frame; raise LocalProtocolError if it cannot be sent."""
    try:
        frame = _ENCODER.encode(message).encode("ascii")
    except (TypeError, ValueError, RecursionError) as e:
        raise LocalProtocolError(f"message is not JSON-serializable: {e}") from e
    if max_frame_size is not None and len(frame) > max_frame_size:
        raise LocalProtocolError(
            f"{message.get('type')!r} frame of {len(frame)} bytes exceeds the "
            f"{max_frame_size}-byte frame limit")
    return frame


def decode(frame: bytes, max_frame_size: int) -> dict[str, Any]:
    """Parse and validate one frame; raise ProtocolError for anything malformed.

    Unknown fields are kept (and ignored by the receiver); an unknown message type
    raises :class:`UnknownMessageType`, which carries enough to answer it.
    """
    if len(frame) > max_frame_size:
        raise FrameTooLarge(len(frame), max_frame_size)
    try:
        text = bytes(frame).decode("utf-8")
    except UnicodeDecodeError as e:
        raise ProtocolError(f"frame is not valid UTF-8: {e}", code=CloseCode.BAD_FRAME) from e
    try:
        message = json.loads(text, parse_constant=_reject_constant, parse_float=_parse_float)
    except RecursionError as e:
        raise ProtocolError("frame nests JSON too deeply", code=CloseCode.BAD_FRAME) from e
    except ValueError as e:
        raise ProtocolError(f"frame is not valid JSON: {e}", code=CloseCode.BAD_FRAME) from e
    if not isinstance(message, dict):
        raise ProtocolError("frame is not a JSON object", code=CloseCode.BAD_FRAME)
    _check_fields(message, ENVELOPE_FIELDS, "envelope")
    _check_fields(message, (BLOB,), "envelope")
    spec = spec_for(message["type"])
    if spec is None:
        request_id = message.get("id")
        if not REQUEST_ID.accepts(request_id):
            request_id = None
        raise UnknownMessageType(message["type"], message["seq"], request_id,
                                 message.get("blob"))
    validate(message, spec)
    return message


def validate(message: dict[str, Any], spec: MessageSpec) -> None:
    """Check ``message`` against ``spec`` (envelope ids and body fields)."""
    if spec.kind is Kind.REQUEST:
        _check_fields(message, (REQUEST_ID,), spec.type)
    _check_fields(message, spec.fields, spec.type)


def _check_fields(message: dict[str, Any], fields: tuple[Field, ...], where: str) -> None:
    for field in fields:
        if field.name not in message:
            if field.required:
                raise ProtocolError(f"{where} message lacks required field {field.name!r}",
                                    code=CloseCode.BAD_MESSAGE)
            continue
        if not field.accepts(message[field.name]):
            raise ProtocolError(
                f"{where} field {field.name!r} must be {'|'.join(field.types)}"
                + (f" >= {field.minimum}" if field.minimum is not None else "")
                + f", got {type(message[field.name]).__name__}",
                code=CloseCode.BAD_MESSAGE)


# REPLY_TO is part of the public codec surface for the session's use.
__all__ = ["REPLY_TO", "UnknownMessageType", "b64decode", "b64encode", "decode", "encode",
           "validate"]


def b64encode(data: bytes) -> str:
    """Base64 text of ``data`` (how binary payloads travel inside JSON)."""
    return base64.b64encode(data).decode("ascii")


def b64decode(text: str) -> bytes:
    """Bytes of a base64 payload; ProtocolError if it is not valid base64."""
    try:
        return base64.b64decode(text, validate=True)
    except (binascii.Error, ValueError) as e:
        raise ProtocolError(f"invalid base64 payload: {e}", code=CloseCode.BAD_MESSAGE) from e
