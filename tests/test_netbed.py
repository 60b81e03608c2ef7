"""The namespace test bed itself: real packets routed through the relay namespace."""

from __future__ import annotations

import subprocess

import pytest

from tests.netbed import list_netns, open_testbed
from tests.traffic import ping, tcp_transfer

pytestmark = pytest.mark.netns


@pytest.mark.parametrize("family", ["ipv4", "ipv6"])
def test_ping_and_tcp_cross_the_relay_namespace(family: str) -> None:
    before = set(list_netns())
    with open_testbed() as bed:
        target = bed.target_ipv4 if family == "ipv4" else bed.target_ipv6
        result = ping(bed, bed.client_ns, target, count=3)
        assert (result.sent, result.received) == (3, 3)

        transfer = tcp_transfer(bed, bed.client_ns, bed.target_ns, target, nbytes=2 << 20)
        assert transfer.bytes_received == transfer.bytes_sent
        assert transfer.intact

        # The packets really went through the relay: its forwarding counters moved.
        stats = bed.run(bed.relay_ns, ["ip", "-s", "link", "show", "veth-rt"]).stdout.decode()
        tx_bytes = int(stats.split("TX:")[1].splitlines()[1].split()[0])
        assert tx_bytes >= 2 << 20
        created = set(list_netns()) - before
        assert created == set(bed.namespaces)
    assert set(list_netns()) == before


def test_forwarding_off_means_no_route_through_relay() -> None:
    """Guard against a bed that 'works' without the relay forwarding."""
    with open_testbed() as bed:
        bed.run(bed.relay_ns, ["sysctl", "-q", "-w", "net.ipv4.ip_forward=0"])
        result = ping(bed, bed.client_ns, bed.target_ipv4, count=2)
        assert result.received == 0


def test_teardown_kills_processes_and_namespaces_when_the_body_fails() -> None:
    before = set(list_netns())
    procs: list[subprocess.Popen[bytes]] = []
    with pytest.raises(RuntimeError, match="boom"), open_testbed() as bed:
        procs.append(bed.spawn(bed.target_ns, ["sleep", "600"]))
        # A process started behind the bed's back is killed too.
        bed.run(bed.relay_ns, ["sh", "-c", "sleep 600 >/dev/null 2>&1 &"])
        raise RuntimeError("boom")
    assert procs[0].poll() is not None
    assert set(list_netns()) == before
    leftovers = subprocess.run(["pgrep", "-f", "^sleep 600$"], capture_output=True)
    assert leftovers.stdout == b""
