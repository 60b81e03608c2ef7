"""``make demo``: a real CONNECT-IP tunnel between three network namespaces.

Brings up client/relay/target namespaces, starts ``masque-relay`` with its
defaults (a fresh state directory: it generates its certificate and token) and
``masque-client`` against it (pinned to the printed certificate), then pings the
target over IPv4 and IPv6, downloads from it through the tunnel, prints the
relay's counters and a throughput figure, and tears everything down.
"""

from __future__ import annotations

import json
import sys

from tests.traffic import ping, tcp_transfer
from tests.tunnel_harness import TunnelBed


def _iperf_download(tb: TunnelBed, seconds: int = 3) -> float:
    """Mbit/s received by the client from the target (iperf3 -R) through the tunnel."""
    server = tb.bed.spawn(tb.target_ns, ["iperf3", "-s", "-1", "-B", str(tb.target_ipv4)])
    try:
        for _ in range(20):  # the server needs a moment to listen
            result = tb.run(
                tb.client_ns,
                ["iperf3", "-J", "-R", "-c", str(tb.target_ipv4), "-t", str(seconds)],
                check=False,
                timeout=seconds + 30,
            )
            if result.returncode == 0:
                report = json.loads(result.stdout)
                return float(report["end"]["sum_received"]["bits_per_second"]) / 1e6
        raise RuntimeError(f"iperf3 failed: {result.stdout.decode()[-300:]}")
    finally:
        server.kill()
        server.wait()


def main() -> int:
    print("masque-relay demo: CONNECT-IP over HTTP/3 between three namespaces")
    ok = True
    with TunnelBed() as tb:
        print(f"namespaces: {tb.client_ns}, {tb.relay_ns}, {tb.target_ns}")
        relay = tb.start_relay(token=None, tun_name=None)
        print(
            f"relay: listening on UDP 4433, certificate sha256={relay.fingerprint[:16]}...,"
            f" generated token {relay.token[:6] if relay.token else '?'}..., TUN {relay.tun}"
            f" (MTU {relay.mtu})"
        )
        client = tb.start_client(relay=relay)
        ready = client.wait_ready()
        print(
            f"client: carrier={client.carrier}, TUN {ready['tun']} (MTU {ready['mtu']}),"
            f" assigned {ready['v4']} and {ready['v6']}, {ready['routes']} routes"
        )
        for family, target in (("IPv4", tb.target_ipv4), ("IPv6", tb.target_ipv6)):
            result = ping(tb.bed, tb.client_ns, target, count=3)
            print(
                f"  {family} ping client -> {target} through the tunnel:"
                f" {result.received}/{result.sent} replies, avg {result.avg_rtt_ms} ms"
            )
            ok = ok and result.received == result.sent
        transfer = tcp_transfer(tb.bed, tb.client_ns, tb.target_ns, tb.target_ipv4, nbytes=8 << 20)
        print(f"  TCP upload of {transfer.bytes_sent >> 20} MiB: intact={transfer.intact}")
        ok = ok and transfer.intact
        mbit = _iperf_download(tb)
        print(f"  download (iperf3 -R, 3 s) target -> client: {mbit:.0f} Mbit/s")
        metrics = relay.metrics()
        print("relay counters:")
        for key in sorted(metrics):
            if metrics[key] and key.startswith(("masque_relay_packets", "masque_relay_sessions")):
                print(f"  {key} {metrics[key]:g}")
        client.stop()
        relay.stop()
        ends = relay.events("session-end")
        if ends:
            print(f"relay: {ends[-1].line}")
    print("torn down: namespaces, processes, TUN devices and NAT table removed")
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
