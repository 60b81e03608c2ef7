"""_fastpath.Tun and the GSO split against scapy and the real kernel.

1. ``vnet_split`` on synthetic super-segments (virtio_net_hdr + packet built
   with scapy) against the packets scapy builds for each segment.
2. Acceptance: in namespace A a vnet_hdr+TSO TUN (``mqta``) hands the kernel's
   TCP super-segments to a bridge loop that splits them in C and writes the
   packets into a plain TUN (``mqtb``) moved to namespace B, where a sink hashes
   a multi-megabyte transfer. The plain TUN makes B's kernel verify every
   checksum we computed. The same bridge runs through ``read_batch`` /
   ``write_batch`` (PacketBatch), with B plain or with B coalescing (GRO).
3. ``write_batch`` GRO against the kernel: in one namespace that forwards, TCP
   segments coalesced into super-frames are written to TUN ``mqw`` and come
   out of TUN ``mqr``: as GSO frames again when ``mqr`` has TSO (split back by
   ``read_batch``, carry-over included), or segmented and checksummed by the
   kernel when ``mqr`` is plain (which proves our pseudo-header sums).
   ``tests/test_fastpath_gro.py`` covers the coalescing decisions.
"""

from __future__ import annotations

import hashlib
import os
import select
import socket
import struct
import subprocess
import threading
import time
from typing import Any

import pytest
from scapy.layers.inet import IP, TCP, UDP
from scapy.layers.inet6 import IPv6
from scapy.packet import Raw

from _fastpath._core import PacketBatch, Tun, vnet_split
from masque.ippacket import parse_ip_packet, transport_checksum
from tests.netbed import add_netns, delete_netns
from tests.nsexec import run_in_netns

NEEDS_CSUM = 1
GSO_TCPV4, GSO_TCPV6, GSO_UDP_L4 = 1, 4, 5
FIN, PSH, ACK, CWR = 0x01, 0x08, 0x10, 0x80


def vnet_hdr(flags: int, gso_type: int, hdr_len: int, gso_size: int, start: int, off: int) -> bytes:
    return struct.pack("<BBHHHH", flags, gso_type, hdr_len, gso_size, start, off)


def _payload(n: int) -> bytes:
    return bytes((i * 7 + 3) & 0xFF for i in range(n))


# -- 1. the split function ---------------------------------------------------------


@pytest.mark.parametrize("version", [4, 6])
def test_split_tcp_matches_scapy(version: int) -> None:
    data = _payload(5000)
    seq, ip_id, mss = 0xFFFFF000, 0xFFFE, 1400  # sequence and IPv4 ID both wrap
    flags = "FPAC"  # FIN, PSH, ACK, CWR
    if version == 4:
        ip: Any = IP(src="10.1.0.1", dst="10.2.0.2", id=ip_id, flags="DF", ttl=64)
        l4_at, gso = 20, GSO_TCPV4
    else:
        ip = IPv6(src="fd00:1::1", dst="fd00:2::2", hlim=64)
        l4_at, gso = 40, GSO_TCPV6
    tcp = TCP(
        sport=40000,
        dport=5201,
        seq=seq,
        ack=12345,
        flags=flags,
        window=500,
        options=[("NOP", None), ("NOP", None), ("Timestamp", (1, 2))],
    )
    # the kernel leaves a pseudo-header partial sum in the field: any value must do
    super_segment = bytearray(bytes(ip / tcp / Raw(data)))
    super_segment[l4_at + 16 : l4_at + 18] = b"\x12\x34"
    hdr_len = l4_at + 32
    frame = vnet_hdr(NEEDS_CSUM, gso, hdr_len, mss, l4_at, 16) + bytes(super_segment)

    got = vnet_split(frame)

    chunks = [data[i : i + mss] for i in range(0, len(data), mss)]
    assert len(got) == len(chunks) == 4
    for i, chunk in enumerate(chunks):
        last = i == len(chunks) - 1
        seg_flags = ACK | (FIN | PSH if last else 0) | (CWR if i == 0 else 0)
        seg_tcp = tcp.copy()
        seg_tcp.seq = (seq + i * mss) & 0xFFFFFFFF
        seg_tcp.flags = seg_flags
        seg_ip = ip.copy()
        if version == 4:
            seg_ip.id = (ip_id + i) & 0xFFFF
        expected = bytes(seg_ip / seg_tcp / Raw(chunk))  # scapy fills lengths and checksums
        assert got[i] == expected, f"segment {i}"
        parsed = (IP if version == 4 else IPv6)(got[i])
        assert parsed[TCP].payload.load == chunk


def test_split_tcp_caps_at_mtu() -> None:
    data = _payload(3000)
    pkt = bytes(IP(src="10.1.0.1", dst="10.2.0.2") / TCP(seq=1, flags="PA") / Raw(data))
    frame = vnet_hdr(NEEDS_CSUM, GSO_TCPV4, 40, 1460, 20, 16) + pkt
    got = vnet_split(frame, mtu=1280)
    assert [len(p) for p in got] == [1280, 1280, 3000 - 2 * 1240 + 40]
    assert b"".join(bytes(IP(p)[TCP].payload) for p in got) == data
    for p in got:
        rebuilt = IP(p)
        del rebuilt.chksum, rebuilt[TCP].chksum
        assert bytes(rebuilt.__class__(bytes(rebuilt))) == p  # scapy agrees on checksums


@pytest.mark.parametrize("version", [4, 6])
def test_split_udp_l4_keeps_datagram_boundaries(version: int) -> None:
    data = _payload(1200 * 3 + 17)
    if version == 4:
        ip: Any = IP(src="10.1.0.1", dst="10.2.0.2", id=7)
        l4_at = 20
    else:
        ip = IPv6(src="fd00:1::1", dst="fd00:2::2")
        l4_at = 40
    udp = UDP(sport=4433, dport=443)
    pkt = bytes(ip / udp / Raw(data))
    frame = vnet_hdr(NEEDS_CSUM, GSO_UDP_L4, l4_at + 8, 1200, l4_at, 6) + pkt
    got = vnet_split(frame, mtu=1000)  # never re-cut UDP datagrams
    chunks = [data[i : i + 1200] for i in range(0, len(data), 1200)]
    assert len(got) == 4
    for i, chunk in enumerate(chunks):
        seg_ip = ip.copy()
        if version == 4:
            seg_ip.id = 7 + i
        assert got[i] == bytes(seg_ip / udp.copy() / Raw(chunk)), f"datagram {i}"


@pytest.mark.parametrize("version", [4, 6])
def test_needs_csum_completes_partial_checksum(version: int) -> None:
    ip: Any = (
        IP(src="10.1.0.1", dst="10.2.0.2") if version == 4 else IPv6(src="fd00::1", dst="fd00::2")
    )
    l4_at = 20 if version == 4 else 40
    good = bytes(ip / TCP(sport=1, dport=2, flags="A") / Raw(b"hello world"))
    # what the kernel hands over: the field holds the folded pseudo-header sum
    fam = socket.AF_INET if version == 4 else socket.AF_INET6
    addr = socket.inet_pton(fam, ip.src) + socket.inet_pton(fam, ip.dst)
    total = sum(struct.unpack(f"!{len(addr) // 2}H", addr)) + 6 + (len(good) - l4_at)
    while total >> 16:
        total = (total & 0xFFFF) + (total >> 16)
    partial = bytearray(good)
    partial[l4_at + 16 : l4_at + 18] = struct.pack("!H", total)
    frame = vnet_hdr(NEEDS_CSUM, 0, 0, 0, l4_at, 16) + bytes(partial)
    assert vnet_split(frame) == [good]
    # without NEEDS_CSUM the packet passes untouched
    assert vnet_split(vnet_hdr(0, 0, 0, 0, 0, 0) + bytes(partial)) == [bytes(partial)]


def test_split_rejects_malformed() -> None:
    pkt = bytes(IP(src="10.1.0.1", dst="10.2.0.2") / TCP() / Raw(_payload(3000)))
    with pytest.raises(ValueError):
        vnet_split(vnet_hdr(NEEDS_CSUM, GSO_TCPV6, 40, 1000, 20, 16) + pkt)  # wrong IP version
    with pytest.raises(ValueError):
        vnet_split(vnet_hdr(NEEDS_CSUM, GSO_TCPV4, 40, 0, 20, 16) + pkt)  # gso_size 0
    with pytest.raises(ValueError):
        vnet_split(vnet_hdr(NEEDS_CSUM, GSO_TCPV4, 40, 1000, 24, 16) + pkt)  # csum_start != IHL
    with pytest.raises(ValueError):
        vnet_split(b"\x00" * 5)


# -- 2. real TUN devices in namespaces -------------------------------------------


def _ip(*args: str) -> None:
    subprocess.run(["ip", *args], check=True, capture_output=True)


def scenario_open_modes() -> dict[str, Any]:
    out: dict[str, Any] = {}
    with Tun("mqo%d", vnet_hdr=True) as t:
        out["vnet"] = (t.mode, t.vnet_hdr, t.offloads, t.name)
        out["vnet_empty_read"] = t.read_packets(8)
    with Tun("mqp%d", vnet_hdr=False) as t:
        out["plain"] = (t.mode, t.vnet_hdr, t.offloads)
    with Tun("mqm%d", vnet_hdr=True, queues=3) as t:
        out["mq"] = (t.mode, t.queues, len(set(t.fds)))
        out["mq_nonblocking"] = all(os.get_blocking(fd) is False for fd in t.fds)
    try:
        Tun("x" * 20)
    except OSError as exc:
        out["long_name"] = exc.errno
    return out


def scenario_sink(port: int, family: int, timeout: float) -> tuple[str, int]:
    """In namespace B: accept one TCP connection, hash what arrives until EOF."""
    with socket.socket(family, socket.SOCK_STREAM) as srv:
        srv.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        srv.bind(("::" if family == socket.AF_INET6 else "0.0.0.0", port))
        srv.listen(1)
        srv.settimeout(timeout)
        conn, _ = srv.accept()
        conn.settimeout(timeout)
        digest, total = hashlib.sha256(), 0
        with conn:
            while chunk := conn.recv(1 << 20):
                digest.update(chunk)
                total += len(chunk)
        return digest.hexdigest(), total


def scenario_bridge_and_send(peer_ns: str, family: int, port: int, nbytes: int) -> dict[str, Any]:
    """In namespace A: TUN mqta (vnet_hdr) <-> bridge loop <-> TUN mqtb (plain, in peer_ns)."""
    ta = Tun("mqta", vnet_hdr=True)
    tb = Tun("mqtb", vnet_hdr=False)
    _ip("link", "set", "mqtb", "netns", peer_ns)
    _ip("addr", "add", "10.77.0.1/24", "dev", "mqta")
    _ip("addr", "add", "fd77::1/64", "dev", "mqta", "nodad")
    _ip("link", "set", "mqta", "mtu", "1500", "up")
    _ip("-n", peer_ns, "addr", "add", "10.77.0.2/24", "dev", "mqtb")
    _ip("-n", peer_ns, "addr", "add", "fd77::2/64", "dev", "mqtb", "nodad")
    _ip("-n", peer_ns, "link", "set", "mqtb", "mtu", "1500", "up")
    dst = "fd77::2" if family == socket.AF_INET6 else "10.77.0.2"

    data = os.urandom(nbytes)
    result: dict[str, Any] = {"sent_sha": hashlib.sha256(data).hexdigest()}
    sender_error: list[BaseException] = []

    def send() -> None:
        try:
            deadline = time.monotonic() + 10
            while True:
                s = socket.socket(family, socket.SOCK_STREAM)
                s.settimeout(20)
                try:
                    s.connect((dst, port))
                    break
                except OSError:
                    s.close()
                    if time.monotonic() > deadline:
                        raise
                    time.sleep(0.1)
            with s:
                s.sendall(data)
                s.shutdown(socket.SHUT_WR)
                while s.recv(4096):  # until the sink closes: everything arrived
                    pass
        except BaseException as exc:  # reported to the test
            sender_error.append(exc)

    sender = threading.Thread(target=send, daemon=True)
    sender.start()
    max_len = 0
    to_b = to_a = 0
    deadline = time.monotonic() + 25
    while sender.is_alive() and time.monotonic() < deadline:
        select.select([ta.fileno(), tb.fileno()], [], [], 0.05)
        pkts = ta.read_packets(64, 1500)
        if pkts:
            max_len = max(max_len, max(len(p) for p in pkts))
            to_b += tb.write_packets(pkts)
        back = tb.read_packets(64, 1500)
        if back:
            to_a += ta.write_packets(back)
    sender.join(1)
    if sender_error:
        raise sender_error[0]
    assert not sender.is_alive(), "transfer did not finish in time"
    result.update(
        mode_a=ta.mode,
        mode_b=tb.mode,
        stats_a=ta.stats,
        stats_b=tb.stats,
        max_len=max_len,
        to_b=to_b,
        to_a=to_a,
    )
    ta.close()
    tb.close()
    return result


UDP_SEGMENT = 103  # linux/udp.h


def scenario_uso_read(family: int) -> dict[str, Any]:
    """A UDP_SEGMENT send routed into a vnet_hdr TUN: read back split datagrams."""
    with Tun("mqu", vnet_hdr=True) as t:
        _ip("addr", "add", "10.78.0.1/24", "dev", "mqu")
        _ip("addr", "add", "fd78::1/64", "dev", "mqu", "nodad")
        _ip("link", "set", "mqu", "mtu", "1500", "up")
        dst = "fd78::2" if family == socket.AF_INET6 else "10.78.0.2"
        payload = _payload(3500)
        with socket.socket(family, socket.SOCK_DGRAM) as s:
            s.setsockopt(socket.SOL_UDP, UDP_SEGMENT, 1000)
            s.sendto(payload, (dst, 9999))
        got: list[bytes] = []
        deadline = time.monotonic() + 5
        while len(got) < 4 and time.monotonic() < deadline:
            select.select([t.fileno()], [], [], 0.1)
            for p in t.read_packets(64, 1500):
                ip = IP(p) if p[0] >> 4 == 4 else IPv6(p)
                if UDP in ip and ip[UDP].dport == 9999:
                    got.append(p)
        return {"mode": t.mode, "stats": t.stats, "packets": got, "payload": payload}


@pytest.fixture
def two_netns() -> Any:
    names = (f"mqtb-{os.getpid()}-tuna", f"mqtb-{os.getpid()}-tunb")
    try:
        for n in names:
            add_netns(n)
        yield names
    finally:
        for n in names:
            delete_netns(n)


@pytest.mark.netns
def test_open_modes(two_netns: tuple[str, str]) -> None:
    out = run_in_netns(two_netns[0], scenario_open_modes)
    mode, vnet, _offloads, name = out["vnet"]
    assert vnet and mode.startswith("vnet_hdr") and "tso4" in mode and "tso6" in mode
    assert name.startswith("mqo")
    assert out["vnet_empty_read"] == []
    assert out["plain"] == ("plain", False, 0)
    assert out["mq"][0].endswith("+mq3") and out["mq"][1:] == (3, 3)
    assert out["mq_nonblocking"]
    assert out["long_name"] > 0
    print("negotiated:", mode, out["mq"][0])


@pytest.mark.netns
@pytest.mark.parametrize("family", [socket.AF_INET, socket.AF_INET6], ids=["ipv4", "ipv6"])
def test_tcp_transfer_through_split(two_netns: tuple[str, str], family: int) -> None:
    ns_a, ns_b = two_netns
    nbytes = 4 << 20
    port = 5301
    sink: dict[str, Any] = {}

    def run_sink() -> None:
        try:
            sink["result"] = run_in_netns(ns_b, scenario_sink, port, family, 25.0)
        except BaseException as exc:
            sink["error"] = exc

    t = threading.Thread(target=run_sink)
    t.start()
    try:
        out = run_in_netns(ns_a, scenario_bridge_and_send, ns_b, family, port, nbytes)
    finally:
        t.join(30)
    if "error" in sink:
        raise sink["error"]
    digest, total = sink["result"]
    print("mode A:", out["mode_a"], "mode B:", out["mode_b"], "stats A:", out["stats_a"])
    assert total == nbytes
    assert digest == out["sent_sha"]
    stats = out["stats_a"]
    assert out["mode_b"] == "plain"
    assert "tso4" in out["mode_a"] and "tso6" in out["mode_a"]
    # the kernel handed over super-segments (>1 MTU) and C split them
    assert stats["gso_frames"] > 0
    assert stats["segments_split"] > stats["gso_frames"]
    assert out["max_len"] <= 1500
    assert stats["errors"] == 0 and out["stats_b"]["errors"] == 0


@pytest.mark.netns
@pytest.mark.parametrize("family", [socket.AF_INET, socket.AF_INET6], ids=["ipv4", "ipv6"])
def test_uso_frame_from_kernel_is_split(two_netns: tuple[str, str], family: int) -> None:
    out = run_in_netns(two_netns[0], scenario_uso_read, family)
    # USO is in every kernel since 6.2, the ones this project supports (NOTES.md).
    assert "uso" in out["mode"], out["mode"]
    packets = out["packets"]
    assert [len(p) for p in packets] == [
        (20 if family == socket.AF_INET else 40) + 8 + n for n in (1000, 1000, 1000, 500)
    ]
    assert out["stats"]["gso_frames"] >= 1 and out["stats"]["errors"] == 0
    data = b""
    for p in packets:
        ip = IP(p) if family == socket.AF_INET else IPv6(p)
        udp = ip[UDP]
        data += bytes(udp.payload)
        rebuilt = (IP if family == socket.AF_INET else IPv6)(bytes(ip.copy()))
        del rebuilt[UDP].chksum
        assert (IP if family == socket.AF_INET else IPv6)(bytes(rebuilt))[UDP].chksum == udp.chksum
        if family == socket.AF_INET:
            del rebuilt.chksum
            assert IP(bytes(rebuilt)).chksum == ip.chksum
    assert data == out["payload"]


# -- 3. PacketBatch I/O: read_batch / write_batch -------------------------------------


def checksums_ok(packet: bytes) -> bool:
    """IPv4 header checksum (parse_ip_packet) and TCP/UDP checksum, checked in Python."""
    header = parse_ip_packet(packet)
    if header.protocol not in (6, 17):
        return True
    segment = packet[header.header_length :]
    return transport_checksum(header.src, header.dst, header.protocol, segment) == 0


def _sysctl(*settings: str) -> None:
    subprocess.run(["sysctl", "-q", "-w", *settings], check=True, capture_output=True)


def _forwarding_tuns(reader_vnet: bool) -> tuple[Tun, Tun]:
    """TUN mqw (vnet_hdr, written) and mqr (read) in this namespace, which forwards
    10.81.1.0/24 / fd81:1::/64 (behind mqw) to 10.81.2.0/24 / fd81:2::/64 (behind mqr)."""
    _sysctl(
        "net.ipv4.ip_forward=1",
        "net.ipv6.conf.all.forwarding=1",
        "net.ipv4.conf.all.rp_filter=0",
        "net.ipv4.conf.default.rp_filter=0",
    )
    w = Tun("mqw", vnet_hdr=True)
    r = Tun("mqr", vnet_hdr=reader_vnet)
    for dev, net in (("mqw", 1), ("mqr", 2)):
        _ip("addr", "add", f"10.81.{net}.1/24", "dev", dev)
        _ip("addr", "add", f"fd81:{net}::1/64", "dev", dev, "nodad")
        _ip("link", "set", dev, "mtu", "1500", "up")
    return w, r


def _tcp_segments(version: int, sport: int, count: int, size: int, id_base: int) -> list[bytes]:
    """``count`` contiguous segments of one flow towards mqr's side; PSH on the last."""
    out = []
    for k in range(count):
        ip: Any
        if version == 4:
            ip = IP(src="10.81.1.2", dst="10.81.2.2", id=id_base + k, flags="DF", ttl=64)
        else:
            ip = IPv6(src="fd81:1::2", dst="fd81:2::2", hlim=64, fl=0x1234)
        tcp = TCP(
            sport=sport,
            dport=5201,
            seq=0xFFFF0000 + k * size,
            ack=99,
            flags="PA" if k == count - 1 else "A",
            window=1000,
            options=[("NOP", None), ("NOP", None), ("Timestamp", (7, 8))],
        )
        out.append(bytes(ip / tcp / Raw(bytes([sport & 0xFF, k & 0xFF]) * (size // 2))))
    return out


def _forwarded(packet: bytes) -> bytes:
    """``packet`` as the kernel forwards it: TTL / hop limit one less."""
    parsed: Any = IP(packet) if packet[0] >> 4 == 4 else IPv6(packet)
    if packet[0] >> 4 == 4:
        parsed.ttl -= 1
        del parsed.chksum
    else:
        parsed.hlim -= 1
    return bytes(parsed)


def _gro_traffic(version: int) -> tuple[list[bytes], dict[int, list[bytes]]]:
    """Flow A (40 x 1400 B) and flow B (10 x 1000 B) interleaved, one UDP datagram."""
    a = _tcp_segments(version, 1111, 40, 1400, 100)
    b = _tcp_segments(version, 2222, 10, 1000, 500)
    ip: Any = (
        IP(src="10.81.1.2", dst="10.81.2.2")
        if version == 4
        else IPv6(src="fd81:1::2", dst="fd81:2::2")
    )
    udp = bytes(ip / UDP(sport=3333, dport=9) / Raw(b"u" * 1200))
    order = []
    for k in range(40):
        order.append(a[k])
        if k % 4 == 0:
            order.append(b[k // 4])
        if k == 20:
            order.append(udp)
    return order, {1111: a, 2222: b, 3333: [udp]}


def scenario_gro_forward(
    version: int, reader_vnet: bool, slots: int, prefill: int, slot_size: int
) -> dict[str, Any]:
    """Write coalesced traffic to mqw; read what the kernel forwards out of mqr."""
    w, r = _forwarding_tuns(reader_vnet)
    sent, _ = _gro_traffic(version)
    batch = PacketBatch(slots=len(sent))
    for p in sent:
        batch.append(p)
    written = w.write_batch(batch)
    # the kernel forwards while write() runs: everything is queued on mqr now
    rb = PacketBatch(slots=slots, slot_size=slot_size, headroom=16)
    arena = memoryview(rb)
    arena[:] = b"\xee" * arena.nbytes  # read_batch must write packets only, after the headroom
    for _ in range(prefill):
        rb.append(b"\x00" * 20)
    calls = [r.read_batch(rb, mtu=1500)]
    got = [bytes(rb.view(i)) for i in range(prefill, rb.count)]
    headroom_intact = all(rb.headroom_view(i, 16) == b"\xee" * 16 for i in range(rb.count))
    deadline = time.monotonic() + 3
    while time.monotonic() < deadline:
        rb.clear()
        n = r.read_batch(rb, mtu=1500)
        if n == 0:
            if select.select([r.fileno()], [], [], 0.2)[0]:
                continue
            break
        calls.append(n)
        got += [bytes(rb.view(i)) for i in range(rb.count)]
    # a device that is down refuses everything: the super-frame, then each segment
    _ip("link", "set", "mqw", "down")
    refused = w.write_batch(batch)
    return {
        "written": written,
        "refused": refused,
        "w_stats": w.stats,
        "r_stats": r.stats,
        "r_mode": r.mode,
        "calls": calls,
        "got": got,
        "headroom_intact": headroom_intact,
    }


def _ours_by_flow(packets: list[bytes]) -> dict[int, list[bytes]]:
    """Our test traffic among what was read (the kernel adds MLD and the like)."""
    flows: dict[int, list[bytes]] = {}
    for p in packets:
        parsed: Any = IP(p) if p[0] >> 4 == 4 else IPv6(p)
        layer = parsed[TCP] if TCP in parsed else parsed.getlayer(UDP)
        if layer is not None and layer.sport in (1111, 2222, 3333):
            flows.setdefault(layer.sport, []).append(p)
    return flows


@pytest.fixture
def one_netns() -> Any:
    name = f"mqtb-{os.getpid()}-gro"
    try:
        add_netns(name)
        yield name
    finally:
        delete_netns(name)


def _check_writer(out: dict[str, Any]) -> None:
    w = out["w_stats"]
    assert out["written"] == 51  # 50 TCP segments + 1 UDP
    assert (w["gro_frames"], w["segments_coalesced"], w["writes"]) == (2, 50, 51)
    # device down: the two super-frames, then their 50 segments, then the UDP packet
    assert out["refused"] == 0
    assert w["write_errors"] == 2 + 50 + 1


@pytest.mark.netns
@pytest.mark.parametrize("version", [4, 6])
def test_gro_super_frames_cross_the_kernel_and_split_back(one_netns: str, version: int) -> None:
    """mqr with TSO: the kernel forwards our super-frames as GSO frames; read_batch
    splits them back into the very segments, carrying over what does not fit."""
    out = run_in_netns(one_netns, scenario_gro_forward, version, True, 16, 13, 2048)
    _check_writer(out)
    r = out["r_stats"]
    assert "tso4" in out["r_mode"]
    assert r["largest_read"] > 1500  # a super-segment was read
    assert r["gso_frames"] == 2 and r["segments_split"] == 50
    assert r["errors"] == r["oversize"] == 0
    assert out["calls"][0] == 3  # filled the 3 free slots; the rest waited in the Tun
    assert max(out["calls"]) <= 16
    assert out["headroom_intact"]
    _, expected = _gro_traffic(version)
    flows = _ours_by_flow(out["got"])
    for sport, packets in expected.items():  # nothing lost, same order, same bytes
        assert flows.get(sport) == [_forwarded(p) for p in packets], sport
    assert all(checksums_ok(p) for p in out["got"] if p[0] >> 4 in (4, 6))


@pytest.mark.netns
@pytest.mark.parametrize("version", [4, 6])
def test_gro_super_frames_segmented_by_the_kernel(one_netns: str, version: int) -> None:
    """mqr plain: the kernel segments our super-frames itself and completes the
    checksums from the pseudo-header sums we left in them."""
    out = run_in_netns(one_netns, scenario_gro_forward, version, False, 64, 0, 2048)
    _check_writer(out)
    assert out["r_mode"] == "plain"
    _, expected = _gro_traffic(version)
    flows = _ours_by_flow(out["got"])
    for sport, packets in expected.items():
        assert flows.get(sport) == [_forwarded(p) for p in packets], sport
    assert all(checksums_ok(p) for ps in flows.values() for p in ps)


@pytest.mark.netns
@pytest.mark.parametrize("version", [4, 6])
def test_read_batch_small_slots(one_netns: str, version: int) -> None:
    """Slots of 1024 bytes: TCP is cut to fit them, a larger UDP datagram is dropped
    and counted, never truncated."""
    out = run_in_netns(one_netns, scenario_gro_forward, version, True, 64, 0, 1024)
    _check_writer(out)
    r = out["r_stats"]
    assert r["oversize"] == 1 and r["errors"] == 0
    _, expected = _gro_traffic(version)
    flows = _ours_by_flow(out["got"])
    assert 3333 not in flows
    l4 = 20 if version == 4 else 40
    for sport in (1111, 2222):
        packets = flows[sport]
        assert all(len(p) <= 1024 for p in packets)
        assert all(checksums_ok(p) for p in packets)
        hlen = l4 + 32
        assert b"".join(p[hlen:] for p in packets) == b"".join(p[hlen:] for p in expected[sport])


def scenario_write_batch_plain_and_errors() -> dict[str, Any]:
    """write_batch on a device without vnet_hdr, verdicts, and a packet the kernel refuses."""
    with Tun("mqpl", vnet_hdr=False) as t:
        _ip("link", "set", "mqpl", "up")
        batch = PacketBatch(slots=8)
        for p in _tcp_segments(4, 1111, 4, 1000, 1):
            batch.append(p)
        batch.append(b"\x00" * 40)  # IP version 0: EINVAL
        batch.append(b"")  # skipped
        written = t.write_batch(batch, bytes([0, 1, 0, 0, 0, 0]))
        return {"written": written, "stats": t.stats}


@pytest.mark.netns
def test_write_batch_without_vnet_hdr(one_netns: str) -> None:
    out = run_in_netns(one_netns, scenario_write_batch_plain_and_errors)
    assert out["written"] == 3
    s = out["stats"]
    assert (s["writes"], s["write_errors"], s["gro_frames"]) == (3, 1, 0)


def scenario_bridge_batches(
    peer_ns: str, family: int, port: int, nbytes: int, b_vnet: bool, slots: int
) -> dict[str, Any]:
    """The bridge of scenario_bridge_and_send through PacketBatch: A (vnet_hdr)
    read_batch -> B write_batch; B read_batch -> A write_batch."""
    ta = Tun("mqta", vnet_hdr=True)
    tb = Tun("mqtb", vnet_hdr=b_vnet)
    _ip("link", "set", "mqtb", "netns", peer_ns)
    _ip("addr", "add", "10.77.0.1/24", "dev", "mqta")
    _ip("addr", "add", "fd77::1/64", "dev", "mqta", "nodad")
    _ip("link", "set", "mqta", "mtu", "1500", "up")
    _ip("-n", peer_ns, "addr", "add", "10.77.0.2/24", "dev", "mqtb")
    _ip("-n", peer_ns, "addr", "add", "fd77::2/64", "dev", "mqtb", "nodad")
    _ip("-n", peer_ns, "link", "set", "mqtb", "mtu", "1500", "up")
    dst = "fd77::2" if family == socket.AF_INET6 else "10.77.0.2"

    data = os.urandom(nbytes)
    result: dict[str, Any] = {"sent_sha": hashlib.sha256(data).hexdigest()}
    sender_error: list[BaseException] = []

    def send() -> None:
        try:
            deadline = time.monotonic() + 10
            while True:
                s = socket.socket(family, socket.SOCK_STREAM)
                s.settimeout(20)
                try:
                    s.connect((dst, port))
                    break
                except OSError:
                    s.close()
                    if time.monotonic() > deadline:
                        raise
                    time.sleep(0.1)
            with s:
                s.sendall(data)
                s.shutdown(socket.SHUT_WR)
                while s.recv(4096):
                    pass
        except BaseException as exc:
            sender_error.append(exc)

    ab = PacketBatch(slots=slots, slot_size=2048, headroom=16)
    ba = PacketBatch(slots=slots, slot_size=2048, headroom=16)
    read_a = max_len = bad_checksums = 0
    to_b = to_a = 0

    def pump_a() -> int:
        nonlocal read_a, max_len, bad_checksums, to_b
        ab.clear()
        n = ta.read_batch(ab, mtu=1500)
        read_a += n
        for i in range(n):
            p = bytes(ab.view(i))
            max_len = max(max_len, len(p))
            if p[0] >> 4 in (4, 6) and not checksums_ok(p):
                bad_checksums += 1
        if n:
            to_b += tb.write_batch(ab)
        return n

    sender = threading.Thread(target=send, daemon=True)
    sender.start()
    deadline = time.monotonic() + 25
    while sender.is_alive() and time.monotonic() < deadline:
        select.select([ta.fileno(), tb.fileno()], [], [], 0.05)
        pump_a()
        ba.clear()
        if tb.read_batch(ba, mtu=1500):
            to_a += ta.write_batch(ba)
    sender.join(1)
    if sender_error:
        raise sender_error[0]
    assert not sender.is_alive(), "transfer did not finish in time"
    while pump_a():  # whatever is still pending in the Tun
        pass
    result.update(
        stats_a=ta.stats,
        stats_b=tb.stats,
        mode_a=ta.mode,
        mode_b=tb.mode,
        read_a=read_a,
        max_len=max_len,
        bad_checksums=bad_checksums,
        to_b=to_b,
        to_a=to_a,
    )
    ta.close()
    tb.close()
    return result


@pytest.mark.netns
@pytest.mark.parametrize("b_vnet", [False, True], ids=["b-plain", "b-gro"])
@pytest.mark.parametrize("family", [socket.AF_INET, socket.AF_INET6], ids=["ipv4", "ipv6"])
def test_tcp_transfer_through_batches(
    two_netns: tuple[str, str], family: int, b_vnet: bool
) -> None:
    """A real TCP transfer through read_batch (A splits the kernel's super-segments
    into 8-slot batches: constant carry-over) and write_batch (B plain: B's kernel
    checks our checksums; B with vnet_hdr: B coalesces them again)."""
    ns_a, ns_b = two_netns
    nbytes = 4 << 20
    port = 5302
    sink: dict[str, Any] = {}

    def run_sink() -> None:
        try:
            sink["result"] = run_in_netns(ns_b, scenario_sink, port, family, 25.0)
        except BaseException as exc:
            sink["error"] = exc

    t = threading.Thread(target=run_sink)
    t.start()
    try:
        out = run_in_netns(ns_a, scenario_bridge_batches, ns_b, family, port, nbytes, b_vnet, 8)
    finally:
        t.join(30)
    if "error" in sink:
        raise sink["error"]
    digest, total = sink["result"]
    a, b = out["stats_a"], out["stats_b"]
    print("stats A:", a, "stats B:", b)
    assert total == nbytes and digest == out["sent_sha"]  # bytes delivered == bytes written
    assert a["largest_read"] > 1500 and a["gso_frames"] > 0
    assert out["max_len"] <= 1500
    assert out["bad_checksums"] == 0
    # nothing lost inside the Tun: every frame read became packets in the batches
    assert out["read_a"] == a["reads"] - a["gso_frames"] + a["segments_split"]
    assert a["errors"] == a["oversize"] == 0
    assert b["errors"] == b["write_errors"] == 0
    assert out["to_b"] == out["read_a"]  # B took every packet
    if b_vnet:
        assert out["mode_b"].startswith("vnet_hdr")
        assert b["gro_frames"] > 0 and b["segments_coalesced"] > b["gro_frames"]
    else:
        assert out["mode_b"] == "plain" and b["gro_frames"] == 0
