"""HTTP/3 for CONNECT-IP on top of aioquic, shared by the relay and the client.

aioquic's ``H3Connection`` sends SETTINGS_H3_DATAGRAM only together with
WebTransport; CONNECT-IP needs the former without advertising the latter
(RFC 9297 §2.1.1, RFC 9484 §5), so we add the setting in a small subclass.
"""

from __future__ import annotations

from aioquic.buffer import size_uint_var
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
