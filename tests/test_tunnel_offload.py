"""TUN offloads end to end: super-segments read, split, carried and delivered intact.

The compiled TUN asks the kernel for TSO/USO (``IFF_VNET_HDR`` +
``TUNSETOFFLOAD``): a local TCP sender then hands the TUN segments far larger
than the MTU, and C splits them into tunnel-sized packets. In the other
direction the relay and client coalesce consecutive TCP segments of one flow
into one super-segment per write (GRO). These tests push verified TCP
transfers through both ends, IPv4 and IPv6, and read the TUN counters to show
the offloads were really used — not just that the bytes arrived.
"""

from __future__ import annotations

import ipaddress
from collections.abc import Iterator

import pytest

from tests.traffic import tcp_transfer
from tests.tunnel_harness import ClientProcess, RelayProcess, TunnelBed

pytestmark = pytest.mark.netns

TUN_IO = "masque_relay_tun_io"
NBYTES = 8 << 20


@pytest.fixture(scope="module")
def tb() -> Iterator[TunnelBed]:
    with TunnelBed() as bed:
        yield bed


@pytest.fixture(scope="module")
def relay(tb: TunnelBed) -> Iterator[RelayProcess]:
    # Routed (no NAT), so the target can open connections to the client's address.
    relay = tb.start_relay("--no-nat")
    yield relay
    relay.stop(20)


def start_client(tb: TunnelBed, relay: RelayProcess) -> ClientProcess:
    client = tb.start_client(relay=relay)
    client.wait_ready(30)
    assert client.ready.get("dataplane") == "compiled", client.ready
    assert "tso4" in client.ready.get("tun_io", ""), client.ready
    return client


def client_tun_stats(client: ClientProcess) -> dict[str, int]:
    """Stop the client; the TUN counters it prints at teardown."""
    client.stop(15)
    fields = client.events("tun-stats")[-1].fields
    return {key: int(value) for key, value in fields.items()}


def relay_tun_stat(relay: RelayProcess, stat: str) -> float:
    return relay.metric(TUN_IO, stat=stat)


@pytest.mark.parametrize("family", [4, 6])
def test_upload_super_segments_are_split_in_the_client(
    tb: TunnelBed, relay: RelayProcess, family: int
) -> None:
    """client -> target: the client's TUN reads >MTU segments; the relay coalesces on write."""
    coalesced_before = relay_tun_stat(relay, "segments_coalesced")
    client = start_client(tb, relay)
    transfer = tcp_transfer(tb.bed, tb.client_ns, tb.target_ns, tb.target(family), nbytes=NBYTES)
    assert transfer.intact and transfer.bytes_received == NBYTES, transfer
    stats = client_tun_stats(client)
    mtu = int(client.ready["mtu"])
    # Offloaded super-segments were read and split into tunnel-sized packets.
    assert stats["largest_read"] > 1500 > mtu, stats
    assert stats["gso_frames"] > 0 and stats["segments_split"] > stats["gso_frames"], stats
    # The relay wrote runs of the flow's segments to its TUN as one coalesced frame.
    assert relay_tun_stat(relay, "segments_coalesced") > coalesced_before


@pytest.mark.parametrize("family", [4, 6])
def test_download_super_segments_are_split_in_the_relay(
    tb: TunnelBed, relay: RelayProcess, family: int
) -> None:
    """target -> client: the relay's TUN reads >MTU segments; the client coalesces on write."""
    gso_before = relay_tun_stat(relay, "gso_frames")
    client = start_client(tb, relay)
    address = ipaddress.ip_address(str(client.v4 if family == 4 else client.v6))
    transfer = tcp_transfer(tb.bed, tb.target_ns, tb.client_ns, address, nbytes=NBYTES)
    assert transfer.intact and transfer.bytes_received == NBYTES, transfer
    assert relay_tun_stat(relay, "largest_read") > 1500
    assert relay_tun_stat(relay, "gso_frames") > gso_before
    stats = client_tun_stats(client)
    assert stats["segments_coalesced"] > 0, stats
