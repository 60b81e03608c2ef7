"""Benchmark inputs: 64 realistic packets, relay sessions and a table, TSO frames.

Every packet is 1280 bytes (the IPv6 minimum MTU, a typical tunnel MTU), a mix
of IPv4/IPv6 TCP/UDP with valid IP and transport checksums, built here with
``struct`` so the corpus needs nothing but the standard library and
:mod:`masque.ippacket`'s checksum helpers.

Also here: :func:`python_vnet_split`, a straightforward Python reference of
``_fastpath.vnet_split`` (TCP/UDP segmentation of a virtio_net_hdr frame).
"""

from __future__ import annotations

import struct
from ipaddress import IPv4Address, IPv4Network, IPv6Address, IPv6Network, ip_address

from masque.capsule import AssignedAddress, IpAddressRange, sort_ranges
from masque.ippacket import checksum_partial, internet_checksum
from masque.session import ConnectIpSession, Role
from relay.ipam import Assignment
from relay.sessions import Carrier, RelaySession, SessionTable

#: Packets per batch (per benchmark round).
PACKETS = 64
#: Bytes per packet.
PACKET_SIZE = 1280

TCP, UDP = 6, 17
#: (IP version, protocol) of packet ``i`` is KINDS[i % 4].
KINDS = ((4, TCP), (4, UDP), (6, TCP), (6, UDP))

#: The client's assigned addresses (the relay session's peer addresses).
CLIENT_V4 = IPv4Address("192.0.2.11")
CLIENT_V6 = IPv6Address("2001:db8::11")
#: A second client's, for the batches of two sessions (:func:`routed`).
CLIENT2_V4 = IPv4Address("192.0.2.12")
CLIENT2_V6 = IPv6Address("2001:db8::12")

Client = tuple[IPv4Address, IPv6Address]

_PATTERN = bytes(range(256))


def payload(index: int, size: int) -> bytes:
    """``size`` bytes of deterministic filler, different per packet."""
    start = (index * 37) % 256
    return (_PATTERN * (size // 256 + 2))[start : start + size]


def pseudo_sum(src: bytes, dst: bytes, proto: int, length: int) -> int:
    """Folded partial sum of the IPv4/IPv6 pseudo-header (RFC 9293 §3.1, RFC 8200 §8.1)."""
    return checksum_partial(src + dst + struct.pack("!HH", proto, length))


def transport(
    src: bytes, dst: bytes, proto: int, sport: int, dport: int, data: bytes, seq: int = 1
) -> bytes:
    """A TCP (ACK|PSH, 20-byte header) or UDP segment with a valid checksum."""
    if proto == TCP:
        head = struct.pack("!HHIIBBHHH", sport, dport, seq, 1, 5 << 4, 0x18, 65535, 0, 0)
        at = 16
    else:
        head = struct.pack("!HHHH", sport, dport, 8 + len(data), 0)
        at = 6
    segment = bytearray(head + data)
    csum = internet_checksum(segment, pseudo_sum(src, dst, proto, len(segment)))
    if proto == UDP and csum == 0:
        csum = 0xFFFF
    struct.pack_into("!H", segment, at, csum)
    return bytes(segment)


def ip_packet(
    src: IPv4Address | IPv6Address,
    dst: IPv4Address | IPv6Address,
    proto: int,
    index: int,
    size: int = PACKET_SIZE,
    *,
    sport: int = 40000,
    dport: int = 443,
) -> bytes:
    """One ``size``-byte packet from ``src`` to ``dst``, TTL 64, every checksum valid."""
    s, d = src.packed, dst.packed
    ip_len = 20 if src.version == 4 else 40
    l4_len = 20 if proto == TCP else 8
    data = payload(index, size - ip_len - l4_len)
    segment = transport(s, d, proto, sport + index, dport, data, seq=1 + index * 1000)
    if src.version == 4:
        head = bytearray(
            struct.pack("!BBHHHBBH4s4s", 0x45, 0, size, index, 0x4000, 64, proto, 0, s, d)
        )
        struct.pack_into("!H", head, 10, internet_checksum(head))
        return bytes(head) + segment
    return struct.pack("!IHBB16s16s", 0x60000000, len(segment), proto, 64, s, d) + segment


def _remote(version: int, i: int) -> IPv4Address | IPv6Address:
    if version == 4:
        return IPv4Address(f"203.0.113.{1 + i}")
    return IPv6Address(f"2001:db8:ffff::{1 + i:x}")


def _client(version: int, client: Client = (CLIENT_V4, CLIENT_V6)) -> IPv4Address | IPv6Address:
    return client[0] if version == 4 else client[1]


def from_client(client: Client = (CLIENT_V4, CLIENT_V6)) -> list[bytes]:
    """What a client sends: from its assigned address to the Internet."""
    return [
        ip_packet(_client(v, client), _remote(v, i), proto, i)
        for i, (v, proto) in ((i, KINDS[i % 4]) for i in range(PACKETS))
    ]


def to_client() -> list[bytes]:
    """What the relay reads from its TUN for that client: Internet -> assigned address."""
    return [
        ip_packet(_remote(v, i), _client(v), proto, i, sport=443, dport=40000)
        for i, (v, proto) in ((i, KINDS[i % 4]) for i in range(PACKETS))
    ]


def relay_session(client_addresses: Client = (CLIENT_V4, CLIENT_V6)) -> ConnectIpSession:
    """The relay's end of a full-tunnel session; the client got its addresses as /32, /128."""
    v4, v6 = client_addresses
    client = ConnectIpSession(Role.CLIENT)
    relay = ConnectIpSession(Role.RELAY)
    full = sort_ranges(
        [
            IpAddressRange(IPv4Address(0), IPv4Address(2**32 - 1)),
            IpAddressRange(IPv6Address(0), IPv6Address(2**128 - 1)),
        ]
    )
    client.receive_capsule_data(
        relay.assign_addresses(
            [
                AssignedAddress(0, IPv4Network(f"{v4}/32")),
                AssignedAddress(0, IPv6Network(f"{v6}/128")),
            ]
        )
        + relay.advertise_routes(full)
    )
    return relay


def routed() -> tuple[dict[int, ConnectIpSession], list[tuple[int, bytes]]]:
    """Two full-tunnel sessions (ids 1, 2) and 64 client packets, theirs alternately.

    Packet ``i`` is packet ``i`` of :func:`from_client` of session ``1 + i % 2``'s
    client: what the relay's receive loop gathers from two clients in one batch.
    """
    sessions = {1: relay_session(), 2: relay_session((CLIENT2_V4, CLIENT2_V6))}
    packets = {1: from_client(), 2: from_client((CLIENT2_V4, CLIENT2_V6))}
    return sessions, [(1 + i % 2, packets[1 + i % 2][i]) for i in range(PACKETS)]


# -- one TCP flow ---------------------------------------------------------------------


def tcp_flow(
    src: IPv4Address, dst: IPv4Address, sport: int, dport: int, seq: int, ack: int
) -> list[bytes]:
    """64 consecutive IPv4 TCP segments of PACKET_SIZE bytes of one flow, checksums valid.

    Sequence numbers from ``seq`` on, PACKET_SIZE - 40 payload bytes each, ACK on
    every segment and PSH on the last: a bulk transfer a GRO engine coalesces.
    """
    mss = PACKET_SIZE - 40
    packets = []
    for i in range(PACKETS):
        flags = 0x18 if i == PACKETS - 1 else 0x10  # ACK|PSH, ACK
        head = struct.pack(
            "!HHIIBBHHH",
            sport,
            dport,
            (seq + i * mss) & 0xFFFFFFFF,
            ack,
            5 << 4,
            flags,
            65535,
            0,
            0,
        )
        segment = bytearray(head + payload(i, mss))
        csum = internet_checksum(segment, pseudo_sum(src.packed, dst.packed, TCP, len(segment)))
        struct.pack_into("!H", segment, 16, csum)
        ip = bytearray(
            struct.pack(
                "!BBHHHBBH4s4s", 0x45, 0, PACKET_SIZE, i, 0x4000, 64, TCP, 0, src.packed, dst.packed
            )
        )
        struct.pack_into("!H", ip, 10, internet_checksum(ip))
        packets.append(bytes(ip) + bytes(segment))
    return packets


# -- the relay's session table ---------------------------------------------------------

#: Sessions in the lookup benchmark's table, each with one /32 and one /128.
SESSIONS = 1024


def session_address(version: int, k: int) -> IPv4Address | IPv6Address:
    if version == 4:
        return IPv4Address(int(IPv4Address("100.64.0.0")) + k)
    return IPv6Address(int(IPv6Address("fd00:6d71::")) + k)


def session_table() -> SessionTable:
    """A relay's table of SESSIONS sessions (ids 1..SESSIONS), as the relay fills it."""
    table = SessionTable()

    def send(_session: RelaySession, packets: list[bytes]) -> int:
        raise AssertionError("not called in benchmarks")

    def close(_session: RelaySession, _reason: str) -> None:
        raise AssertionError("not called in benchmarks")

    for k in range(SESSIONS):
        table.add(
            RelaySession(
                id=k + 1,
                peer="bench",
                stream_id=4 * k,
                carrier=Carrier.DATAGRAM,
                connect_ip=ConnectIpSession(Role.RELAY),
                assignment=Assignment(
                    IPv4Network(session_address(4, k)), IPv6Network(session_address(6, k))
                ),
                send_packets=send,
                close=close,
            )
        )
    return table


def to_sessions() -> list[bytes]:
    """Packets from the Internet to 64 different sessions of :func:`session_table`."""
    stride = SESSIONS // PACKETS
    return [
        ip_packet(_remote(v, i), session_address(v, i * stride + 3), proto, i)
        for i, (v, proto) in ((i, KINDS[i % 4]) for i in range(PACKETS))
    ]


def destination(packet: bytes) -> IPv4Address | IPv6Address | None:
    """The destination address read straight from the header (relay.dataplane's way)."""
    if not packet:
        return None
    version = packet[0] >> 4
    if version == 4 and len(packet) >= 20:
        return IPv4Address(packet[16:20])
    if version == 6 and len(packet) >= 40:
        return IPv6Address(packet[24:40])
    return None


# -- addresses for is_link_scoped ------------------------------------------------------

_LINK_SCOPED = ("169.254.7.1", "fe80::1", "224.0.0.251", "ff02::1")


def address_pairs() -> list[tuple[bytes, bytes]]:
    """(source, destination) packed, from :func:`from_client`; every 8th is link-scoped."""
    pairs = []
    for i, packet in enumerate(from_client()):
        if packet[0] >> 4 == 4:
            src, dst = packet[12:16], packet[16:20]
        else:
            src, dst = packet[8:24], packet[24:40]
        if i % 8 == 7:
            scoped = [a for a in map(ip_address, _LINK_SCOPED) if len(a.packed) == len(dst)]
            dst = scoped[(i // 8) % 2].packed
        pairs.append((src, dst))
    return pairs


# -- TSO super-segments and the Python split ----------------------------------------------

VNET_HDR = struct.Struct("<BBHHHH")  # flags, gso_type, hdr_len, gso_size, csum_start, csum_offset
VNET_F_NEEDS_CSUM = 1
GSO_NONE, GSO_TCPV4, GSO_TCPV6, GSO_UDP_L4, GSO_ECN = 0, 1, 4, 5, 0x80
_FIN, _PSH, _CWR = 0x01, 0x08, 0x80


def tso_frames() -> list[bytes]:
    """Two frames as a vnet_hdr TUN hands them over, 32 segments of 1280 bytes each.

    One IPv4 and one IPv6 TCP super-segment (the kernel's TSO output: a partial
    pseudo-header sum in the TCP checksum field, NEEDS_CSUM set), split to 64 packets.
    """
    frames = []
    for version, gso in ((4, GSO_TCPV4), (6, GSO_TCPV6)):
        src, dst = _remote(version, 0), _client(version)
        l4 = 20 if version == 4 else 40
        mss = PACKET_SIZE - l4 - 20
        whole = bytearray(ip_packet(src, dst, TCP, version, l4 + 20 + mss * PACKETS // 2))
        partial = pseudo_sum(src.packed, dst.packed, TCP, len(whole) - l4)
        struct.pack_into("!H", whole, l4 + 16, partial)
        frames.append(VNET_HDR.pack(VNET_F_NEEDS_CSUM, gso, l4 + 20, mss, l4, 16) + whole)
    return frames


def python_vnet_split(frame: bytes, mtu: int = 0) -> list[bytes]:
    """``_fastpath.vnet_split`` in Python: the packets of one vnet_hdr frame.

    GSO_NONE: the packet, its checksum completed if NEEDS_CSUM. TCPV4/TCPV6:
    ``gso_size`` (capped by ``mtu``) payload bytes per segment, lengths, IPv4 ID,
    sequence numbers and flags (FIN/PSH on the last, CWR on the first) fixed, every
    checksum recomputed. UDP_L4: one datagram per ``gso_size`` bytes.
    """
    if len(frame) < VNET_HDR.size:
        raise ValueError("frame shorter than a virtio_net_hdr")
    flags, gso_type, _hdr_len, gso_size, csum_start, csum_offset = VNET_HDR.unpack_from(frame)
    packet = frame[VNET_HDR.size :]
    gso = gso_type & ~GSO_ECN
    if gso == GSO_NONE:
        if not flags & VNET_F_NEEDS_CSUM:
            return [packet]
        at = csum_start + csum_offset
        if csum_start >= len(packet) or at + 2 > len(packet):
            raise ValueError("checksum offset outside the packet")
        out = bytearray(packet)
        csum = internet_checksum(packet[csum_start:])
        struct.pack_into("!H", out, at, 0xFFFF if csum == 0 and csum_offset == 6 else csum)
        return [bytes(out)]
    version = packet[0] >> 4
    tcp = gso in (GSO_TCPV4, GSO_TCPV6)
    if (gso, version) not in ((GSO_TCPV4, 4), (GSO_TCPV6, 6), (GSO_UDP_L4, 4), (GSO_UDP_L4, 6)):
        raise ValueError("gso_type does not match the packet")
    l4 = csum_start
    ihl = (packet[0] & 0x0F) * 4 if version == 4 else 40
    proto = TCP if tcp else UDP
    if (version == 4 and (l4 != ihl or packet[9] != proto)) or gso_size == 0:
        raise ValueError("malformed GSO frame")
    hlen = l4 + ((packet[l4 + 12] >> 4) * 4 if tcp else 8)
    seg = gso_size
    if tcp and mtu > hlen:
        seg = min(seg, mtu - hlen)
    total_payload = len(packet) - hlen
    addr_sum = checksum_partial(packet[12:20] if version == 4 else packet[8:40])
    ip_id = struct.unpack_from("!H", packet, 4)[0] if version == 4 else 0
    seq = struct.unpack_from("!I", packet, l4 + 4)[0] if tcp else 0
    tcp_flags = packet[l4 + 13] if tcp else 0
    csum_at = l4 + (16 if tcp else 6)
    header = packet[:hlen]
    segments = []
    for k, done in enumerate(range(0, max(total_payload, 1), seg)):
        data = packet[hlen + done : hlen + done + seg]
        total = hlen + len(data)
        out = bytearray(header + data)
        if version == 4:
            struct.pack_into("!HH", out, 2, total, (ip_id + k) & 0xFFFF)
            out[10:12] = b"\0\0"
            struct.pack_into("!H", out, 10, internet_checksum(out[:ihl]))
        else:
            struct.pack_into("!H", out, 4, total - 40)
        if tcp:
            f = tcp_flags
            if done + len(data) < total_payload:
                f &= ~(_FIN | _PSH)
            if k:
                f &= ~_CWR
            struct.pack_into("!I", out, l4 + 4, (seq + done) & 0xFFFFFFFF)
            out[l4 + 13] = f
        else:
            struct.pack_into("!H", out, l4 + 4, total - l4)
        out[csum_at : csum_at + 2] = b"\0\0"
        csum = internet_checksum(memoryview(out)[l4:], addr_sum + proto + total - l4)
        struct.pack_into("!H", out, csum_at, 0xFFFF if not tcp and csum == 0 else csum)
        segments.append(bytes(out))
    return segments
