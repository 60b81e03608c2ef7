"""client.routes against the real kernel, inside the client namespace of the test bed.

The routing tables are compared before and after, in full (``ip -j route show
table all``), to prove that restore() removes exactly what was added.
"""

from __future__ import annotations

import asyncio
import errno
import ipaddress
import json
import os
import select
import signal
import socket
import subprocess
import time
from collections.abc import Iterator
from typing import Any

import pytest
from scapy.layers.inet import IP, UDP
from scapy.layers.inet6 import IPv6

from client.routes import FULL_TUNNEL_IPV4, FULL_TUNNEL_IPV6, RouteError, RouteManager
from netio.netlink import RTPROT_STATIC, IPAddress, Netlink
from netio.tun import TunDevice
from tests.netbed import TestBed, open_testbed
from tests.nsexec import run_in_netns

pytestmark = pytest.mark.netns

CLIENT4 = ipaddress.ip_interface("10.100.0.2/32")  # as ADDRESS_ASSIGN would give them
CLIENT6 = ipaddress.ip_interface("fd00:100::2/128")


@pytest.fixture
def bed() -> Iterator[TestBed]:
    with open_testbed() as testbed:
        yield testbed


def _tables() -> list[Any]:
    """Every IPv4 and IPv6 route of every table, as iproute2 reports them."""
    return [
        json.loads(
            subprocess.run(
                ["ip", f"-{v}", "-j", "route", "show", "table", "all"],
                capture_output=True,
                check=True,
            ).stdout
        )
        for v in (4, 6)
    ]


def _open_client_tun() -> TunDevice:
    tun = TunDevice.open("mqc%d", mtu=1400)
    tun.add_address(CLIENT4)
    tun.add_address(CLIENT6)
    return tun


def _ping(address: str) -> bool:
    result = subprocess.run(
        ["ping", "-n", "-q", "-c", "1", "-W", "2", address], capture_output=True
    )
    return result.returncode == 0


def _path(nl: Netlink, address: str) -> tuple[int | None, str | None]:
    lookup = nl.route_get(ipaddress.ip_address(address))
    return lookup.oif, None if lookup.gateway is None else str(lookup.gateway)


def _udp_into_tunnel(tun: TunDevice, dst: str) -> tuple[str, str]:
    """Send a datagram from an ordinary socket; return (src, dst) read from the TUN."""
    tun.read_batch(64)
    family = socket.AF_INET6 if ":" in dst else socket.AF_INET
    with socket.socket(family, socket.SOCK_DGRAM) as sock:
        sock.sendto(b"through the tunnel", (dst, 9))
    deadline = time.monotonic() + 5
    while time.monotonic() < deadline:
        select.select([tun], [], [], 0.5)
        for raw in tun.read_batch():
            packet = IP(raw) if raw[0] >> 4 == 4 else IPv6(raw)
            if UDP in packet and packet[UDP].dport == 9:
                return packet.src, packet.dst
    raise TimeoutError("the datagram did not come out of the TUN")


# -- scenarios (run inside the client namespace) -----------------------------------


def scenario_full_tunnel(relay4: str, relay6: str, outside4: str, outside6: str) -> dict[str, Any]:
    """Full tunnel with the relay at ``relay*``; ``outside*`` are other addresses."""
    seen: dict[str, Any] = {}
    relays: list[IPAddress] = [ipaddress.ip_address(relay4), ipaddress.ip_address(relay6)]
    before_tun = _tables()
    with _open_client_tun() as tun, Netlink() as nl:
        veth = nl.link_index("veth-cr")
        seen["veth"], seen["tun"] = veth, tun.index
        before = _tables()
        routes = RouteManager(tun.name, relay_addresses=relays)
        try:
            routes.full_tunnel()
            seen["routes"] = sorted(str(r.dst) for r in routes.routes)
            seen["pins"] = sorted((str(r.dst), r.oif, str(r.gateway)) for r in routes.relay_routes)
            seen["paths"] = {a: _path(nl, a) for a in (relay4, relay6, outside4, outside6)}
            seen["relay_ping"] = _ping(relay4) and _ping(relay6)
            seen["udp4"] = _udp_into_tunnel(tun, outside4)
            seen["udp6"] = _udp_into_tunnel(tun, outside6)
            routes.full_tunnel()  # again: nothing new
            seen["routes_again"] = len(routes.routes)
        finally:
            routes.restore()
        routes.restore()  # idempotent
        seen["restored_exactly"] = _tables() == before
    seen["tun_gone_clean"] = _tables() == before_tun
    return seen


def scenario_restore_after_tun_vanished(relay4: str) -> dict[str, Any]:
    before = _tables()
    tun = _open_client_tun()
    routes = RouteManager(tun.name, relay_addresses=[ipaddress.ip_address(relay4)])
    try:
        routes.full_tunnel(ipv6=False)
        installed = (len(routes.routes), len(routes.relay_routes))
    finally:
        tun.close()  # the tunnel routes vanish with the device; the relay pin does not
    with_pin_left = _tables() != before
    routes.restore()
    return {
        "installed": installed,
        "pin_left": with_pin_left,
        "clean": _tables() == before,
        "recorded": (routes.routes, routes.relay_routes),
    }


def scenario_existing_routes_are_not_ours(relay4: str, gateway4: str) -> dict[str, Any]:
    seen: dict[str, Any] = {}
    # Somebody else's host route to the relay, and somebody else's 0.0.0.0/1.
    subprocess.run(["ip", "route", "add", f"{relay4}/32", "via", gateway4], check=True)
    subprocess.run(["ip", "route", "add", "0.0.0.0/1", "via", gateway4], check=True)
    before = _tables()
    with _open_client_tun() as tun:
        before_tun = _tables()
        routes = RouteManager(tun.index, relay_addresses=[ipaddress.ip_address(relay4)])
        with pytest.raises(RouteError) as conflict:
            routes.full_tunnel(ipv6=False)
        seen["errno"] = conflict.value.errno
        seen["pins"] = routes.relay_routes  # the existing host route was used, not recorded
        routes.restore()
        seen["restored_exactly"] = _tables() == before_tun
    seen["foreign_routes_kept"] = _tables() == before
    return seen


def scenario_advertised_routes(relay6: str) -> dict[str, Any]:
    before = _tables()
    with _open_client_tun() as tun:
        with_tun = _tables()
        relay = ipaddress.ip_address(relay6)
        with RouteManager(tun.name, relay_addresses=[relay]) as routes:
            routes.replace_routes([ipaddress.ip_network(p) for p in ("10.50.0.0/16", "fd00::/8")])
            first = sorted(str(r.dst) for r in routes.routes)
            first_pins = [str(r.dst) for r in routes.relay_routes]  # fd00::/8 covers the relay
            routes.replace_routes(
                [ipaddress.ip_network(p) for p in ("10.50.0.0/16", "10.60.0.0/16")]
            )
            second = sorted(str(r.dst) for r in routes.routes)
            with Netlink() as nl:
                ours = [r for v in (4, 6) for r in nl.routes(v) if r.oif == tun.index]
            kernel = sorted(str(r.dst) for r in ours if r.proto == RTPROT_STATIC)
        after_exit = _tables() == with_tun
    return {
        "first": first,
        "first_pins": first_pins,
        "second": second,
        "kernel": kernel,
        "after_exit": after_exit,
        "clean": _tables() == before,
    }


def scenario_restore_from_signal_handler(relay4: str) -> dict[str, Any]:
    before = _tables()

    async def main() -> tuple[int, int]:
        with _open_client_tun() as tun:
            routes = RouteManager(tun.name, relay_addresses=[ipaddress.ip_address(relay4)])
            routes.full_tunnel()
            installed = len(routes.routes) + len(routes.relay_routes)
            asyncio.get_running_loop().add_signal_handler(signal.SIGTERM, routes.restore)
            os.kill(os.getpid(), signal.SIGTERM)
            await asyncio.sleep(0.2)
            return installed, len(routes.routes) + len(routes.relay_routes)

    installed, left = asyncio.run(main())
    return {"installed": installed, "left": left, "clean": _tables() == before}


# -- tests --------------------------------------------------------------------------


def test_full_tunnel_with_relay_on_link(bed: TestBed) -> None:
    seen = run_in_netns(
        bed.client_ns,
        scenario_full_tunnel,
        str(bed.relay_ipv4),
        str(bed.relay_ipv6),
        str(bed.target_ipv4),
        str(bed.target_ipv6),
    )
    veth, tun = seen["veth"], seen["tun"]
    assert seen["routes"] == sorted(str(p) for p in FULL_TUNNEL_IPV4 + FULL_TUNNEL_IPV6)
    assert seen["pins"] == sorted(
        [(f"{bed.relay_ipv4}/32", veth, "None"), (f"{bed.relay_ipv6}/128", veth, "None")]
    )
    assert seen["paths"] == {
        str(bed.relay_ipv4): (veth, None),
        str(bed.relay_ipv6): (veth, None),
        str(bed.target_ipv4): (tun, None),
        str(bed.target_ipv6): (tun, None),
    }
    assert seen["relay_ping"] is True
    assert seen["udp4"] == (str(CLIENT4.ip), str(bed.target_ipv4))
    assert seen["udp6"] == (str(CLIENT6.ip), str(bed.target_ipv6))
    assert seen["routes_again"] == 4
    assert seen["restored_exactly"] is True
    assert seen["tun_gone_clean"] is True


def test_full_tunnel_with_relay_behind_a_gateway(bed: TestBed) -> None:
    # The target's addresses play the relay: reached via the gateway 10.201.1.1.
    gw4, gw6 = str(bed.relay_ipv4), str(bed.relay_ipv6)
    seen = run_in_netns(
        bed.client_ns,
        scenario_full_tunnel,
        str(bed.target_ipv4),
        str(bed.target_ipv6),
        "192.0.2.1",
        "2001:db8::1",
    )
    veth, tun = seen["veth"], seen["tun"]
    assert seen["pins"] == sorted(
        [(f"{bed.target_ipv4}/32", veth, gw4), (f"{bed.target_ipv6}/128", veth, gw6)]
    )
    assert seen["paths"] == {
        str(bed.target_ipv4): (veth, gw4),
        str(bed.target_ipv6): (veth, gw6),
        "192.0.2.1": (tun, None),
        "2001:db8::1": (tun, None),
    }
    assert seen["relay_ping"] is True
    assert seen["restored_exactly"] is True


def test_restore_tolerates_routes_gone_with_the_tun(bed: TestBed) -> None:
    seen = run_in_netns(bed.client_ns, scenario_restore_after_tun_vanished, str(bed.target_ipv4))
    assert seen["installed"] == (2, 1)
    assert seen["pin_left"] is True
    assert seen["clean"] is True
    assert seen["recorded"] == ((), ())


def test_foreign_routes_are_used_or_refused_but_never_removed(bed: TestBed) -> None:
    seen = run_in_netns(
        bed.client_ns,
        scenario_existing_routes_are_not_ours,
        str(bed.target_ipv4),
        str(bed.relay_ipv4),
    )
    assert seen["errno"] == errno.EEXIST
    assert seen["pins"] == ()
    assert seen["restored_exactly"] is True
    assert seen["foreign_routes_kept"] is True


def test_advertised_routes_are_replaced_as_a_set(bed: TestBed) -> None:
    seen = run_in_netns(bed.client_ns, scenario_advertised_routes, str(bed.relay_ipv6))
    assert seen["first"] == ["10.50.0.0/16", "fd00::/8"]
    assert seen["first_pins"] == [f"{bed.relay_ipv6}/128"]
    assert seen["second"] == ["10.50.0.0/16", "10.60.0.0/16"]
    assert seen["kernel"] == ["10.50.0.0/16", "10.60.0.0/16"]
    assert seen["after_exit"] is True
    assert seen["clean"] is True


def test_restore_from_an_asyncio_signal_handler(bed: TestBed) -> None:
    seen = run_in_netns(bed.client_ns, scenario_restore_from_signal_handler, str(bed.relay_ipv4))
    assert seen["installed"] == 5  # four halves + one pin
    assert seen["left"] == 0
    assert seen["clean"] is True
