"""_fastpath.XskSocket on a real veth pair, behind bpf/relay_xdp.bpf.o.

Two network namespaces joined by one veth pair: "a" (the peer: a plain UDP
socket) and "b" (the relay: relay_xdp attached to its veth end, an XskSocket
bound to queue 0 of it and put into the program's XSKMAP at index 0, and a
plain UDP socket on the relay's port for whatever the program passes).

Sockets and netlink calls belong to the network namespace of the thread that
makes them, so everything that must happen "in b" (opening the XskSocket,
which binds to an ifindex of b; attaching the program, which talks netlink;
binding UDP sockets) runs in a short-lived thread that setns()es into the
namespace first (:func:`in_netns`). The fds it returns are then used from the
test's own thread: an fd keeps the namespace it was created in.

The program's maps and config layout come from tests/test_bpf_relay_xdp.py,
which compiles bpf/include/masque_bpf.h (nothing is re-typed here).
"""

from __future__ import annotations

import asyncio
import contextlib
import ctypes
import errno
import json
import os
import secrets
import select
import socket
import struct
import subprocess
import threading
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import TypeVar

import pytest

from _fastpath import PacketBatch, XskSocket
from relay.libbpf import BpfObject, XdpAttachFlags, xdp_attach, xdp_detach, xdp_query_id
from tests.netbed import NETNS_PREFIX, add_netns, delete_netns, sweep_stale_netns
from tests.test_bpf_relay_xdp import (
    CID_LEN,
    KNOWN_CID,
    OBJ_PATH,
    UNKNOWN_CID,
    Header,
    Relay,
    _build_bpf,
    _compile_probe,
    _parse_probe,
)

pytestmark = pytest.mark.netns

T = TypeVar("T")

PORT = 4433  # the relay's UDP port in b
PEER_PORT = 5544  # the peer's UDP port in a
IF_A, IF_B = "xsk-a", "xsk-b"
V4_A, V4_B = "10.211.0.2", "10.211.0.1"
V6_A, V6_B = "fd00:211::2", "fd00:211::1"
FAMILIES = {"ipv4": (V4_A, V4_B, socket.AF_INET), "ipv6": (V6_A, V6_B, socket.AF_INET6)}
MODES = {"native": XdpAttachFlags.DRV_MODE, "generic": XdpAttachFlags.SKB_MODE}

_libc = ctypes.CDLL(None, use_errno=True)
_CLONE_NEWNET = 0x40000000


def in_netns(netns: str, func: Callable[[], T]) -> T:
    """Run ``func()`` in a fresh thread that has joined ``netns``; return its result."""
    box: list[tuple[bool, object]] = []

    def run() -> None:
        try:
            fd = os.open(f"/run/netns/{netns}", os.O_RDONLY | os.O_CLOEXEC)
            try:
                if _libc.setns(fd, _CLONE_NEWNET) != 0:
                    err = ctypes.get_errno()
                    raise OSError(err, f"setns into {netns}: {os.strerror(err)}")
            finally:
                os.close(fd)
            box.append((True, func()))
        except BaseException as exc:  # re-raised in the caller's thread
            box.append((False, exc))

    thread = threading.Thread(target=run, name=f"in-{netns}")
    thread.start()
    thread.join()
    ok, value = box[0]
    if not ok:
        assert isinstance(value, BaseException)
        raise value
    return value  # type: ignore[return-value]


def _ip(*args: str) -> str:
    proc = subprocess.run(["ip", *args], capture_output=True, text=True, check=False)
    assert proc.returncode == 0, f"ip {' '.join(args)}: {proc.stderr.strip()}"
    return proc.stdout


def _mac(netns: str, ifname: str) -> bytes:
    info = json.loads(_ip("-n", netns, "-j", "link", "show", "dev", ifname))
    return bytes.fromhex(info[0]["address"].replace(":", ""))


@dataclass
class Pair:
    """Namespaces a and b joined by the veth IF_A <-> IF_B."""

    ns_a: str
    ns_b: str
    ifindex_b: int
    mac_a: bytes
    mac_b: bytes


@pytest.fixture(scope="module")
def pair() -> Iterator[Pair]:
    if os.geteuid() != 0:
        pytest.fail("AF_XDP and network namespaces need root")
    sweep_stale_netns()
    run_id = f"{os.getpid()}-{secrets.token_hex(3)}"
    ns_a, ns_b = f"{NETNS_PREFIX}-{run_id}-xska", f"{NETNS_PREFIX}-{run_id}-xskb"
    try:
        add_netns(ns_a)
        add_netns(ns_b)
        _ip("link", "add", IF_A, "netns", ns_a, "type", "veth", "peer", "name", IF_B, "netns", ns_b)
        for ns, ifname, v4, v6 in ((ns_a, IF_A, V4_A, V6_A), (ns_b, IF_B, V4_B, V6_B)):
            _ip("-n", ns, "addr", "add", f"{v4}/24", "dev", ifname)
            _ip("-n", ns, "-6", "addr", "add", f"{v6}/64", "dev", ifname, "nodad")
            _ip("-n", ns, "link", "set", ifname, "up")
        # Static neighbours: nothing waits on ARP/ND, in either direction.
        mac_a, mac_b = _mac(ns_a, IF_A), _mac(ns_b, IF_B)
        for ns, ifname, v4, v6, mac in (
            (ns_a, IF_A, V4_B, V6_B, mac_b),
            (ns_b, IF_B, V4_A, V6_A, mac_a),
        ):
            text = mac.hex(":")
            for addr in (v4, v6):
                _ip("-n", ns, "neigh", "replace", addr, "lladdr", text, "dev", ifname)
        ifindex_b = in_netns(ns_b, lambda: socket.if_nametoindex(IF_B))
        yield Pair(ns_a, ns_b, ifindex_b, mac_a, mac_b)
    finally:
        delete_netns(ns_a)
        delete_netns(ns_b)


@pytest.fixture(scope="module")
def header(tmp_path_factory: pytest.TempPathFactory) -> Header:
    exe = _compile_probe(tmp_path_factory.mktemp("xsk-probe"), "c11")
    out = subprocess.run([exe], capture_output=True, text=True, check=True).stdout
    return _parse_probe(out)


@pytest.fixture(scope="module")
def bpf_obj() -> Iterator[BpfObject]:
    _build_bpf()
    with BpfObject.open(Path(OBJ_PATH)) as obj:
        yield obj


@dataclass
class Lane:
    """relay_xdp attached to b's veth with an XskSocket at queue 0."""

    pair: Pair
    relay: Relay
    xsk: XskSocket
    attach_mode: XdpAttachFlags


@contextlib.contextmanager
def open_lane(
    pair: Pair, bpf_obj: BpfObject, header: Header, mode: XdpAttachFlags, frames: int = 4096
) -> Iterator[Lane]:
    relay = Relay(bpf_obj, header)
    relay.reset()  # no CID but KNOWN_CID, no rate-limit state
    relay.configure(
        addr4=socket.inet_pton(socket.AF_INET, V4_B),
        addr6=socket.inet_pton(socket.AF_INET6, V6_B),
        port=PORT.to_bytes(2, "big"),
        cid_len=CID_LEN,
        hs_rate_pps=0,
    )
    xsk = in_netns(pair.ns_b, lambda: XskSocket(pair.ifindex_b, 0, frames=frames))
    attached = False
    try:
        relay.xsks.update(struct.pack("=I", 0), struct.pack("=I", xsk.fileno()))
        in_netns(pair.ns_b, lambda: xdp_attach(pair.ifindex_b, relay.prog.fd, mode))
        attached = True
        yield Lane(pair, relay, xsk, mode)
    finally:
        if attached:
            in_netns(pair.ns_b, lambda: xdp_detach(pair.ifindex_b, mode))
        xsk.close()


@pytest.fixture(params=list(MODES))
def lane(
    request: pytest.FixtureRequest, pair: Pair, bpf_obj: BpfObject, header: Header
) -> Iterator[Lane]:
    with open_lane(pair, bpf_obj, header, MODES[request.param]) as lane:
        yield lane


def udp_socket(netns: str, host: str, port: int, family: int) -> socket.socket:
    def make() -> socket.socket:
        sock = socket.socket(family, socket.SOCK_DGRAM)
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 8 << 20)
        sock.bind((host, port))
        return sock

    return in_netns(netns, make)


def short_header(cid: bytes, seq: int, size: int) -> bytes:
    """A QUIC short-header-looking payload: fixed bit, the CID, then a counter."""
    body = seq.to_bytes(4, "big") * (size // 4 + 1)
    return (b"\x41" + cid + body)[: max(size, 1 + len(cid) + 20)]


def long_header(seq: int, size: int = 200) -> bytes:
    return (b"\xc0\x00\x00\x00\x01\x08" + KNOWN_CID + seq.to_bytes(4, "big") * size)[:size]


def receive_xsk(
    xsk: XskSocket, batch: PacketBatch, count: int, timeout: float = 5.0
) -> list[tuple[tuple[str, int], tuple[str, int], bytes]]:
    """Poll and receive until ``count`` packets are in ``batch`` (fails on timeout)."""
    got: list[tuple[tuple[str, int], tuple[str, int], bytes]] = []
    poller = select.poll()
    poller.register(xsk.fileno(), select.POLLIN)
    deadline = time.monotonic() + timeout
    while len(got) < count:
        left = deadline - time.monotonic()
        assert left > 0, f"timed out after {len(got)} of {count} packets; {xsk.stats}"
        poller.poll(int(min(left, 0.2) * 1000) + 1)
        got += xsk.recv_batch(batch, count - len(got))
    return got


def receive_udp(
    sock: socket.socket, count: int, timeout: float = 5.0
) -> list[tuple[bytes, tuple[str, int]]]:
    """Receive ``count`` datagrams: ``(payload, (host, port))``."""
    out: list[tuple[bytes, tuple[str, int]]] = []
    sock.settimeout(timeout)
    while len(out) < count:
        data, addr = sock.recvfrom(65536)
        out.append((data, (addr[0], addr[1])))
    return out


def drain(sock: socket.socket) -> int:
    sock.setblocking(False)
    n = 0
    with contextlib.suppress(BlockingIOError):
        while True:
            sock.recv(65536)
            n += 1
    return n


# ---------------------------------------------------------------------------
# Receive
# ---------------------------------------------------------------------------


@pytest.mark.parametrize("family", list(FAMILIES))
def test_known_cid_reaches_the_xsk_and_the_rest_the_kernel(family: str, lane: Lane) -> None:
    addr_a, addr_b, af = FAMILIES[family]
    pair, xsk = lane.pair, lane.xsk
    assert xsk.mode == "copy"  # veth has no zero-copy: the fallback worked
    peer = udp_socket(pair.ns_a, addr_a, PEER_PORT, af)
    kernel = udp_socket(pair.ns_b, addr_b, PORT, af)
    try:
        before = lane.relay.totals()
        sizes = [29, 30, 64, 333, 1000, 1200, 1400, 1472 if family == "ipv4" else 1452]
        lane_payloads = [short_header(KNOWN_CID, i, n) for i, n in enumerate(sizes * 4)]
        other_payloads = []
        for i, payload in enumerate(lane_payloads):
            peer.sendto(payload, (addr_b, PORT))
            if i % 4 == 0:  # interleave what the program passes to the kernel
                other = short_header(UNKNOWN_CID, i, 100) if i % 8 else long_header(i)
                other_payloads.append(other)
                peer.sendto(other, (addr_b, PORT))

        batch = PacketBatch(slots=64, slot_size=2048)
        got = receive_xsk(xsk, batch, len(lane_payloads))
        assert [bytes(batch.view(i)) for i in range(batch.count)] == lane_payloads
        assert set(got) == {((addr_a, PEER_PORT), (addr_b, PORT), pair.mac_a)}
        # The kernel got exactly the others, the lane none of them.
        passed = receive_udp(kernel, len(other_payloads))
        assert [data for data, _ in passed] == other_payloads
        assert {src for _, src in passed} == {(addr_a, PEER_PORT)}
        time.sleep(0.05)
        assert xsk.recv_batch(batch) == []
        assert drain(kernel) == 0

        stats = xsk.stats
        assert stats["rx_packets"] == len(lane_payloads)
        assert stats["rx_bytes"] == sum(map(len, lane_payloads))
        assert stats["rx_dropped_not_udp"] == stats["rx_dropped_too_big"] == 0
        assert stats["fill_refills"] == len(lane_payloads)
        assert stats["kernel_rx_dropped"] == stats["kernel_rx_ring_full"] == 0
        after = lane.relay.totals()
        assert after["REDIRECT"][0] - before["REDIRECT"][0] == len(lane_payloads)
    finally:
        peer.close()
        kernel.close()


def test_recv_appends_after_the_batch_and_stops_when_it_is_full(lane: Lane) -> None:
    pair, xsk = lane.pair, lane.xsk
    peer = udp_socket(pair.ns_a, V4_A, PEER_PORT, socket.AF_INET)
    try:
        payloads = [short_header(KNOWN_CID, i, 40 + i) for i in range(20)]
        for payload in payloads:
            peer.sendto(payload, (V4_B, PORT))
        batch = PacketBatch(slots=8, slot_size=256)
        batch.append(b"already here")
        got = receive_xsk(xsk, batch, 7)
        assert len(got) == 7 and batch.count == 8
        assert bytes(batch.view(0)) == b"already here"
        assert [bytes(batch.view(i)) for i in range(1, 8)] == payloads[:7]
        assert xsk.recv_batch(batch) == []  # full: the rest waits on the RX ring
        assert xsk.rx_pending == 13
        batch.clear()
        assert len(receive_xsk(xsk, batch, 8)) == 8
        batch.clear()
        assert len(xsk.recv_batch(batch, 3)) == 3  # max_packets bounds the take
        assert len(xsk.recv_batch(batch)) == 2
        assert [bytes(batch.view(i)) for i in range(5)] == payloads[15:]
        assert xsk.stats["rx_packets"] == 20
    finally:
        peer.close()


def test_payload_larger_than_a_slot_is_dropped_and_counted(lane: Lane) -> None:
    pair, xsk = lane.pair, lane.xsk
    peer = udp_socket(pair.ns_a, V4_A, PEER_PORT, socket.AF_INET)
    try:
        small, big = short_header(KNOWN_CID, 1, 100), short_header(KNOWN_CID, 2, 300)
        for payload in (small, big, small):
            peer.sendto(payload, (V4_B, PORT))
        batch = PacketBatch(slots=8, slot_size=200)
        receive_xsk(xsk, batch, 2)
        assert [bytes(batch.view(i)) for i in range(2)] == [small, small]
        assert xsk.stats["rx_dropped_too_big"] == 1
        assert xsk.stats["fill_refills"] == 3
    finally:
        peer.close()


def _send_bursts(
    sock: socket.socket, dst: tuple[str, int], total: int, burst: int, received: Callable[[], int]
) -> None:
    """Send ``total`` lane packets in bursts, each after the previous was received."""
    sent = 0
    while sent < total:
        n = min(burst, total - sent)
        for i in range(sent, sent + n):
            sock.sendto(short_header(KNOWN_CID, i, 64 + i % 1000), dst)
        sent += n
        deadline = time.monotonic() + 2.0
        while received() < sent * 0.99 and time.monotonic() < deadline:
            time.sleep(0.001)


@pytest.mark.parametrize("frames", [4096, 128], ids=["default", "few-frames"])
def test_ten_thousand_packets_in_bursts(
    frames: int, pair: Pair, bpf_obj: BpfObject, header: Header
) -> None:
    """Many more packets than RX frames (2048, or 64): the fill ring is refilled."""
    total, burst = 10_000, 500 if frames > 128 else 48
    with open_lane(pair, bpf_obj, header, XdpAttachFlags.DRV_MODE, frames=frames) as lane:
        xsk = lane.xsk
        peer = udp_socket(pair.ns_a, V4_A, PEER_PORT, socket.AF_INET)
        batch = PacketBatch(slots=64, slot_size=2048)
        seqs: list[int] = []
        stop = threading.Event()

        def consume() -> None:
            poller = select.poll()
            poller.register(xsk.fileno(), select.POLLIN)
            while not stop.is_set():
                poller.poll(20)
                batch.clear()
                if xsk.recv_batch(batch):
                    seqs.extend(
                        int.from_bytes(batch.view(i)[9:13], "big") for i in range(batch.count)
                    )

        consumer = threading.Thread(target=consume)
        consumer.start()
        try:
            _send_bursts(peer, (V4_B, PORT), total, burst, lambda: len(seqs))
            deadline = time.monotonic() + 2.0
            while len(seqs) < total and time.monotonic() < deadline:
                time.sleep(0.01)
        finally:
            stop.set()
            consumer.join()
            peer.close()
        stats = xsk.stats
        assert len(seqs) >= total * 0.99, f"lost {total - len(seqs)} of {total}: {stats}"
        assert seqs == sorted(set(seqs))  # no duplicates, in order
        assert stats["fill_refills"] == stats["rx_packets"] == len(seqs)
        assert stats["rx_packets"] > frames  # every frame was used several times


def test_fd_drives_an_asyncio_reader(lane: Lane) -> None:
    pair, xsk = lane.pair, lane.xsk
    peer = udp_socket(pair.ns_a, V6_A, PEER_PORT, socket.AF_INET6)
    payloads = [short_header(KNOWN_CID, i, 100) for i in range(5)]

    async def main() -> list[bytes]:
        loop = asyncio.get_running_loop()
        done: asyncio.Future[None] = loop.create_future()
        batch = PacketBatch(slots=64)

        def on_readable() -> None:
            xsk.recv_batch(batch)
            if batch.count >= len(payloads) and not done.done():
                done.set_result(None)

        loop.add_reader(xsk.fileno(), on_readable)
        try:
            loop.call_later(0.05, lambda: [peer.sendto(p, (V6_B, PORT)) for p in payloads])
            await asyncio.wait_for(done, 5.0)
        finally:
            loop.remove_reader(xsk.fileno())
        return [bytes(batch.view(i)) for i in range(batch.count)]

    try:
        assert asyncio.run(main()) == payloads
    finally:
        peer.close()


# ---------------------------------------------------------------------------
# Send
# ---------------------------------------------------------------------------


def tx_payloads() -> list[bytes]:
    sizes = [0, 1, 2, 3, 17, 64, 255, 1000, 1401, 1452]
    return [bytes((i * 7 + j) & 0xFF for j in range(n)) for i, n in enumerate(sizes)]


@pytest.mark.parametrize("family", list(FAMILIES))
def test_send_batch_reaches_the_peer(family: str, lane: Lane) -> None:
    addr_a, addr_b, af = FAMILIES[family]
    pair, xsk = lane.pair, lane.xsk
    peer = udp_socket(pair.ns_a, addr_a, PEER_PORT, af)
    try:
        payloads = tx_payloads()
        batch = PacketBatch(slots=len(payloads) + 2, slot_size=2048)
        for payload in [*payloads, b"not sent", b"not sent"]:
            batch.append(payload)
        sent = xsk.send_batch(
            batch, len(payloads), (addr_b, PORT), (addr_a, PEER_PORT), pair.mac_b, pair.mac_a
        )
        assert sent == len(payloads)
        got = receive_udp(peer, len(payloads))
        # The peer's kernel verified the IP and UDP checksums to deliver these.
        assert [data for data, _ in got] == payloads
        assert {src for _, src in got} == {(addr_b, PORT)}

        more = [b"list-" + bytes([i]) * i for i in range(30)]
        assert xsk.send_list(
            more, (addr_b, PORT), (addr_a, PEER_PORT), pair.mac_b, pair.mac_a
        ) == len(more)
        assert [data for data, _ in receive_udp(peer, len(more))] == more
        time.sleep(0.05)
        assert drain(peer) == 0
        stats = xsk.stats
        assert stats["tx_packets"] == len(payloads) + len(more)
        assert stats["tx_bytes"] == sum(map(len, payloads + more))
        assert stats["tx_full"] == stats["tx_dropped_too_big"] == stats["tx_kick_errors"] == 0
        assert stats["wakeups"] >= 2  # copy mode: the TX ring always asks for a kick
        assert xsk.flush() == 0
        assert xsk.tx_free == xsk.frames // 2  # every frame came back
    finally:
        peer.close()


def test_reply_to_what_was_received(lane: Lane) -> None:
    """Echo: addresses and MAC from recv_batch are what send_batch needs to answer."""
    pair, xsk = lane.pair, lane.xsk
    peer = udp_socket(pair.ns_a, V6_A, PEER_PORT, socket.AF_INET6)
    try:
        payloads = [short_header(KNOWN_CID, i, 50 + i) for i in range(10)]
        for payload in payloads:
            peer.sendto(payload, (V6_B, PORT))
        batch = PacketBatch(slots=16)
        got = receive_xsk(xsk, batch, len(payloads))
        src, dst, src_mac = got[0]
        assert xsk.send_batch(batch, batch.count, dst, src, pair.mac_b, src_mac) == len(payloads)
        assert [data for data, _ in receive_udp(peer, len(payloads))] == payloads
    finally:
        peer.close()


def test_too_big_payload_is_skipped_and_counted(lane: Lane) -> None:
    pair, xsk = lane.pair, lane.xsk
    peer = udp_socket(pair.ns_a, V4_A, PEER_PORT, socket.AF_INET)
    try:
        room = xsk.frame_size - 14 - 20 - 8
        payloads = [b"a" * 10, b"b" * (room + 1), b"c" * room if room <= 1472 else b"c" * 1472]
        n = xsk.send_list(payloads, (V4_B, PORT), (V4_A, PEER_PORT), pair.mac_b, pair.mac_a)
        assert n == 3
        assert xsk.stats["tx_dropped_too_big"] == 1
        assert [d for d, _ in receive_udp(peer, 2)] == [payloads[0], payloads[2]]
    finally:
        peer.close()


def test_many_sends_recycle_the_tx_frames(lane: Lane) -> None:
    """More packets than TX frames: completions give every frame back."""
    pair, xsk = lane.pair, lane.xsk
    peer = udp_socket(pair.ns_a, V4_A, PEER_PORT, socket.AF_INET)
    try:
        batch = PacketBatch(slots=64, slot_size=2048)
        for i in range(64):
            batch.append(i.to_bytes(4, "big") * 50)
        total = 0
        received = 0
        peer.setblocking(False)
        for _ in range(100):  # 6400 packets, 2048 TX frames
            total += xsk.send_batch(
                batch, 64, (V4_B, PORT), (V4_A, PEER_PORT), pair.mac_b, pair.mac_a
            )
            with contextlib.suppress(BlockingIOError):
                while True:
                    peer.recv(2048)
                    received += 1
        deadline = time.monotonic() + 2.0
        while received < total and time.monotonic() < deadline:
            try:
                peer.recv(2048)
                received += 1
            except BlockingIOError:
                time.sleep(0.001)
        assert xsk.flush() == 0
        stats = xsk.stats
        assert total == 6400 and stats["tx_full"] == 0, stats
        assert received >= total * 0.99, f"{received} of {total}: {stats}"
        assert stats["tx_completions"] == stats["tx_packets"] == total
        assert xsk.tx_free == xsk.frames // 2
    finally:
        peer.close()


def test_send_rejects_bad_arguments(lane: Lane) -> None:
    xsk, pair = lane.xsk, lane.pair
    batch = PacketBatch(slots=4)
    batch.append(b"x")
    macs = (pair.mac_b, pair.mac_a)
    with pytest.raises(ValueError, match="count"):
        xsk.send_batch(batch, 2, (V4_B, PORT), (V4_A, PEER_PORT), *macs)
    with pytest.raises(ValueError, match="same address family"):
        xsk.send_batch(batch, 1, (V4_B, PORT), (V6_A, PEER_PORT), *macs)
    with pytest.raises(ValueError, match="literal"):
        xsk.send_batch(batch, 1, ("relay.example", PORT), (V4_A, PEER_PORT), *macs)
    with pytest.raises(ValueError, match="port"):
        xsk.send_batch(batch, 1, (V4_B, 70000), (V4_A, PEER_PORT), *macs)
    with pytest.raises(ValueError, match="6 bytes"):
        xsk.send_batch(batch, 1, (V4_B, PORT), (V4_A, PEER_PORT), b"\x02" * 5, pair.mac_a)
    assert xsk.stats["tx_packets"] == 0


# ---------------------------------------------------------------------------
# Setup and errors
# ---------------------------------------------------------------------------


def test_properties_and_close(pair: Pair) -> None:
    xsk = in_netns(pair.ns_b, lambda: XskSocket(pair.ifindex_b, 0, frames=256))
    with xsk:
        assert (xsk.ifindex, xsk.queue) == (pair.ifindex_b, 0)
        assert (xsk.frames, xsk.frame_size) == (256, 2048)
        assert xsk.mode == "copy"
        assert xsk.tx_budget == 128  # 256 asked: clamped to the 128-entry TX ring
        assert xsk.fileno() >= 0 and not xsk.closed
        assert "copy" in repr(xsk)
        assert xsk.tx_free == 128 and xsk.rx_pending == 0
    assert xsk.closed
    xsk.close()  # twice is fine
    assert repr(xsk) == "<XskSocket closed>"
    assert xsk.stats["rx_packets"] == 0  # counters outlive the socket
    for call in (xsk.fileno, xsk.flush, lambda: xsk.recv_batch(PacketBatch())):
        with pytest.raises(ValueError, match="closed"):
            call()


def test_tx_budget_is_set_when_the_kernel_knows_it(pair: Pair) -> None:
    with in_netns(pair.ns_b, lambda: XskSocket(pair.ifindex_b, tx_budget=256)) as xsk:
        assert xsk.tx_budget == 256  # Linux 6.17+: XDP_MAX_TX_SKB_BUDGET
    with in_netns(pair.ns_b, lambda: XskSocket(pair.ifindex_b, tx_budget=0)) as xsk:
        assert xsk.tx_budget == 0


def test_bad_ifindex_is_a_clear_oserror() -> None:
    with pytest.raises(OSError, match=r"ifindex 999999 queue 0: bind .*No such device") as info:
        XskSocket(999999)
    assert info.value.errno == errno.ENODEV


def test_bad_queue_and_zero_copy_on_veth(pair: Pair) -> None:
    with pytest.raises(OSError, match="queue 7") as info:
        in_netns(pair.ns_b, lambda: XskSocket(pair.ifindex_b, 7))
    assert info.value.errno == errno.EINVAL
    with pytest.raises(OSError, match="zero-copy") as info:
        in_netns(pair.ns_b, lambda: XskSocket(pair.ifindex_b, zero_copy=True))
    assert info.value.errno in (errno.EOPNOTSUPP, errno.ENOTSUP, errno.EINVAL)
    with in_netns(pair.ns_b, lambda: XskSocket(pair.ifindex_b, zero_copy=False)) as xsk:
        assert xsk.mode == "copy"


@pytest.mark.parametrize(
    ("frames", "frame_size"), [(63, 2048), (0, 2048), (4096, 1000), (4096, 3000), (64, 1 << 16)]
)
def test_bad_geometry_is_a_value_error(frames: int, frame_size: int) -> None:
    with pytest.raises(ValueError):
        XskSocket(1, frames=frames, frame_size=frame_size)


def test_negative_arguments() -> None:
    for args in ((-1,), (1, -1)):
        with pytest.raises(ValueError):
            XskSocket(*args)


def test_no_fd_leak_on_failure() -> None:
    before = len(os.listdir("/proc/self/fd"))
    for _ in range(20):
        with pytest.raises(OSError):
            XskSocket(999999)
    assert len(os.listdir("/proc/self/fd")) == before


def test_xdp_query_shows_the_attach_mode(lane: Lane) -> None:
    pair = lane.pair
    prog_id = in_netns(pair.ns_b, lambda: xdp_query_id(pair.ifindex_b, lane.attach_mode))
    assert prog_id != 0
