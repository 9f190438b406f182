"""The relay wire format (docs/relay-protocol.md): one frame per WebSocket binary message."""

from __future__ import annotations

import json
import struct
from dataclasses import dataclass
from enum import IntEnum
from typing import Any

SUBPROTOCOL = "gatewayd-relay.v1"
VERSION = 1
HEADER = struct.Struct("!IBBHI")  # stream id, type, flags, reserved, payload length
HEADER_SIZE = HEADER.size  # 12
WINDOW = struct.Struct("!I")
MAX_WINDOW = 2**31 - 1

FLAG_ACK = 0x01  # PING: this is the answer
FLAG_TEXT = 0x02  # WS_MESSAGE: a text message (UTF-8)
FLAG_MORE = 0x04  # WS_MESSAGE: more fragments of this message follow


class FrameType(IntEnum):
    HELLO = 0x01
    HELLO_ACK = 0x02
    HEADERS = 0x03
    DATA = 0x04
    END = 0x05
    RESET = 0x06
    WINDOW_UPDATE = 0x07
    EVENT = 0x08
    EVENT_ACK = 0x09
    PING = 0x0A
    WS_MESSAGE = 0x0B
    WS_CLOSE = 0x0C


class Close:
    """WebSocket close codes used by the relay."""

    GOING_AWAY = 1001
    TOO_BIG = 1009
    PROTOCOL = 4400
    UNAUTHORISED = 4401
    FORBIDDEN_LEASE = 4403
    HEARTBEAT_TIMEOUT = 4408
    RATE_EXCEEDED = 4429
    AT_CAPACITY = 4503

    FATAL = frozenset({UNAUTHORISED, FORBIDDEN_LEASE})


class ProtocolError(Exception):
    """A frame that breaks the protocol (the connection closes with 4400)."""


@dataclass(frozen=True, slots=True)
class Frame:
    stream: int
    type: int
    flags: int
    payload: bytes | memoryview

    def json(self) -> Any:
        try:
            return json.loads(bytes(self.payload))
        except ValueError as exc:
            raise ProtocolError(f"frame {self.type:#x}: payload is not JSON") from exc


def encode(stream: int, type_: int, payload: bytes = b"", flags: int = 0) -> bytes:
    return HEADER.pack(stream, type_, flags, 0, len(payload)) + payload


def encode_json(stream: int, type_: int, obj: Any, flags: int = 0) -> bytes:
    return encode(stream, type_, json.dumps(obj, separators=(",", ":")).encode(), flags)


def decode(message: bytes, max_payload: int) -> Frame:
    if len(message) < HEADER_SIZE:
        raise ProtocolError("frame shorter than its header")
    stream, type_, flags, _reserved, length = HEADER.unpack_from(message)
    if length != len(message) - HEADER_SIZE:
        raise ProtocolError("frame length does not match the message")
    if length > max_payload:
        raise ProtocolError("frame payload over max_frame")
    return Frame(stream, type_, flags, memoryview(message)[HEADER_SIZE:])


def window_update(stream: int, increment: int) -> bytes:
    return encode(stream, FrameType.WINDOW_UPDATE, WINDOW.pack(increment))


def window_increment(frame: Frame) -> int:
    if len(frame.payload) != 4:
        raise ProtocolError("WINDOW_UPDATE payload must be 4 bytes")
    (value,) = WINDOW.unpack(frame.payload)
    if not 0 < value <= MAX_WINDOW:
        raise ProtocolError("WINDOW_UPDATE increment out of range")
    return int(value)


def reset(stream: int, code: str, message: str = "") -> bytes:
    return encode_json(stream, FrameType.RESET, {"code": code, "message": message})


def headers_list(pairs: Any) -> list[tuple[str, str]]:
    """Validate ``[[name, value], ...]`` from a HEADERS frame."""
    if not isinstance(pairs, list):
        raise ProtocolError("headers must be a list of [name, value] pairs")
    out = []
    for pair in pairs:
        if (
            not isinstance(pair, list)
            or len(pair) != 2
            or not isinstance(pair[0], str)
            or not isinstance(pair[1], str)
            or not pair[0]
            or any(c in pair[0] for c in "\r\n:")
            or any(c in pair[1] for c in "\r\n")
        ):
            raise ProtocolError("bad header pair")
        out.append((pair[0], pair[1]))
    return out


def ws_close(stream: int, code: int, reason: str = "") -> bytes:
    return encode_json(stream, FrameType.WS_CLOSE, {"code": code, "reason": reason[:123]})


def ws_close_info(frame: Frame) -> tuple[int, str]:
    """``(code, reason)`` from a WS_CLOSE frame (a bad one reads as 1002, protocol error)."""
    try:
        data = json.loads(bytes(frame.payload))
        code, reason = data.get("code"), data.get("reason", "")
    except (ValueError, AttributeError):
        return 1002, "bad WS_CLOSE frame"
    if not isinstance(code, int) or isinstance(code, bool) or not 1000 <= code <= 4999:
        return 1002, "bad WS_CLOSE code"
    return code, str(reason)[:123]
