"""_fastpath.Tun and the GSO split against scapy and the real kernel.

1. ``vnet_split`` on synthetic super-segments (virtio_net_hdr + packet built
   with scapy) against the packets scapy builds for each segment.
2. Acceptance: in namespace A a vnet_hdr+TSO TUN (``mqta``) hands the kernel's
   TCP super-segments to a bridge loop that splits them in C and writes the
   packets into a plain TUN (``mqtb``) moved to namespace B, where a sink hashes
   a multi-megabyte transfer. The plain TUN makes B's kernel verify every
   checksum we computed.
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

from _fastpath._core import Tun, vnet_split
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
    if "uso" not in out["mode"]:
        pytest.skip(f"kernel refused USO: {out['mode']}")
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
