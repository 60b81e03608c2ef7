"""masque.ippacket: parsing, validation, checksums and TTL handling.

scapy is the independent oracle: packets are built with it and parsed with
ours, and the headers and checksums we build are dissected and recomputed by it.
"""

from __future__ import annotations

import contextlib
import struct
from ipaddress import IPv4Address, IPv6Address, ip_address
from typing import cast

import pytest
from hypothesis import assume, given, settings
from hypothesis import strategies as st
from scapy.layers.inet import ICMP, IP, TCP, UDP
from scapy.layers.inet6 import (
    MIP6MH_BRR,
    ICMPv6EchoRequest,
    IPv6,
    IPv6ExtHdrDestOpt,
    IPv6ExtHdrFragment,
    IPv6ExtHdrHopByHop,
    IPv6ExtHdrRouting,
)
from scapy.layers.ipsec import AH, ESP
from scapy.packet import Packet, Raw
from scapy.utils import checksum as scapy_checksum

from masque.errors import PacketError
from masque.ippacket import (
    IPV6_EXTENSION_HEADERS,
    IPHeader,
    IpProto,
    build_ipv4_header,
    build_ipv6_header,
    checksum_adjust,
    checksum_partial,
    decrement_ttl,
    internet_checksum,
    ipv4_header_checksum_ok,
    is_link_local,
    is_link_scoped,
    parse_ip_packet,
    pseudo_header_partial,
    transport_checksum,
)

V4_SRC = "192.0.2.1"
V4_DST = "198.51.100.7"
V6_SRC = "2001:db8::1"
V6_DST = "2001:db8:1::2"


def reference_checksum_partial(data: bytes, initial: int = 0) -> int:
    """RFC 1071 §4.1 written as plainly as possible: words, sum, end-around carry."""
    if len(data) % 2:
        data += b"\x00"
    total = initial
    for (word,) in struct.iter_unpack("!H", data):
        total += word
    while total >> 16:
        total = (total & 0xFFFF) + (total >> 16)
    return total


def upper_offset(packet: Packet, upper: type[Packet]) -> int:
    """Octets before the ``upper`` layer, as scapy lays the packet out.

    An opaque payload is ``Raw`` only while no scapy layer claims its protocol
    number (importing ``scapy.all`` elsewhere binds SCTP to 132): then take the
    innermost layer that follows the network header chain.
    """
    layer = packet.getlayer(upper)
    if layer is None and upper is Raw:
        layer = packet.payload
        while str(layer.name).startswith("IPv6 Extension"):
            layer = layer.payload
    assert layer is not None, f"scapy found no {upper.__name__} layer"
    return len(bytes(packet)) - len(bytes(layer))


# --- parsing, checked against scapy --------------------------------------------------


@pytest.mark.parametrize(
    ("packet", "upper", "protocol"),
    [
        (IP(src=V4_SRC, dst=V4_DST, ttl=17) / TCP(sport=1, dport=2), TCP, 6),
        (IP(src=V4_SRC, dst=V4_DST) / UDP() / b"payload", UDP, 17),
        (IP(src=V4_SRC, dst=V4_DST) / ICMP(type=8) / b"ping", ICMP, 1),
        # IHL 6: one NOP option plus End of Options padding (RFC 791 §3.1).
        (IP(src=V4_SRC, dst=V4_DST, options=b"\x01\x01\x01\x00") / UDP(), UDP, 17),
        (IP(src=V4_SRC, dst=V4_DST, proto=132) / Raw(b"\x00" * 12), Raw, 132),
    ],
)
def test_ipv4_matches_scapy(packet: Packet, upper: type[Packet], protocol: int) -> None:
    wire = bytes(packet)
    dissected = IP(wire)
    header = parse_ip_packet(wire)
    assert header == IPHeader(
        version=4,
        src=IPv4Address(dissected.src),
        dst=IPv4Address(dissected.dst),
        protocol=protocol,
        ttl=dissected.ttl,
        header_length=dissected.ihl * 4,
        total_length=dissected.len,
    )
    assert header.header_length == upper_offset(dissected, upper)
    assert not header.is_fragment


def test_ipv4_fragments() -> None:
    data = bytes(UDP(sport=7, dport=9) / (b"z" * 100))
    first_wire = bytes(IP(src=V4_SRC, dst=V4_DST, flags="MF", proto=17, frag=0) / data[:48])
    second_wire = bytes(IP(src=V4_SRC, dst=V4_DST, proto=17, frag=6) / data[48:])

    head = parse_ip_packet(first_wire)
    assert (head.fragment_offset, head.more_fragments, head.is_fragment) == (0, True, True)
    assert not head.is_non_first_fragment

    tail = parse_ip_packet(second_wire)
    # A non-first fragment has no UDP header, but the protocol is still reported.
    assert tail.protocol == 17
    assert (tail.fragment_offset, tail.more_fragments) == (48, False)
    assert tail.is_non_first_fragment
    assert tail.header_length == 20
    assert tail.payload_length == len(data) - 48


# Extension header chains: scapy builds them, ours must walk them to the upper layer.
EXT_CHAINS = [
    pytest.param(
        IPv6(src=V6_SRC, dst=V6_DST)
        / IPv6ExtHdrHopByHop()
        / IPv6ExtHdrRouting()
        / IPv6ExtHdrFragment()
        / IPv6ExtHdrDestOpt()
        / TCP(),
        TCP,
        6,
        (0, 43, 44, 60),
        id="hbh-rt-frag-dst-tcp",
    ),
    pytest.param(
        IPv6(src=V6_SRC, dst=V6_DST)
        / IPv6ExtHdrHopByHop()
        / IPv6ExtHdrRouting(addresses=["2001:db8::a", "2001:db8::b"])
        / IPv6ExtHdrFragment()
        / IPv6ExtHdrDestOpt()
        / UDP()
        / b"data",
        UDP,
        17,
        (0, 43, 44, 60),
        id="hbh-rt(40)-frag-dst-udp",
    ),
    pytest.param(
        IPv6(src=V6_SRC, dst=V6_DST)
        / IPv6ExtHdrHopByHop()
        / IPv6ExtHdrDestOpt()
        / IPv6ExtHdrRouting()
        / IPv6ExtHdrFragment()
        / IPv6ExtHdrDestOpt()
        / ICMPv6EchoRequest(),
        ICMPv6EchoRequest,
        58,
        (0, 60, 43, 44, 60),
        id="hbh-dst-rt-frag-dst-icmpv6",
    ),
    pytest.param(
        IPv6(src=V6_SRC, dst=V6_DST) / ICMPv6EchoRequest(data=b"x" * 30),
        ICMPv6EchoRequest,
        58,
        (),
        id="no-extension",
    ),
    pytest.param(
        # AH Payload Len 4: (4 + 2) * 4 = 24 octets with a 96-bit ICV (RFC 4302 §2.2).
        IPv6(src=V6_SRC, dst=V6_DST) / AH(nh=17, payloadlen=4, icv=b"\x00" * 12) / UDP(),
        UDP,
        17,
        (51,),
        id="ah-udp",
    ),
    pytest.param(
        IPv6(src=V6_SRC, dst=V6_DST) / IPv6ExtHdrDestOpt() / ESP(spi=1, data=b"\x00" * 24),
        ESP,
        50,
        (60,),
        id="dst-esp-stops",
    ),
    pytest.param(
        # A Mobility Header message carries Payload Proto 59 (RFC 6275 §6.1.1).
        IPv6(src=V6_SRC, dst=V6_DST) / MIP6MH_BRR(),
        None,
        59,
        (135,),
        id="mobility-then-none",
    ),
    pytest.param(
        IPv6(src=V6_SRC, dst=V6_DST, nh=59),
        None,
        59,
        (),
        id="no-next-header",
    ),
]


@pytest.mark.parametrize(("packet", "upper", "protocol", "chain"), EXT_CHAINS)
def test_ipv6_extension_walk_matches_scapy(
    packet: Packet, upper: type[Packet] | None, protocol: int, chain: tuple[int, ...]
) -> None:
    wire = bytes(packet)
    dissected = IPv6(wire)
    header = parse_ip_packet(wire)
    assert header.version == 6
    assert header.src == IPv6Address(dissected.src)
    assert header.dst == IPv6Address(dissected.dst)
    assert header.ttl == dissected.hlim
    assert header.total_length == 40 + dissected.plen == len(wire)
    assert header.protocol == protocol
    assert header.extension_headers == chain
    # Measured on the packet as built: scapy does not dissect past AH (it cannot
    # know the ICV length), so the dissected copy is no use there.
    expected_offset = len(wire) if upper is None else upper_offset(packet, upper)
    assert header.header_length == expected_offset
    # An atomic fragment (offset 0, M 0: RFC 6946) is not a fragment.
    assert not header.is_fragment


def test_ipv6_chain_byte_by_byte() -> None:
    packet = bytes.fromhex(
        "60000000"  # version 6, traffic class 0, flow label 0
        "0040"  # payload length 64 = 8 + 8 + 8 + 16 + 20 + 4
        "00"  # next header: Hop-by-Hop Options
        "05"  # hop limit 5
        "20010db8000000000000000000000001"  # source 2001:db8::1
        "20010db8000000000000000000000002"  # destination 2001:db8::2
        "2b00"  # Hop-by-Hop (8 octets): next Routing 43, Hdr Ext Len 0
        "0104" "00000000"  # PadN option with 4 octets of padding
        "2c00"  # Routing (8 octets): next Fragment 44, Hdr Ext Len 0
        "0400" "00000000"  # routing type 4, segments left 0, 4 octets of data
        "3c00"  # Fragment (8 octets): next Destination Options 60, reserved
        "0001" "12345678"  # offset 0, M 1; identification
        "0601"  # Destination Options (16 octets): next TCP 6, Hdr Ext Len 1
        "010c" "000000000000000000000000"  # PadN option with 12 octets of padding
        "00010002" "00000000" "00000000"  # TCP: ports 1 -> 2, sequence, acknowledgment
        "5002ffff" "00000000"  # data offset 5, SYN, window; checksum, urgent pointer
        "64617461"  # 4 octets of data: the fragment carries 40 octets, a multiple of 8
    )  # fmt: skip
    header = parse_ip_packet(packet)
    assert header.protocol == IpProto.TCP
    assert header.header_length == 80
    assert header.total_length == 104
    assert header.ttl == 5
    assert header.extension_headers == (0, 43, 44, 60)
    assert (header.fragment_offset, header.more_fragments) == (0, True)
    assert header.is_fragment and not header.is_non_first_fragment


@pytest.mark.parametrize("ext_type", [135, 139, 140, 253, 254])
def test_ipv6_registry_extension_headers_use_common_layout(ext_type: int) -> None:
    # RFC 8200 §4.8 layout: Next Header, Hdr Ext Len (8-octet units past 8), data.
    ext = bytes([IpProto.UDP, 1]) + bytes(14)  # 16 octets, then UDP
    udp = bytes(UDP(sport=5, dport=6))
    packet = bytes(IPv6(src=V6_SRC, dst=V6_DST, nh=ext_type)) + ext + udp
    packet = packet[:4] + struct.pack("!H", len(ext) + len(udp)) + packet[6:]
    header = parse_ip_packet(packet)
    assert header.protocol == IpProto.UDP
    assert header.header_length == 56
    assert header.extension_headers == (ext_type,)
    assert ext_type in IPV6_EXTENSION_HEADERS


def test_ipv6_non_first_fragment_stops_the_walk() -> None:
    # Offset 1232, M 0; the Fragment header's Next Header names the payload's
    # first header, which is not in this packet.
    fragment = IPv6ExtHdrFragment(nh=17, offset=154, m=0, id=9)
    packet = bytes(IPv6(src=V6_SRC, dst=V6_DST) / IPv6ExtHdrHopByHop() / fragment / (b"q" * 40))
    header = parse_ip_packet(packet)
    assert header.protocol == 17
    assert header.fragment_offset == 154 * 8
    assert header.is_non_first_fragment
    assert header.header_length == 40 + 8 + 8
    assert header.extension_headers == (0, 44)


def test_ipv6_non_first_fragment_does_not_walk_its_data() -> None:
    # The data starts with bytes that look like a truncated extension header:
    # a parser that kept walking would reject a valid fragment.
    fragment = IPv6ExtHdrFragment(nh=60, offset=1, m=0)
    packet = bytes(IPv6(src=V6_SRC, dst=V6_DST) / fragment / b"\x06\xff\x00\x00\x00\x00\x00\x00")
    header = parse_ip_packet(packet)
    assert header.protocol == 60
    assert header.header_length == 48


ip_addresses = st.one_of(
    st.builds(IPv4Address, st.integers(0, 2**32 - 1)),
    st.builds(IPv6Address, st.integers(0, 2**128 - 1)),
)


@settings(max_examples=150)
@given(
    src_int=st.integers(0, 2**32 - 1),
    dst_int=st.integers(0, 2**32 - 1),
    ttl=st.integers(0, 255),
    proto=st.integers(0, 255),
    tos=st.integers(0, 255),
    ident=st.integers(0, 0xFFFF),
    options=st.integers(0, 10).map(lambda n: b"\x01" * (4 * n)),
    payload=st.binary(max_size=300),
)
def test_ipv4_random_headers_match_scapy(
    src_int: int,
    dst_int: int,
    ttl: int,
    proto: int,
    tos: int,
    ident: int,
    options: bytes,
    payload: bytes,
) -> None:
    src, dst = IPv4Address(src_int), IPv4Address(dst_int)
    wire = bytes(
        IP(src=str(src), dst=str(dst), ttl=ttl, proto=proto, tos=tos, id=ident, options=options)
        / Raw(payload)
    )
    header = parse_ip_packet(wire)
    dissected = IP(wire)
    assert (header.src, header.dst) == (src, dst)
    assert (header.protocol, header.ttl) == (dissected.proto, dissected.ttl)
    assert header.header_length == dissected.ihl * 4 == 20 + len(options)
    assert header.total_length == dissected.len == len(wire)
    assert ipv4_header_checksum_ok(wire)


EXT_CODES = {"hbh": 0, "dst": 60, "rt": 43, "frag": 44, "ah": 51}


def _ext_layer(name: str, nh: int) -> Packet:
    if name == "hbh":
        return IPv6ExtHdrHopByHop(nh=nh)
    if name == "dst":
        return IPv6ExtHdrDestOpt(nh=nh)
    if name == "rt":
        return IPv6ExtHdrRouting(nh=nh)
    if name == "frag":
        return IPv6ExtHdrFragment(nh=nh)
    # AH Payload Len 4: 24 octets with a 96-bit ICV (RFC 4302 §2.2).
    return AH(nh=nh, payloadlen=4, icv=b"\x00" * 12)


@settings(max_examples=150)
@given(
    src_int=st.integers(0, 2**128 - 1),
    dst_int=st.integers(0, 2**128 - 1),
    hlim=st.integers(0, 255),
    with_hbh=st.booleans(),
    layers=st.lists(st.sampled_from(["dst", "rt", "frag", "ah"]), max_size=6),
    upper=st.sampled_from(["tcp", "udp", "icmpv6", "exp253"]),
    payload=st.binary(max_size=200),
)
def test_ipv6_random_chains_match_scapy(
    src_int: int,
    dst_int: int,
    hlim: int,
    with_hbh: bool,
    layers: list[str],
    upper: str,
    payload: bytes,
) -> None:
    # Hop-by-Hop only ever directly after the IPv6 header (RFC 8200 §4.3).
    if with_hbh:
        layers = ["hbh", *layers]
    upper_nh = {"tcp": 6, "udp": 17, "icmpv6": 58, "exp253": 253}[upper]
    next_headers = [EXT_CODES[name] for name in layers[1:]] + [upper_nh] * bool(layers)
    first_nh = EXT_CODES[layers[0]] if layers else upper_nh
    packet: Packet = IPv6(
        src=str(IPv6Address(src_int)), dst=str(IPv6Address(dst_int)), hlim=hlim, nh=first_nh
    )
    for name, nh in zip(layers, next_headers, strict=True):
        packet = packet / _ext_layer(name, nh)
    upper_cls: type[Packet] | None = {"tcp": TCP, "udp": UDP, "icmpv6": ICMPv6EchoRequest}.get(
        upper
    )
    # 253 (experimentation) is an extension header too: common layout, then No Next Header.
    upper_layer = upper_cls() if upper_cls else Raw(bytes([59, 0]) + bytes(6))
    built = packet / upper_layer / Raw(payload)
    wire = bytes(built)
    header = parse_ip_packet(wire)
    chain = tuple(EXT_CODES[name] for name in layers)
    assert header.ttl == hlim
    assert header.total_length == len(wire)
    if upper_cls is None:
        assert header.protocol == 59
        assert header.extension_headers == (*chain, 253)
        assert header.header_length == len(wire) - len(payload)
    else:
        assert header.protocol == upper_nh
        assert header.extension_headers == chain
        assert header.header_length == upper_offset(built, upper_cls)
        if "ah" not in layers:  # scapy does not dissect past AH
            dissected = IPv6(wire)
            assert upper_cls in dissected
            assert header.header_length == upper_offset(dissected, upper_cls)


# --- invalid packets, one rule each ---------------------------------------------------


def _v4() -> bytes:
    return bytes(IP(src=V4_SRC, dst=V4_DST) / UDP() / b"12345678")


def _with(wire: bytes, offset: int, value: bytes) -> bytes:
    return wire[:offset] + value + wire[offset + len(value) :]


def _v4_rechecksummed(wire: bytes) -> bytes:
    ihl = (wire[0] & 0x0F) * 4
    header = bytearray(wire[:ihl])
    header[10:12] = b"\x00\x00"
    header[10:12] = struct.pack("!H", internet_checksum(header))
    return bytes(header) + wire[ihl:]


V4_GOOD = _v4()
V6_GOOD = bytes(IPv6(src=V6_SRC, dst=V6_DST) / UDP() / b"12345678")

INVALID = [
    pytest.param(b"", "empty", id="empty"),
    pytest.param(b"\x50" + bytes(39), "bad-version", id="version-5"),
    pytest.param(b"\x00" + bytes(39), "bad-version", id="version-0"),
    pytest.param(V4_GOOD[:19], "ipv4-too-short", id="v4-19-octets"),
    pytest.param(_with(V4_GOOD, 0, b"\x44"), "ipv4-ihl-too-small", id="v4-ihl-4"),
    pytest.param(_with(V4_GOOD, 0, b"\x4f"), "ipv4-header-truncated", id="v4-ihl-15"),
    pytest.param(
        _v4_rechecksummed(_with(V4_GOOD, 2, b"\x00\x13")),
        "ipv4-total-length-too-small",
        id="v4-total-19",
    ),
    pytest.param(V4_GOOD[:-1], "ipv4-truncated", id="v4-truncated"),
    pytest.param(V4_GOOD + b"\x00", "ipv4-trailing-bytes", id="v4-trailing"),
    pytest.param(_with(V4_GOOD, 10, b"\x00\x00"), "ipv4-bad-checksum", id="v4-checksum"),
    pytest.param(
        _v4_rechecksummed(_with(V4_GOOD, 6, b"\x1f\xff")),  # offset 65528 + 16 octets
        "ipv4-fragment-overflow",
        id="v4-ping-of-death",
    ),
    pytest.param(
        bytes(IP(src=V4_SRC, dst=V4_DST, flags="MF") / b"123456789"),
        "ipv4-fragment-misaligned",
        id="v4-fragment-9-octets",
    ),
    pytest.param(V6_GOOD[:39], "ipv6-too-short", id="v6-39-octets"),
    pytest.param(V6_GOOD[:-1], "ipv6-truncated", id="v6-truncated"),
    pytest.param(V6_GOOD + b"\x00", "ipv6-trailing-bytes", id="v6-trailing"),
    pytest.param(
        bytes(IPv6(src=V6_SRC, dst=V6_DST, nh=0, plen=1)) + b"\x11",
        "ipv6-truncated-extension-header",
        id="v6-ext-1-octet",
    ),
    pytest.param(
        bytes(IPv6(src=V6_SRC, dst=V6_DST, nh=60, plen=8)) + b"\x11\x01" + bytes(6),
        "ipv6-truncated-extension-header",
        id="v6-ext-len-beyond-payload",
    ),
    pytest.param(
        bytes(IPv6(src=V6_SRC, dst=V6_DST, nh=44, plen=4)) + b"\x11\x00\x00\x00",
        "ipv6-truncated-extension-header",
        id="v6-fragment-header-4-octets",
    ),
    pytest.param(
        bytes(IPv6(src=V6_SRC, dst=V6_DST, nh=51, plen=8)) + b"\x11\x04" + bytes(6),
        "ipv6-truncated-extension-header",
        id="v6-ah-len-beyond-payload",
    ),
    pytest.param(
        # A first fragment must carry the whole chain (RFC 8200 §4.5, RFC 7112).
        bytes(
            IPv6(src=V6_SRC, dst=V6_DST)
            / IPv6ExtHdrFragment(nh=60, m=1)
            / Raw(b"\x11\x02" + bytes(6))  # Destination Options claiming 24 octets
        ),
        "ipv6-truncated-extension-header",
        id="v6-first-fragment-cuts-chain",
    ),
    pytest.param(
        # Payload Length 0 with a Jumbo option (RFC 2675) is read literally.
        bytes(IPv6(src=V6_SRC, dst=V6_DST, nh=0, plen=0)),
        "ipv6-truncated-extension-header",
        id="v6-jumbogram",
    ),
    pytest.param(
        bytes(IPv6(src=V6_SRC, dst=V6_DST) / IPv6ExtHdrDestOpt() / IPv6ExtHdrHopByHop() / UDP()),
        "ipv6-hop-by-hop-not-first",
        id="v6-hbh-second",
    ),
    pytest.param(
        bytes(IPv6(src=V6_SRC, dst=V6_DST) / IPv6ExtHdrFragment(nh=17, offset=8190) / bytes(16)),
        "ipv6-fragment-overflow",
        id="v6-fragment-overflow",
    ),
    pytest.param(
        bytes(IPv6(src=V6_SRC, dst=V6_DST) / IPv6ExtHdrFragment(nh=17, m=1) / bytes(12)),
        "ipv6-fragment-misaligned",
        id="v6-fragment-12-octets",
    ),
]


@pytest.mark.parametrize(("packet", "rule"), INVALID)
def test_invalid_packets_name_the_rule(packet: bytes, rule: str) -> None:
    with pytest.raises(PacketError) as info:
        parse_ip_packet(packet)
    assert info.value.rule == rule
    # The same bytes in every buffer type fail the same way.
    for buffer in (bytearray(packet), memoryview(packet)):
        with pytest.raises(PacketError) as again:
            parse_ip_packet(buffer)
        assert again.value.rule == rule


def test_checksum_verification_can_be_skipped() -> None:
    broken = _with(V4_GOOD, 10, b"\x00\x00")
    assert parse_ip_packet(broken, verify_checksum=False).protocol == 17
    assert not ipv4_header_checksum_ok(broken)
    assert ipv4_header_checksum_ok(V4_GOOD)


@pytest.mark.parametrize("packet", [b"", b"\x45" * 19, b"\x44" + bytes(19), b"\x46" + bytes(21)])
def test_checksum_ok_is_false_for_headers_that_do_not_fit(packet: bytes) -> None:
    assert not ipv4_header_checksum_ok(packet)


@given(st.binary(max_size=120))
def test_random_bytes_raise_only_packet_error(data: bytes) -> None:
    with contextlib.suppress(PacketError):
        parse_ip_packet(data)


@given(st.sampled_from([0x45, 0x46, 0x4F, 0x60]), st.binary(max_size=200))
def test_random_bytes_behind_a_plausible_version_raise_only_packet_error(
    first: int, rest: bytes
) -> None:
    data = bytes([first]) + rest
    with contextlib.suppress(PacketError):
        parse_ip_packet(data, verify_checksum=False)
    with contextlib.suppress(PacketError):
        parse_ip_packet(data)


@given(st.data())
def test_mutated_valid_packets_raise_only_packet_error(data: st.DataObject) -> None:
    base = data.draw(
        st.sampled_from(
            [V4_GOOD, V6_GOOD, *(bytes(cast(Packet, chain.values[0])) for chain in EXT_CHAINS)]
        )
    )
    buf = bytearray(base)
    for _ in range(data.draw(st.integers(1, 6))):
        buf[data.draw(st.integers(0, len(buf) - 1))] = data.draw(st.integers(0, 255))
    cut = data.draw(st.integers(0, len(buf)))
    for candidate in (bytes(buf), bytes(buf[:cut])):
        try:
            header = parse_ip_packet(candidate, verify_checksum=False)
        except PacketError:
            continue
        # Whatever parses is self-consistent.
        assert header.total_length == len(candidate)
        assert 0 < header.header_length <= header.total_length


# --- addresses -----------------------------------------------------------------------


@pytest.mark.parametrize(
    ("address", "link_local", "link_scoped"),
    [
        ("169.254.0.1", True, True),
        ("169.254.255.255", True, True),
        ("169.253.255.255", False, False),
        ("169.255.0.0", False, False),
        ("224.0.0.251", False, True),  # mDNS: Local Network Control Block
        ("224.0.1.1", False, False),
        ("10.0.0.1", False, False),
        ("fe80::1", True, True),
        ("febf:ffff::1", True, True),  # still inside fe80::/10
        ("fec0::1", False, False),
        ("fe7f::1", False, False),
        ("ff02::1", False, True),
        ("ff12::1:2", False, True),  # transient, link scope
        ("ff01::1", False, True),  # interface-local
        ("ff05::1:3", False, False),  # site-local multicast
        ("ff0e::1", False, False),
        ("2001:db8::1", False, False),
    ],
)
def test_link_local_and_link_scoped(address: str, link_local: bool, link_scoped: bool) -> None:
    addr = ip_address(address)
    assert is_link_local(addr) is link_local
    assert is_link_scoped(addr) is link_scoped
    assert is_link_local(addr) == addr.is_link_local  # the stdlib agrees on unicast


# --- checksums -----------------------------------------------------------------------


def test_rfc1071_known_answer() -> None:
    header = bytes.fromhex("450000730000400040110000c0a80001c0a800c7")
    assert internet_checksum(header) == 0xB861
    assert internet_checksum(header[:10] + b"\xb8\x61" + header[12:]) == 0


@given(st.binary(max_size=1500), st.integers(0, 0xFFFF_FFFF))
def test_checksum_matches_reference_and_scapy(data: bytes, initial: int) -> None:
    assert checksum_partial(data, initial) == reference_checksum_partial(data, initial)
    assert internet_checksum(data) == scapy_checksum(data)
    assert internet_checksum(memoryview(data)) == internet_checksum(bytearray(data))


@given(st.binary(max_size=300), st.binary(max_size=300))
def test_partial_sums_chain(head: bytes, tail: bytes) -> None:
    if len(head) % 2:
        head += b"\x00"
    assert internet_checksum(tail, checksum_partial(head)) == internet_checksum(head + tail)


def test_checksum_of_zeros_and_ones() -> None:
    assert checksum_partial(b"") == 0
    assert checksum_partial(bytes(20)) == 0
    assert internet_checksum(bytes(20)) == 0xFFFF
    assert checksum_partial(b"\xff\xff") == 0xFFFF
    assert checksum_partial(b"\xff\xff\x00\x01") == 0x0001  # 0x10000 folds to 1
    with pytest.raises(ValueError):
        checksum_partial(b"", -1)


def test_rfc1624_worked_example() -> None:
    # RFC 1624 §4: sum of the other octets 0xCD7A, m 0x5555 -> m' 0x3285.
    # Eqn. 2 would give 0xFFFF; eqn. 3 and full recomputation give 0x0000.
    assert internet_checksum(struct.pack("!HH", 0xCD7A, 0x5555)) == 0xDD2F
    assert internet_checksum(struct.pack("!HH", 0xCD7A, 0x3285)) == 0x0000
    assert checksum_adjust(0xDD2F, 0x5555, 0x3285) == 0x0000


@given(
    words=st.lists(st.integers(0, 0xFFFF), min_size=1, max_size=40),
    index=st.integers(0),
    new_word=st.integers(0, 0xFFFF),
)
def test_rfc1624_incremental_equals_full_recomputation(
    words: list[int], index: int, new_word: int
) -> None:
    index %= len(words)
    before = struct.pack(f"!{len(words)}H", *words)
    changed = list(words)
    changed[index] = new_word
    after = struct.pack(f"!{len(changed)}H", *changed)
    # All-zero data is the one input where +0 and -0 differ (its checksum must be
    # 0xFFFF); no IP header is all zero, the version nibble alone prevents it.
    assume(any(changed))
    full = internet_checksum(after)
    assert checksum_adjust(internet_checksum(before), words[index], new_word) == full


ipv4_headers = st.builds(
    lambda src, dst, ttl, proto, tos, ident, frag, options: _v4_header(
        src, dst, ttl, proto, tos, ident, frag, options
    ),
    st.integers(0, 2**32 - 1),
    st.integers(0, 2**32 - 1),
    st.integers(2, 255),
    st.integers(0, 255),
    st.integers(0, 255),
    st.integers(0, 0xFFFF),
    st.integers(0, 0xFFFF),
    st.binary(max_size=40).map(lambda b: b + bytes(-len(b) % 4)),
)


def _v4_header(
    src: int, dst: int, ttl: int, proto: int, tos: int, ident: int, frag: int, options: bytes
) -> bytearray:
    ihl = 5 + len(options) // 4
    header = bytearray(
        struct.pack("!BBHHHBBH4s4s", 0x40 | ihl, tos, ihl * 4, ident, frag, ttl, proto, 0,
                    src.to_bytes(4, "big"), dst.to_bytes(4, "big"))
        + options
    )  # fmt: skip
    header[10:12] = struct.pack("!H", internet_checksum(header))
    return header


def _full_checksum(header: bytes | bytearray) -> int:
    scratch = bytearray(header)
    scratch[10:12] = b"\x00\x00"
    return internet_checksum(scratch)


@settings(max_examples=500)
@given(ipv4_headers)
def test_decrement_ttl_incremental_checksum_equals_full(header: bytearray) -> None:
    ttl = header[8]
    assert decrement_ttl(header) == ttl - 1
    assert header[8] == ttl - 1
    assert struct.unpack_from("!H", header, 10)[0] == _full_checksum(header)
    assert ipv4_header_checksum_ok(header)
    # scapy agrees: its checksum over the header with the field zeroed ...
    zeroed = bytes(header[:10]) + b"\x00\x00" + bytes(header[12:])
    assert scapy_checksum(zeroed) == struct.unpack_from("!H", header, 10)[0]
    if len(header) == 20:
        # ... and so does a rebuild after deleting the field (options, which
        # scapy may re-encode, are left out of this one).
        dissected = IP(bytes(header))
        del dissected.chksum
        assert bytes(dissected) == bytes(header)


def _header_with_checksum(target_sum_after: bool, ttl: int) -> bytearray:
    """An IPv4 header whose checksum is 0x0000 before (or after) one decrement.

    The checksum is 0x0000 exactly when the other words sum to 0xFFFF; the
    Identification word is chosen to make that so.
    """
    header = _v4_header(0xC0000201, 0xC6336407, ttl - 1 if target_sum_after else ttl, 17, 0, 0,
                        0x4000, b"")  # fmt: skip
    header[10:12] = b"\x00\x00"
    header[4:6] = struct.pack("!H", 0xFFFF - checksum_partial(header) or 0xFFFF)
    assert internet_checksum(header) == 0x0000
    if target_sum_after:
        header[8] = ttl
    header[10:12] = struct.pack("!H", _full_checksum(header))
    return header


@pytest.mark.parametrize("ttl", [2, 3, 64, 128, 255])
def test_decrement_ttl_checksum_edges(ttl: int) -> None:
    # Checksum 0x0000 before the decrement: ~HC is 0xFFFF (negative zero).
    before = _header_with_checksum(False, ttl)
    assert before[10:12] == b"\x00\x00"
    decrement_ttl(before)
    assert struct.unpack_from("!H", before, 10)[0] == _full_checksum(before)
    # Checksum 0x0000 after the decrement: eqn. 2 would have produced 0xFFFF.
    after = _header_with_checksum(True, ttl)
    decrement_ttl(after)
    assert after[10:12] == b"\x00\x00"
    assert _full_checksum(after) == 0x0000
    assert ipv4_header_checksum_ok(after)


def test_decrement_ttl_checksum_ffff_field() -> None:
    # A checksum field of 0xFFFF (a sender's -0, never produced by recomputation)
    # still verifies, and stays verifying after the decrement.
    header = _header_with_checksum(False, 64)
    header[10:12] = b"\xff\xff"
    assert ipv4_header_checksum_ok(header)
    decrement_ttl(header)
    assert ipv4_header_checksum_ok(header)


@pytest.mark.parametrize("ttl", [0, 1])
@pytest.mark.parametrize("version", [4, 6])
def test_decrement_ttl_refuses_expiring_packets(ttl: int, version: int) -> None:
    wire = bytes(IP(dst=V4_DST, ttl=ttl) / UDP()) if version == 4 else bytes(
        IPv6(dst=V6_DST, hlim=ttl) / UDP()
    )  # fmt: skip
    buf = bytearray(wire)
    assert decrement_ttl(buf) == 0
    assert bytes(buf) == wire  # untouched, ready to be quoted in Time Exceeded


def test_decrement_hop_limit() -> None:
    wire = bytearray(bytes(IPv6(src=V6_SRC, dst=V6_DST, hlim=64) / UDP()))
    assert decrement_ttl(wire) == 63
    assert IPv6(bytes(wire)).hlim == 63
    view = memoryview(wire)
    assert decrement_ttl(view) == 62
    assert wire[7] == 62


@pytest.mark.parametrize(
    ("packet", "rule"),
    [
        (b"", "empty"),
        (b"\x45" + bytes(10), "ipv4-too-short"),
        (b"\x60" + bytes(30), "ipv6-too-short"),
        (b"\x70" + bytes(40), "bad-version"),
    ],
)
def test_decrement_ttl_rejects_what_is_not_a_header(packet: bytes, rule: str) -> None:
    with pytest.raises(PacketError) as info:
        decrement_ttl(bytearray(packet))
    assert info.value.rule == rule


# --- pseudo-headers and header builders, against scapy ---------------------------------


@pytest.mark.parametrize(
    "packet",
    [
        IP(src=V4_SRC, dst=V4_DST) / TCP(sport=443, dport=5555, flags="SA") / b"hello",
        IP(src=V4_SRC, dst=V4_DST) / UDP(sport=53, dport=5353) / b"odd",
        IPv6(src=V6_SRC, dst=V6_DST) / TCP(sport=1, dport=2) / (b"t" * 99),
        IPv6(src=V6_SRC, dst=V6_DST) / UDP(sport=3, dport=4) / b"",
        IPv6(src=V6_SRC, dst=V6_DST) / ICMPv6EchoRequest(id=1, seq=2, data=b"ping"),
        IPv6(src=V6_SRC, dst=V6_DST) / IPv6ExtHdrDestOpt() / UDP() / b"behind an extension",
    ],
    ids=["v4-tcp", "v4-udp", "v6-tcp", "v6-udp-empty", "v6-icmpv6", "v6-dstopt-udp"],
)
def test_transport_checksum_matches_scapy(packet: Packet) -> None:
    wire = bytes(packet)
    header = parse_ip_packet(wire)
    segment = bytearray(wire[header.header_length :])
    offset = {6: 16, 17: 6, 58: 2}[header.protocol]
    stored = struct.unpack_from("!H", segment, offset)[0]
    assert transport_checksum(header.src, header.dst, header.protocol, segment) == 0
    segment[offset : offset + 2] = b"\x00\x00"
    computed = transport_checksum(header.src, header.dst, header.protocol, segment)
    if header.protocol == 17 and computed == 0:
        computed = 0xFFFF  # RFC 768
    assert computed == stored
    partial = pseudo_header_partial(header.src, header.dst, header.protocol, len(segment))
    assert internet_checksum(segment, partial) == transport_checksum(
        header.src, header.dst, header.protocol, segment
    )


def test_pseudo_header_rejects_bad_arguments() -> None:
    v4, v6 = IPv4Address(V4_SRC), IPv6Address(V6_SRC)
    with pytest.raises(ValueError):
        pseudo_header_partial(v4, v6, 6, 20)
    with pytest.raises(ValueError):
        pseudo_header_partial(v4, v4, 256, 20)
    with pytest.raises(ValueError):
        pseudo_header_partial(v4, v4, 6, 0x10000)
    with pytest.raises(ValueError):
        pseudo_header_partial(v6, v6, 6, 2**32)


def test_build_ipv4_header_matches_scapy() -> None:
    header = build_ipv4_header(IPv4Address(V4_SRC), IPv4Address(V4_DST), 1, 36, ttl=9, tos=0x10)
    dissected = IP(header + bytes(36))
    assert (dissected.version, dissected.ihl, dissected.len) == (4, 5, 56)
    assert (dissected.ttl, dissected.proto, dissected.tos) == (9, 1, 0x10)
    assert (dissected.flags, dissected.frag, dissected.id) == ("DF", 0, 0)
    recomputed = IP(header + bytes(36))
    del recomputed.chksum
    assert bytes(recomputed)[:20] == header
    assert parse_ip_packet(header + bytes(36)).total_length == 56


def test_build_ipv6_header_matches_scapy() -> None:
    header = build_ipv6_header(
        IPv6Address(V6_SRC), IPv6Address(V6_DST), 17, 8, hop_limit=3, traffic_class=0xB8,
        flow_label=0xABCDE,
    )  # fmt: skip
    assert header == bytes(IPv6(src=V6_SRC, dst=V6_DST, nh=17, plen=8, hlim=3, tc=0xB8, fl=0xABCDE))


@pytest.mark.parametrize(
    "call",
    [
        lambda: build_ipv4_header(IPv4Address(V4_SRC), IPv4Address(V4_DST), 1, 65516),
        lambda: build_ipv4_header(IPv4Address(V4_SRC), IPv4Address(V4_DST), 1, 0, ttl=256),
        lambda: build_ipv6_header(IPv6Address(V6_SRC), IPv6Address(V6_DST), 17, 65536),
        lambda: build_ipv6_header(
            IPv6Address(V6_SRC), IPv6Address(V6_DST), 17, 0, flow_label=1 << 20
        ),
    ],
)
def test_header_builders_reject_out_of_range(call: object) -> None:
    assert callable(call)
    with pytest.raises(ValueError):
        call()


@given(ip_addresses)
def test_is_link_local_never_raises(addr: IPv4Address | IPv6Address) -> None:
    assert is_link_local(addr) == addr.is_link_local
    assert is_link_local(addr) <= is_link_scoped(addr)
