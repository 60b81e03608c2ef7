"""HTTP/3 for CONNECT-IP on top of aioquic, shared by the relay and the client.

aioquic's ``H3Connection`` sends SETTINGS_H3_DATAGRAM only together with
WebTransport; CONNECT-IP needs the former without advertising the latter
(RFC 9297 §2.1.1, RFC 9484 §5), so we add the setting in a small subclass.
"""

from __future__ import annotations

from collections.abc import Callable

from aioquic.buffer import encode_uint_var, size_uint_var
from aioquic.h3.connection import H3Connection, Setting
from aioquic.quic.connection import QuicConnection

from netio import aioquic_internals

# Bytes around a DATAGRAM frame's payload in a 1-RTT packet, besides the DCID:
# first byte (1) + packet number (aioquic writes 2, reserves up to 4) + frame type
# (1) + length varint (aioquic always writes DATAGRAM_WITH_LENGTH, <= 2 bytes for
# any payload that fits a packet) + AEAD tag (16). RFC 9000 §17.3, RFC 9221 §4.
_SHORT_HEADER_FIXED = 1 + 4
_DATAGRAM_FRAME_OVERHEAD = 1 + 2
_AEAD_TAG = 16


class ConnectIpH3Connection(H3Connection):
    """An HTTP/3 connection that can carry CONNECT-IP's HTTP Datagrams.

    ``enable_datagrams=False`` omits SETTINGS_H3_DATAGRAM, as a peer without
    datagram support would; CONNECT-IP then falls back to DATAGRAM capsules.
    """

    def __init__(self, quic: QuicConnection, *, enable_datagrams: bool = True) -> None:
        # Set before super().__init__(), which sends our SETTINGS right away.
        self._enable_h3_datagram = enable_datagrams
        super().__init__(quic, enable_webtransport=False)

    def _get_local_settings(self) -> dict[int, int]:
        settings = super()._get_local_settings()
        if self._enable_h3_datagram:
            settings[Setting.H3_DATAGRAM] = 1
        return settings

    @property
    def datagrams_negotiated(self) -> bool:
        """Both sides sent SETTINGS_H3_DATAGRAM=1 and the peer accepts DATAGRAM frames."""
        received = self.received_settings
        return (
            self._enable_h3_datagram
            and received is not None
            and received.get(Setting.H3_DATAGRAM) == 1
            and aioquic_internals.peer_max_datagram_frame_size(self._quic) is not None
        )


def max_http_datagram_payload(quic: QuicConnection, stream_id: int) -> int:
    """Largest HTTP Datagram payload (context ID + IP packet) that fits one QUIC packet.

    A datagram larger than this must never be queued: aioquic would hold it at the
    head of its queue forever, blocking every datagram behind it.
    """
    packet_room = (
        aioquic_internals.max_udp_payload(quic)
        - _SHORT_HEADER_FIXED
        - aioquic_internals.peer_cid_length(quic)
        - _AEAD_TAG
        - _DATAGRAM_FRAME_OVERHEAD
    )
    peer_limit = aioquic_internals.peer_max_datagram_frame_size(quic)
    if peer_limit is not None:
        # The peer's limit counts the whole frame (type, length and data).
        packet_room = min(packet_room, peer_limit - _DATAGRAM_FRAME_OVERHEAD)
    return packet_room - size_uint_var(stream_id // 4)


#: Context ID 0 (a full IP packet) as a varint, in front of every CONNECT-IP datagram.
CONTEXT_ZERO = b"\x00"
#: Bytes of one full-size packet: turns a packet-count bound into a stream-buffer bound.
_PACKET_BYTES = 1500


def send_ip_packets(
    h3: ConnectIpH3Connection,
    stream_id: int,
    packets: list[bytes],
    *,
    as_datagrams: bool,
    frame: Callable[[bytes], bytes],
    queue_bound: int,
) -> int:
    """Queue IP packets for one CONNECT-IP stream; return how many were accepted.

    ``as_datagrams``: HTTP/3 Datagrams with context ID 0; otherwise each packet
    goes on the stream as ``frame(packet)`` (a DATAGRAM capsule, or the compat
    length prefix). Queues are bounded (aioquic's own are not): once
    ``queue_bound`` datagrams, or that many packets' worth of unacknowledged
    stream bytes, are waiting, the rest of the batch is refused: the newest
    packets are the ones dropped, and the caller counts them. The caller
    transmits once for the whole batch.
    """
    quic = h3._quic
    sent = 0
    if as_datagrams:
        for packet in packets:
            if aioquic_internals.pending_datagram_count(quic) >= queue_bound:
                break
            h3.send_datagram(stream_id, CONTEXT_ZERO + packet)
            sent += 1
        return sent
    limit = queue_bound * _PACKET_BYTES
    for packet in packets:
        if aioquic_internals.stream_send_buffered(quic, stream_id) >= limit:
            break
        h3.send_data(stream_id, frame(packet), end_stream=False)
        sent += 1
    return sent


def datagram_prefix(stream_id: int) -> bytes:
    """What goes in front of an IP packet in a CONNECT-IP HTTP Datagram on ``stream_id``.

    The quarter stream ID (RFC 9297 §2.1) and context ID 0 (RFC 9484 §6); the
    compiled path writes it into a packet's headroom instead of concatenating.
    """
    return encode_uint_var(stream_id // 4) + CONTEXT_ZERO


def send_framed_datagrams(quic: QuicConnection, payloads: list[bytes], *, queue_bound: int) -> int:
    """Queue HTTP Datagram payloads already framed with :func:`datagram_prefix`.

    Same bound and refusal rule as :func:`send_ip_packets`; returns how many
    were accepted. The caller transmits once for the batch.
    """
    sent = 0
    for payload in payloads:
        if aioquic_internals.pending_datagram_count(quic) >= queue_bound:
            break
        quic.send_datagram_frame(payload)
        sent += 1
    return sent
