"""QUIC variable-length integers (RFC 9000 §16), used by capsules and datagrams.

The two most significant bits of the first byte give the encoded length
(1, 2, 4 or 8 bytes); the remaining bits carry a value of up to 2**62 - 1.
"""

from __future__ import annotations

from masque.errors import VarintError

VARINT_MAX = (1 << 62) - 1


def varint_size(value: int) -> int:
    """Return the number of bytes the shortest encoding of ``value`` takes."""
    if value < 0 or value > VARINT_MAX:
        raise ValueError(f"varint out of range: {value}")
    if value <= 0x3F:
        return 1
    if value <= 0x3FFF:
        return 2
    if value <= 0x3FFF_FFFF:
        return 4
    return 8


def encode_varint(value: int) -> bytes:
    """Encode ``value`` in its shortest form. Raises ``ValueError`` if out of range."""
    size = varint_size(value)
    if size == 1:
        return bytes((value,))
    if size == 2:
        return (value | 0x4000).to_bytes(2, "big")
    if size == 4:
        return (value | 0x8000_0000).to_bytes(4, "big")
    return (value | 0xC000_0000_0000_0000).to_bytes(8, "big")


def decode_varint(buf: bytes | bytearray | memoryview, offset: int = 0) -> tuple[int, int]:
    """Decode one varint at ``offset``; return ``(value, offset_after)``.

    Raises :class:`VarintError` (rule ``"truncated-varint"``) if ``buf`` ends first.
    Non-minimal encodings are accepted, as RFC 9000 §16 allows.
    """
    if offset >= len(buf):
        raise VarintError("varint truncated: no bytes", rule="truncated-varint")
    first = buf[offset]
    size = 1 << (first >> 6)
    end = offset + size
    if end > len(buf):
        raise VarintError(
            f"varint truncated: need {size} bytes, have {len(buf) - offset}",
            rule="truncated-varint",
        )
    value = first & 0x3F
    for i in range(offset + 1, end):
        value = (value << 8) | buf[i]
    return value, end


def try_decode_varint(
    buf: bytes | bytearray | memoryview, offset: int = 0
) -> tuple[int, int] | None:
    """Like :func:`decode_varint` but return ``None`` when more bytes are needed.

    Incremental parsers use this: an incomplete varint is not an error yet.
    """
    if offset >= len(buf):
        return None
    size = 1 << (buf[offset] >> 6)
    if offset + size > len(buf):
        return None
    return decode_varint(buf, offset)
