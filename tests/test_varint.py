"""Tests for masque.varint: QUIC variable-length integers (RFC 9000 §16)."""

from __future__ import annotations

import pytest
from hypothesis import given
from hypothesis import strategies as st

from masque.errors import MasqueError, VarintError
from masque.varint import (
    VARINT_MAX,
    decode_varint,
    encode_varint,
    try_decode_varint,
    varint_size,
)

# (value, expected shortest encoding): both sides of every size boundary.
BOUNDARIES = [
    (0, bytes.fromhex("00")),
    (63, bytes.fromhex("3f")),  # largest 1-byte value (6 usable bits)
    (64, bytes.fromhex("4040")),  # smallest 2-byte value
    (16383, bytes.fromhex("7fff")),  # largest 2-byte value (14 usable bits)
    (16384, bytes.fromhex("80004000")),  # smallest 4-byte value
    ((1 << 30) - 1, bytes.fromhex("bfffffff")),  # largest 4-byte value (30 bits)
    (1 << 30, bytes.fromhex("c000000040000000")),  # smallest 8-byte value
    (VARINT_MAX, bytes.fromhex("ffffffffffffffff")),  # largest value (62 bits)
]

# RFC 9000 Appendix A.1 sample decodings (the last one is non-minimal, which
# §16 explicitly allows).
RFC_SAMPLES = [
    (bytes.fromhex("c2197c5eff14e88c"), 151_288_809_941_952_652),
    (bytes.fromhex("9d7f3e7d"), 494_878_333),
    (bytes.fromhex("7bbd"), 15_293),
    (bytes.fromhex("25"), 37),
    (bytes.fromhex("4025"), 37),
]


@pytest.mark.parametrize(("value", "wire"), BOUNDARIES)
def test_boundary_round_trip(value: int, wire: bytes) -> None:
    assert encode_varint(value) == wire
    assert varint_size(value) == len(wire)
    assert decode_varint(wire) == (value, len(wire))
    assert try_decode_varint(wire) == (value, len(wire))


@pytest.mark.parametrize(("wire", "value"), RFC_SAMPLES)
def test_rfc9000_samples(wire: bytes, value: int) -> None:
    assert decode_varint(wire) == (value, len(wire))


def test_non_minimal_encodings_accepted() -> None:
    # 1 encoded in every length decodes to 1 and consumes the whole encoding.
    for wire in (b"\x01", b"\x40\x01", b"\x80\x00\x00\x01", b"\xc0" + b"\x00" * 6 + b"\x01"):
        assert decode_varint(wire) == (1, len(wire))


@pytest.mark.parametrize("value", [-1, VARINT_MAX + 1, 1 << 64])
def test_out_of_range_rejected_by_encoder(value: int) -> None:
    with pytest.raises(ValueError):
        encode_varint(value)
    with pytest.raises(ValueError):
        varint_size(value)


@pytest.mark.parametrize(("value", "wire"), BOUNDARIES)
def test_every_truncation_is_an_error(value: int, wire: bytes) -> None:
    for cut in range(len(wire)):
        prefix = wire[:cut]
        with pytest.raises(VarintError) as info:
            decode_varint(prefix)
        assert info.value.rule == "truncated-varint"
        # The incremental variant says "need more bytes" instead of failing.
        assert try_decode_varint(prefix) is None


def test_decode_at_offset_and_trailing_bytes_untouched() -> None:
    buf = b"\xff" + encode_varint(16384) + b"tail"
    assert decode_varint(buf, 1) == (16384, 5)
    assert decode_varint(memoryview(buf), 1) == (16384, 5)
    assert decode_varint(bytearray(buf), 1) == (16384, 5)


def test_offset_past_end_is_truncation() -> None:
    with pytest.raises(VarintError):
        decode_varint(b"\x00", 1)
    assert try_decode_varint(b"\x00", 1) is None


@given(st.integers(min_value=0, max_value=VARINT_MAX), st.binary(max_size=8))
def test_property_round_trip(value: int, tail: bytes) -> None:
    wire = encode_varint(value)
    assert len(wire) == varint_size(value)
    assert decode_varint(wire + tail) == (value, len(wire))


@given(st.binary(max_size=10))
def test_property_random_bytes_only_raise_masque_errors(data: bytes) -> None:
    try:
        value, end = decode_varint(data)
    except MasqueError:
        assert try_decode_varint(data) is None
        return
    assert 0 <= value <= VARINT_MAX
    assert 1 <= end <= len(data)
