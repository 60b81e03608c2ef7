"""ICMPv4 and ICMPv6 error messages a relay sends about packets it cannot forward.

RFC 9484 §7.2.1: an IP proxying endpoint SHOULD signal forwarding errors with
ICMP and send them to its peer in HTTP Datagrams. :func:`build_icmp_error`
returns the complete IP packet (IP header + ICMP message) to send, addressed to
the offending packet's source, or ``None`` where the RFCs forbid an error.

Decisions, each with the reason:

- **Quoting.** ICMPv6 errors quote as much of the offending packet as fits in
  1280 octets in total (RFC 4443 §2.4(c); 40 + 8 + 1232). ICMPv4 errors quote as
  much as fits in 576 octets in total (RFC 1812 §4.3.2.3 SHOULD; 20 + 8 + 548),
  which always covers the largest IPv4 header (60) plus the 8 octets RFC 792
  requires. The quote is the packet as received; callers must not decrement the
  TTL before building an error (:func:`masque.ippacket.decrement_ttl` leaves a
  packet it refuses untouched).
- **No error** (``None``), following RFC 4443 §2.4(e), RFC 1122 §3.2.2 and
  RFC 1812 §4.3.2.7, when the offending packet
  - does not parse, or is IPv4 with a bad header checksum;
  - is an ICMP error itself: ICMPv6 type < 128; ICMPv4 types 3, 4, 5, 11, 12.
    Other ICMPv4 types are answered only if they are known queries (echo,
    router discovery, timestamp, information, address mask, extended echo):
    an unknown type might be a newer error, and staying silent is always
    allowed while answering an error is not;
  - is ICMP whose type cannot be read (ICMP header missing, or an IPv6
    non-first fragment whose Next Header is ICMPv6 or another extension header);
  - is an IPv4 non-first fragment;
  - goes to a multicast address, or IPv4 255.255.255.255 (subnet-directed
    broadcasts cannot be recognised here). IPv6 Packet Too Big is the exception:
    it is sent for multicast destinations so Path MTU Discovery works for
    multicast (RFC 4443 §2.4(e.2), §3.2);
  - comes from an address that does not name one node: IPv6 ``::``, loopback or
    multicast; IPv4 0.0.0.0/8, 127.0.0.0/8, multicast or 240.0.0.0/4 (which holds
    255.255.255.255) (RFC 1812 §5.3.7).
- **Codes.** Packet Too Big is ICMPv6 type 2 (MTU in the 32-bit field) and
  ICMPv4 Destination Unreachable code 4 Fragmentation Needed with the next-hop
  MTU in the low 16 bits of the second word (RFC 1191 §4). Source address
  failed ingress/egress policy is ICMPv6 type 1 code 5 (RFC 4443 §3.1, the
  example in RFC 9484 §7.2.1); ICMPv4 has no such code, so code 13
  Communication Administratively Prohibited (RFC 1812 §5.2.7.1) stands in.
- **IP header of the error.** IPv4: no options, TOS 0 (RFC 1122 §3.2.2: errors
  SHOULD use normal TOS), DF set and Identification 0 — an atomic datagram
  (RFC 6864 §4.1) of at most 576 octets; IPv6: traffic class and flow label 0.
  TTL / Hop Limit default to 64.
- **No RFC 4884 extensions.** The length attribute stays 0 and nothing follows
  the quote, as Linux does; receivers that guess at extensions in non-compliant
  messages (RFC 4884 §5) must validate the extension header they think they see.
- **Rate limiting** (RFC 4443 §2.4(f), RFC 1812 §4.3.2.8) is the caller's job;
  this module has no clock.
"""

from __future__ import annotations

import struct
from enum import Enum, IntEnum
from ipaddress import IPv4Address, IPv6Address

from masque.errors import PacketError
from masque.ippacket import (
    IPV4_MIN_HEADER,
    IPV6_EXTENSION_HEADERS,
    IPV6_HEADER,
    IPHeader,
    IpProto,
    build_ipv4_header,
    build_ipv6_header,
    internet_checksum,
    parse_ip_packet,
    pseudo_header_partial,
)

ICMP_HEADER = 8  # type, code, checksum and the 32-bit type-specific word
ICMPV4_ERROR_MAX = 576  # RFC 1812 §4.3.2.3: total length of an ICMPv4 error
ICMPV6_ERROR_MAX = 1280  # RFC 4443 §2.4(c): the IPv6 minimum MTU (RFC 8200 §5)
IPV4_MIN_MTU = 68  # RFC 791 §3.2: every IPv4 module forwards 68 octets unfragmented


class Icmpv4Type(IntEnum):
    """ICMPv4 message types (RFC 792 unless noted)."""

    ECHO_REPLY = 0
    DESTINATION_UNREACHABLE = 3
    SOURCE_QUENCH = 4  # deprecated by RFC 6633, still an error message
    REDIRECT = 5
    ECHO_REQUEST = 8
    ROUTER_ADVERTISEMENT = 9  # RFC 1256
    ROUTER_SOLICITATION = 10  # RFC 1256
    TIME_EXCEEDED = 11
    PARAMETER_PROBLEM = 12
    TIMESTAMP = 13
    TIMESTAMP_REPLY = 14
    INFORMATION_REQUEST = 15
    INFORMATION_REPLY = 16
    ADDRESS_MASK_REQUEST = 17  # RFC 950
    ADDRESS_MASK_REPLY = 18  # RFC 950
    EXTENDED_ECHO_REQUEST = 42  # RFC 8335
    EXTENDED_ECHO_REPLY = 43  # RFC 8335


class Icmpv4UnreachableCode(IntEnum):
    """Codes of ICMPv4 Destination Unreachable (RFC 792, RFC 1812 §5.2.7.1)."""

    NET_UNREACHABLE = 0
    HOST_UNREACHABLE = 1
    PROTOCOL_UNREACHABLE = 2
    PORT_UNREACHABLE = 3
    FRAGMENTATION_NEEDED = 4  # next-hop MTU per RFC 1191 §4
    SOURCE_ROUTE_FAILED = 5
    COMMUNICATION_ADMINISTRATIVELY_PROHIBITED = 13  # RFC 1812 §5.2.7.1


class Icmpv4TimeExceededCode(IntEnum):
    """Codes of ICMPv4 Time Exceeded (RFC 792)."""

    TTL_EXCEEDED_IN_TRANSIT = 0
    FRAGMENT_REASSEMBLY_TIME_EXCEEDED = 1


class Icmpv6Type(IntEnum):
    """ICMPv6 message types (RFC 4443 §2.1); below 128 are errors."""

    DESTINATION_UNREACHABLE = 1  # §3.1
    PACKET_TOO_BIG = 2  # §3.2
    TIME_EXCEEDED = 3  # §3.3
    PARAMETER_PROBLEM = 4  # §3.4
    ECHO_REQUEST = 128  # §4.1
    ECHO_REPLY = 129  # §4.2


class Icmpv6UnreachableCode(IntEnum):
    """Codes of ICMPv6 Destination Unreachable (RFC 4443 §3.1)."""

    NO_ROUTE = 0
    ADMINISTRATIVELY_PROHIBITED = 1
    BEYOND_SCOPE_OF_SOURCE = 2
    ADDRESS_UNREACHABLE = 3
    PORT_UNREACHABLE = 4
    SOURCE_ADDRESS_FAILED_POLICY = 5
    REJECT_ROUTE = 6


class Icmpv6TimeExceededCode(IntEnum):
    """Codes of ICMPv6 Time Exceeded (RFC 4443 §3.3)."""

    HOP_LIMIT_EXCEEDED_IN_TRANSIT = 0
    FRAGMENT_REASSEMBLY_TIME_EXCEEDED = 1


ICMPV6_ERROR_TYPE_LIMIT = 128  # RFC 4443 §2.1: types 0..127 are error messages

ICMPV4_ERROR_TYPES = frozenset(
    {
        Icmpv4Type.DESTINATION_UNREACHABLE,
        Icmpv4Type.SOURCE_QUENCH,
        Icmpv4Type.REDIRECT,
        Icmpv4Type.TIME_EXCEEDED,
        Icmpv4Type.PARAMETER_PROBLEM,
    }
)
"""ICMPv4 error message types (RFC 1122 §3.2.2)."""

# Query/informational ICMPv4 types about which an error may be sent.
_ICMPV4_QUERY_TYPES = frozenset(set(Icmpv4Type) - ICMPV4_ERROR_TYPES)


class IcmpErrorKind(Enum):
    """Which forwarding failure to report; mapped to a type/code per IP version."""

    PACKET_TOO_BIG = "packet-too-big"
    """Too large for the next link: v6 Packet Too Big, v4 Fragmentation Needed."""
    NO_ROUTE = "no-route"
    """No route: v6 Destination Unreachable code 0, v4 code 0 (net unreachable)."""
    ADDRESS_UNREACHABLE = "address-unreachable"
    """v6 Destination Unreachable code 3, v4 code 1 (host unreachable)."""
    ADMINISTRATIVELY_PROHIBITED = "administratively-prohibited"
    """Refused by policy (out of scope): v6 code 1, v4 code 13."""
    SOURCE_ADDRESS_FAILED_POLICY = "source-address-failed-policy"
    """Source not assigned to the sender (BCP 38): v6 code 5, v4 code 13."""
    TIME_EXCEEDED = "time-exceeded"
    """TTL / Hop Limit would reach 0: v6 type 3 code 0, v4 type 11 code 0."""


_V4_TYPE_CODE: dict[IcmpErrorKind, tuple[int, int]] = {
    IcmpErrorKind.PACKET_TOO_BIG: (
        Icmpv4Type.DESTINATION_UNREACHABLE,
        Icmpv4UnreachableCode.FRAGMENTATION_NEEDED,
    ),
    IcmpErrorKind.NO_ROUTE: (
        Icmpv4Type.DESTINATION_UNREACHABLE,
        Icmpv4UnreachableCode.NET_UNREACHABLE,
    ),
    IcmpErrorKind.ADDRESS_UNREACHABLE: (
        Icmpv4Type.DESTINATION_UNREACHABLE,
        Icmpv4UnreachableCode.HOST_UNREACHABLE,
    ),
    IcmpErrorKind.ADMINISTRATIVELY_PROHIBITED: (
        Icmpv4Type.DESTINATION_UNREACHABLE,
        Icmpv4UnreachableCode.COMMUNICATION_ADMINISTRATIVELY_PROHIBITED,
    ),
    # ICMPv4 has no "source address failed policy": the closest is code 13.
    IcmpErrorKind.SOURCE_ADDRESS_FAILED_POLICY: (
        Icmpv4Type.DESTINATION_UNREACHABLE,
        Icmpv4UnreachableCode.COMMUNICATION_ADMINISTRATIVELY_PROHIBITED,
    ),
    IcmpErrorKind.TIME_EXCEEDED: (
        Icmpv4Type.TIME_EXCEEDED,
        Icmpv4TimeExceededCode.TTL_EXCEEDED_IN_TRANSIT,
    ),
}

_V6_TYPE_CODE: dict[IcmpErrorKind, tuple[int, int]] = {
    IcmpErrorKind.PACKET_TOO_BIG: (Icmpv6Type.PACKET_TOO_BIG, 0),
    IcmpErrorKind.NO_ROUTE: (
        Icmpv6Type.DESTINATION_UNREACHABLE,
        Icmpv6UnreachableCode.NO_ROUTE,
    ),
    IcmpErrorKind.ADDRESS_UNREACHABLE: (
        Icmpv6Type.DESTINATION_UNREACHABLE,
        Icmpv6UnreachableCode.ADDRESS_UNREACHABLE,
    ),
    IcmpErrorKind.ADMINISTRATIVELY_PROHIBITED: (
        Icmpv6Type.DESTINATION_UNREACHABLE,
        Icmpv6UnreachableCode.ADMINISTRATIVELY_PROHIBITED,
    ),
    IcmpErrorKind.SOURCE_ADDRESS_FAILED_POLICY: (
        Icmpv6Type.DESTINATION_UNREACHABLE,
        Icmpv6UnreachableCode.SOURCE_ADDRESS_FAILED_POLICY,
    ),
    IcmpErrorKind.TIME_EXCEEDED: (
        Icmpv6Type.TIME_EXCEEDED,
        Icmpv6TimeExceededCode.HOP_LIMIT_EXCEEDED_IN_TRANSIT,
    ),
}


def icmp_type_code(version: int, kind: IcmpErrorKind) -> tuple[int, int]:
    """Return the ``(type, code)`` that reports ``kind`` in ICMP for IP ``version``."""
    if version == 4:
        return _V4_TYPE_CODE[kind]
    if version == 6:
        return _V6_TYPE_CODE[kind]
    raise ValueError(f"IP version {version} is neither 4 nor 6")


def _v4_source_invalid(addr: IPv4Address) -> bool:
    # RFC 1812 §5.3.7 / RFC 1122 §3.2.2: "this network" 0/8, loopback 127/8,
    # class D (multicast) and class E 240/4 (which includes 255.255.255.255).
    first = addr.packed[0]
    return first == 0 or first == 127 or first >= 224


def _v6_source_invalid(addr: IPv6Address) -> bool:
    # RFC 4443 §2.4(e.5): unspecified and multicast; loopback never leaves a
    # node (RFC 4291 §2.5.3), so an error addressed to it could not arrive.
    return addr.is_unspecified or addr.is_loopback or addr.is_multicast


def icmp_error_forbidden(
    offending: bytes | bytearray | memoryview, kind: IcmpErrorKind
) -> str | None:
    """Return why no ICMP error may be sent about ``offending``, or None if one may.

    The reason is a short stable string for logs and metrics labels:
    ``malformed``, ``icmp-error``, ``icmp-type-unknown``,
    ``icmp-type-unreadable``, ``non-first-fragment``, ``multicast-destination``,
    ``broadcast-destination`` or ``invalid-source``. See the module notes.
    """
    try:
        header = parse_ip_packet(offending)
    except PacketError:
        return "malformed"
    if header.version == 4:
        return _v4_forbidden(header, offending)
    return _v6_forbidden(header, offending, kind)


def _v4_forbidden(header: IPHeader, packet: bytes | bytearray | memoryview) -> str | None:
    assert isinstance(header.src, IPv4Address) and isinstance(header.dst, IPv4Address)
    if header.is_non_first_fragment:
        return "non-first-fragment"
    if header.dst.is_multicast:
        return "multicast-destination"
    if header.dst.packed == b"\xff\xff\xff\xff":
        return "broadcast-destination"
    if _v4_source_invalid(header.src):
        return "invalid-source"
    if header.protocol == IpProto.ICMP:
        if header.payload_length < 1:
            return "icmp-type-unreadable"
        icmp_type = packet[header.header_length]
        if icmp_type in ICMPV4_ERROR_TYPES:
            return "icmp-error"
        if icmp_type not in _ICMPV4_QUERY_TYPES:
            return "icmp-type-unknown"
    return None


def _v6_forbidden(
    header: IPHeader, packet: bytes | bytearray | memoryview, kind: IcmpErrorKind
) -> str | None:
    assert isinstance(header.src, IPv6Address) and isinstance(header.dst, IPv6Address)
    if header.dst.is_multicast and kind is not IcmpErrorKind.PACKET_TOO_BIG:
        return "multicast-destination"
    if _v6_source_invalid(header.src):
        return "invalid-source"
    if header.is_non_first_fragment:
        # The fragment's data is the middle of the payload: if the Fragment
        # header says ICMPv6 (or an extension header that might lead to it),
        # the message type is not here to check.
        if header.protocol == IpProto.ICMPV6 or header.protocol in IPV6_EXTENSION_HEADERS:
            return "icmp-type-unreadable"
        return None
    if header.protocol == IpProto.ICMPV6:
        if header.payload_length < 1:
            return "icmp-type-unreadable"
        if packet[header.header_length] < ICMPV6_ERROR_TYPE_LIMIT:
            return "icmp-error"
    return None


def build_icmp_error(
    offending: bytes | bytearray | memoryview,
    kind: IcmpErrorKind,
    *,
    source: IPv4Address | IPv6Address,
    mtu: int | None = None,
    ttl: int = 64,
) -> bytes | None:
    """Build the ICMP error about ``offending`` as a complete IP packet, or return None.

    ``offending`` is the packet as it was received (before any TTL decrement).
    ``source`` is the relay's own address of the same IP version, used as the
    error's source; the destination is the offending packet's source. ``mtu`` is
    required for :attr:`IcmpErrorKind.PACKET_TOO_BIG` (IPv4: 68..65535, IPv6:
    1280..2**32-1, the tunnel MTU that RFC 9484 §7.2 keeps at 1280 or more) and
    refused for every other kind. ``ttl`` is the error's TTL / Hop Limit.

    Returns None where an error is forbidden (see :func:`icmp_error_forbidden`).
    Raises ``ValueError`` for arguments that are wrong whatever the packet.
    """
    if kind is IcmpErrorKind.PACKET_TOO_BIG:
        if mtu is None:
            raise ValueError("PACKET_TOO_BIG needs the mtu of the next hop")
    elif mtu is not None:
        raise ValueError(f"mtu only applies to PACKET_TOO_BIG, not {kind.name}")
    if not 1 <= ttl <= 255:
        raise ValueError(f"ttl out of range 1..255: {ttl}")
    if source.is_multicast or source.is_unspecified:
        raise ValueError(f"an ICMP error cannot come from {source}")
    if mtu is not None:
        low, high = (
            (IPV4_MIN_MTU, 0xFFFF) if source.version == 4 else (ICMPV6_ERROR_MAX, 0xFFFF_FFFF)
        )
        if not low <= mtu <= high:
            # IPv4: RFC 791 §3.2 minimum, 16-bit field (RFC 1191 §4). IPv6: no link
            # is below 1280 (RFC 8200 §5) and hosts ignore smaller values (RFC 8201 §4).
            raise ValueError(f"IPv{source.version} MTU out of range {low}..{high}: {mtu}")
    version = offending[0] >> 4 if len(offending) else 0
    if version in (4, 6) and version != source.version:
        raise ValueError(f"source {source} is not of the offending packet's IP version")
    if icmp_error_forbidden(offending, kind) is not None:
        return None
    # After icmp_error_forbidden() the packet parses: only its source is needed.
    if source.version == 4:
        assert isinstance(source, IPv4Address)
        return _build_v4(offending, kind, source, mtu, ttl)
    assert isinstance(source, IPv6Address)
    return _build_v6(offending, kind, source, mtu, ttl)


def _build_v4(
    offending: bytes | bytearray | memoryview,
    kind: IcmpErrorKind,
    source: IPv4Address,
    mtu: int | None,
    ttl: int,
) -> bytes:
    icmp_type, code = _V4_TYPE_CODE[kind]
    # RFC 1191 §4: high 16 bits unused (zero), low 16 bits the next-hop MTU.
    word = 0 if mtu is None else mtu
    quote = bytes(offending[: ICMPV4_ERROR_MAX - IPV4_MIN_HEADER - ICMP_HEADER])
    message = bytearray(struct.pack("!BBHI", icmp_type, code, 0, word) + quote)
    struct.pack_into("!H", message, 2, internet_checksum(message))  # RFC 792: no pseudo-header
    destination = IPv4Address(bytes(offending[12:16]))
    header = build_ipv4_header(source, destination, IpProto.ICMP, len(message), ttl=ttl)
    return header + bytes(message)


def _build_v6(
    offending: bytes | bytearray | memoryview,
    kind: IcmpErrorKind,
    source: IPv6Address,
    mtu: int | None,
    ttl: int,
) -> bytes:
    icmp_type, code = _V6_TYPE_CODE[kind]
    word = 0 if mtu is None else mtu  # RFC 4443 §3.2: the MTU fills the 32-bit word
    quote = bytes(offending[: ICMPV6_ERROR_MAX - IPV6_HEADER - ICMP_HEADER])
    message = bytearray(struct.pack("!BBHI", icmp_type, code, 0, word) + quote)
    destination = IPv6Address(bytes(offending[8:24]))
    # RFC 4443 §2.3: the checksum covers an RFC 8200 §8.1 pseudo-header.
    partial = pseudo_header_partial(source, destination, IpProto.ICMPV6, len(message))
    struct.pack_into("!H", message, 2, internet_checksum(message, partial))
    header = build_ipv6_header(source, destination, IpProto.ICMPV6, len(message), hop_limit=ttl)
    return header + bytes(message)
