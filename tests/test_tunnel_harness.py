"""The end-to-end harness itself, checked on plain routing and with stand-in programs.

The real relay and client are tested by tests/test_tunnel_e2e.py; here stand-ins
that speak the same stdout contract drive every harness path (event parsing,
metrics over HTTP inside the relay namespace, exit-code checks), and the traffic
helpers (capture, UDP echo, packet injection, ping parsing) run against the plain
routed bed, where the expected answers are known.
"""

from __future__ import annotations

import ipaddress
import signal
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.netbed import list_netns
from tests.tunnel_harness import (
    DEFAULT_TOKEN,
    EventProcess,
    ProcessFailed,
    TunnelBed,
    find_icmp,
    inject_packet,
    link_exists,
    metric_key,
    nft_masquerades,
    nft_table_exists,
    outer_link_report,
    parse_event,
    parse_prometheus,
    ping_reported_mtu,
    ping_reported_prohibited,
    ping_text,
    route_snapshot,
    udp_exchange,
)

# A stand-in relay: the stdout contract, a /metrics endpoint, exit code on SIGTERM.
FAKE_RELAY = r"""
import argparse, http.server, os, signal, sys, threading
p = argparse.ArgumentParser()
p.add_argument("--state-dir")
p.add_argument("--metrics")
p.add_argument("--token", action="append")
p.add_argument("--tun-name", default="masque0")
p.add_argument("--fake-exit", type=int, default=0)
args, _ = p.parse_known_args()
cert = os.path.join(args.state_dir, "cert.pem")
open(cert, "w").write("fake")
print("certificate sha256=" + "ab" * 32 + " path=" + cert)
if not args.token:
    print("token=generated-token-0123456789")
print("fake relay starting", file=sys.stderr)
BODY = b'''# HELP masque_relay_sessions_active Sessions open now.
# TYPE masque_relay_sessions_active gauge
masque_relay_sessions_active 2
masque_relay_refused_total{status="401"} 1
masque_relay_packets_dropped_total{reason="src_not_assigned"} 3
masque_relay_packets_dropped_total{reason="too_big"} 4.0
masque_relay_icmp_sent_total{kind="too_big",family="4"} 5
masque_relay_icmp_sent_total{family="6",kind="admin_prohibited"} 6 1700000000000
'''
class H(http.server.BaseHTTPRequestHandler):
    def do_GET(self):
        self.send_response(200 if self.path == "/metrics" else 404)
        self.end_headers()
        self.wfile.write(BODY)
    def log_message(self, *a):
        pass
host, port = args.metrics.rsplit(":", 1)
srv = http.server.ThreadingHTTPServer((host, int(port)), H)
threading.Thread(target=srv.serve_forever, daemon=True).start()
def term(*_):
    print("session-end id=1 reason=shutdown rx_packets=0 tx_packets=0 rx_bytes=0 tx_bytes=0")
    sys.stdout.flush()
    os._exit(args.fake_exit)
signal.signal(signal.SIGTERM, term)
print(f"ready listen=[::]:4433 tun={args.tun_name} mtu=1400", flush=True)
signal.pause()
"""

FAKE_CLIENT = r"""
import argparse, signal, sys
p = argparse.ArgumentParser()
p.add_argument("--relay")
p.add_argument("--token")
p.add_argument("--pin-sha256")
p.add_argument("--fake-refuse", action="store_true")
args, _ = p.parse_known_args()
if args.fake_refuse or args.token != "e2e-token-0123456789abcdef":
    print("refused status=401", flush=True)
    print("bad token", file=sys.stderr)
    sys.exit(3)
assert args.pin_sha256 == "ab" * 32, args.pin_sha256
print(f"connected relay={args.relay} carrier=datagram")
print("ready tun=mqtun0 mtu=1350 v4=10.100.0.2/32 v6=fd00:6d61:7371::2/128 routes=4", flush=True)
signal.signal(signal.SIGTERM, lambda *_: sys.exit(0))
signal.pause()
"""

# Opens a TUN, brings it up and prints every packet it reads, hex.
TUN_READER = r"""
import fcntl, os, struct, subprocess, sys
fd = os.open("/dev/net/tun", os.O_RDWR)
fcntl.ioctl(fd, 0x400454CA, struct.pack("16sH", sys.argv[1].encode(), 0x0001 | 0x1000))
subprocess.run(["ip", "link", "set", sys.argv[1], "up"], check=True)
print("ready", flush=True)
while True:
    print("pkt=" + os.read(fd, 65535).hex(), flush=True)
"""


@pytest.fixture
def tb(tmp_path: Path) -> Iterator[TunnelBed]:
    with TunnelBed(tmp_path) as bed:
        yield bed


# -- pure parsing ----------------------------------------------------------------------


def test_parse_event_word_and_fields() -> None:
    ev = parse_event(3, "ready listen=[::]:4433 tun=mqr0 mtu=1400")
    assert (ev.index, ev.word) == (3, "ready")
    assert ev.fields == {"listen": "[::]:4433", "tun": "mqr0", "mtu": "1400"}
    token = parse_event(0, "token=abc/def+ghi==")
    assert token.word == "token" and token.fields == {"token": "abc/def+ghi=="}
    assert parse_event(0, "").word == ""
    assert parse_event(0, "free text line").fields == {}


def test_parse_prometheus_canonical_keys() -> None:
    samples = parse_prometheus(
        "# TYPE x counter\n"
        "x_total 3\n"
        'x_total{b="2",a="1"} 4.5\n'
        'y{reason="a,b \\"q\\""} +Inf 1700000000\n'
    )
    assert samples["x_total"] == 3.0
    assert samples[metric_key("x_total", {"a": "1", "b": "2"})] == 4.5
    assert samples['y{reason="a,b \\"q\\""}'] == float("inf")
    with pytest.raises(ValueError):
        parse_prometheus("not a sample")


# -- processes (stand-ins) --------------------------------------------------------------


@pytest.mark.netns
def test_harness_drives_relay_and_client_contract(tb: TunnelBed, tmp_path: Path) -> None:
    fake_relay = tmp_path / "fake_relay.py"
    fake_relay.write_text(FAKE_RELAY)
    fake_client = tmp_path / "fake_client.py"
    fake_client.write_text(FAKE_CLIENT)
    tb.relay_command = [sys.executable, str(fake_relay)]
    tb.client_command = [sys.executable, str(fake_client)]

    relay = tb.start_relay()
    assert relay.fingerprint == "ab" * 32
    assert relay.token == DEFAULT_TOKEN and relay.generated_token is None
    assert (relay.tun, relay.mtu) == ("mqr0", 1400)
    assert "--egress" in relay.argv and "veth-rt" in relay.argv
    metrics = relay.metrics()
    assert metrics["masque_relay_sessions_active"] == 2
    assert relay.metric("masque_relay_refused_total", status="401") == 1
    assert relay.metric("masque_relay_packets_dropped_total", reason="src_not_assigned") == 3
    assert relay.metric("masque_relay_packets_dropped_total", reason="no_session") == 0
    assert relay.metric("masque_relay_icmp_sent_total", kind="too_big", family="4") == 5
    assert relay.metric_sum("masque_relay_icmp_sent_total") == 11
    assert relay.wait_metric("masque_relay_sessions_active", lambda v: v >= 2) == 2
    with pytest.raises(ProcessFailed, match="condition not met"):
        relay.wait_metric("masque_relay_sessions_active", lambda v: v > 2, timeout=0.5)

    client = tb.start_client(relay=relay)
    ready = client.wait_ready(10)
    assert ready["routes"] == "4" and client.carrier == "datagram"
    assert client.v4 == ipaddress.ip_address("10.100.0.2")
    assert client.v6 == ipaddress.ip_address("fd00:6d61:7371::2")
    assert client.mtu == 1350 and client.tun == "mqtun0"
    assert "--relay" in client.argv and "10.201.1.1:4433" in client.argv
    with pytest.raises(ProcessFailed, match="no 'disconnected' line"):
        client.wait_for("disconnected", 0.3)
    assert client.stop() == 0

    refused = tb.start_client(relay=relay, netns=tb.client2_ns, family=6, send_token=False)
    assert "[fd00:201:3::1]:4433" in refused.argv
    assert refused.wait_for("refused", 10) == {"status": "401"}
    assert refused.wait_exit(10) == 3
    with pytest.raises(ProcessFailed, match="ended its output") as info:
        refused.wait_for("ready", 5)
    assert "bad token" in str(info.value)  # stderr is in the message

    mark = relay.mark()
    assert relay.stop() == 0
    assert relay.wait_for("session-end", 1, since=mark)["reason"] == "shutdown"

    # A generated token is picked up; a wrong exit code on SIGTERM fails stop().
    bad = tb.start_relay("--fake-exit", "1", token=None)
    assert bad.generated_token == "generated-token-0123456789" == bad.token
    with pytest.raises(ProcessFailed, match="exited with 1 after SIGTERM"):
        bad.stop()


@pytest.mark.netns
def test_teardown_removes_client2_and_processes_when_the_body_fails(tmp_path: Path) -> None:
    before = set(list_netns())
    with pytest.raises(RuntimeError, match="boom"), TunnelBed(tmp_path) as tb:
        echo = tb.start_udp_echo(netns=tb.client2_ns)
        capture = tb.capture(tb.relay_ns, "veth-rc2").start()
        assert set(tb.namespaces) <= set(list_netns())
        raise RuntimeError("boom")
    assert not echo.alive()
    assert capture._proc is None
    assert set(list_netns()) == before


# -- traffic helpers on plain routing ------------------------------------------------------


@pytest.mark.netns
def test_client2_routes_through_relay(tb: TunnelBed) -> None:
    for family in (4, 6):
        result = ping_text(tb.bed, tb.client2_ns, tb.target(family), count=2)
        assert (result.sent, result.received) == (2, 2), result.text


@pytest.mark.netns
def test_udp_echo_sources_and_capture_of_plain_routing(tb: TunnelBed) -> None:
    echo = tb.start_udp_echo()
    sizes = [8, 100, 1200, 3000]  # 3000 crosses as IP fragments
    with tb.capture(tb.relay_ns, "veth-rc") as cap:
        results = {f: udp_exchange(tb.bed, tb.client_ns, tb.target(f), 7777, sizes) for f in (4, 6)}
        ping_text(tb.bed, tb.client_ns, tb.target_ipv4, count=1)
    for family, result in results.items():
        assert result.all_ok, result.results
        assert [r["size"] for r in result.results] == sizes
        expected = str(tb.bed.client_link.ipv4.ip if family == 4 else tb.bed.client_link.ipv6.ip)
        assert set(echo.sources(result.head)) == {expected}
        assert len(echo.sources(result.head)) == len(sizes)
    # Plain routing puts the traffic itself on the outer link: the report must flag it.
    report = outer_link_report(cap.packets())
    assert report.carrier_packets == 0
    assert any("UDP" in v for v in report.violations)
    icmp = find_icmp(cap.packets())
    assert any(i.type == 8 and i.dst == str(tb.target_ipv4) for i in icmp)
    assert any(str(tb.target_ipv4) in line for line in cap.text())


@pytest.mark.netns
def test_outer_link_report_accepts_only_the_carrier_port(tb: TunnelBed) -> None:
    tb.start_udp_echo(port=4433, netns=tb.relay_ns)
    with tb.capture(tb.relay_ns, "veth-rc") as cap:
        for relay in (tb.bed.relay_ipv4, tb.bed.relay_ipv6):
            assert udp_exchange(tb.bed, tb.client_ns, relay, 4433, [8, 1400]).all_ok
    report = outer_link_report(cap.packets())
    assert report.violations == []
    assert report.carrier_packets == 8


@pytest.mark.netns
def test_inject_packet_reaches_the_tun_reader(tb: TunnelBed) -> None:
    from scapy.layers.inet import ICMP, IP
    from scapy.layers.inet6 import ICMPv6EchoRequest, IPv6

    tun = EventProcess(
        tb.bed, tb.client_ns, [sys.executable, "-c", TUN_READER, "mqinj0"], name="tun-reader"
    )
    try:
        tun.wait_for("ready", 10)
        spoofed4 = bytes(IP(src="10.100.0.77", dst=str(tb.target_ipv4)) / ICMP() / b"marker4")
        spoofed6 = bytes(
            IPv6(src="fd00:6d61:7371::77", dst=str(tb.target_ipv6))
            / ICMPv6EchoRequest(data=b"marker6")
        )
        with tb.capture(tb.client_ns, "mqinj0") as cap:
            inject_packet(tb.bed, tb.client_ns, "mqinj0", spoofed4, spoofed6)
            # The kernel sends its own packets too (router solicitations): look past them.
            wanted, got = {spoofed4.hex(), spoofed6.hex()}, set[str]()
            while not wanted <= got:
                got.add(tun.wait_for("pkt", 5)["pkt"])
        kinds = {(i.src, i.type) for i in find_icmp(cap.packets())}
        assert {("10.100.0.77", 8), ("fd00:6d61:7371::77", 128)} <= kinds
    finally:
        tun.ensure_stopped(2.0)
    assert not link_exists(tb.bed, tb.client_ns, "mqinj0")


@pytest.mark.netns
def test_route_snapshot_sees_every_change(tb: TunnelBed) -> None:
    before = route_snapshot(tb.bed, tb.client_ns)
    tb.run(tb.client_ns, ["ip", "route", "add", "192.0.2.0/24", "via", "10.201.1.1"])
    assert route_snapshot(tb.bed, tb.client_ns) != before
    tb.run(tb.client_ns, ["ip", "route", "del", "192.0.2.0/24"])
    tb.run(tb.client_ns, ["ip", "-6", "route", "add", "2001:db8::/64", "via", "fd00:201:1::1"])
    assert route_snapshot(tb.bed, tb.client_ns) != before
    tb.run(tb.client_ns, ["ip", "-6", "route", "del", "2001:db8::/64"])
    assert route_snapshot(tb.bed, tb.client_ns) == before


@pytest.mark.netns
def test_ping_parsing_of_too_big_and_prohibited(tb: TunnelBed) -> None:
    """The ICMP errors the tunnel tests expect, produced here by the kernel and nftables."""
    # Too big: the relay's link to the client gets MTU 1400; the target pings with DF.
    tb.run(tb.relay_ns, ["ip", "link", "set", "veth-rc", "mtu", "1400"])
    client4, client6 = tb.bed.client_link.ipv4.ip, tb.bed.client_link.ipv6.ip
    with tb.capture(tb.target_ns, "veth-tr", "icmp or icmp6") as cap:
        v4 = ping_text(tb.bed, tb.target_ns, client4, size=1472, dont_fragment=True)
        v6 = ping_text(tb.bed, tb.target_ns, client6, size=1452, dont_fragment=True)
    assert v4.received == 0 and ping_reported_mtu(v4.text) == 1400, v4.text
    assert v6.received == 0 and ping_reported_mtu(v6.text) == 1400, v6.text
    seen = find_icmp(cap.packets())
    assert any((i.type, i.code, i.mtu) == (3, 4, 1400) for i in seen), seen
    assert any((i.type, i.mtu) == (2, 1400) for i in seen), seen
    assert ping_reported_mtu("64 bytes from x: icmp_seq=1 ttl=64") is None

    # Administratively prohibited: nftables in the relay rejects traffic to the target.
    rules = b"""
table inet probe {
    chain probe_forward {
        type filter hook forward priority 0;
        ip daddr 10.201.2.2 reject with icmp type admin-prohibited
        ip6 daddr fd00:201:2::2 reject with icmpv6 type admin-prohibited
    }
}
"""
    tb.run(tb.relay_ns, ["nft", "-f", "-"], input=rules)
    with tb.capture(tb.client_ns, "veth-cr", "icmp or icmp6") as cap:
        for family in (4, 6):
            result = ping_text(tb.bed, tb.client_ns, tb.target(family), count=1)
            assert result.received == 0 and ping_reported_prohibited(result.text), result.text
    seen = find_icmp(cap.packets())
    assert any((i.type, i.code) == (3, 13) for i in seen), seen
    assert any((i.type, i.code) == (1, 1) for i in seen), seen


@pytest.mark.netns
def test_stop_kills_a_process_that_ignores_sigterm(tb: TunnelBed) -> None:
    stubborn = EventProcess(
        tb.bed,
        tb.relay_ns,
        [
            sys.executable,
            "-c",
            "import signal, time; signal.signal(signal.SIGTERM, signal.SIG_IGN);"
            " print('ready', flush=True); time.sleep(60)",
        ],
        name="stubborn",
    )
    stubborn.wait_for("ready", 10)
    start = time.monotonic()
    with pytest.raises(ProcessFailed, match="did not exit within 1 s of SIGTERM"):
        stubborn.stop(1.0, sig=signal.SIGTERM)
    assert not stubborn.alive() and time.monotonic() - start < 5


@pytest.mark.netns
def test_nft_helpers_tell_a_masquerade_table_from_an_empty_one(tb: TunnelBed) -> None:
    assert not nft_table_exists(tb.bed, tb.relay_ns)
    assert not nft_masquerades(tb.bed, tb.relay_ns)
    table = b"""
table inet masque_relay {
    chain post {
        type nat hook postrouting priority srcnat; policy accept;
    }
}
"""
    tb.run(tb.relay_ns, ["nft", "-f", "-"], input=table)
    assert nft_table_exists(tb.bed, tb.relay_ns)
    assert not nft_masquerades(tb.bed, tb.relay_ns)
    tb.run(tb.relay_ns, ["nft", "add rule inet masque_relay post oifname veth-rt masquerade"])
    assert nft_masquerades(tb.bed, tb.relay_ns)
