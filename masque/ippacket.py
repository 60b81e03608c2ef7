"""IPv4/IPv6 header parsing and validation, checksums and TTL/Hop Limit handling.

The relay looks at every packet a client sends before handing it to the kernel
(RFC 9484 §7.2: source-address validation, scope checks, TTL decrement) and at
every packet it tunnels back. This module is the Python reference for those
checks; the compiled fast path mirrors it and is tested against it.

Decisions, each with the reason:

- **Exact length.** An HTTP Datagram with context ID 0 carries "a full IP packet
  (from the IP Version field until the last byte of the IP payload)" (RFC 9484
  §6). A buffer longer than the IPv4 Total Length / IPv6 40 + Payload Length is
  therefore a framing error, not padding, and is rejected (rules
  ``ipv4-trailing-bytes`` / ``ipv6-trailing-bytes``); a shorter one is truncated.
  Rejecting keeps one length for everyone (Python, C, the kernel behind the TUN)
  and leaves no unexamined bytes that a lenient reader downstream might honour.
- **IPv4 header checksum verified by default.** A router MUST verify it
  (RFC 1812 §5.2.2) and MUST NOT answer a packet that fails it with ICMP
  (§4.3.2.7). ``verify_checksum=False`` exists for callers that already checked.
- **IPv6 extension headers** are walked to the first header that is not an
  extension header (RFC 9484 §4.8), over every number in the IANA "IPv6
  Extension Header Types" registry (RFC 8200 §4, RFC 7045): Hop-by-Hop 0,
  Routing 43, Fragment 44, AH 51, Destination Options 60, Mobility 135, HIP 139,
  Shim6 140 and the experimental 253/254, which all use the RFC 8200 §4.8 common
  layout except Fragment (fixed 8 octets) and AH (RFC 4302 §2.2: length in
  4-octet units minus 2). ESP 50 is in the registry too but everything after its
  SPI is encrypted, so it ends the walk and is reported as the protocol. No Next
  Header 59 ends the walk and is reported as 59. Mobility and HIP messages
  normally carry Next Header 59, so such packets report 59;
  ``extension_headers`` keeps the chain for callers that care.
- **Hop-by-Hop** may only follow the IPv6 header (RFC 8200 §4.3); elsewhere the
  packet is rejected (``ipv6-hop-by-hop-not-first``), as a host would answer it
  with Parameter Problem code 1.
- **Fragments.** A non-first fragment has no upper-layer header. For IPv4 the
  protocol field is still reported; for IPv6 the walk stops at the Fragment
  header and its Next Header is reported (which may itself be an extension
  header that lives in the fragmentable part). A fragment whose offset plus
  length passes 65535 octets, or a non-last fragment whose data is not a
  multiple of 8 octets, is rejected (RFC 791 §3.2; RFC 8200 §4.5). A first
  fragment must hold the whole header chain (RFC 8200 §4.5, RFC 7112), so a
  chain cut short by it is ``ipv6-truncated-extension-header``.
- **Jumbograms** (Payload Length 0 with a Hop-by-Hop Jumbo option, RFC 2675)
  cannot cross a tunnel whose MTU is far below 64 KiB; Payload Length 0 is read
  literally, so such a packet fails as truncated.
"""

from __future__ import annotations

import struct
from dataclasses import dataclass
from enum import IntEnum
from ipaddress import IPv4Address, IPv6Address

from masque.errors import PacketError

IPV4_MIN_HEADER = 20
IPV6_HEADER = 40
IP_MAX_PACKET = 65535  # RFC 791 §3.1 Total Length / RFC 8200 §3 Payload Length ceiling


class IpProto(IntEnum):
    """Internet Protocol Numbers (IANA registry) that this package needs by name."""

    HOPOPT = 0  # IPv6 Hop-by-Hop Options, RFC 8200 §4.3
    ICMP = 1  # RFC 792
    TCP = 6  # RFC 9293
    UDP = 17  # RFC 768
    IPV6_ROUTING = 43  # RFC 8200 §4.4
    IPV6_FRAGMENT = 44  # RFC 8200 §4.5
    ESP = 50  # RFC 4303
    AH = 51  # RFC 4302
    ICMPV6 = 58  # RFC 4443
    IPV6_NONXT = 59  # No Next Header, RFC 8200 §4.7
    IPV6_DSTOPTS = 60  # RFC 8200 §4.6
    MOBILITY = 135  # RFC 6275 §6.1
    HIP = 139  # RFC 7401 §5.1
    SHIM6 = 140  # RFC 5533 §5
    EXPERIMENT_253 = 253  # RFC 3692, RFC 4727
    EXPERIMENT_254 = 254  # RFC 3692, RFC 4727


# Extension headers laid out as RFC 8200 §4.8 prescribes: Next Header (8 bits),
# Hdr Ext Len (8 bits, 8-octet units not counting the first 8 octets), data.
_GENERIC_EXTENSION_HEADERS = frozenset(
    {
        IpProto.HOPOPT,
        IpProto.IPV6_ROUTING,
        IpProto.IPV6_DSTOPTS,
        IpProto.MOBILITY,
        IpProto.HIP,
        IpProto.SHIM6,
        IpProto.EXPERIMENT_253,
        IpProto.EXPERIMENT_254,
    }
)

#: Every number in the IANA "IPv6 Extension Header Types" registry (RFC 7045 §4).
IPV6_EXTENSION_HEADERS = frozenset(
    _GENERIC_EXTENSION_HEADERS | {IpProto.IPV6_FRAGMENT, IpProto.AH, IpProto.ESP}
)

# IPv4 flags/fragment-offset word (RFC 791 §3.1).
_IPV4_MF = 0x2000
_IPV4_DF = 0x4000
_IPV4_OFFSET_MASK = 0x1FFF

_V4_HEAD = struct.Struct("!BBHHHBBH4s4s")  # the fixed 20 octets of an IPv4 header
_V6_HEAD = struct.Struct("!IHBB16s16s")  # the 40 octets of an IPv6 header


@dataclass(frozen=True, slots=True)
class IPHeader:
    """What the relay needs to know about one IP packet.

    The first seven fields are the interface the session layer relies on; the
    rest describe fragmentation and the IPv6 extension chain.
    """

    version: int
    """4 or 6."""
    src: IPv4Address | IPv6Address
    """Source address."""
    dst: IPv4Address | IPv6Address
    """Destination address."""
    protocol: int
    """Upper-layer protocol: IPv4 Protocol, or for IPv6 the first Next Header that
    is not an extension header (59 if the chain ends with No Next Header, 50 for
    ESP, the Fragment header's Next Header for a non-first fragment)."""
    ttl: int
    """IPv4 Time to Live or IPv6 Hop Limit."""
    header_length: int
    """Octets before the upper-layer header: IHL * 4 for IPv4, 40 plus every
    extension header walked for IPv6. For a non-first fragment this is where the
    fragment's data starts (there is no upper-layer header there)."""
    total_length: int
    """Length of the whole packet in octets (equals the buffer length)."""
    fragment_offset: int = 0
    """Offset of this fragment's data in the original packet, in octets (0 when
    the packet is not a fragment or is the first one)."""
    more_fragments: bool = False
    """The MF / M flag: more fragments follow."""
    extension_headers: tuple[int, ...] = ()
    """IPv6 extension header types walked, in order (empty for IPv4)."""

    @property
    def is_fragment(self) -> bool:
        """True if the packet is one fragment of a larger one (offset != 0 or MF).

        An IPv6 atomic fragment (Fragment header with offset 0 and M = 0,
        RFC 6946) is a whole packet and reports False.
        """
        return self.fragment_offset != 0 or self.more_fragments

    @property
    def is_non_first_fragment(self) -> bool:
        """True if the upper-layer header is not in this packet (offset != 0)."""
        return self.fragment_offset != 0

    @property
    def payload_length(self) -> int:
        """Octets after :attr:`header_length` (upper-layer header and data)."""
        return self.total_length - self.header_length


def _fail(message: str, rule: str) -> PacketError:
    return PacketError(message, rule=rule)


def parse_ip_packet(
    packet: bytes | bytearray | memoryview, *, verify_checksum: bool = True
) -> IPHeader:
    """Parse and validate the IP header(s) of one complete packet.

    ``packet`` must be exactly one IPv4 or IPv6 packet (see the module notes on
    trailing bytes). Raises :class:`~masque.errors.PacketError` with a ``rule``
    naming the failed check; never any other exception for any input bytes.
    """
    length = len(packet)
    if length == 0:
        raise _fail("empty packet", "empty")
    version = packet[0] >> 4
    if version == 4:
        return _parse_ipv4(packet, length, verify_checksum)
    if version == 6:
        return _parse_ipv6(packet, length)
    raise _fail(f"IP version {version} is neither 4 nor 6", "bad-version")


def _parse_ipv4(packet: bytes | bytearray | memoryview, length: int, verify: bool) -> IPHeader:
    if length < IPV4_MIN_HEADER:
        raise _fail(f"IPv4 packet of {length} octets is shorter than 20", "ipv4-too-short")
    vihl, _tos, total, _ident, frag, ttl, proto, _csum, src, dst = _V4_HEAD.unpack_from(packet)
    ihl = (vihl & 0x0F) * 4
    if ihl < IPV4_MIN_HEADER:
        raise _fail(f"IPv4 IHL {ihl // 4} is below 5", "ipv4-ihl-too-small")
    if ihl > length:
        raise _fail(f"IPv4 header of {ihl} octets exceeds the {length}", "ipv4-header-truncated")
    if total < ihl:
        raise _fail(
            f"IPv4 Total Length {total} is smaller than the header ({ihl})",
            "ipv4-total-length-too-small",
        )
    if total > length:
        raise _fail(f"IPv4 Total Length {total} exceeds the {length} octets", "ipv4-truncated")
    if total < length:
        raise _fail(
            f"{length - total} octets follow the IPv4 Total Length {total}",
            "ipv4-trailing-bytes",
        )
    if verify and checksum_partial(packet[:ihl]) != 0xFFFF:
        raise _fail("IPv4 header checksum is wrong", "ipv4-bad-checksum")
    offset = (frag & _IPV4_OFFSET_MASK) * 8
    more = bool(frag & _IPV4_MF)
    data = total - ihl
    if offset + data > IP_MAX_PACKET:
        # A reassembled datagram would pass 65535 octets ("ping of death").
        raise _fail("IPv4 fragment ends beyond 65535 octets", "ipv4-fragment-overflow")
    if more and data % 8:
        # Every fragment but the last carries a multiple of 8 octets (RFC 791 §3.2).
        raise _fail(f"IPv4 non-last fragment carries {data} octets", "ipv4-fragment-misaligned")
    return IPHeader(
        version=4,
        src=IPv4Address(src),
        dst=IPv4Address(dst),
        protocol=proto,
        ttl=ttl,
        header_length=ihl,
        total_length=total,
        fragment_offset=offset,
        more_fragments=more,
    )


def _parse_ipv6(packet: bytes | bytearray | memoryview, length: int) -> IPHeader:
    if length < IPV6_HEADER:
        raise _fail(f"IPv6 packet of {length} octets is shorter than 40", "ipv6-too-short")
    _vtf, payload_length, next_header, hop_limit, src, dst = _V6_HEAD.unpack_from(packet)
    total = IPV6_HEADER + payload_length
    if total > length:
        raise _fail(
            f"IPv6 Payload Length {payload_length} exceeds the {length - IPV6_HEADER} octets",
            "ipv6-truncated",
        )
    if total < length:
        raise _fail(
            f"{length - total} octets follow the IPv6 Payload Length {payload_length}",
            "ipv6-trailing-bytes",
        )
    pos = IPV6_HEADER
    chain: list[int] = []
    offset = 0
    more = False
    # Each extension header is at least 8 octets, so the loop ends within
    # total / 8 iterations whatever the input.
    while next_header in IPV6_EXTENSION_HEADERS and next_header != IpProto.ESP:
        if next_header == IpProto.HOPOPT and pos != IPV6_HEADER:
            raise _fail(
                f"Hop-by-Hop Options header at offset {pos}, not right after the IPv6 header",
                "ipv6-hop-by-hop-not-first",
            )
        if pos + 2 > total:
            raise _fail(
                f"extension header {next_header} at offset {pos} is truncated",
                "ipv6-truncated-extension-header",
            )
        if next_header == IpProto.IPV6_FRAGMENT:
            size = 8
        elif next_header == IpProto.AH:
            size = (packet[pos + 1] + 2) * 4
        else:
            size = (packet[pos + 1] + 1) * 8
        if pos + size > total:
            raise _fail(
                f"extension header {next_header} at offset {pos} needs {size} octets,"
                f" {total - pos} remain",
                "ipv6-truncated-extension-header",
            )
        chain.append(next_header)
        if next_header == IpProto.IPV6_FRAGMENT:
            frag = (packet[pos + 2] << 8) | packet[pos + 3]
            offset = frag & 0xFFF8
            more = bool(frag & 1)
            next_header = packet[pos]
            pos += size
            data = total - pos
            if offset + data > IP_MAX_PACKET:
                raise _fail("IPv6 fragment ends beyond 65535 octets", "ipv6-fragment-overflow")
            if more and data % 8:
                raise _fail(
                    f"IPv6 non-last fragment carries {data} octets", "ipv6-fragment-misaligned"
                )
            if offset:
                # The rest is the middle of the original payload: nothing to walk.
                break
            continue
        next_header = packet[pos]
        pos += size
    return IPHeader(
        version=6,
        src=IPv6Address(src),
        dst=IPv6Address(dst),
        protocol=next_header,
        ttl=hop_limit,
        header_length=pos,
        total_length=total,
        fragment_offset=offset,
        more_fragments=more,
        extension_headers=tuple(chain),
    )


def is_link_local(addr: IPv4Address | IPv6Address) -> bool:
    """True for link-local unicast: IPv4 169.254.0.0/16 (RFC 3927), IPv6 fe80::/10 (RFC 4291).

    RFC 9484 §7.2: such packets must never be forwarded beyond the tunnel.
    """
    packed = addr.packed
    if len(packed) == 4:
        return packed[0] == 169 and packed[1] == 254
    return packed[0] == 0xFE and (packed[1] & 0xC0) == 0x80


def is_link_scoped(addr: IPv4Address | IPv6Address) -> bool:
    """True for every address whose scope ends at the link, unicast or multicast.

    Adds to :func:`is_link_local` the multicast groups that routers never
    forward: IPv4 224.0.0.0/24 (Local Network Control Block, RFC 5771 §4) and
    IPv6 multicast of interface-local or link-local scope (ffx1::/16, ffx2::/16,
    RFC 4291 §2.7). A relay drops these instead of forwarding them (RFC 9484 §7.2).
    """
    packed = addr.packed
    if len(packed) == 4:
        return (packed[0] == 169 and packed[1] == 254) or (
            packed[0] == 224 and packed[1] == 0 and packed[2] == 0
        )
    if packed[0] == 0xFF:
        return (packed[1] & 0x0F) in (1, 2)
    return packed[0] == 0xFE and (packed[1] & 0xC0) == 0x80


# --- Internet checksum (RFC 1071) -------------------------------------------------


def checksum_partial(data: bytes | bytearray | memoryview, initial: int = 0) -> int:
    """Return the one's-complement sum of ``data`` plus ``initial``, folded, not complemented.

    ``data`` is read as big-endian 16-bit words, an odd last octet padded with
    zero; ``initial`` is a partial sum to add (e.g. a pseudo-header's). The
    result is 0 only when everything summed is zero, otherwise 1..0xFFFF, so it
    can be chained into a later call as ``initial``. Mirrors
    ``_fastpath.checksum_partial``.
    """
    if initial < 0:
        raise ValueError(f"initial partial sum must not be negative: {initial}")
    value = int.from_bytes(data, "big")
    if len(data) & 1:
        value <<= 8
    # 2**16 == 1 (mod 0xFFFF), so the whole buffer taken as one big number is
    # congruent to the sum of its 16-bit words; end-around carry is the same
    # arithmetic modulo 0xFFFF, except that a non-zero sum folds to 0xFFFF, not 0.
    total = value + initial
    if total == 0:
        return 0
    folded = total % 0xFFFF
    return folded if folded else 0xFFFF


def internet_checksum(data: bytes | bytearray | memoryview, initial: int = 0) -> int:
    """Return the RFC 1071 checksum of ``data`` (plus a partial sum ``initial``).

    This is the value for a checksum field that was zero while summing; over a
    buffer whose stored checksum is right it returns 0. Mirrors
    ``_fastpath.internet_checksum``.
    """
    return ~checksum_partial(data, initial) & 0xFFFF


def checksum_adjust(checksum: int, old_word: int, new_word: int) -> int:
    """Update a checksum for one 16-bit word changed from ``old_word`` to ``new_word``.

    RFC 1624 eqn. 3, ``HC' = ~(~HC + ~m + m')``, which unlike eqn. 2 never
    produces 0xFFFF in place of 0x0000 for data that is not all zero.
    """
    total = (~checksum & 0xFFFF) + (~old_word & 0xFFFF) + (new_word & 0xFFFF)
    total = (total & 0xFFFF) + (total >> 16)
    total = (total & 0xFFFF) + (total >> 16)
    return ~total & 0xFFFF


def ipv4_header_checksum_ok(packet: bytes | bytearray | memoryview) -> bool:
    """True if the IPv4 header at the start of ``packet`` has a correct checksum.

    Returns False (rather than raising) for a buffer too short to hold the
    header its IHL announces, or for an IHL below 5.
    """
    if len(packet) < IPV4_MIN_HEADER:
        return False
    ihl = (packet[0] & 0x0F) * 4
    if ihl < IPV4_MIN_HEADER or ihl > len(packet):
        return False
    return checksum_partial(packet[:ihl]) == 0xFFFF


def decrement_ttl(packet: bytearray | memoryview) -> int:
    """Decrement the TTL / Hop Limit of a packet in place and return the new value.

    RFC 9484 §7.2: a relay decrements when forwarding (not for packets it
    generates). For IPv4 the header checksum is updated incrementally
    (RFC 1624 eqn. 3), so a header that arrived with a wrong checksum keeps a
    wrong one and the next hop still drops it.

    Returns **0** without touching the packet when the TTL / Hop Limit is 0 or 1:
    the packet must not be forwarded (it would leave with 0) and the caller
    answers with ICMP Time Exceeded (RFC 1812 §5.3.1, RFC 4443 §3.3), quoting the
    packet unchanged. Raises :class:`PacketError` if the buffer is too short for
    the header or not IPv4/IPv6; call :func:`parse_ip_packet` first.
    """
    if len(packet) == 0:
        raise _fail("empty packet", "empty")
    version = packet[0] >> 4
    if version == 4:
        if len(packet) < IPV4_MIN_HEADER:
            raise _fail("IPv4 packet shorter than 20 octets", "ipv4-too-short")
        ttl = packet[8]
        if ttl <= 1:
            return 0
        proto = packet[9]
        old_checksum = (packet[10] << 8) | packet[11]
        new_checksum = checksum_adjust(old_checksum, (ttl << 8) | proto, ((ttl - 1) << 8) | proto)
        packet[8] = ttl - 1
        packet[10] = new_checksum >> 8
        packet[11] = new_checksum & 0xFF
        return ttl - 1
    if version == 6:
        if len(packet) < IPV6_HEADER:
            raise _fail("IPv6 packet shorter than 40 octets", "ipv6-too-short")
        hop_limit = packet[7]
        if hop_limit <= 1:
            return 0
        packet[7] = hop_limit - 1  # IPv6 has no header checksum (RFC 8200 §8.1)
        return hop_limit - 1
    raise _fail(f"IP version {version} is neither 4 nor 6", "bad-version")


# --- pseudo-headers and header builders -------------------------------------------


def pseudo_header_partial(
    src: IPv4Address | IPv6Address,
    dst: IPv4Address | IPv6Address,
    protocol: int,
    upper_layer_length: int,
) -> int:
    """Return the folded partial sum of the pseudo-header for TCP, UDP or ICMPv6.

    IPv4 (RFC 9293 §3.1, RFC 768): source, destination, zero, protocol, 16-bit
    length. IPv6 (RFC 8200 §8.1): source, destination, 32-bit upper-layer
    length, three zero octets, Next Header. For IPv6 with a Routing header the
    destination is the final one, which the caller must pass. Feed the result
    to :func:`internet_checksum` as ``initial``.
    """
    if src.version != dst.version:
        raise ValueError("pseudo-header addresses of different IP versions")
    if not 0 <= protocol <= 255:
        raise ValueError(f"protocol out of range: {protocol}")
    if src.version == 4:
        if not 0 <= upper_layer_length <= 0xFFFF:
            raise ValueError(f"IPv4 upper-layer length out of range: {upper_layer_length}")
        tail = struct.pack("!BBH", 0, protocol, upper_layer_length)
    else:
        if not 0 <= upper_layer_length <= 0xFFFF_FFFF:
            raise ValueError(f"IPv6 upper-layer length out of range: {upper_layer_length}")
        tail = struct.pack("!IxxxB", upper_layer_length, protocol)
    return checksum_partial(src.packed + dst.packed + tail)


def transport_checksum(
    src: IPv4Address | IPv6Address,
    dst: IPv4Address | IPv6Address,
    protocol: int,
    segment: bytes | bytearray | memoryview,
) -> int:
    """Return the checksum of a TCP/UDP/ICMPv6 ``segment`` including its pseudo-header.

    Over a segment whose checksum field is zero this is the value to store; over
    a segment with a correct checksum it is 0. UDP senders transmit a computed
    0 as 0xFFFF (RFC 768; over IPv6 a zero UDP checksum is invalid, RFC 8200 §8.1).
    """
    partial = pseudo_header_partial(src, dst, protocol, len(segment))
    return internet_checksum(segment, partial)


def build_ipv4_header(
    src: IPv4Address,
    dst: IPv4Address,
    protocol: int,
    payload_length: int,
    *,
    ttl: int = 64,
    tos: int = 0,
    identification: int = 0,
    dont_fragment: bool = True,
) -> bytes:
    """Return a 20-octet IPv4 header (no options) with its checksum filled in.

    The defaults describe an atomic datagram (DF set, not a fragment), for which
    RFC 6864 §4.1 allows any Identification, including 0.
    """
    if not 0 <= payload_length <= IP_MAX_PACKET - IPV4_MIN_HEADER:
        raise ValueError(f"IPv4 payload length out of range: {payload_length}")
    if not 0 <= ttl <= 255 or not 0 <= tos <= 255 or not 0 <= protocol <= 255:
        raise ValueError("ttl, tos and protocol must each fit in one octet")
    flags = _IPV4_DF if dont_fragment else 0
    header = bytearray(
        _V4_HEAD.pack(
            0x45,
            tos,
            IPV4_MIN_HEADER + payload_length,
            identification & 0xFFFF,
            flags,
            ttl,
            protocol,
            0,
            src.packed,
            dst.packed,
        )
    )
    struct.pack_into("!H", header, 10, internet_checksum(header))
    return bytes(header)


def build_ipv6_header(
    src: IPv6Address,
    dst: IPv6Address,
    next_header: int,
    payload_length: int,
    *,
    hop_limit: int = 64,
    traffic_class: int = 0,
    flow_label: int = 0,
) -> bytes:
    """Return a 40-octet IPv6 header (RFC 8200 §3)."""
    if not 0 <= payload_length <= IP_MAX_PACKET:
        raise ValueError(f"IPv6 payload length out of range: {payload_length}")
    if not 0 <= hop_limit <= 255 or not 0 <= traffic_class <= 255 or not 0 <= next_header <= 255:
        raise ValueError("hop_limit, traffic_class and next_header must each fit in one octet")
    if not 0 <= flow_label <= 0xFFFFF:
        raise ValueError(f"flow label out of range: {flow_label}")
    first = (6 << 28) | (traffic_class << 20) | flow_label
    return _V6_HEAD.pack(first, payload_length, next_header, hop_limit, src.packed, dst.packed)
