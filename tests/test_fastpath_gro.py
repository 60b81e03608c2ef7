"""GRO on TUN writes: which TCP segments _fastpath coalesces, and what it writes.

``gro_frames(batch)`` returns exactly the frames ``Tun.write_batch`` writes on a
vnet_hdr device (same C planner and builder), so every coalescing decision is
checked here without a kernel; tests/test_fastpath_tun.py checks that the
kernel takes the super-frames. The oracle is the split: ``vnet_split`` of a
super-frame must give back the very segments that went in (IPv4 ID aside), and
scapy builds every packet.
"""

from __future__ import annotations

import struct
from collections.abc import Callable
from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from scapy.layers.inet import IP, TCP, UDP, IPOption_NOP
from scapy.layers.inet6 import IPv6, IPv6ExtHdrDestOpt
from scapy.packet import Raw

from _fastpath._core import PacketBatch, gro_frames, vnet_split

NEEDS_CSUM = 1
GSO_TCPV4, GSO_TCPV6 = 1, 4
PSH = 0x08
BASE_SEQ = 0xFFFFF000  # wraps inside a frame
TS = [("NOP", None), ("NOP", None), ("Timestamp", (1000, 2000))]
ZERO_HDR = bytes(10)


def payload(k: int, size: int) -> bytes:
    return bytes((k * 31 + j) & 0xFF for j in range(size))


def seg(
    k: int = 0,
    *,
    v: int = 4,
    size: int = 1000,
    seq: int | None = None,
    flags: str = "A",
    ack: int = 777,
    sport: int = 40000,
    dport: int = 5201,
    opts: list[tuple[str, Any]] | None = None,
    window: int = 502,
    urg: int = 0,
    reserved: int = 0,
    src: str | None = None,
    tos: int = 0,
    ttl: int = 64,
    ipflags: str = "DF",
    frag: int = 0,
    ipopts: list[Any] | None = None,
    tc: int = 0,
    fl: int = 0,
    hlim: int = 64,
    ext: bool = False,
) -> bytes:
    """Segment ``k`` of a flow of ``size``-byte segments (scapy fills lengths and sums)."""
    seq = (BASE_SEQ + k * size) & 0xFFFFFFFF if seq is None else seq
    l3: Any
    if v == 4:
        l3 = IP(
            src=src or "10.1.0.1",
            dst="10.2.0.2",
            id=(100 + k) & 0xFFFF,
            tos=tos,
            ttl=ttl,
            flags=ipflags,
            frag=frag,
            options=ipopts or [],
        )
    else:
        l3 = IPv6(src=src or "fd00:1::1", dst="fd00:2::2", tc=tc, fl=fl, hlim=hlim)
        if ext:
            l3 = l3 / IPv6ExtHdrDestOpt()
    tcp = TCP(
        sport=sport,
        dport=dport,
        seq=seq,
        ack=ack,
        flags=flags,
        window=window,
        urgptr=urg,
        reserved=reserved,
        options=TS if opts is None else opts,
    )
    return bytes(l3 / tcp / Raw(payload(k, size)))


def corrupt(packet: bytes, at: int) -> bytes:
    out = bytearray(packet)
    out[at] ^= 0x5A
    return bytes(out)


def tcp_at(packet: bytes) -> int:
    return 20 if packet[0] >> 4 == 4 else 40


def batch_of(packets: list[bytes], slot_size: int = 2048) -> PacketBatch:
    batch = PacketBatch(slots=max(len(packets), 1), slot_size=slot_size)
    for p in packets:
        batch.append(p)
    return batch


def groups(packets: list[bytes], verdicts: bytes | None = None) -> list[tuple[int, ...]]:
    return [indices for indices, _ in gro_frames(batch_of(packets), verdicts)]


def without_ip_id(packet: bytes) -> bytes:
    """IPv4 ID and header checksum zeroed (the split numbers IDs from the first)."""
    if packet[0] >> 4 != 4:
        return packet
    out = bytearray(packet)
    out[4:6] = out[10:12] = b"\x00\x00"
    return bytes(out)


def assert_frames_reproduce(
    packets: list[bytes], frames: list[tuple[tuple[int, ...], bytes]]
) -> None:
    """Every frame gives back exactly its packets: alone behind a zero header, or split."""
    for indices, frame in frames:
        if len(indices) == 1:
            assert frame == ZERO_HDR + packets[indices[0]]
        else:
            split = vnet_split(frame)
            assert [without_ip_id(p) for p in split] == [without_ip_id(packets[i]) for i in indices]


# -- what a super-frame looks like --------------------------------------------------


@pytest.mark.parametrize("v", [4, 6])
def test_one_flow_becomes_one_super_frame(v: int) -> None:
    packets = [seg(k, v=v) for k in range(5)] + [seg(5, v=v, size=1000, flags="PA")]
    packets[-1] = seg(0, v=v, size=300, seq=(BASE_SEQ + 5000) & 0xFFFFFFFF, flags="PA")
    frames = gro_frames(batch_of(packets))
    assert [i for i, _ in frames] == [(0, 1, 2, 3, 4, 5)]
    frame = frames[0][1]
    flags, gso_type, hdr_len, gso_size, csum_start, csum_offset = struct.unpack_from(
        "<BBHHHH", frame
    )
    l4 = tcp_at(packets[0])
    assert (flags, gso_type) == (NEEDS_CSUM, GSO_TCPV4 if v == 4 else GSO_TCPV6)
    assert (hdr_len, gso_size, csum_start, csum_offset) == (l4 + 32, 1000, l4, 16)
    ip = frame[10:]
    assert len(ip) == l4 + 32 + 5 * 1000 + 300
    if v == 4:
        parsed: Any = IP(ip)
        assert parsed.len == len(ip)
        reference = parsed.copy()
        del reference.chksum
        assert IP(bytes(reference)).chksum == parsed.chksum  # header checksum redone
        src_dst = bytes(ip[12:20])
    else:
        parsed = IPv6(ip)
        assert parsed.plen == len(ip) - 40
        src_dst = bytes(ip[8:40])
    assert parsed[TCP].flags == "PA"  # PSH of the last segment
    # CHECKSUM_PARTIAL: the field holds the folded pseudo-header sum, not complemented
    words = sum(struct.unpack(f"!{len(src_dst) // 2}H", src_dst)) + 6 + len(ip) - l4
    while words >> 16:
        words = (words & 0xFFFF) + (words >> 16)
    assert struct.unpack_from("!H", ip, l4 + 16)[0] == words
    assert_frames_reproduce(packets, frames)


def test_frame_bytes_equal_the_concatenated_payloads() -> None:
    packets = [seg(k, size=1448) for k in range(3)]
    ((_, frame),) = gro_frames(batch_of(packets))
    hlen = 20 + 32
    assert frame[10 + hlen :] == b"".join(p[hlen:] for p in packets)


def test_interleaved_flows_get_a_frame_each_in_first_seen_order() -> None:
    a = [seg(k, sport=1000) for k in range(3)]
    b = [seg(k, sport=2000, v=6) for k in range(2)]
    udp = bytes(IP(src="10.1.0.1", dst="10.2.0.2") / UDP(sport=1000, dport=5201) / Raw(b"x"))
    packets = [a[0], b[0], a[1], udp, b[1], a[2]]
    frames = gro_frames(batch_of(packets))
    assert [i for i, _ in frames] == [(0, 2, 5), (1, 4), (3,)]
    assert_frames_reproduce(packets, frames)


def test_short_segment_ends_the_frame() -> None:
    packets = [seg(0), seg(1), seg(2, size=400, seq=(BASE_SEQ + 2000) & 0xFFFFFFFF)]
    assert groups(packets) == [(0, 1, 2)]  # the last one may be short
    # a short one in the middle: the next cannot follow it
    short = seg(1, size=400, seq=(BASE_SEQ + 1000) & 0xFFFFFFFF)
    after = seg(2, seq=(BASE_SEQ + 1400) & 0xFFFFFFFF)
    assert groups([seg(0), short, after]) == [(0, 1), (2,)]


def test_psh_ends_the_frame() -> None:
    packets = [seg(0), seg(1, flags="PA"), seg(2), seg(3)]
    assert groups(packets) == [(0, 1), (2, 3)]


def test_a_flow_packet_that_cannot_join_keeps_its_place() -> None:
    pure_ack = seg(2, size=0)  # same flow, no payload
    packets = [seg(0), seg(1), pure_ack, seg(2), seg(3)]
    frames = gro_frames(batch_of(packets))
    # the later segments must not overtake the pure ACK
    assert [i for i, _ in frames] == [(0, 1), (2,), (3, 4)]
    assert_frames_reproduce(packets, frames)


def test_verdicts_and_empty_packets_are_not_written() -> None:
    packets = [seg(0), seg(1), seg(2), b"", seg(3)]
    assert groups(packets, bytes([0, 1, 0, 0, 0])) == [(0,), (2, 4)]
    assert groups(packets, bytes(5)) == [(0, 1, 2, 4)]
    assert groups(packets, bytes([3] * 5)) == []


def test_frames_stay_within_64k() -> None:
    packets = [seg(k, size=1400) for k in range(60)]
    frames = gro_frames(batch_of(packets))
    hlen = 20 + 32
    first = (65535 - hlen) // 1400
    assert [len(i) for i, _ in frames] == [first, 60 - first]
    assert all(len(f) - 10 <= 65535 for _, f in frames)
    assert_frames_reproduce(packets, frames)
    v6 = [seg(k, v=6, size=1400) for k in range(60)]
    assert all(len(f) - 10 <= 65535 for _, f in gro_frames(batch_of(v6)))


def test_at_most_256_segments_per_frame() -> None:
    packets = [seg(k, size=10) for k in range(300)]
    assert [len(i) for i in groups(packets)] == [256, 44]


def test_malformed_packets_go_alone() -> None:
    good = seg(0)
    packets = [
        good,
        b"\x45",  # one byte
        good[:30],  # TCP header cut
        good + b"\x00",  # trailing byte: IPv4 total length disagrees
        b"\x60" + bytes(50),  # IPv6 header of zeros
        bytes(IPv6(src="fd00:1::1", dst="fd00:2::2", nh=6) / Raw(b"\x00" * 10)),  # short TCP
        b"\xff" * 100,
        seg(1),
    ]
    frames = gro_frames(batch_of(packets))
    # seg(1) cannot join seg(0): the broken same-flow packets in between close the bucket
    assert [i for i, _ in frames] == [(k,) for k in range(len(packets))]
    assert_frames_reproduce(packets, frames)


def test_empty_batch() -> None:
    assert gro_frames(PacketBatch(slots=4)) == []
    with pytest.raises(ValueError):
        gro_frames(batch_of([seg(0), seg(1)]), b"\x00")


# -- every condition that forbids coalescing ------------------------------------------

Pair = Callable[[], list[bytes]]


def pair(**second: Any) -> Pair:
    """seg(0) then seg(1) with ``second`` changed (same IP version)."""
    v = second.get("v", 4)
    return lambda: [seg(0, v=v), seg(1, **second)]


def both(**kw: Any) -> Pair:
    """seg(0) and seg(1), both with ``kw``: never coalesced."""
    return lambda: [seg(0, **kw), seg(1, **kw)]


def bad_tcp_checksum(first: bool) -> Pair:
    def make() -> list[bytes]:
        packets = [seg(0), seg(1)]
        i = 0 if first else 1
        packets[i] = corrupt(packets[i], 20 + 16)
        return packets

    return make


NOT_COALESCED: dict[str, Pair] = {
    # IPv4
    "ipv4-options": both(ipopts=[IPOption_NOP()] * 4),
    "ipv4-more-fragments": both(ipflags="MF"),
    "ipv4-fragment-offset": lambda: [seg(0), seg(1, ipflags="", frag=100)],
    "ipv4-tos": pair(tos=0x10),
    "ipv4-ecn-bits": pair(tos=0x03),
    "ipv4-ttl": pair(ttl=63),
    "ipv4-df": pair(ipflags=""),
    "ipv4-bad-header-checksum": lambda: [seg(0), corrupt(seg(1), 10)],
    "ipv4-other-source": pair(src="10.1.0.9"),
    # IPv6
    "ipv6-extension-header": both(v=6, ext=True),
    "ipv6-traffic-class": pair(v=6, tc=0x20),
    "ipv6-flow-label": pair(v=6, fl=12345),
    "ipv6-hop-limit": pair(v=6, hlim=63),
    "ipv6-other-source": pair(v=6, src="fd00:1::9"),
    "ipv4-then-ipv6": lambda: [seg(0), seg(1, v=6)],
    # TCP
    "other-source-port": pair(sport=40001),
    "other-destination-port": pair(dport=5202),
    "ack-number": pair(ack=778),
    "window": pair(window=503),
    "urgent-pointer": pair(urg=1),
    "timestamp-value": pair(opts=[("NOP", None), ("NOP", None), ("Timestamp", (1001, 2000))]),
    "timestamp-echo": pair(opts=[("NOP", None), ("NOP", None), ("Timestamp", (1000, 2001))]),
    "options-length": pair(opts=[*TS, ("NOP", None), ("NOP", None), ("NOP", None), ("EOL", None)]),
    "options-vs-none": pair(opts=[]),
    "reserved-bits": pair(reserved=1),
    "reserved-bits-both": both(reserved=1),
    "ae-flag-both": both(flags="NA"),
    "syn": pair(flags="SA"),
    "fin": pair(flags="FA"),
    "rst": pair(flags="RA"),
    "urg": pair(flags="UA", urg=1),
    "ece": pair(flags="EA"),
    "cwr": pair(flags="CA"),
    "no-ack-flag": pair(flags="P"),
    "fin-first": lambda: [seg(0, flags="FA"), seg(1)],
    "psh-first": lambda: [seg(0, flags="PA"), seg(1)],
    "seq-gap": pair(seq=(BASE_SEQ + 1001) & 0xFFFFFFFF),
    "seq-retransmit": lambda: [seg(0), seg(0)],
    "seq-behind": lambda: [seg(1), seg(0)],
    "larger-than-first": lambda: [seg(0, size=500), seg(0, size=1000, seq=BASE_SEQ + 500)],
    "empty-payload": pair(size=0),
    "bad-tcp-checksum-second": bad_tcp_checksum(first=False),
    "bad-tcp-checksum-first": bad_tcp_checksum(first=True),
}


def test_the_pair_builders_coalesce_when_unchanged() -> None:
    assert groups([seg(0), seg(1)]) == [(0, 1)]
    assert groups([seg(0, v=6), seg(1, v=6)]) == [(0, 1)]


@pytest.mark.parametrize("case", list(NOT_COALESCED), ids=list(NOT_COALESCED))
def test_must_not_coalesce(case: str) -> None:
    packets = NOT_COALESCED[case]()
    frames = gro_frames(batch_of(packets))
    assert [i for i, _ in frames] == [(0,), (1,)]
    assert_frames_reproduce(packets, frames)


# -- property: whatever the batch, the frames give back the packets, flow order kept --

MUTATIONS = ["none", "none", "none", "psh", "ack", "gap", "ttl", "short", "empty", "badsum"]


@settings(max_examples=150, deadline=None)
@given(
    st.lists(
        st.tuples(st.integers(0, 2), st.sampled_from(MUTATIONS), st.booleans()),
        max_size=40,
    )
)
def test_frames_always_reproduce_the_batch(ops: list[tuple[int, str, bool]]) -> None:
    flows = [dict(v=4, sport=1000), dict(v=4, sport=2000), dict(v=6, sport=3000)]
    next_seq = [BASE_SEQ, 1, 77]
    packets: list[bytes] = []
    flow_of: list[int] = []
    verdicts = bytearray()
    for k, (f, mutation, dropped) in enumerate(ops):
        kw: dict[str, Any] = dict(flows[f])
        size = {"short": 300, "empty": 0}.get(mutation, 600)
        seq = next_seq[f] + (7 if mutation == "gap" else 0)
        kw.update(size=size, seq=seq & 0xFFFFFFFF)
        if mutation == "psh":
            kw["flags"] = "PA"
        elif mutation == "ack":
            kw["ack"] = 778
        elif mutation == "ttl":
            kw["ttl" if kw["v"] == 4 else "hlim"] = 9
        packet = seg(k, **kw)
        if mutation == "badsum":
            packet = corrupt(packet, tcp_at(packet) + 16)
        next_seq[f] = (seq + size) & 0xFFFFFFFF
        packets.append(packet)
        flow_of.append(f)
        verdicts.append(3 if dropped else 0)
    frames = gro_frames(batch_of(packets), bytes(verdicts))
    written = [i for indices, _ in frames for i in indices]
    assert sorted(written) == [i for i in range(len(packets)) if not verdicts[i]]
    assert_frames_reproduce(packets, frames)
    for f in range(3):
        order = [i for i in written if flow_of[i] == f]
        assert order == sorted(order), f"flow {f} reordered"
