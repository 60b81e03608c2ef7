"""The relay's AF_XDP path end to end: XDP on the relay's outer veth, real tunnels.

``--xdp native|generic --xdp-interface <the relay's client-facing veth>``: the
XDP program redirects the tunnel's steady-state short-header packets to the
relay's AF_XDP socket (and the lane sends its packets through the socket's TX
ring); handshakes and everything else still take the kernel's UDP path. The
tests prove both halves with the program's own counters, verify the traffic
end to end, check that other traffic to the relay namespace is untouched, that
the relay falls back to its UDP socket (and says so) when XDP cannot attach,
and that a handshake flood is held back in XDP while an established session
keeps its throughput.
"""

from __future__ import annotations

import contextlib
import ipaddress
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.traffic import BackgroundTransfer, ping, tcp_transfer
from tests.tunnel_harness import RelayProcess, TunnelBed, link_exists

pytestmark = pytest.mark.netns

XDP_PACKETS = "masque_relay_xdp_packets"
XDP_PATH = "masque_relay_xdp_path"
XDP_INFO = "masque_relay_xdp_info"
NBYTES = 20 << 20

# Initial-sized QUIC long-header packets with random connection IDs, as fast as one
# Python loop goes, for ``seconds``; prints how many it sent.
_FLOOD = """
import os, socket, sys, time
host, port, seconds = sys.argv[1], int(sys.argv[2]), float(sys.argv[3])
sock = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
sock.setblocking(False)
sent, end = 0, time.monotonic() + seconds
while time.monotonic() < end:
    for _ in range(256):
        # Long header, Initial, version 1, DCID 8, SCID 8, padded to 1200 bytes.
        packet = bytes([0xC3, 0, 0, 0, 1, 8]) + os.urandom(8) + bytes([8]) + os.urandom(8)
        try:
            sock.sendto(packet + bytes(1200 - len(packet)), (host, port))
            sent += 1
        except BlockingIOError:
            time.sleep(0.0005)
print(sent, flush=True)
"""


@pytest.fixture(scope="module")
def tb() -> Iterator[TunnelBed]:
    with TunnelBed() as bed:
        yield bed


def relay_interface(tb: TunnelBed) -> str:
    return tb.bed.relay_client_link.ifname


def start_xdp_relay(tb: TunnelBed, mode: str, *args: str) -> RelayProcess:
    return tb.start_relay("--no-nat", "--xdp", mode, "--xdp-interface", relay_interface(tb), *args)


def xdp_attached(tb: TunnelBed) -> bool:
    out = tb.bed.run(tb.relay_ns, ["ip", "-d", "link", "show", "dev", relay_interface(tb)])
    return b"prog/xdp" in out.stdout or b" xdp" in out.stdout


@contextlib.contextmanager
def wire_sized_segments(tb: TunnelBed) -> Iterator[None]:
    """Make the client's veth segment UDP GSO before sending, as a real wire would.

    A veth hands its peer GSO super-packets whole; native XDP on veth sees the
    segments, generic XDP the super-packet, which no AF_XDP frame can hold (the
    program passes those to the kernel: ``pass_too_big``). With UDP segmentation
    off on the sending veth, generic XDP sees what a NIC would deliver.
    """
    ifname = tb.bed.client_link.ifname
    feature = "tx-udp-segmentation"
    tb.bed.run(tb.client_ns, ["ethtool", "-K", ifname, feature, "off"])
    try:
        yield
    finally:
        tb.bed.run(tb.client_ns, ["ethtool", "-K", ifname, feature, "on"], check=False)


@pytest.mark.parametrize("mode", ["native", "generic"])
def test_tunnel_over_af_xdp(tb: TunnelBed, mode: str) -> None:
    with contextlib.ExitStack() as stack:
        if mode == "generic":
            stack.enter_context(wire_sized_segments(tb))
        tunnel_over_af_xdp(tb, mode)


def tunnel_over_af_xdp(tb: TunnelBed, mode: str) -> None:
    relay = start_xdp_relay(tb, mode)
    assert relay.metric(XDP_INFO, mode=mode) == 1, relay.describe()
    assert xdp_attached(tb)
    client = tb.start_client(relay=relay)
    client.wait_ready(30)
    for family in (4, 6):
        assert ping(tb.bed, tb.client_ns, tb.target(family), count=3).received == 3
    redirected = relay.metric(XDP_PACKETS, reason="redirect")
    up = tcp_transfer(tb.bed, tb.client_ns, tb.target_ns, tb.target_ipv4, nbytes=NBYTES)
    assert up.intact and up.bytes_received == NBYTES, up
    address = ipaddress.ip_address(str(client.v6))
    down = tcp_transfer(tb.bed, tb.target_ns, tb.client_ns, address, nbytes=NBYTES)
    assert down.intact and down.bytes_received == NBYTES, down
    # Steady state through AF_XDP: tens of thousands of packets redirected, received
    # from the socket's RX ring and sent through its TX ring...
    packets = NBYTES // 1500
    assert relay.metric(XDP_PACKETS, reason="redirect") - redirected > packets
    assert relay.metric(XDP_PATH, stat="rx") > packets
    assert relay.metric(XDP_PATH, stat="tx") > packets
    # ... while the handshake took the kernel's path to aioquic's socket.
    assert relay.metric(XDP_PACKETS, reason="long_header") > 0

    # Other traffic to the relay namespace is untouched: ICMP and TCP to its address.
    assert ping(tb.bed, tb.client_ns, tb.bed.relay_ipv4, count=2).received == 2
    other = tcp_transfer(tb.bed, tb.client_ns, tb.relay_ns, tb.bed.relay_ipv4, nbytes=1 << 20)
    assert other.intact
    assert relay.metric(XDP_PACKETS, reason="pass_other") > 0

    # A second client on another link (no XDP there) shares the relay.
    second = tb.start_client(relay=relay, netns=tb.client2_ns)
    second.wait_ready(30)
    assert ping(tb.bed, tb.client2_ns, tb.target_ipv4, count=2).received == 2
    second.stop(15)
    client.stop(15)
    relay.stop(20)
    assert not xdp_attached(tb), "the relay left its XDP program behind"


def test_falls_back_to_the_udp_socket_when_xdp_cannot_attach(tb: TunnelBed) -> None:
    # Native XDP on loopback does not exist: the relay says so and serves anyway.
    relay = tb.start_relay("--no-nat", "--xdp", "native", "--xdp-interface", "lo")
    assert any("XDP unavailable" in line for line in relay.stderr_lines), relay.describe()
    assert relay.metric(XDP_INFO, mode="native") == 0
    client = tb.start_client(relay=relay)
    client.wait_ready(30)
    assert ping(tb.bed, tb.client_ns, tb.target_ipv4, count=3).received == 3
    client.stop(15)
    relay.stop(20)


def test_handshake_flood_is_rate_limited_in_xdp(tb: TunnelBed) -> None:
    relay = start_xdp_relay(tb, "native", "-c", str(_rate_config(tb)))
    client = tb.start_client(relay=relay)
    client.wait_ready(30)
    rate = 150.0  # Mbit/s: well within what the tunnel carries, so the ratio is the point

    def paced_seconds() -> float:
        transfer = BackgroundTransfer(
            tb.bed, tb.client_ns, tb.target_ns, tb.target_ipv4, nbytes=NBYTES, rate_mbit=rate
        )
        result = transfer.wait(60)
        assert result.intact and result.bytes_received == NBYTES, result
        return result.seconds

    quiet = paced_seconds()
    dropped = relay.metric(XDP_PACKETS, reason="drop_handshake_rate")
    flood = tb.bed.spawn(
        tb.client_ns,
        [sys.executable, "-c", _FLOOD, str(tb.bed.relay_ipv4), "4433", "30"],
        stdout=subprocess.PIPE,
    )
    try:
        time.sleep(0.5)
        flooded = paced_seconds()
    finally:
        flood.kill()
        flood.wait()
    # The established session keeps at least 90% of its throughput...
    assert quiet / flooded >= 0.9, (quiet, flooded)
    # ... because XDP dropped the flood before the kernel's UDP stack or aioquic saw it.
    assert relay.metric(XDP_PACKETS, reason="drop_handshake_rate") - dropped > 1000
    client.stop(15)
    relay.stop(20)


def _rate_config(tb: TunnelBed) -> Path:
    path = tb.new_dir("xdp-config") / "relay.toml"
    path.write_text("[xdp]\nhandshake_rate_pps = 100\nhandshake_burst = 20\n")
    return path


def test_xdp_interface_is_clean_after_the_tests(tb: TunnelBed) -> None:
    assert link_exists(tb.bed, tb.relay_ns, relay_interface(tb))
    assert not xdp_attached(tb)
