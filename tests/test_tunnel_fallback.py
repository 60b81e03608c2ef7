"""End to end with the fast path switched off: the pure-Python packet I/O still works.

``--no-fast-path`` ([dataplane] fast_path = false) is kept for comparison and
debugging; this proves it is a working tunnel, not a dead switch.
"""

from __future__ import annotations

import pytest

from tests.traffic import ping, tcp_transfer
from tests.tunnel_harness import TunnelBed

pytestmark = pytest.mark.netns


def test_tunnel_without_fast_path_carries_ping_and_tcp() -> None:
    with TunnelBed() as tb:
        relay = tb.start_relay("--no-fast-path", "--log-level", "info")
        client = tb.start_client("--no-fast-path", "--log-level", "info", relay=relay)
        client.wait_ready()
        for target in (tb.target_ipv4, tb.target_ipv6):
            result = ping(tb.bed, tb.client_ns, target, count=3)
            assert result.received == 3, target
        transfer = tcp_transfer(tb.bed, tb.client_ns, tb.target_ns, tb.target_ipv4, nbytes=4 << 20)
        assert transfer.intact and transfer.bytes_received == 4 << 20
        # The switch really selected the Python I/O on the relay.
        assert any("UDP I/O: plain" in line for line in relay.stderr_lines), relay.describe()
        assert relay.metric("masque_relay_packets_total", direction="from_client") >= 2000


def test_default_relay_uses_the_compiled_udp_io() -> None:
    with TunnelBed() as tb:
        relay = tb.start_relay()
        lines = [line for line in relay.stderr_lines if "UDP I/O:" in line]
        assert lines and "plain" not in lines[-1], relay.describe()
        assert "gso" in lines[-1]  # this kernel has UDP_SEGMENT
