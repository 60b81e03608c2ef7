"""The compiled fast path of masque-relay (Cython + C).

Only ``relay/dataplane.py``, ``client/dataplane.py`` and ``relay/xdp.py`` import
this package; the protocol core (``masque``) never does.
"""

from _fastpath._core import (
    PACKET_RULES,
    PacketBatch,
    PacketPolicy,
    PrefixTable,
    Tun,
    UdpSocket,
    check_incoming,
    check_incoming_batch,
    checksum_partial,
    decrement_ttl,
    decrement_ttl_batch,
    internet_checksum,
    is_link_scoped,
    parse_ip_header,
    vnet_split,
)

__all__ = [
    "PACKET_RULES",
    "PacketBatch",
    "PacketPolicy",
    "PrefixTable",
    "Tun",
    "UdpSocket",
    "check_incoming",
    "check_incoming_batch",
    "checksum_partial",
    "decrement_ttl",
    "decrement_ttl_batch",
    "internet_checksum",
    "is_link_scoped",
    "parse_ip_header",
    "vnet_split",
]
