"""relay.nat against real nftables and the real kernel, inside the namespace test bed.

The relay namespace gets a TUN carrying the client pool; packets written into it
from a pool address must reach a UDP echo server in the target namespace with the
relay's egress address as their source, and the echoes must come back out of the
TUN addressed to the pool address again.
"""

from __future__ import annotations

import ipaddress
import json
import subprocess
import sys
import time
from collections.abc import Iterator
from typing import Any

import pytest
from scapy.layers.inet import IP, UDP
from scapy.layers.inet6 import IPv6

from netio.sysctl import read_sysctl, write_sysctl
from netio.tun import TunDevice
from relay.nat import NatError, NatManager
from tests.netbed import TestBed, open_testbed
from tests.nsexec import run_in_netns

pytestmark = pytest.mark.netns

POOL4 = ipaddress.ip_network("10.100.0.0/24")
POOL6 = ipaddress.ip_network("fd00:100::/64")
CLIENT4 = "10.100.0.2"
CLIENT6 = "fd00:100::2"
PORT = 5353

# A ruleset somebody else owns; it must survive our start and stop untouched.
UNRELATED = """
table ip unrelated_filter {
    set blocked { type ipv4_addr; elements = { 198.51.100.7, 198.51.100.9 } }
    chain forward {
        type filter hook forward priority filter; policy accept;
        ip saddr @blocked counter drop
        ip daddr 192.0.2.0/24 counter reject
    }
}
table inet unrelated_nat {
    chain postrouting {
        type nat hook postrouting priority srcnat + 5; policy accept;
        ip saddr 192.0.2.0/24 counter masquerade comment "not ours"
    }
}
"""

# What a relay killed with SIGKILL leaves: our table, with contents from an older run.
STALE = """
table inet masque_relay {
    chain stale { type filter hook forward priority 0; policy accept; counter; }
}
"""

# UDP echo server for the target namespace: prints each sender's address.
ECHO_SERVER = """
import select, socket, sys
port = int(sys.argv[1])
socks = []
for family, host in ((socket.AF_INET, "0.0.0.0"), (socket.AF_INET6, "::")):
    sock = socket.socket(family, socket.SOCK_DGRAM)
    if family == socket.AF_INET6:
        sock.setsockopt(socket.IPPROTO_IPV6, socket.IPV6_V6ONLY, 1)
    sock.bind((host, port))
    socks.append(sock)
print("ready", flush=True)
while True:
    ready, _, _ = select.select(socks, [], [], 60)
    if not ready:
        break
    for sock in ready:
        data, peer = sock.recvfrom(4096)
        print(peer[0], data.decode(), flush=True)
        sock.sendto(b"echo " + data, peer[:2])
"""


@pytest.fixture
def bed() -> Iterator[TestBed]:
    with open_testbed() as testbed:
        yield testbed


def _nft(*args: str, input: str | None = None) -> str:
    result = subprocess.run(["nft", *args], input=input, capture_output=True, text=True, check=True)
    return result.stdout


def _udp(src: str, dst: str, sport: int, payload: bytes) -> bytes:
    if ":" in dst:
        return bytes(IPv6(src=src, dst=dst) / UDP(sport=sport, dport=PORT) / payload)
    return bytes(IP(src=src, dst=dst) / UDP(sport=sport, dport=PORT) / payload)


def _read_udp(tun: TunDevice, count: int, timeout: float = 5.0) -> list[tuple[str, str, bytes]]:
    """Read until ``count`` UDP packets came out of the TUN: (src, dst, payload)."""
    got: list[tuple[str, str, bytes]] = []
    deadline = time.monotonic() + timeout
    while len(got) < count and time.monotonic() < deadline:
        for raw in tun.read_batch():
            packet = IP(raw) if raw[0] >> 4 == 4 else IPv6(raw)
            if UDP in packet:
                got.append((packet.src, packet.dst, bytes(packet[UDP].payload)))
        time.sleep(0.01)
    return got


# -- scenarios (run inside the relay namespace) ------------------------------------


def scenario_masquerade(target4: str, target6: str, egress: str) -> dict[str, Any]:
    seen: dict[str, Any] = {}
    _nft("-f", "-", input=UNRELATED)
    _nft("-f", "-", input=STALE)
    # Start from "forwarding off, strict rp_filter" to see what start/stop do.
    write_sysctl("net/ipv4/ip_forward", 0)
    write_sysctl("net/ipv6/conf/all/forwarding", 0)
    write_sysctl("net/ipv4/conf/all/rp_filter", 1)
    with TunDevice.open("mqt%d", mtu=1400) as tun:
        tun.add_address(ipaddress.ip_interface("10.100.0.1/24"))
        tun.add_address(ipaddress.ip_interface("fd00:100::1/64"))
        tun_rp = f"net/ipv4/conf/{tun.name}/rp_filter"
        unrelated_before = [
            _nft("list", "table", "ip", "unrelated_filter"),
            _nft("list", "table", "inet", "unrelated_nat"),
        ]

        # Control: without NAT (forwarding on by hand) the target sees the pool address.
        write_sysctl("net/ipv4/ip_forward", 1)
        tun.write_batch([_udp(CLIENT4, target4, 40001, b"control")])
        seen["control"] = _read_udp(tun, 1)
        write_sysctl("net/ipv4/ip_forward", 0)

        nat = NatManager([POOL4, POOL6], egress, tun_interface=tun.name)
        rp_before = read_sysctl(tun_rp)
        try:
            nat.start()
            seen["tables_after_start"] = _tables()
            seen["chains"] = _chains("masque_relay")
            seen["sysctls_started"] = (
                read_sysctl("net/ipv4/ip_forward"),
                read_sysctl("net/ipv6/conf/all/forwarding"),
                read_sysctl(tun_rp),
            )
            tun.write_batch(
                [_udp(CLIENT4, target4, 40000, b"nat4"), _udp(CLIENT6, target6, 40000, b"nat6")]
            )
            seen["echoes"] = sorted(_read_udp(tun, 2))
            seen["counters"] = nat.counters()
        finally:
            nat.stop()
        nat.stop()  # idempotent
        seen["sysctls_stopped"] = (
            read_sysctl("net/ipv4/ip_forward"),
            read_sysctl("net/ipv6/conf/all/forwarding"),
            read_sysctl(tun_rp),
        )
        seen["rp_before"] = rp_before
        seen["tables_after_stop"] = _tables()
        seen["unrelated_intact"] = unrelated_before == [
            _nft("list", "table", "ip", "unrelated_filter"),
            _nft("list", "table", "inet", "unrelated_nat"),
        ]
        seen["counters_after_stop"] = nat.counters()
    return seen


def scenario_ruleset_untouched() -> dict[str, Any]:
    """The whole ruleset, byte for byte, before start and after stop."""
    _nft("-f", "-", input=UNRELATED)
    before_text = _nft("list", "ruleset")
    before_json = _nft("-j", "list", "ruleset")
    nat = NatManager([POOL4], None, manage_sysctls=False, table="masque_relay_b")
    nat.start()
    during = _tables()
    nat.stop()
    return {
        "during": during,
        "text_same": before_text == _nft("list", "ruleset"),
        "json_same": before_json == _nft("-j", "list", "ruleset"),
    }


def scenario_failed_start_changes_nothing() -> dict[str, Any]:
    """A start that nft rejects leaves no table and no sysctl changed."""
    write_sysctl("net/ipv4/ip_forward", 0)
    nat = NatManager([POOL4], "x" * 15, nft="/bin/false")
    try:
        nat.start()
    except NatError as exc:
        error = str(exc)
    else:
        error = ""
    return {
        "error": error,
        "forward": read_sysctl("net/ipv4/ip_forward"),
        "tables": _tables(),
        "active": nat.active,
    }


def scenario_context_manager_cleans_up_on_error() -> dict[str, Any]:
    """An exception inside ``with NatManager(...)`` still removes the table."""
    write_sysctl("net/ipv4/ip_forward", 0)
    inside: list[tuple[str, str]] = []
    with pytest.raises(RuntimeError), NatManager([POOL4], "veth-rt"):
        inside.extend(_tables())
        raise RuntimeError("relay crashed")
    return {"inside": inside, "after": _tables(), "forward": read_sysctl("net/ipv4/ip_forward")}


def _tables() -> list[tuple[str, str]]:
    doc = json.loads(_nft("-j", "list", "tables"))
    return sorted(
        (i["table"]["family"], i["table"]["name"]) for i in doc["nftables"] if "table" in i
    )


def _chains(table: str) -> list[str]:
    doc = json.loads(_nft("-j", "list", "table", "inet", table))
    return sorted(i["chain"]["name"] for i in doc["nftables"] if "chain" in i)


# -- tests --------------------------------------------------------------------------


def test_masquerade_rewrites_pool_source_to_egress_address(bed: TestBed) -> None:
    server = bed.spawn(bed.target_ns, [sys.executable, "-c", ECHO_SERVER, str(PORT)])
    assert server.stdout is not None
    assert server.stdout.readline().decode().strip() == "ready"

    seen = run_in_netns(
        bed.relay_ns,
        scenario_masquerade,
        str(bed.target_ipv4),
        str(bed.target_ipv6),
        bed.relay_target_link.ifname,
    )

    server.terminate()
    heard = server.communicate(timeout=10)[0].decode().split("\n")
    # The target saw the control packet from the pool address, then both NATed
    # packets from the relay's egress addresses.
    lines = [line.split() for line in heard if line]
    assert lines[0] == [CLIENT4, "control"]
    assert sorted(lines[1:]) == sorted(
        [[str(bed.relay_target_link.ipv4.ip), "nat4"], [str(bed.relay_target_link.ipv6.ip), "nat6"]]
    )
    assert seen["control"] == [(str(bed.target_ipv4), CLIENT4, b"echo control")]
    assert seen["echoes"] == sorted(
        [
            (str(bed.target_ipv4), CLIENT4, b"echo nat4"),
            (str(bed.target_ipv6), CLIENT6, b"echo nat6"),
        ]
    )
    assert ("inet", "masque_relay") in seen["tables_after_start"]
    assert seen["chains"] == ["count_in", "count_out", "nat_postrouting"]  # stale one replaced
    assert seen["rp_before"] == "0"  # all=1 makes the effective mode strict...
    assert seen["sysctls_started"] == ("1", "1", "2")  # ...so the TUN gets loose (2)
    assert seen["sysctls_stopped"] == ("0", "0", "0")
    assert ("inet", "masque_relay") not in seen["tables_after_stop"]
    assert seen["tables_after_stop"] == [("inet", "unrelated_nat"), ("ip", "unrelated_filter")]
    assert seen["unrelated_intact"] is True
    counters = seen["counters"]
    for family in (counters.ipv4, counters.ipv6):
        assert family.connections == 1
        assert family.out_packets == 1 and family.out_bytes > 0
        assert family.in_packets == 1 and family.in_bytes > 0
    assert seen["counters_after_stop"].ipv4.out_packets == 0


def test_whole_ruleset_is_byte_for_byte_the_same_after_start_and_stop(bed: TestBed) -> None:
    got = run_in_netns(bed.relay_ns, scenario_ruleset_untouched)
    assert ("inet", "masque_relay_b") in got["during"]
    assert got["text_same"] is True
    assert got["json_same"] is True


def test_failed_start_leaves_ruleset_and_sysctls_alone(bed: TestBed) -> None:
    got = run_in_netns(bed.relay_ns, scenario_failed_start_changes_nothing)
    assert "failed" in str(got["error"])
    assert got["forward"] == "0"
    assert got["tables"] == []
    assert got["active"] is False


def test_context_manager_cleans_up_when_the_body_fails(bed: TestBed) -> None:
    got = run_in_netns(bed.relay_ns, scenario_context_manager_cleans_up_on_error)
    assert got["inside"] == [("inet", "masque_relay")]
    assert got["after"] == []
    assert got["forward"] == "0"


def test_ruleset_document_shape() -> None:
    nat = NatManager([POOL4, POOL6], "eth0", ipv6_masquerade=False, table="t1")
    commands = nat.ruleset()["nftables"]
    assert [next(iter(c)) for c in commands[:3]] == ["add", "delete", "add"]
    rules = [c["add"]["rule"] for c in commands if "rule" in c.get("add", {})]
    # IPv6 not masqueraded: only IPv4 rules (one NAT rule, two counting rules).
    assert len(rules) == 3
    assert all("ip6" not in json.dumps(r) for r in rules)
    with pytest.raises(ValueError):
        NatManager([POOL4], table="bad name")
    with pytest.raises(ValueError):
        NatManager([])
