"""The frame codec against hostile bytes: a ProtocolError or a frame, never anything else."""

from __future__ import annotations

import contextlib

import pytest
from hypothesis import given
from hypothesis import strategies as st

from gatewayd.relay import protocol as p
from gatewayd.relay.protocol import FrameType, ProtocolError


def test_round_trip_and_layout():
    data = p.encode(5, FrameType.DATA, b"abc", p.FLAG_ACK)
    assert data[:12] == bytes.fromhex("00000005 04 01 0000 00000003".replace(" ", ""))
    frame = p.decode(data, 1024)
    assert (frame.stream, frame.type, frame.flags, bytes(frame.payload)) == (5, 4, 1, b"abc")
    assert p.window_increment(p.decode(p.window_update(3, 4096), 16)) == 4096


def test_limits():
    with pytest.raises(ProtocolError):
        p.decode(p.encode(1, FrameType.DATA, b"x" * 11), 10)
    with pytest.raises(ProtocolError):
        p.decode(p.encode(1, FrameType.DATA, b"abc")[:-1], 10)
    with pytest.raises(ProtocolError):
        p.window_increment(p.decode(p.encode(1, FrameType.WINDOW_UPDATE, b"\0\0\0\0"), 10))
    with pytest.raises(ProtocolError):
        p.headers_list([["X-A\r\nInjected", "v"]])
    with pytest.raises(ProtocolError):
        p.headers_list([["X-A", "v\r\nX-B: w"]])


@given(st.binary(max_size=64))
def test_decode_never_fails_otherwise(data):
    try:
        frame = p.decode(data, 32)
    except ProtocolError:
        return
    assert len(frame.payload) <= 32
    with contextlib.suppress(ProtocolError):
        frame.json()
