"""HTTP Datagram payloads of CONNECT-IP (RFC 9484 §5, §6).

Every HTTP Datagram on a CONNECT-IP request stream is::

    IP Proxying HTTP Datagram Payload {
      Context ID (i),
      Payload (..),
    }

The Context ID is a full 62-bit QUIC varint (RFC 9000 §16): a one-byte shortcut
is wrong for values above 63. Context ID 0 carries a whole IP packet; non-zero
IDs are for extensions (even: client-allocated, odd: proxy-allocated) and a
receiver that does not know one drops the datagram (RFC 9484 §6).

The quarter stream ID that precedes this in a QUIC DATAGRAM frame (RFC 9297
§2.1) belongs to the HTTP/3 layer (aioquic adds and strips it), not here.
"""

from __future__ import annotations

from masque.errors import DatagramError
from masque.varint import VARINT_MAX, encode_varint, try_decode_varint

__all__ = [
    "CONTEXT_ID_IP_PACKET",
    "CONTEXT_ID_MAX",
    "decode_datagram",
    "encode_datagram",
    "encode_datagram_header",
]

#: Context ID whose payload is a full IP packet (RFC 9484 §6).
CONTEXT_ID_IP_PACKET = 0

#: Largest Context ID (RFC 9484 §5: "62-bit integers (0 to 2^62-1)").
CONTEXT_ID_MAX = VARINT_MAX


def encode_datagram_header(context_id: int) -> bytes:
    """Return the bytes that precede the payload: the Context ID varint.

    Callers that build datagrams in a preallocated buffer write this in front
    of the packet instead of concatenating. Raises ``ValueError`` when
    ``context_id`` is outside ``0..2**62-1``.
    """
    if not 0 <= context_id <= CONTEXT_ID_MAX:
        raise ValueError(f"context ID out of range: {context_id}")
    return encode_varint(context_id)


def encode_datagram(context_id: int, payload: bytes | bytearray | memoryview) -> bytes:
    """Return ``Context ID (i) ‖ payload`` for one HTTP Datagram.

    ``payload`` may be empty (RFC 9484 §6). Raises ``ValueError`` when
    ``context_id`` is out of range.
    """
    return encode_datagram_header(context_id) + bytes(payload)


def decode_datagram(data: bytes | bytearray | memoryview) -> tuple[int, memoryview]:
    """Split an HTTP Datagram payload into ``(context_id, payload)``.

    The payload is a zero-copy ``memoryview`` into ``data``; it may be empty.
    Raises :class:`DatagramError` (rule ``"datagram-truncated"``) when ``data``
    is empty or ends inside the Context ID varint. Non-minimal varint encodings
    are accepted (RFC 9484 §2 and RFC 9000 §16 allow them).
    """
    decoded = try_decode_varint(data)
    if decoded is None:
        raise DatagramError(
            f"HTTP Datagram of {len(data)} bytes ends inside its Context ID varint (RFC 9484 §6)",
            rule="datagram-truncated",
        )
    context_id, offset = decoded
    return context_id, memoryview(data)[offset:]
