"""``make demo``: bring up the client/relay/target namespaces and show traffic crossing.

This version demonstrates the test bed with PLAIN ROUTING through the relay
namespace (no tunnel yet): ping and a verified TCP transfer, IPv4 and IPv6, and
the relay's interface counters before and after. Everything is torn down on exit.
"""

from __future__ import annotations

import sys

from tests.netbed import TestBed, open_testbed
from tests.traffic import ping, tcp_transfer


def _link_bytes(bed: TestBed, ifname: str) -> tuple[int, int]:
    text = bed.run(bed.relay_ns, ["ip", "-s", "link", "show", ifname]).stdout.decode()
    rx = int(text.split("RX:")[1].splitlines()[1].split()[0])
    tx = int(text.split("TX:")[1].splitlines()[1].split()[0])
    return rx, tx


def main() -> int:
    print("masque-relay demo: PLAIN ROUTING through the relay namespace (no tunnel yet)")
    with open_testbed() as bed:
        print(f"namespaces: {', '.join(bed.namespaces)}")
        before = _link_bytes(bed, "veth-rt")
        ok = True
        for family, target in (("IPv4", bed.target_ipv4), ("IPv6", bed.target_ipv6)):
            result = ping(bed, bed.client_ns, target, count=3)
            print(
                f"  {family} ping client -> {target}: {result.received}/{result.sent} replies,"
                f" avg {result.avg_rtt_ms} ms"
            )
            transfer = tcp_transfer(bed, bed.client_ns, bed.target_ns, target, nbytes=4 << 20)
            mbit = transfer.bytes_received * 8 / transfer.seconds / 1e6
            print(
                f"  {family} TCP client -> {target}: {transfer.bytes_received} bytes,"
                f" intact={transfer.intact}, {mbit:.0f} Mbit/s"
            )
            ok = ok and result.received == result.sent and transfer.intact
        after = _link_bytes(bed, "veth-rt")
        print(
            f"relay veth-rt counters: +{after[1] - before[1]} bytes forwarded to the target,"
            f" +{after[0] - before[0]} bytes back"
        )
    print("torn down: namespaces and processes removed")
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
