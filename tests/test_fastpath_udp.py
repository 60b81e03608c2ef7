"""_fastpath.UdpSocket on loopback: batches, GSO/GRO and their fallbacks, ECN, fd sharing."""

from __future__ import annotations

import asyncio
import os
import random
import socket

import pytest

from _fastpath import UdpSocket

HOSTS = ["127.0.0.1", "::1"]
# Offload settings for both ends; every test body must give the same results for each.
MODES = {
    "offload": {"gso": True, "gro": True},
    "plain": {"gso": False, "gro": False},
}


def open_fds() -> int:
    return len(os.listdir("/proc/self/fd"))


def receive(
    sock: UdpSocket, count: int, timeout: float = 2.0
) -> list[tuple[bytes, tuple[str, int], int]]:
    """Receive until ``count`` datagrams arrived (fails the test on timeout)."""
    got: list[tuple[bytes, tuple[str, int], int]] = []
    while len(got) < count:
        batch = sock.recv_batch(64, timeout=timeout)
        assert batch, f"timed out after {len(got)} of {count} datagrams"
        got.extend(batch)
    return got


def sizes_mix(rng: random.Random) -> list[int]:
    """Singles across 1..1472, equal-size runs (the GSO path) with a shorter tail."""
    sizes = [1, 2, 100, 1472, 1471, 7]
    sizes += [1200] * 40 + [300]  # one GSO run with a short tail
    sizes += [1472] * 70  # longer than one GSO message (64 segments)
    sizes += [rng.randint(1, 1472) for _ in range(50)]
    sizes += [512] * 5 + [512] * 3 + [1]
    return sizes


def payloads_for(sizes: list[int]) -> list[bytes]:
    return [(i.to_bytes(4, "big") * (n // 4 + 1))[:n] for i, n in enumerate(sizes)]


@pytest.fixture(params=list(MODES), ids=list(MODES))
def mode(request: pytest.FixtureRequest) -> dict[str, bool]:
    return MODES[request.param]


@pytest.mark.parametrize("host", HOSTS)
def test_round_trip_batches(host: str, mode: dict[str, bool]) -> None:
    rng = random.Random(1)
    with UdpSocket.bind(host, 0, **mode) as tx, UdpSocket.bind(host, 0, **mode) as rx:
        if mode["gso"]:
            assert tx.features in ("gso+gro", "gso")
        else:
            assert tx.features == "plain"
        dst = rx.local_address
        payloads = payloads_for(sizes_mix(rng))
        sent = 0
        got: list[tuple[bytes, tuple[str, int], int]] = []
        for start in range(0, len(payloads), 64):
            chunk = payloads[start : start + 64]
            assert tx.send_batch([(p, dst) for p in chunk]) == len(chunk)
            sent += len(chunk)
            got += receive(rx, len(chunk))
        assert [g[0] for g in got] == payloads
        assert {g[1] for g in got} == {tx.local_address}
        assert {g[2] for g in got} == {0}
        st_tx, st_rx = tx.stats, rx.stats
        assert st_tx["datagrams_sent"] == sent
        assert st_rx["datagrams_received"] == sent
        assert st_tx["send_errors"] == 0
        if mode["gso"]:
            assert st_tx["gso_batches"] > 0
            assert st_tx["syscalls"] < sent // 4
        else:
            assert st_tx["gso_batches"] == 0
            assert st_rx["gro_splits"] == 0


@pytest.mark.parametrize("host", HOSTS)
def test_gro_split_of_gso_burst(host: str) -> None:
    with UdpSocket.bind(host, 0) as tx, UdpSocket.bind(host, 0) as rx:
        assert tx.features == "gso+gro"  # UDP_SEGMENT and UDP_GRO: kernels since 5.0
        payloads = payloads_for([1000] * 30 + [123])
        assert tx.send_batch([(p, rx.local_address) for p in payloads]) == 31
        assert tx.stats["gso_batches"] == 1
        assert tx.stats["syscalls"] == 1
        got = receive(rx, 31)
        assert [g[0] for g in got] == payloads
        assert [len(g[0]) for g in got] == [1000] * 30 + [123]
        assert rx.stats["gro_splits"] >= 1
        # The coalesced buffer came in fewer syscalls than datagrams.
        assert rx.stats["syscalls"] < 31


@pytest.mark.parametrize("host", HOSTS)
def test_plain_receiver_gets_gso_burst_segmented(host: str) -> None:
    """Without GRO the kernel segments a GSO burst; nothing to split in C."""
    with UdpSocket.bind(host, 0) as tx, UdpSocket.bind(host, 0, gro=False) as rx:
        assert "gro" not in rx.features
        payloads = payloads_for([800] * 20 + [5])
        assert tx.send_batch([(p, rx.local_address) for p in payloads]) == 21
        got = receive(rx, 21)
        assert [g[0] for g in got] == payloads
        assert rx.stats["gro_splits"] == 0


@pytest.mark.parametrize("host", HOSTS)
@pytest.mark.parametrize("ecn", [1, 2, 3])
def test_ecn_visible_on_receive(host: str, ecn: int, mode: dict[str, bool]) -> None:
    family = socket.AF_INET if ":" not in host else socket.AF_INET6
    with socket.socket(family, socket.SOCK_DGRAM) as plain, UdpSocket.bind(host, 0, **mode) as rx:
        if family == socket.AF_INET:
            plain.setsockopt(socket.IPPROTO_IP, socket.IP_TOS, 0x20 | ecn)
        else:
            plain.setsockopt(socket.IPPROTO_IPV6, socket.IPV6_TCLASS, 0x20 | ecn)
        plain.bind((host, 0))
        for i in range(5):
            plain.sendto(bytes([i]) * 700, rx.local_address)
        got = receive(rx, 5)
        assert [g[2] for g in got] == [ecn] * 5
        assert [g[1] for g in got] == [plain.getsockname()[:2]] * 5

        # The same through a UdpSocket sender (GSO run keeps the TOS byte).
        with UdpSocket.bind(host, 0, **mode) as tx:
            s = socket.socket(fileno=tx.fileno())
            try:
                if family == socket.AF_INET:
                    s.setsockopt(socket.IPPROTO_IP, socket.IP_TOS, ecn)
                else:
                    s.setsockopt(socket.IPPROTO_IPV6, socket.IPV6_TCLASS, ecn)
            finally:
                s.detach()
            assert tx.send_batch([(b"e" * 900, rx.local_address)] * 10) == 10
            got = receive(rx, 10)
            assert [g[2] for g in got] == [ecn] * 10


def test_offload_and_fallback_give_identical_results() -> None:
    rng = random.Random(7)
    payloads = payloads_for(sizes_mix(rng)[:64])
    results = []
    for settings in MODES.values():
        with (
            UdpSocket.bind("127.0.0.1", 0, **settings) as tx,
            UdpSocket.bind("127.0.0.1", 0, **settings) as rx,
        ):
            assert tx.send_batch([(p, rx.local_address) for p in payloads]) == 64
            results.append([(g[0], g[2]) for g in receive(rx, 64)])
    assert results[0] == results[1]


def test_dual_stack_ipv4_mapped() -> None:
    with UdpSocket.bind("::", 0) as dual, UdpSocket.bind("127.0.0.1", 0) as v4:
        assert dual.dual_stack
        port = dual.local_address[1]
        v4.send_batch([(b"a", ("127.0.0.1", port)), (b"b", ("::ffff:127.0.0.1", port))])
        got = receive(dual, 2)
        assert [g[0] for g in got] == [b"a", b"b"]
        assert {g[1] for g in got} == {v4.local_address}  # shown as IPv4
        # Replies to the IPv4 form (mapped internally), GSO run included.
        replies = [(b"r" * 600, v4.local_address)] * 8 + [(b"t", v4.local_address)]
        assert dual.send_batch(replies) == 9
        got = receive(v4, 9)
        assert [len(g[0]) for g in got] == [600] * 8 + [1]
        assert {g[1] for g in got} == {("127.0.0.1", port)}


def test_v6_only_socket_counts_ipv4_destinations_as_errors() -> None:
    with UdpSocket.bind("::1", 0, dual_stack=False) as v6, UdpSocket.bind("127.0.0.1", 0) as v4:
        assert not v6.dual_stack
        # IPv4 destination on a v6-only socket: the kernel refuses, counted and skipped.
        assert v6.send_batch([(b"x", v4.local_address), (b"y", v4.local_address)]) == 2
        assert v6.stats["send_errors"] == 2
    with UdpSocket.bind("127.0.0.1", 0) as v4:
        with pytest.raises(ValueError):
            v4.send_batch([(b"x", ("::1", 9))])
        with pytest.raises(ValueError):
            v4.send_batch([(b"x", ("localhost", 9))])


@pytest.mark.parametrize("gso", [True, False])
def test_hard_errors_are_counted_and_the_rest_is_sent(gso: bool) -> None:
    with UdpSocket.bind("127.0.0.1", 0, gso=gso) as tx, UdpSocket.bind("127.0.0.1", 0) as rx:
        bad = ("127.0.0.1", 0)  # destination port 0: EINVAL
        batch = [(b"z" * 500, bad)] * 5 + [(b"ok" * 100, rx.local_address)] * 3
        assert tx.send_batch(batch) == 8
        assert tx.stats["send_errors"] == 5
        assert tx.stats["datagrams_sent"] == 3
        assert [g[0] for g in receive(rx, 3)] == [b"ok" * 100] * 3


def test_wraps_asyncio_socket_without_owning_it() -> None:
    async def main() -> None:
        loop = asyncio.get_running_loop()
        received: asyncio.Queue[bytes] = asyncio.Queue()

        class Proto(asyncio.DatagramProtocol):
            def datagram_received(self, data: bytes, addr: tuple[str, int]) -> None:
                received.put_nowait(data)

        transport, _ = await loop.create_datagram_endpoint(Proto, local_addr=("127.0.0.1", 0))
        fd = transport.get_extra_info("socket").fileno()
        addr = transport.get_extra_info("sockname")
        wrapped = UdpSocket(fd)
        assert "gro" not in wrapped.features  # never GRO on a shared fd unless asked
        with UdpSocket.bind("127.0.0.1", 0) as peer:
            # Send through the shared fd: the peer sees asyncio's address.
            assert wrapped.send_batch([(b"w" * 1000, peer.local_address)] * 12) == 12
            got = receive(peer, 12)
            assert {g[1] for g in got} == {addr}
            # asyncio still receives on its socket.
            peer.send_batch([(b"to-asyncio", addr)])
            assert await asyncio.wait_for(received.get(), 2) == b"to-asyncio"
        wrapped.close()
        os.fstat(fd)  # still open
        transport.close()
        await asyncio.sleep(0)

    asyncio.run(main())


def test_no_fd_leak() -> None:
    before = open_fds()
    for i in range(50):
        s = UdpSocket.bind("::" if i % 2 else "127.0.0.1", 0)
        if i % 3:
            s.close()
        del s  # __dealloc__ closes an owned socket that was not closed
    plain = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    for _ in range(20):
        w = UdpSocket(plain.fileno())
        w.close()
        UdpSocket(plain.fileno(), own=False)
    os.fstat(plain.fileno())
    plain.close()
    fd = UdpSocket.bind("127.0.0.1", 0).detach()
    os.close(fd)
    assert open_fds() == before


def test_rejects_non_udp_fd() -> None:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as tcp, pytest.raises(OSError):
        UdpSocket(tcp.fileno())
    with pytest.raises(ValueError):
        s = UdpSocket.bind("127.0.0.1", 0)
        s.close()
        s.recv_batch()


def test_recv_empty_and_timeout() -> None:
    with UdpSocket.bind("127.0.0.1", 0) as s:
        assert s.recv_batch() == []
        assert s.recv_batch(timeout=0.01) == []
        assert s.send_batch([]) == 0
