"""The compiled fast path of masque-relay (Cython + C).

The data planes reach it through ``netio/compiled.py`` (and ``netio/udp.py`` for
the UDP socket); the protocol core (``masque``) never imports it.
"""

from _fastpath._core import (
    PACKET_RULES,
    UNROUTED,
    PacketBatch,
    PacketPolicy,
    PrefixTable,
    Tun,
    UdpSocket,
    batch_packets,
    check_incoming,
    check_incoming_batch,
    check_routed_batch,
    checksum_partial,
    decrement_ttl,
    decrement_ttl_batch,
    frame_datagrams,
    gro_frames,
    internet_checksum,
    is_link_scoped,
    parse_ip_header,
    vnet_split,
)

__all__ = [
    "PACKET_RULES",
    "UNROUTED",
    "PacketBatch",
    "PacketPolicy",
    "PrefixTable",
    "Tun",
    "UdpSocket",
    "batch_packets",
    "check_incoming",
    "check_incoming_batch",
    "check_routed_batch",
    "checksum_partial",
    "decrement_ttl",
    "decrement_ttl_batch",
    "frame_datagrams",
    "gro_frames",
    "internet_checksum",
    "is_link_scoped",
    "parse_ip_header",
    "vnet_split",
]
