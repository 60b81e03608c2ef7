"""Every private aioquic attribute masque-relay reads, in one place.

aioquic has no public API for these; the pinned range in pyproject.toml is the
one ``tests/test_aioquic_internals.py`` checks, and that test fails loudly when
an upgrade renames or retypes any of them.
"""

from __future__ import annotations

from aioquic.quic.connection import QuicConnection

# Names read below, listed for the internals test.
QUIC_CONNECTION_ATTRIBUTES = (
    "_max_datagram_size",  # UDP payload size the connection builds packets to
    "_remote_max_datagram_frame_size",  # peer's max_datagram_frame_size (RFC 9221 §3)
    "_peer_cid",  # connection ID we put in short headers (its length costs bytes)
    "_datagrams_pending",  # the unbounded deque behind send_datagram_frame()
)


def max_udp_payload(quic: QuicConnection) -> int:
    """The UDP payload size this connection builds its packets to."""
    return int(quic._max_datagram_size)


def peer_max_datagram_frame_size(quic: QuicConnection) -> int | None:
    """The peer's max_datagram_frame_size transport parameter, if it sent one."""
    value = quic._remote_max_datagram_frame_size
    return None if value is None else int(value)


def peer_cid_length(quic: QuicConnection) -> int:
    """Length of the destination connection ID in our short-header packets."""
    return len(quic._peer_cid.cid)


def pending_datagram_count(quic: QuicConnection) -> int:
    """DATAGRAM frames queued in aioquic and not yet written into a packet."""
    return len(quic._datagrams_pending)
