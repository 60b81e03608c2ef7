"""Parity: the C Internet checksum in _fastpath against pure-Python references."""

from __future__ import annotations

import struct

import pytest
from hypothesis import given
from hypothesis import strategies as st

import _fastpath
from masque.ippacket import internet_checksum as python_checksum


def reference_checksum(data: bytes, initial: int = 0) -> int:
    """RFC 1071 written as plainly as possible: 16-bit big-endian words, end-around carry."""
    if len(data) % 2:
        data += b"\x00"
    total = initial
    for (word,) in struct.iter_unpack("!H", data):
        total += word
    while total >> 16:
        total = (total & 0xFFFF) + (total >> 16)
    return ~total & 0xFFFF


def test_rfc1071_known_answer() -> None:
    # An IPv4 header with its checksum field zeroed; 0xb861 is its well-known checksum.
    header = bytes.fromhex("450000730000400040110000c0a80001c0a800c7")
    assert _fastpath.internet_checksum(header) == 0xB861
    # With the checksum filled in, the sum over the header verifies to zero.
    filled = header[:10] + b"\xb8\x61" + header[12:]
    assert _fastpath.internet_checksum(filled) == 0


@pytest.mark.parametrize("length", range(0, 40))
def test_every_small_length_and_alignment(length: int) -> None:
    # Odd lengths and every tail of the 8-byte unrolled loop, at odd offsets too.
    data = bytes((i * 37 + 11) & 0xFF for i in range(length + 3))
    for offset in range(3):
        view = memoryview(data)[offset : offset + length]
        assert _fastpath.internet_checksum(view) == reference_checksum(bytes(view))


@given(st.binary(max_size=3000))
def test_parity_with_masque_ippacket(data: bytes) -> None:
    assert _fastpath.internet_checksum(data) == python_checksum(data)
    assert _fastpath.internet_checksum(data) == reference_checksum(data)


@given(st.binary(max_size=200), st.integers(min_value=0, max_value=0xFFFFFFFF))
def test_initial_partial_sum_is_folded_in(data: bytes, initial: int) -> None:
    assert _fastpath.internet_checksum(data, initial) == reference_checksum(data, initial)


@given(st.binary(max_size=200), st.binary(max_size=200))
def test_partial_sums_chain(head: bytes, tail: bytes) -> None:
    # Chaining works across even-length pieces, as pseudo-header + header + payload do.
    if len(head) % 2:
        head += b"\x00"
    chained = _fastpath.internet_checksum(tail, _fastpath.checksum_partial(head))
    assert chained == reference_checksum(head + tail)


def test_accepts_writable_and_readonly_buffers() -> None:
    data = bytes(range(64))
    assert (
        _fastpath.internet_checksum(bytearray(data))
        == _fastpath.internet_checksum(memoryview(data))
        == reference_checksum(data)
    )
