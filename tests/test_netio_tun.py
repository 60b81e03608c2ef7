"""netio.tun and netio.netlink against the real kernel, inside the namespace test bed.

Each scenario is a module-level function run inside a namespace by
:func:`tests.nsexec.run_in_netns` (a fresh process: whatever it opens dies with
it); the test asserts on what the scenario returns.
"""

from __future__ import annotations

import errno
import fcntl
import ipaddress
import os
import select
import socket
import struct
import time
from collections.abc import Iterator
from typing import Any

import pytest
from scapy.layers.inet import ICMP, IP, UDP
from scapy.layers.inet6 import ICMPv6EchoReply, ICMPv6EchoRequest, IPv6

from netio.netlink import Netlink, Route
from netio.sysctl import read_sysctl
from netio.tun import TUNSETIFF, TUNSETOFFLOAD, TUNSETPERSIST, TunDevice
from tests.netbed import TestBed, open_testbed
from tests.nsexec import run_in_netns

pytestmark = pytest.mark.netns

POOL4_GW = ipaddress.IPv4Interface("10.100.0.1/24")
POOL6_GW = ipaddress.IPv6Interface("fd00:100::1/64")
PEER4 = ipaddress.IPv4Address("10.100.0.2")  # a "client" behind the TUN
PEER6 = ipaddress.IPv6Address("fd00:100::2")


@pytest.fixture
def bed() -> Iterator[TestBed]:
    with open_testbed() as testbed:
        yield testbed


def _read_until(tun: TunDevice, want: type, timeout: float = 5.0) -> list[bytes]:
    """Read packets until one whose scapy layer ``want`` is present; return all read."""
    seen: list[bytes] = []
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        select.select([tun.fileno()], [], [], max(0.0, deadline - time.monotonic()))
        seen.extend(tun.read_batch(16))
        if any(want in (IP(p) if p[0] >> 4 == 4 else IPv6(p)) for p in seen):
            return seen
    raise TimeoutError(f"no {want.__name__} read from {tun.name}; got {len(seen)} other(s)")


# -- scenarios (run inside a namespace) -------------------------------------------


def scenario_configure_and_close() -> dict[str, Any]:
    tun = TunDevice.open("mqt%d", mtu=1400)
    with Netlink() as nl:
        try:
            tun.add_address(POOL4_GW)
            tun.add_address(POOL6_GW)
            tun.add_address(POOL4_GW)  # already there: no error, not recorded twice
            tun.add_route(ipaddress.ip_network("10.150.0.0/16"))
            tun.add_route(ipaddress.ip_network("fd00:150::/48"))
            with pytest.raises(OSError) as exists:
                tun.add_route(ipaddress.ip_network("10.150.0.0/16"))
            link = nl.link(tun.index)
            observed: dict[str, Any] = {
                "name": tun.name,
                "link": link,
                "addresses": set(nl.addresses(tun.index)),
                "recorded": tun.addresses,
                "routes": {r.dst for r in nl.routes(4) + nl.routes(6) if r.oif == tun.index},
                "accept_dad": read_sysctl(f"net/ipv6/conf/{tun.name}/accept_dad"),
                "exists_errno": exists.value.errno,
                "fd_nonblocking": bool(fcntl.fcntl(tun.fileno(), fcntl.F_GETFL) & os.O_NONBLOCK),
                # The kernel's own IPv6 chatter (MLD reports, router solicitations)
                # goes into the tunnel; a later read finds the queue empty.
                "kernel_chatter": {IPv6(p).dst[:5] for p in tun.read_batch(64)},
                "empty_read": tun.read_batch(),
            }
        finally:
            tun.close()
        tun.close()  # idempotent
        with pytest.raises(OSError) as gone:
            nl.link_index(tun.name)
        observed["gone_errno"] = gone.value.errno
        observed["routes_after"] = [r for r in nl.routes(4) if r.dst.prefixlen == 16]
    return observed


def scenario_echo(target: str, count: int) -> dict[str, Any]:
    """Write ICMP echo requests from the peer into the TUN; read the replies back."""
    dst = ipaddress.ip_address(target)
    with TunDevice.open("mqt%d", mtu=1400) as tun:
        tun.add_address(POOL4_GW)
        tun.add_address(POOL6_GW)
        requests: list[bytes] = []
        for seq in range(count):
            payload = bytes([seq]) * 64
            packet: IP | IPv6
            if dst.version == 4:
                packet = IP(src=str(PEER4), dst=target, ttl=64) / ICMP(id=0x4D51, seq=seq)
            else:
                packet = IPv6(src=str(PEER6), dst=target, hlim=64) / ICMPv6EchoRequest(
                    id=0x4D51, seq=seq
                )
            requests.append(bytes(packet / payload))
        garbage = b"\x00" * 20  # IP version 0: the kernel refuses it
        written = tun.write_batch([garbage, *requests])
        replies: list[tuple[str, str, int, int, bytes]] = []
        deadline = time.monotonic() + 5.0
        want = ICMP if dst.version == 4 else ICMPv6EchoReply
        while len(replies) < count and time.monotonic() < deadline:
            for raw in _read_until(tun, want, timeout=deadline - time.monotonic()):
                parsed = IP(raw) if raw[0] >> 4 == 4 else IPv6(raw)
                if dst.version == 4 and ICMP in parsed and parsed[ICMP].type == 0:
                    icmp = parsed[ICMP]
                    replies.append((parsed.src, parsed.dst, icmp.id, icmp.seq, bytes(icmp.payload)))
                elif dst.version == 6 and ICMPv6EchoReply in parsed:
                    icmp6 = parsed[ICMPv6EchoReply]
                    replies.append((parsed.src, parsed.dst, icmp6.id, icmp6.seq, icmp6.data))
        return {"written": written, "drops": tun.write_drops, "replies": replies}


def _make_persistent_tun_with_offloads(name: str) -> None:
    """What a previous vnet_hdr owner (e.g. the fast path) leaves behind."""
    fd = os.open("/dev/net/tun", os.O_RDWR)
    try:
        flags = 0x0001 | 0x1000 | 0x4000  # IFF_TUN | IFF_NO_PI | IFF_VNET_HDR
        fcntl.ioctl(fd, TUNSETIFF, struct.pack("16sH22x", name.encode(), flags))
        # TUN_F_CSUM | TUN_F_TSO4 | TUN_F_TSO6 | TUN_F_TSO_ECN | TUN_F_USO4 | TUN_F_USO6
        fcntl.ioctl(fd, TUNSETOFFLOAD, 0x01 | 0x02 | 0x04 | 0x08 | 0x20 | 0x40)
        fcntl.ioctl(fd, TUNSETPERSIST, 1)
    finally:
        os.close(fd)


def _delete_persistent_tun(name: str) -> None:
    fd = os.open("/dev/net/tun", os.O_RDWR)
    try:
        fcntl.ioctl(fd, TUNSETIFF, struct.pack("16sH22x", name.encode(), 0x0001 | 0x1000))
        fcntl.ioctl(fd, TUNSETPERSIST, 0)
    finally:
        os.close(fd)


def _udp_checksum_ok(raw: bytes) -> bool:
    packet = IP(raw)
    got = packet[UDP].chksum
    del packet[UDP].chksum
    return bool(IP(bytes(packet))[UDP].chksum == got)


def scenario_persistent_tun(name: str) -> dict[str, Any]:
    """Attach to a persistent TUN left with offloads on; checksums must be complete."""
    _make_persistent_tun_with_offloads(name)
    try:
        with TunDevice.open(name, mtu=1500) as tun:
            tun.add_address(POOL4_GW)
            tun.read_batch()  # whatever the kernel sent when the link came up
            with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as sock:
                sock.sendto(b"x" * 100, (str(PEER4), 9999))
            udp = [p for p in _read_until(tun, UDP) if UDP in IP(p)]
            checksum_ok = _udp_checksum_ok(udp[-1])
        with Netlink() as nl:
            index = nl.link_index(name)  # still there: persistent
            left = [a for a in nl.addresses(index) if a.version == 4]
        return {"checksum_ok": checksum_ok, "addresses_left": left}
    finally:
        _delete_persistent_tun(name)


def scenario_route_via_tun_in_loop() -> list[Route]:
    """The netlink calls work from inside a running asyncio loop (pyroute2 cannot)."""
    import asyncio

    async def main() -> list[Route]:
        with TunDevice.open("mqt%d", mtu=1400) as tun:
            tun.add_address(POOL4_GW)
            tun.add_route(ipaddress.ip_network("10.160.0.0/16"))
            with Netlink() as nl:
                return [r for r in nl.routes(4) if r.oif == tun.index]

    return asyncio.run(main())


# -- tests ------------------------------------------------------------------------


def test_open_configures_and_close_removes_the_device(bed: TestBed) -> None:
    got = run_in_netns(bed.relay_ns, scenario_configure_and_close)
    link = got["link"]
    assert str(got["name"]).startswith("mqt")
    assert link.mtu == 1400 and link.up
    assert {POOL4_GW, POOL6_GW} <= got["addresses"]
    assert got["recorded"] == (POOL4_GW, POOL6_GW)
    assert got["routes"] == {
        ipaddress.ip_network("10.100.0.0/24"),  # connected route of the address
        ipaddress.ip_network("10.150.0.0/16"),
        ipaddress.ip_network("fd00:100::/64"),
        ipaddress.ip_network("fd00:150::/48"),
        ipaddress.ip_network("fe80::/64"),  # IPv6 stays enabled: the kernel's link-local
    }
    assert got["accept_dad"] == "0"
    assert got["exists_errno"] == errno.EEXIST
    assert got["fd_nonblocking"] is True
    assert got["kernel_chatter"] <= {"ff02:"}
    assert got["empty_read"] == []
    assert got["gone_errno"] == errno.ENODEV
    assert got["routes_after"] == []


@pytest.mark.parametrize("family", [4, 6])
def test_packet_written_to_tun_is_routed_and_reply_read_back(bed: TestBed, family: int) -> None:
    target = bed.target_ipv4 if family == 4 else bed.target_ipv6
    peer = PEER4 if family == 4 else PEER6
    got = run_in_netns(bed.relay_ns, scenario_echo, str(target), 3)
    assert got["written"] == 3
    assert got["drops"] == 1  # the garbage packet, counted, the rest still written
    replies = sorted(got["replies"])
    assert [(s, d, i, q) for s, d, i, q, _ in replies] == [
        (str(target), str(peer), 0x4D51, seq) for seq in range(3)
    ]
    assert [p for *_, p in replies] == [bytes([seq]) * 64 for seq in range(3)]


def test_attaching_to_persistent_tun_turns_offloads_off(bed: TestBed) -> None:
    got = run_in_netns(bed.relay_ns, scenario_persistent_tun, "mqpersist0")
    # Without TUNSETOFFLOAD(0) the kernel hands us CHECKSUM_PARTIAL packets with
    # only the pseudo-header sum in place: the checksum would not verify.
    assert got["checksum_ok"] is True
    assert got["addresses_left"] == []  # ours removed, the device itself left alone


def test_netlink_works_inside_a_running_event_loop(bed: TestBed) -> None:
    routes = run_in_netns(bed.client_ns, scenario_route_via_tun_in_loop)
    assert {r.dst for r in routes} == {
        ipaddress.ip_network("10.100.0.0/24"),
        ipaddress.ip_network("10.160.0.0/16"),
    }


def test_invalid_arguments_are_rejected_before_touching_the_kernel() -> None:
    with pytest.raises(ValueError):
        TunDevice.open("x" * 16, mtu=1400)
    with pytest.raises(ValueError):
        TunDevice.open("mqt%d", mtu=40)
    with pytest.raises(ValueError):
        Route(dst=ipaddress.ip_network("10.0.0.0/8"))
    with pytest.raises(ValueError):
        Route(dst=ipaddress.ip_network("10.0.0.0/8"), gateway=ipaddress.ip_address("fd00::1"))
