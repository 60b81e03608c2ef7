"""The tunnel end to end: the real masque-relay and masque-client in the namespaces.

client (and client2) --QUIC/UDP 4433--> relay --TUN, kernel routing/NAT--> target.

Every test drives real traffic (ping, TCP, UDP) and proves where it went: captures
on the outer link and at the target, the source addresses the target saw, the
relay's metrics and event lines. One bed serves the whole module; one relay (and
one main client) serves each class; the restart test has its own relay.

Contract assumptions (see tests/tunnel_harness.py for the harness):
- the relay's ``ready ... tun=<name>`` names its TUN; the client's ``ready ...
  mtu=<n>`` is its TUN MTU (the largest packet it sends);
- ``-c FILE`` combines with command-line flags (``[tun] mtu = 1500`` in a file);
- ``--egress`` is given whenever NAT is on (the relay namespace has no default route);
- masque-client may enforce source and scope itself, so the relay's own checks are
  exercised with the scripted HTTP/3 client of tests/h3_probe.py
  (test_relay_enforces_source_and_scope); the masque-client tests check what an
  application sees (spoofed packets never arrive, out-of-scope pings are refused
  with an administratively-prohibited ICMP error, wherever it is generated).
"""

from __future__ import annotations

import ipaddress
import json
import secrets
import signal
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.traffic import ping, tcp_transfer
from tests.tunnel_harness import (
    CLIENT_TUN,
    RELAY_PORT,
    ClientProcess,
    RelayProcess,
    TunnelBed,
    UdpEcho,
    find_icmp,
    inject_packet,
    link_exists,
    nft_masquerades,
    nft_table_exists,
    outer_link_report,
    ping_reported_mtu,
    ping_reported_prohibited,
    ping_text,
    route_snapshot,
    udp_exchange,
)

pytestmark = [pytest.mark.netns, pytest.mark.timeout(180)]

ECHO_PORT = 7777
SESSIONS_ACTIVE = "masque_relay_sessions_active"
SESSIONS_TOTAL = "masque_relay_sessions_total"
REFUSED = "masque_relay_refused_total"
DROPPED = "masque_relay_packets_dropped_total"
PACKETS = "masque_relay_packets_total"
ICMP_SENT = "masque_relay_icmp_sent_total"
HEADERS = {4: 28, 6: 48}  # IP + ICMP echo / UDP header bytes in front of a payload


# -- fixtures and helpers ------------------------------------------------------------


@pytest.fixture(scope="module", params=["fast-path", "no-fast-path"])
def tb(
    request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[TunnelBed]:
    """The test bed; every test here runs with the compiled data path and again without."""
    fast = request.param == "fast-path"
    with TunnelBed(tmp_path_factory.mktemp("tunnel"), fast_path=fast) as bed:
        yield bed


@pytest.fixture(scope="module")
def echo(tb: TunnelBed) -> UdpEcho:
    return tb.start_udp_echo(ECHO_PORT)


def connect(
    tb: TunnelBed, relay: RelayProcess, *args: str, netns: str | None = None, family: int = 4
) -> tuple[ClientProcess, dict[str, str]]:
    """Start a client, wait until it is ready; its process and the relay's session-start."""
    mark = relay.mark()
    client = tb.start_client(*args, relay=relay, netns=netns, family=family)
    client.wait_ready(30)
    session = relay.wait_for("session-start", 10, since=mark)
    for key in ("v4", "v6"):
        assert same_prefix(session.get(key), client.ready.get(key)), (session, client.ready)
    assert session.get("carrier") == client.carrier, (session, client.connected)
    return client, session


def same_prefix(a: str | None, b: str | None) -> bool:
    """Whether two ``v4=``/``v6=`` values name the same prefix (``-`` or absent: none)."""

    def norm(value: str | None) -> object:
        return None if value is None or value in ("", "-") else ipaddress.ip_interface(value)

    return norm(a) == norm(b)


def disconnect(tb: TunnelBed, client: ClientProcess, sig: signal.Signals = signal.SIGTERM) -> None:
    """Stop a client (exit 0 expected) and check its TUN went with it."""
    client.stop(15, sig=sig)
    assert not link_exists(tb.bed, client.netns, client.ready.get("tun", CLIENT_TUN))


def assert_pings(
    tb: TunnelBed,
    netns: str,
    address: ipaddress.IPv4Address | ipaddress.IPv6Address | str,
    count: int = 3,
) -> None:
    result = ping(tb.bed, netns, ipaddress.ip_address(address), count=count)
    assert (result.sent, result.received) == (count, count), f"ping {address} from {netns}"


def echo_request(family: int, src: object, dst: object, payload: bytes) -> bytes:
    """An ICMP / ICMPv6 echo request, built by scapy (an oracle independent of ours)."""
    from scapy.layers.inet import ICMP, IP
    from scapy.layers.inet6 import ICMPv6EchoRequest, IPv6

    if family == 4:
        return bytes(IP(src=str(src), dst=str(dst)) / ICMP(id=0x4D51) / payload)
    return bytes(IPv6(src=str(src), dst=str(dst)) / ICMPv6EchoRequest(id=0x4D51, data=payload))


def parse_icmp(packet: bytes) -> tuple[int, int, str]:
    """(ICMP type, code, destination address) of an IPv4/IPv6 ICMP packet."""
    from scapy.layers.inet import IP
    from scapy.layers.inet6 import IPv6

    seen = find_icmp([IP(packet) if packet[0] >> 4 == 4 else IPv6(packet)])
    assert len(seen) == 1, packet.hex()
    return seen[0].type, seen[0].code, seen[0].dst


def udp_sizes(client: ClientProcess, family: int) -> list[int]:
    """Datagram sizes up to the largest that fits the tunnel MTU, plus a fragmented one."""
    largest = client.mtu - HEADERS[family]
    return [8, 64, 512, 1000, largest, 3000]


# -- a relay with NAT (the default), datagram carrier ---------------------------------


@pytest.fixture(scope="class")
def nat_relay(tb: TunnelBed) -> Iterator[RelayProcess]:
    """The relay of TestNatRelay: defaults (NAT to veth-rt, datagram carrier)."""
    relay = tb.start_relay()
    yield relay
    relay.stop(20)


@pytest.fixture(scope="class")
def nat_client(tb: TunnelBed, nat_relay: RelayProcess) -> Iterator[ClientProcess]:
    """TestNatRelay's main client: defaults (advertised routes = a full tunnel)."""
    client, _ = connect(tb, nat_relay)
    yield client
    client.stop(15)


class TestNatRelay:
    def test_ping_crosses_the_tunnel_and_is_masqueraded(
        self, tb: TunnelBed, nat_relay: RelayProcess, nat_client: ClientProcess, echo: UdpEcho
    ) -> None:
        assert nat_client.carrier == "datagram"
        assert nat_client.has(4) and nat_client.has(6), nat_client.ready
        assert int(nat_client.ready["routes"]) >= 1
        from_client = nat_relay.metric(PACKETS, direction="from_client")
        to_client = nat_relay.metric(PACKETS, direction="to_client")
        with (
            tb.capture(tb.relay_ns, "veth-rc") as outer,
            tb.capture(tb.target_ns, "veth-tr", "icmp or icmp6") as inner,
        ):
            for family in (4, 6):
                assert_pings(tb, tb.client_ns, tb.target(family))
            udp = {
                f: udp_exchange(tb.bed, tb.client_ns, tb.target(f), ECHO_PORT, [8, 300])
                for f in (4, 6)
            }

        # Nothing but the QUIC carrier crossed the client-relay link.
        report = outer_link_report(outer.packets())
        assert report.violations == [], "\n".join(report.violations[:20])
        assert report.carrier_packets >= 2 * (6 + 4)
        # The target saw the relay's egress address: the relay NATed the packets.
        for family in (4, 6):
            assert udp[family].all_ok, udp[family].results
            assert set(echo.sources(udp[family].head)) == {str(tb.relay_egress(family))}
        targets = (str(tb.target_ipv4), str(tb.target_ipv6))
        requests = [
            i for i in find_icmp(inner.packets()) if i.type in (8, 128) and i.dst in targets
        ]
        assert {i.src for i in requests if i.type == 8} == {str(tb.relay_egress_ipv4)}
        assert {i.src for i in requests if i.type == 128} == {str(tb.relay_egress_ipv6)}
        assert len(requests) >= 6
        # And the relay's own counters saw them.
        assert nat_relay.metric(PACKETS, direction="from_client") >= from_client + 10
        assert nat_relay.metric(PACKETS, direction="to_client") >= to_client + 10

    @pytest.mark.parametrize("family", [4, 6])
    def test_tcp_transfer_20_mb(
        self, tb: TunnelBed, nat_relay: RelayProcess, nat_client: ClientProcess, family: int
    ) -> None:
        nbytes = 20 << 20
        before = nat_relay.metric(PACKETS, direction="from_client")
        result = tcp_transfer(tb.bed, tb.client_ns, tb.target_ns, tb.target(family), nbytes=nbytes)
        assert result.bytes_received == nbytes
        assert result.intact
        # The bytes went through the relay's sessions, not around them.
        assert (
            nat_relay.metric(PACKETS, direction="from_client") - before >= nbytes // nat_client.mtu
        )

    @pytest.mark.parametrize("family", [4, 6])
    def test_udp_datagrams_of_many_sizes_echo_intact(
        self, tb: TunnelBed, nat_client: ClientProcess, echo: UdpEcho, family: int
    ) -> None:
        sizes = udp_sizes(nat_client, family)
        result = udp_exchange(tb.bed, tb.client_ns, tb.target(family), ECHO_PORT, sizes)
        assert result.all_ok, result.failed
        assert set(echo.sources(result.head)) == {str(tb.relay_egress(family))}

    def test_two_clients_get_distinct_addresses_and_cannot_spoof(
        self, tb: TunnelBed, nat_relay: RelayProcess, nat_client: ClientProcess
    ) -> None:
        from scapy.layers.inet import ICMP, IP
        from scapy.layers.inet6 import ICMPv6EchoRequest, IPv6

        a = nat_client
        # The second client reaches the relay over IPv6 on its own link.
        b, session_b = connect(tb, nat_relay, netns=tb.client2_ns, family=6)
        try:
            assert (a.v4, a.v6) != (b.v4, b.v6)
            assert a.v4 != b.v4 and a.v6 != b.v6
            session_ids = [e.fields.get("id") for e in nat_relay.events("session-start")]
            assert session_ids.count(session_b["id"]) == 1
            assert nat_relay.metric(SESSIONS_ACTIVE) == 2
            for netns in (tb.client_ns, tb.client2_ns):
                for family in (4, 6):
                    assert_pings(tb, netns, tb.target(family), count=2)

            # Client A's TUN receives packets claiming B's addresses (and, as a
            # control, its own): the spoofed ones must never reach the network.
            # masque-client checks sources itself, so the drop may happen before the
            # relay; the relay's own check is test_relay_enforces_source_and_scope.
            marks = {name: secrets.token_hex(8).encode() for name in ("s4", "s6", "l4", "l6")}
            packets = [
                IP(src=str(b.v4), dst=str(tb.target_ipv4)) / ICMP(id=0x5151) / marks["s4"],
                IPv6(src=str(b.v6), dst=str(tb.target_ipv6))
                / ICMPv6EchoRequest(id=0x5151, data=marks["s6"]),
                IP(src=str(a.v4), dst=str(tb.target_ipv4)) / ICMP(id=0x5252) / marks["l4"],
                IPv6(src=str(a.v6), dst=str(tb.target_ipv6))
                / ICMPv6EchoRequest(id=0x5252, data=marks["l6"]),
            ]
            with tb.capture(tb.target_ns, "veth-tr", "icmp or icmp6") as cap:
                inject_packet(tb.bed, tb.client_ns, a.tun, *(bytes(p) for p in packets))
                time.sleep(1.0)  # the controls' round trip is milliseconds
            frames = cap.raw()
            for name in ("l4", "l6"):
                assert any(marks[name] in f for f in frames), f"control packet {name} lost"
            for name in ("s4", "s6"):
                assert not any(marks[name] in f for f in frames), f"spoofed {name} forwarded"
        finally:
            mark = nat_relay.mark()
            disconnect(tb, b)
        nat_relay.wait_metric(SESSIONS_ACTIVE, lambda v: v == 1)
        assert nat_relay.wait_for("session-end", 10, since=mark)["id"] == session_b["id"]

    @pytest.mark.parametrize("credential", ["wrong-token", "no-token"])
    def test_bad_credentials_are_refused(
        self, tb: TunnelBed, nat_relay: RelayProcess, nat_client: ClientProcess, credential: str
    ) -> None:
        routes = route_snapshot(tb.bed, tb.client2_ns)
        before = nat_relay.metrics()
        sessions_started = len(nat_relay.events("session-start"))
        mark = nat_relay.mark()
        if credential == "wrong-token":
            bad = tb.start_client(
                relay=nat_relay, netns=tb.client2_ns, token="not-the-token-" + "x" * 16
            )
        else:
            bad = tb.start_client(relay=nat_relay, netns=tb.client2_ns, send_token=False)
        status = bad.wait_for("refused", 30)["status"]
        assert status in ("401", "403")
        assert bad.wait_exit(15) == 3
        assert not bad.events("ready")
        assert nat_relay.wait_for("refused", 10, since=mark)["status"] == status
        after = nat_relay.metrics()
        key = f'{REFUSED}{{status="{status}"}}'
        assert after.get(key, 0) == before.get(key, 0) + 1
        assert after.get(SESSIONS_ACTIVE, 0) == before.get(SESSIONS_ACTIVE, 0)
        assert after.get(SESSIONS_TOTAL, 0) == before.get(SESSIONS_TOTAL, 0)
        assert len(nat_relay.events("session-start")) == sessions_started
        assert not link_exists(tb.bed, tb.client2_ns, CLIENT_TUN)
        assert route_snapshot(tb.bed, tb.client2_ns) == routes

    @pytest.mark.parametrize("family", [4, 6])
    def test_out_of_scope_destination_is_dropped_with_admin_prohibited(
        self, tb: TunnelBed, nat_relay: RelayProcess, family: int
    ) -> None:
        """A scoped client routing everything into the tunnel: out-of-scope pings fail
        with an administratively-prohibited Destination Unreachable that the pinging
        application sees. Whether masque-client answers it locally or lets the relay
        drop and answer (dst_not_in_scope) is not fixed here; the relay's own check is
        test_relay_enforces_source_and_scope."""
        target = tb.target(family)
        scope = f"{target}/{32 if family == 4 else 128}"
        forbidden = tb.relay_egress(family)  # answers pings if a packet ever gets there
        scoped, _ = connect(
            tb, nat_relay, "--target", scope, "--routes", "full", netns=tb.client2_ns
        )
        try:
            assert scoped.has(family), scoped.ready
            assert_pings(tb, tb.client2_ns, target, count=2)  # in scope: fine

            with tb.capture(tb.client2_ns, scoped.tun, "icmp or icmp6") as cap:
                result = ping_text(tb.bed, tb.client2_ns, forbidden, count=2)
            assert result.received == 0, result.text
            own = str(scoped.v4 if family == 4 else scoped.v6)
            expected = (3, 13) if family == 4 else (1, 1)
            seen = find_icmp(cap.packets())
            assert any((i.type, i.code) == expected and i.dst == own for i in seen), (
                f"{seen}\n{result.text}"
            )
            assert ping_reported_prohibited(result.text), result.text
        finally:
            disconnect(tb, scoped)

    @pytest.mark.parametrize("family", [4, 6])
    def test_relay_enforces_source_and_scope(
        self, tb: TunnelBed, nat_relay: RelayProcess, nat_client: ClientProcess, family: int
    ) -> None:
        """The relay's own checks, met by a client that does not filter (the scripted
        HTTP/3 probe of tests/h3_probe.py, in client2): a session scoped to the target
        gets its in-scope echo answered; a packet with another session's source is
        dropped as src_not_assigned and never reaches the target; an out-of-scope
        destination is dropped as dst_not_in_scope and answered with ICMP
        administratively prohibited (type 3 code 13 / ICMPv6 type 1 code 1)."""
        from masque.capsule import AddressAssign
        from masque.request import build_connect_ip_headers
        from masque.template import UriTemplate
        from tests.h3_probe import Probe

        assert tb.relay_client2_link is not None
        relay_ip = str(tb.relay_client2_link.ipv4.ip)
        target = tb.target(family)
        other = nat_client.v4 if family == 4 else nat_client.v6  # another session's address
        with Probe.start(tb.client2_ns, tb.new_dir("probe")) as probe:
            conn = probe.connect(relay_ip, RELAY_PORT, pin=nat_relay.fingerprint)
            headers = build_connect_ip_headers(
                UriTemplate.default(relay_ip, RELAY_PORT),
                f"{target}/{32 if family == 4 else 128}",
                None,
                authorization=f"Bearer {nat_relay.token}",
            )
            stream = conn.open(headers)
            report = stream.wait(status=True, capsules=2, timeout=10)
            assert report.status == 200, report
            assigns = [c for c in report.capsules if isinstance(c, AddressAssign)]
            own = [a.ip_prefix for a in assigns[0].addresses if a.ip_version == family]
            assert len(own) == 1, assigns
            source = own[0].network_address

            def send(src: object, dst: object, marker: bytes) -> None:
                stream.datagram(b"\x00" + echo_request(family, src, dst, marker))

            # In scope, own source: the echo reply comes back.
            send(source, target, b"in-scope")
            replies = stream.wait(datagrams=1, timeout=5).datagrams
            assert parse_icmp(replies[0][1:])[:2] == ((0, 0) if family == 4 else (129, 0))

            # Spoofed source: dropped by the relay, counted, never at the target.
            spoofed = nat_relay.metric(DROPPED, reason="src_not_assigned")
            marker = secrets.token_hex(8).encode()
            with tb.capture(tb.target_ns, "veth-tr", "icmp or icmp6") as cap:
                send(other, target, marker)
                nat_relay.wait_metric(
                    DROPPED, lambda v: v >= spoofed + 1, reason="src_not_assigned"
                )
                time.sleep(0.3)
            assert not any(marker in frame for frame in cap.raw())

            # Out of scope: dropped, counted, answered with admin prohibited.
            out_of_scope = nat_relay.metric(DROPPED, reason="dst_not_in_scope")
            icmp_sent = nat_relay.metric_sum(ICMP_SENT)
            send(source, tb.relay_egress(family), b"out-of-scope")
            nat_relay.wait_metric(
                DROPPED, lambda v: v >= out_of_scope + 1, reason="dst_not_in_scope"
            )
            answers = stream.wait(datagrams=2, timeout=5).datagrams
            kind, code, dst = parse_icmp(answers[1][1:])
            assert (kind, code) == ((3, 13) if family == 4 else (1, 1))
            assert dst == str(source)
            assert nat_relay.metric_sum(ICMP_SENT) >= icmp_sent + 1
            conn.close()

    def test_capsule_carrier_when_datagrams_are_not_negotiated(
        self, tb: TunnelBed, nat_relay: RelayProcess, echo: UdpEcho
    ) -> None:
        routes = route_snapshot(tb.bed, tb.client2_ns)
        capsule, session = connect(tb, nat_relay, "--no-datagrams", netns=tb.client2_ns)
        try:
            assert capsule.carrier == "capsule"
            assert session["carrier"] == "capsule"
            for family in (4, 6):
                assert_pings(tb, tb.client2_ns, tb.target(family))
                result = tcp_transfer(
                    tb.bed, tb.client2_ns, tb.target_ns, tb.target(family), nbytes=5 << 20
                )
                assert result.bytes_received == 5 << 20 and result.intact
                udp = udp_exchange(tb.bed, tb.client2_ns, tb.target(family), ECHO_PORT, [8, 1000])
                assert udp.all_ok, udp.failed
                assert set(echo.sources(udp.head)) == {str(tb.relay_egress(family))}
        finally:
            disconnect(tb, capsule, sig=signal.SIGINT)  # SIGINT ends a client as SIGTERM does
        assert route_snapshot(tb.bed, tb.client2_ns) == routes

    def test_sigterm_drains_sessions_and_removes_tun_and_nat(
        self, tb: TunnelBed, nat_relay: RelayProcess, nat_client: ClientProcess
    ) -> None:
        """Last in the class: stops the class's relay while `nat_client` is connected."""
        session = [
            e
            for e in nat_relay.events("session-start")
            if same_prefix(e.fields.get("v4"), nat_client.ready.get("v4"))
        ][-1]
        assert link_exists(tb.bed, tb.relay_ns, nat_relay.tun)
        assert nft_table_exists(tb.bed, tb.relay_ns)
        mark = nat_relay.mark()
        nat_relay.stop(20)
        ends = [e.fields for e in nat_relay.events("session-end") if e.index >= mark]
        ours = [f for f in ends if f.get("id") == session.fields["id"]]
        assert ours, nat_relay.describe()
        assert int(ours[0]["rx_packets"]) > 0 and int(ours[0]["tx_packets"]) > 0
        # Two 20 MB transfers crossed this session (whichever way rx/tx are counted).
        assert int(ours[0]["rx_bytes"]) + int(ours[0]["tx_bytes"]) > 40 << 20
        assert not link_exists(tb.bed, tb.relay_ns, nat_relay.tun)
        assert not nft_table_exists(tb.bed, tb.relay_ns)


# -- a relay without NAT: the target sees (and can address) the clients' addresses ----------


@pytest.fixture(scope="class")
def routed_relay(tb: TunnelBed) -> Iterator[RelayProcess]:
    """The relay of TestRoutedRelay: --no-nat, and a TUN MTU of 1500.

    The TUN MTU is above any tunnel MTU a 1500-byte path can carry, so an oversized
    packet from the target reaches the relay's own check (not the kernel's).
    """
    config = tb.new_dir("relay-config") / "relay.toml"
    config.write_text("[tun]\nmtu = 1500\n")
    relay = tb.start_relay("--no-nat", "-c", str(config))
    yield relay
    relay.stop(20)
    assert not link_exists(tb.bed, tb.relay_ns, relay.tun)


@pytest.fixture(scope="class")
def routed_client(tb: TunnelBed, routed_relay: RelayProcess) -> Iterator[ClientProcess]:
    client, _ = connect(tb, routed_relay)
    yield client
    client.stop(15)


class TestRoutedRelay:
    def test_target_sees_the_assigned_addresses(
        self, tb: TunnelBed, routed_relay: RelayProcess, routed_client: ClientProcess, echo: UdpEcho
    ) -> None:
        assert not nft_masquerades(tb.bed, tb.relay_ns)  # --no-nat
        assigned = {4: str(routed_client.v4), 6: str(routed_client.v6)}
        target4, target6 = str(tb.target_ipv4), str(tb.target_ipv6)
        with (
            tb.capture(tb.relay_ns, "veth-rc") as outer,
            tb.capture(tb.target_ns, "veth-tr", "icmp or icmp6") as inner,
        ):
            for family in (4, 6):
                assert_pings(tb, tb.client_ns, tb.target(family))
                udp = udp_exchange(tb.bed, tb.client_ns, tb.target(family), ECHO_PORT, [8, 700])
                assert udp.all_ok, udp.failed
                assert set(echo.sources(udp.head)) == {assigned[family]}
                # Routed, not translated: the target reaches the client's address too.
                assert_pings(tb, tb.target_ns, assigned[family], count=2)
        report = outer_link_report(outer.packets())
        assert report.violations == [], "\n".join(report.violations[:20])
        # Echo requests that arrived at the target (not the ones it sent to the client).
        requests = [i for i in find_icmp(inner.packets()) if i.dst in (target4, target6)]
        assert {i.src for i in requests if i.type == 8} == {assigned[4]}
        assert {i.src for i in requests if i.type == 128} == {assigned[6]}

    @pytest.mark.parametrize("family", [4, 6])
    def test_oversized_packet_towards_client_gets_packet_too_big(
        self, tb: TunnelBed, routed_relay: RelayProcess, routed_client: ClientProcess, family: int
    ) -> None:
        link = json.loads(
            tb.run(tb.relay_ns, ["ip", "-j", "link", "show", routed_relay.tun]).stdout
        )
        assert int(link[0]["mtu"]) == 1500, "the relay did not apply [tun] mtu from -c"
        total = 1500  # fits the relay's TUN and the veths, exceeds any tunnel MTU
        address = routed_client.v4 if family == 4 else routed_client.v6
        too_big = routed_relay.metric(DROPPED, reason="too_big")
        with tb.capture(tb.target_ns, "veth-tr", "icmp or icmp6") as cap:
            result = ping_text(
                tb.bed, tb.target_ns, address, size=total - HEADERS[family], dont_fragment=True
            )
        assert result.received == 0, result.text
        mtu = ping_reported_mtu(result.text)
        assert mtu is not None, result.text
        # The tunnel MTU of this session: what the relay can carry to the client (it
        # may exceed the client's TUN MTU, which bounds only what the client sends).
        assert 1280 <= mtu < total, result.text
        seen = find_icmp(cap.packets())
        expected = (3, 4) if family == 4 else (2, 0)
        assert any(
            (i.type, i.code) == expected and i.mtu == mtu and i.dst == str(tb.target(family))
            for i in seen
        ), seen
        routed_relay.wait_metric(DROPPED, lambda v: v >= too_big + 1, reason="too_big")
        # The MTU announced is one that works: a DF packet of exactly that size passes.
        fits = ping_text(
            tb.bed, tb.target_ns, address, size=mtu - HEADERS[family], dont_fragment=True
        )
        assert fits.received == fits.sent == 2, fits.text


# -- crash and restart of the relay, then a clean client exit ---------------------------


def test_client_survives_relay_restart_and_restores_routes_on_exit(
    tb: TunnelBed, echo: UdpEcho
) -> None:
    state_dir: Path = tb.new_dir("restart-state")
    routes = route_snapshot(tb.bed, tb.client_ns)
    first = tb.start_relay(state_dir=state_dir, token=None)
    assert first.generated_token is not None and first.token == first.generated_token
    client = tb.start_client("--reconnect-max", "5", relay=first)
    client.wait_ready(30)
    assert_pings(tb, tb.client_ns, tb.target_ipv4)

    mark = client.mark()
    first.kill()  # a crash: no close, TUN and nftables table left to the kernel/next start
    # Traffic towards the dead relay (ICMP port unreachable comes back on the outer link).
    ping(tb.bed, tb.client_ns, tb.target_ipv4, count=2)
    gone = client.wait_for("disconnected", 40, since=mark)
    assert gone.get("reason") and float(gone.get("retry_in", "0")) >= 0, gone

    second = tb.start_relay(state_dir=state_dir, token=None)
    assert second.fingerprint == first.fingerprint  # same certificate: the pin still holds
    assert second.generated_token is None  # the stored token is reused, not replaced
    client.wait_ready(45, since=mark)
    assert second.wait_for("session-start", 10)
    for family in (4, 6):
        assert_pings(tb, tb.client_ns, tb.target(family))
    udp = udp_exchange(tb.bed, tb.client_ns, tb.target_ipv4, ECHO_PORT, [8, 1000])
    assert udp.all_ok, udp.failed

    client.stop(15, sig=signal.SIGTERM)
    assert not link_exists(tb.bed, tb.client_ns, CLIENT_TUN)
    assert route_snapshot(tb.bed, tb.client_ns) == routes
    assert second.wait_for("session-end", 15)
    second.wait_metric(SESSIONS_ACTIVE, lambda v: v == 0)
    second.stop(20)
    assert not link_exists(tb.bed, tb.relay_ns, second.tun)
    assert not nft_table_exists(tb.bed, tb.relay_ns)
