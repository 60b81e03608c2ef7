"""Tests for masque.datagram: the CONNECT-IP HTTP Datagram payload (RFC 9484 §6)."""

from __future__ import annotations

import pytest
from hypothesis import given
from hypothesis import strategies as st

from masque.datagram import (
    CONTEXT_ID_IP_PACKET,
    CONTEXT_ID_MAX,
    decode_datagram,
    encode_datagram,
    encode_datagram_header,
)
from masque.errors import DatagramError, MasqueError

PACKET = bytes.fromhex("4500001c00004000400100000a000001c0000201")  # 20-byte IPv4 header + 8


def test_ip_packet_context_is_zero() -> None:
    assert CONTEXT_ID_IP_PACKET == 0
    assert CONTEXT_ID_MAX == (1 << 62) - 1


def test_hand_built_vector_context_zero() -> None:
    wire = b"".join(
        [
            b"\x00",  # Context ID = 0 (1-byte varint): the payload is a full IP packet
            PACKET,  # Payload
        ]
    )
    assert encode_datagram(0, PACKET) == wire
    context_id, payload = decode_datagram(wire)
    assert context_id == 0
    assert bytes(payload) == PACKET


@pytest.mark.parametrize(
    ("context_id", "header"),
    [
        (63, b"\x3f"),  # largest 1-byte Context ID
        (64, b"\x40\x40"),  # 64 needs two bytes: the classic one-byte shortcut bug
        (16383, b"\x7f\xff"),
        (16384, b"\x80\x00\x40\x00"),
        ((1 << 30) - 1, b"\xbf\xff\xff\xff"),
        (1 << 30, b"\xc0\x00\x00\x00\x40\x00\x00\x00"),
        (CONTEXT_ID_MAX, b"\xff" * 8),
    ],
)
def test_context_id_boundaries(context_id: int, header: bytes) -> None:
    assert encode_datagram_header(context_id) == header
    wire = encode_datagram(context_id, b"xyz")
    assert wire == header + b"xyz"
    decoded_id, payload = decode_datagram(wire)
    assert decoded_id == context_id
    assert bytes(payload) == b"xyz"
    # Whole buffer consumed: header and payload account for every byte.
    assert len(header) + len(payload) == len(wire)


def test_empty_payload_allowed() -> None:
    # RFC 9484 §6: "Note that this field can be empty."
    context_id, payload = decode_datagram(b"\x02")
    assert (context_id, bytes(payload)) == (2, b"")
    assert encode_datagram(2, b"") == b"\x02"


def test_non_minimal_context_id_accepted() -> None:
    context_id, payload = decode_datagram(b"\x40\x00" + PACKET)  # 0 in two bytes
    assert context_id == 0
    assert bytes(payload) == PACKET


def test_payload_is_zero_copy_view() -> None:
    buf = bytearray(b"\x00abc")
    _, payload = decode_datagram(buf)
    assert isinstance(payload, memoryview)
    buf[1] = ord("X")
    assert bytes(payload) == b"Xbc"


@pytest.mark.parametrize(
    "wire",
    [
        b"",  # no Context ID at all
        b"\x40",  # 2-byte varint, 1 byte present
        b"\x80\x00\x00",  # 4-byte varint, 3 bytes present
        b"\xc0\x00\x00\x00\x00\x00\x00",  # 8-byte varint, 7 bytes present
    ],
)
def test_truncated_context_id(wire: bytes) -> None:
    with pytest.raises(DatagramError) as info:
        decode_datagram(wire)
    assert info.value.rule == "datagram-truncated"


@pytest.mark.parametrize("context_id", [-1, CONTEXT_ID_MAX + 1])
def test_encoder_rejects_out_of_range_context(context_id: int) -> None:
    with pytest.raises(ValueError):
        encode_datagram(context_id, b"")


@given(st.integers(min_value=0, max_value=CONTEXT_ID_MAX), st.binary(max_size=200))
def test_property_round_trip(context_id: int, payload: bytes) -> None:
    wire = encode_datagram(context_id, payload)
    assert decode_datagram(wire)[0] == context_id
    assert bytes(decode_datagram(wire)[1]) == payload
    # encode(decode(x)) == x for every minimally-encoded input.
    assert encode_datagram(*decode_datagram(wire)) == wire


@given(st.binary(max_size=40))
def test_property_random_bytes_only_raise_masque_errors(data: bytes) -> None:
    try:
        context_id, payload = decode_datagram(data)
    except MasqueError:
        return
    assert 0 <= context_id <= CONTEXT_ID_MAX
    assert len(payload) < len(data)
