"""Parity: the C packet checks in _fastpath against masque.ippacket / masque.session.

Every case goes through both implementations: the parse rule, the TTL
decrement (result and bytes) and the session verdict must be equal.
"""

from __future__ import annotations

import struct
from collections import Counter
from ipaddress import IPv4Address, IPv4Network, IPv6Address, IPv6Network, ip_address

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

import _fastpath
from _fastpath._core import UNROUTED, check_routed_batch
from masque.capsule import AssignedAddress, IpAddressRange, sort_ranges
from masque.errors import PacketError
from masque.ippacket import decrement_ttl, internet_checksum, is_link_scoped, parse_ip_packet
from masque.session import ConnectIpSession, Role, Scope, Verdict

A4, A6, V4, V6 = IPv4Address, IPv6Address, IPv4Network, IPv6Network

# ---------------------------------------------------------------------------
# Raw packet builders (no validation: they make malformed packets too)


def ipv4(
    src: str = "192.0.2.11",
    dst: str = "8.8.8.8",
    proto: int = 17,
    payload: bytes = b"\x00" * 8,
    *,
    ttl: int = 64,
    frag: int = 0,
    options: bytes = b"",
    ihl: int | None = None,
    total: int | None = None,
    checksum: int | None = None,
) -> bytes:
    header_len = 20 + len(options)
    ihl = header_len // 4 if ihl is None else ihl
    total = header_len + len(payload) if total is None else total
    head = (
        struct.pack(
            "!BBHHHBBH4s4s",
            0x40 | (ihl & 0x0F),
            0,
            total & 0xFFFF,
            0x1234,
            frag,
            ttl,
            proto,
            0,
            A4(src).packed,
            A4(dst).packed,
        )
        + options
    )
    csum = internet_checksum(head) if checksum is None else checksum
    return head[:10] + struct.pack("!H", csum) + head[12:] + payload


def ext(kind: int, next_header: int, units: int = 0, *, frag: int = 0) -> bytes:
    """One IPv6 extension header of type ``kind`` (Hdr Ext Len ``units``)."""
    if kind == 44:
        return struct.pack("!BBHI", next_header, 0, frag, 0xABCD)
    size = (units + 2) * 4 if kind == 51 else (units + 1) * 8
    return bytes([next_header, units]) + b"\x00" * (size - 2)


def ipv6(
    src: str = "2001:db8::1234:1234",
    dst: str = "2001:db8:3456::b",
    next_header: int = 17,
    body: bytes = b"\x00" * 8,
    *,
    hop_limit: int = 64,
    payload_length: int | None = None,
) -> bytes:
    plen = len(body) if payload_length is None else payload_length
    return (
        struct.pack("!IHBB", 0x60000000, plen & 0xFFFF, next_header, hop_limit)
        + A6(src).packed
        + A6(dst).packed
        + body
    )


def chain(
    kinds: list[int], last: int, payload: bytes = b"\x00" * 8, units: int = 0
) -> tuple[int, bytes]:
    """(first Next Header, bytes) of extension headers ``kinds`` ending in ``last``."""
    body = payload
    nh = last
    for kind in reversed(kinds):
        body = ext(kind, nh, units) + body
        nh = kind
    return nh, body


def ipv6_chain(kinds: list[int], last: int = 17, **kw: object) -> bytes:
    nh, body = chain(kinds, last)
    return ipv6(next_header=nh, body=body, **kw)  # type: ignore[arg-type]


# ---------------------------------------------------------------------------
# Corpus: valid packets and one or more cases per PacketError rule

GOOD_V4 = ipv4()
GOOD_V6 = ipv6()

CORPUS: list[bytes] = [
    b"",
    b"\x00",
    b"\x50" + b"\x00" * 40,
    b"\xf0" * 60,
    GOOD_V4,
    GOOD_V4[:19],
    GOOD_V4[:1],
    ipv4(ihl=4),
    ipv4(ihl=0),
    ipv4(options=b"\x01" * 8, payload=b"")[:24],  # header longer than buffer
    ipv4(ihl=15, payload=b"\x00" * 40),
    ipv4(total=19),
    ipv4(total=100),
    ipv4(total=27),
    ipv4(checksum=0),
    ipv4(checksum=0xFFFF),
    ipv4(options=b"\x01\x01\x01\x00"),
    ipv4(frag=0x2000, payload=b"\x00" * 7),  # MF, misaligned
    ipv4(frag=0x2000, payload=b"\x00" * 16),
    ipv4(frag=0x1FFF, payload=b"\x00" * 8),  # overflow
    ipv4(frag=0x1FFE, payload=b"\x00" * 8),
    ipv4(frag=0x0010, payload=b"\x00" * 3),  # last non-first fragment
    ipv4(ttl=0),
    ipv4(ttl=1),
    ipv4(ttl=2),
    ipv4(ttl=255),
    ipv4(proto=1),
    ipv4(proto=6),
    ipv4(proto=0),
    ipv4(src="169.254.0.1"),
    ipv4(dst="224.0.0.251"),
    ipv4(dst="224.0.1.1"),
    ipv4(src="198.51.100.2", dst="192.0.2.3"),
    ipv4(src="8.8.8.8", dst="192.0.2.3"),  # routed, outside the target scope
    ipv4(src="192.0.2.3", dst="198.51.100.2", proto=6),
    ipv4(src="192.0.2.3", dst="198.51.100.2", proto=1),
    GOOD_V6,
    GOOD_V6[:39],
    GOOD_V6[:-1],
    GOOD_V6 + b"\x00",
    ipv6(payload_length=0),
    ipv6(payload_length=0xFFFF),
    ipv6(hop_limit=0),
    ipv6(hop_limit=1),
    ipv6(hop_limit=2),
    ipv6(next_header=58),
    ipv6(next_header=59, body=b""),
    ipv6(next_header=50, body=b"\x00" * 3),
    ipv6(src="fe80::1"),
    ipv6(dst="ff02::1"),
    ipv6(dst="ff05::1"),
    ipv6(dst="ff01::1"),
    ipv6_chain([0]),
    ipv6_chain([0, 43, 60, 51, 135, 139, 140, 253, 254]),
    ipv6_chain([60, 0]),  # Hop-by-Hop not first
    ipv6_chain([0, 0]),
    ipv6_chain([60] * 40),  # a long chain
    ipv6_chain([44]),  # atomic fragment
    ipv6_chain([0, 44, 60]),
    ipv6_chain([51], 58),
    ipv6_chain([60], 50),
    ipv6(next_header=60, body=b"\x3c"),  # cut after one octet
    ipv6(next_header=60, body=b"\x3c\x00"),  # cut inside
    ipv6(next_header=60, body=b"\x11\x05" + b"\x00" * 14),  # length beyond payload
    ipv6(next_header=51, body=b"\x11\x01" + b"\x00" * 6),  # AH (1+2)*4 = 12 > 8
    ipv6(next_header=44, body=b"\x11\x00\x00"),  # fragment cut short
    ipv6(next_header=44, body=ext(44, 17, frag=0x0001) + b"\x00" * 7),  # misaligned
    ipv6(next_header=44, body=ext(44, 17, frag=0x0001) + b"\x00" * 16),
    ipv6(next_header=44, body=ext(44, 60, frag=0x0008) + b"\x00" * 5),  # non-first: stop
    ipv6(next_header=44, body=ext(44, 17, frag=0xFFF8) + b"\x00" * 16),  # overflow
    ipv6(next_header=44, body=ext(44, 44, frag=0x0000) + b"\x00" * 2),  # nested, truncated
    ipv6(next_header=60, body=b"\x3c\x00" + b"\x00" * 6 + b"\x3c\x00" + b"\x00" * 6),  # cut loop
    ipv6(src="2001:db8::1234:1234", dst="2001:db8:3456::b", next_header=6),
    ipv6(src="2001:db8:3456::b", dst="2001:db8::1234:1234"),
    ipv6(src="2001:db8:1::5", dst="2001:db8:2::1"),
]


def python_rule(packet: bytes) -> str:
    try:
        parse_ip_packet(packet)
    except PacketError as exc:
        return str(exc.rule)
    return ""


def c_rule(packet: bytes) -> str:
    try:
        _fastpath.parse_ip_header(packet)
    except ValueError as exc:
        return str(exc.args[0])
    return ""


def assert_parse_parity(packet: bytes) -> None:
    rule = python_rule(packet)
    assert c_rule(packet) == rule
    if not rule:
        h = parse_ip_packet(packet)
        assert _fastpath.parse_ip_header(packet) == (
            h.version,
            h.protocol,
            h.ttl,
            h.header_length,
            h.total_length,
            h.fragment_offset,
            h.more_fragments,
        )


def assert_ttl_parity(packet: bytes) -> None:
    py, c = bytearray(packet), bytearray(packet)
    try:
        expected: int | str = decrement_ttl(py)
    except PacketError as exc:
        expected = str(exc.rule)
    try:
        got: int | str = _fastpath.decrement_ttl(c)
    except ValueError as exc:
        got = str(exc.args[0])
    assert got == expected
    assert c == py


# ---------------------------------------------------------------------------
# Sessions whose policies are compared


def vpn_pair() -> tuple[ConnectIpSession, ConnectIpSession]:
    client = ConnectIpSession(Role.CLIENT)
    relay = ConnectIpSession(Role.RELAY)
    relay.receive_capsule_data(client.request_addresses([V4("0.0.0.0/32")]))
    client.receive_capsule_data(
        relay.assign_addresses([AssignedAddress(1, V4("192.0.2.11/32"))])
        + relay.advertise_routes([IpAddressRange(A4("0.0.0.0"), A4("255.255.255.255"))])
    )
    return client, relay


def scoped_pair() -> tuple[ConnectIpSession, ConnectIpSession]:
    scope = Scope(targets=(V4("198.51.100.0/25"), V6("2001:db8:3456::/48")), ipproto=17)
    client = ConnectIpSession(Role.CLIENT, scope=scope)
    relay = ConnectIpSession(Role.RELAY, scope=scope)
    client.receive_capsule_data(
        relay.assign_addresses(
            [
                AssignedAddress(0, V4("192.0.2.3/32")),
                AssignedAddress(0, V6("2001:db8::1234:1234/128")),
                AssignedAddress(0, V6("2001:db8:1::/64")),
            ]
        )
        + relay.advertise_routes(
            sort_ranges(
                [
                    IpAddressRange(A4("198.51.100.2"), A4("198.51.100.2"), 17),
                    IpAddressRange(A4("198.51.100.0"), A4("198.51.100.127"), 6),
                    IpAddressRange(A4("8.0.0.0"), A4("8.255.255.255")),
                    IpAddressRange(A6("2001:db8:3456::b"), A6("2001:db8:3456::b"), 17),
                    IpAddressRange(A6("2001:db8:2::"), A6("2001:db8:2::ffff"), 0),
                ]
            )
        )
    )
    relay.receive_capsule_data(
        client.advertise_routes([IpAddressRange(A4("10.0.0.0"), A4("10.255.255.255"), 17)])
    )
    return client, relay


def aborted_pair() -> tuple[ConnectIpSession, ConnectIpSession]:
    client, relay = vpn_pair()
    client.abort("test")
    relay.abort("test")
    return client, relay


SESSIONS = [*vpn_pair(), *scoped_pair(), *aborted_pair(), ConnectIpSession(Role.RELAY)]
POLICIES = [
    (session, outgoing, _fastpath.PacketPolicy(session, outgoing=outgoing))
    for session in SESSIONS
    for outgoing in (False, True)
]


def assert_verdict_parity(packet: bytes) -> None:
    for session, outgoing, policy in POLICIES:
        check = session.check_outgoing if outgoing else session.check_incoming
        assert _fastpath.check_incoming(policy, packet) == check(packet), (
            session.role,
            outgoing,
            packet.hex(),
        )


def assert_full_parity(packet: bytes) -> None:
    assert_parse_parity(packet)
    assert_ttl_parity(packet)
    assert_verdict_parity(packet)


@pytest.mark.parametrize("packet", CORPUS, ids=range(len(CORPUS)))
def test_corpus_parity(packet: bytes) -> None:
    assert_full_parity(packet)


def test_corpus_covers_every_rule() -> None:
    seen = {python_rule(p) for p in CORPUS}
    assert seen == set(_fastpath.PACKET_RULES)


def test_corpus_covers_every_verdict() -> None:
    seen = {
        (session.check_outgoing if outgoing else session.check_incoming)(p)
        for session, outgoing, _ in POLICIES
        for p in CORPUS
    }
    assert seen == set(Verdict)


# ---------------------------------------------------------------------------
# Generated packets

V4_POOL = [
    "192.0.2.3", "192.0.2.11", "198.51.100.2", "198.51.100.9", "198.51.100.200",
    "203.0.113.1", "169.254.1.1", "224.0.0.5", "224.0.1.5", "10.1.2.3", "8.8.8.8",
]  # fmt: skip
V6_POOL = [
    "2001:db8::1234:1234", "2001:db8:3456::b", "2001:db8:3456::c", "2001:db8:1::1",
    "2001:db8:2::1", "fe80::1", "ff02::1", "ff05::1", "ff11::1", "::1",
]  # fmt: skip
PROTOCOLS = [0, 1, 6, 17, 58, 59, 50, 132, 255]
EXT_KINDS = [0, 43, 44, 51, 60, 135, 139, 140, 253, 254, 50]


@st.composite
def structured_packets(draw: st.DrawFn) -> bytes:
    payload = draw(st.binary(max_size=40))
    if draw(st.booleans()):
        frag = draw(st.integers(0, 0xFFFF)) if draw(st.booleans()) else 0
        packet = ipv4(
            draw(st.sampled_from(V4_POOL)),
            draw(st.sampled_from(V4_POOL)),
            draw(st.sampled_from(PROTOCOLS)),
            payload,
            ttl=draw(st.integers(0, 255)),
            frag=frag,
            options=b"\x01" * 4 * draw(st.integers(0, 2)),
        )
    else:
        body = payload
        nh = draw(st.sampled_from(PROTOCOLS))
        for kind in draw(st.lists(st.sampled_from(EXT_KINDS), max_size=6)):
            frag = draw(st.integers(0, 0xFFFF)) if kind == 44 else 0
            units = draw(st.integers(0, 3))
            header = ext(kind, nh, units, frag=frag) if kind != 50 else b"\x00" * 8
            body = header + body
            nh = kind
        packet = ipv6(
            draw(st.sampled_from(V6_POOL)),
            draw(st.sampled_from(V6_POOL)),
            nh,
            body,
            hop_limit=draw(st.integers(0, 255)),
        )
    mutation = draw(st.sampled_from(["none", "none", "truncate", "extend", "poke"]))
    if mutation == "truncate" and packet:
        packet = packet[: draw(st.integers(0, len(packet) - 1))]
    elif mutation == "extend":
        packet += draw(st.binary(min_size=1, max_size=8))
    elif mutation == "poke":
        index = draw(st.integers(0, len(packet) - 1))
        packet = packet[:index] + bytes([draw(st.integers(0, 255))]) + packet[index + 1 :]
    return packet


@settings(max_examples=1500)
@given(structured_packets())
def test_generated_packet_parity(packet: bytes) -> None:
    assert_full_parity(packet)


@settings(max_examples=500)
@given(st.sampled_from([0x45, 0x46, 0x4F, 0x60, 0x00]), st.binary(max_size=120))
def test_random_bytes_parity(first: int, rest: bytes) -> None:
    assert_full_parity(bytes([first]) + rest)


@given(st.sampled_from(V4_POOL + V6_POOL))
def test_is_link_scoped_parity(address: str) -> None:
    addr = ip_address(address)
    assert _fastpath.is_link_scoped(addr.packed) == is_link_scoped(addr)


def test_scapy_packets_parity() -> None:
    from scapy.layers.inet import ICMP, IP, TCP, UDP
    from scapy.layers.inet6 import IPv6, IPv6ExtHdrFragment, IPv6ExtHdrHopByHop

    packets = [
        IP(src="192.0.2.11", dst="8.8.8.8") / UDP() / b"hello",
        IP(src="192.0.2.3", dst="198.51.100.2", ttl=1) / TCP(),
        IP(src="203.0.113.1", dst="192.0.2.3") / ICMP(type=11),
        IPv6(src="2001:db8::1234:1234", dst="2001:db8:3456::b") / IPv6ExtHdrHopByHop() / UDP(),
        IPv6(src="2001:db8::1234:1234", dst="2001:db8:3456::b")
        / IPv6ExtHdrFragment(offset=0, m=1)
        / UDP()
        / (b"x" * 8),
    ]
    for packet in packets:
        assert_full_parity(bytes(packet))


# ---------------------------------------------------------------------------
# Batches


def test_batch_verdicts_counters_and_ttl() -> None:
    session = SESSIONS[3]  # scoped relay
    policy = _fastpath.PacketPolicy(session)
    packets = CORPUS[:60]
    batch = _fastpath.PacketBatch(slots=64, slot_size=4096)
    for packet in packets:
        batch.append(packet)
    verdicts = _fastpath.check_incoming_batch(batch, policy)
    expected = [session.check_incoming(p) for p in packets]
    assert list(verdicts) == expected
    assert policy.counters == tuple(Counter(expected)[v] for v in Verdict)
    # A second batch adds up; reset clears.
    _fastpath.check_incoming_batch(batch, policy)
    assert sum(policy.counters) == 2 * len(packets)
    policy.reset_counters()
    assert policy.counters == (0,) * len(Verdict)

    ttls = _fastpath.decrement_ttl_batch(batch, verdicts)
    for i, packet in enumerate(packets):
        copy = bytearray(packet)
        want = decrement_ttl(copy) if expected[i] is Verdict.ACCEPT else 0
        assert ttls[i] == want
        assert bytes(batch.view(i)) == (bytes(copy) if expected[i] is Verdict.ACCEPT else packet)


@settings(max_examples=200)
@given(st.lists(structured_packets(), max_size=32))
def test_generated_batch_parity(packets: list[bytes]) -> None:
    policy = POLICIES[6][2]
    session, outgoing = POLICIES[6][0], POLICIES[6][1]
    check = session.check_outgoing if outgoing else session.check_incoming
    batch = _fastpath.PacketBatch(slots=32, slot_size=512)
    for packet in packets:
        batch.append(packet)
    verdicts = _fastpath.check_incoming_batch(batch, policy)
    assert list(verdicts) == [check(p) for p in packets]
    ttls = _fastpath.decrement_ttl_batch(batch)  # every packet, like decrement_ttl on each
    for i, packet in enumerate(packets):
        copy = bytearray(packet)
        try:
            want = decrement_ttl(copy)
        except PacketError:
            want = 0
        assert ttls[i] == want
        assert bytes(batch.view(i)) == bytes(copy)


def test_policy_is_a_snapshot() -> None:
    _client, relay = vpn_pair()
    policy = _fastpath.PacketPolicy(relay)
    relay.abort("later")
    packet = ipv4("192.0.2.11", "8.8.8.8")
    assert _fastpath.check_incoming(policy, packet) == Verdict.ACCEPT
    assert _fastpath.check_incoming(_fastpath.PacketPolicy(relay), packet) == (
        Verdict.DROP_SESSION_CLOSED
    )


# ---------------------------------------------------------------------------
# Routed batches: TUN -> client, one policy per packet chosen by session id


def routed_policies() -> tuple[dict[int, ConnectIpSession], dict[int, _fastpath.PacketPolicy]]:
    """Two relay sessions (the vpn and the scoped one) as sids 7 and 9."""
    sessions = {7: vpn_pair()[1], 9: scoped_pair()[1]}
    policies = {sid: _fastpath.PacketPolicy(s, outgoing=True) for sid, s in sessions.items()}
    return sessions, policies


def expected_routed(
    sessions: dict[int, ConnectIpSession], packets: list[bytes], sids: list[int]
) -> list[int]:
    return [
        sessions[sid].check_outgoing(p) if sid in sessions else UNROUTED
        for p, sid in zip(packets, sids, strict=True)
    ]


def test_check_routed_batch_uses_each_packets_policy() -> None:
    sessions, policies = routed_policies()
    to_vpn = ipv4("8.8.8.8", "192.0.2.11")
    to_scoped = ipv4("198.51.100.2", "192.0.2.3")
    packets = [
        to_vpn,
        to_vpn,
        to_scoped,
        to_vpn,  # sid -1: no prefix covers it
        to_scoped,  # sid 5: a session that is gone
        b"",  # malformed, routed
        to_vpn[:25],
        ipv4("8.8.8.8", "192.0.2.99"),  # routed but not assigned: dropped by the policy
        ipv6("2001:db8:3456::b", "2001:db8::1234:1234"),
        to_scoped,
    ]
    sids = [7, 7, 9, -1, 5, 7, 9, 7, 9, 9]
    batch = _fastpath.PacketBatch(slots=16)
    for p in packets:
        batch.append(p)
    verdicts = check_routed_batch(batch, sids, policies)
    expected = expected_routed(sessions, packets, sids)
    assert list(verdicts) == expected
    assert expected[0] == Verdict.ACCEPT and expected[2] == Verdict.ACCEPT
    assert expected[5] == Verdict.DROP_MALFORMED and expected[3] == expected[4] == UNROUTED
    assert verdicts[7] != Verdict.ACCEPT
    for sid, policy in policies.items():
        mine = [v for v, s in zip(expected, sids, strict=True) if s == sid]
        assert policy.counters == tuple(Counter(mine)[v] for v in Verdict)
    assert UNROUTED == 255
    assert check_routed_batch(batch, [*sids, 7, 7], policies) == verdicts  # extra sids


def test_check_routed_batch_with_prefix_table() -> None:
    sessions, policies = routed_policies()
    table = _fastpath.PrefixTable()
    table.add("192.0.2.11/32", 7)
    table.add("192.0.2.3/32", 9)
    table.add("2001:db8::/64", 9)
    table.add("192.0.2.128/25", 4)  # a prefix whose session has no policy
    packets = [
        ipv4("8.8.8.8", "192.0.2.11"),
        ipv4("198.51.100.2", "192.0.2.3"),
        ipv4("8.8.8.8", "192.0.2.200"),
        ipv4("8.8.8.8", "203.0.113.1"),
        ipv6("2001:db8:3456::b", "2001:db8::1234:1234"),
        b"\x45\x00",
    ]
    batch = _fastpath.PacketBatch(slots=8)
    for p in packets:
        batch.append(p)
    sids = table.lookup_batch(batch)
    assert sids == [7, 9, 4, -1, 9, -1]
    verdicts = check_routed_batch(batch, sids, policies)
    assert list(verdicts) == expected_routed(sessions, packets, sids)
    assert list(verdicts[:2]) == [Verdict.ACCEPT, Verdict.ACCEPT]
    assert list(verdicts[2:4]) == [UNROUTED, UNROUTED]


def test_check_routed_batch_errors() -> None:
    _, policies = routed_policies()
    batch = _fastpath.PacketBatch(slots=4)
    assert check_routed_batch(batch, [], policies) == bytearray()
    batch.append(GOOD_V4)
    batch.append(GOOD_V4)
    with pytest.raises(ValueError):
        check_routed_batch(batch, [7], policies)
    with pytest.raises(TypeError):
        check_routed_batch(batch, [7, 7], {7: "not a policy"})  # type: ignore[dict-item]
    assert check_routed_batch(batch, [7, 7], {}) == bytes([UNROUTED, UNROUTED])
    assert sum(policies[7].counters) == 0


@settings(max_examples=200)
@given(st.lists(st.tuples(structured_packets(), st.sampled_from([-1, 7, 9, 3])), max_size=32))
def test_generated_routed_batch_parity(items: list[tuple[bytes, int]]) -> None:
    sessions, policies = routed_policies()
    batch = _fastpath.PacketBatch(slots=32, slot_size=512)
    for packet, _ in items:
        batch.append(packet)
    sids = [sid for _, sid in items]
    verdicts = check_routed_batch(batch, sids, policies)
    expected = expected_routed(sessions, [p for p, _ in items], sids)
    assert list(verdicts) == expected
    for sid, policy in policies.items():
        assert sum(policy.counters) == sids.count(sid)
