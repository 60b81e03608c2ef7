"""The QUIC datagram lane end to end: real relay and client, real traffic, lane counters.

The lane (netio/lane.py) protects and unprotects steady-state DATAGRAM packets in
C while aioquic keeps the connection. Every test here moves verified traffic
(ping, TCP with SHA-256) through the tunnel and reads the lane's counters to show
where the packets were handled — the relay's ``masque_relay_lane{stat=...}`` /
``masque_relay_lanes_active`` metrics and the client's ``lane-stats`` line at
teardown:

- interop: the lane on both sides, on the relay only, on the client only (the
  other side plain aioquic); a side with the lane off shows no lane activity;
- key updates started by either side in the middle of a transfer (SIGUSR1);
- packet loss (nftables ``numgen``) in the middle of a transfer;
- the client moving to a new UDP port (SIGUSR2, a NAT rebinding) mid-transfer;
- one relay lane table serving two clients.

Signals go to the program itself: the harness spawns ``ip netns exec NS env -C
DIR python ...`` and both ``ip netns exec`` and ``env`` exec, so the Popen's pid
is the Python process's (checked by :func:`signal_target_is_the_program`).

Note on loss: the client and relay send with UDP GSO, so the nftables hooks see
GSO super-packets (up to ~45 QUIC packets each); dropping N % of what the hooks
see is bursty loss, harder on TCP than N % of independent packets.
"""

from __future__ import annotations

import contextlib
import ipaddress
import json
import signal
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.traffic import BackgroundTransfer, TransferResult, ping, tcp_transfer
from tests.tunnel_harness import (
    RELAY_PORT,
    ClientProcess,
    EventProcess,
    RelayProcess,
    TunnelBed,
    metric_key,
)

pytestmark = [pytest.mark.netns, pytest.mark.timeout(120)]

LANE = "masque_relay_lane"
LANES_ACTIVE = "masque_relay_lanes_active"
# The lane's counters (netio/lane.py LANE_STATS), spelt out: the contract under test.
LANE_STATS = (
    "received",
    "datagrams_received",
    "handed_to_aioquic",
    "duplicates",
    "sent",
    "window_full",
    "acks_sent",
    "reinstalls",
)
NO_LANE = "--no-datagram-lane"
MB = 1 << 20
INTEROP_BYTES = 50 * MB
# A side whose lane is on must have handled at least this share of the packets a
# transfer needs at minimum (payload / tunnel MTU): nearly everything went through C.
LANE_SHARE = 0.9
LOSS_TABLE = "masque_loss"


# -- fixtures and helpers ------------------------------------------------------------


@pytest.fixture(scope="module")
def tb(tmp_path_factory: pytest.TempPathFactory) -> Iterator[TunnelBed]:
    with TunnelBed(tmp_path_factory.mktemp("lane"), fast_path=True) as bed:
        yield bed


def lane_flags(on: bool) -> tuple[str, ...]:
    return () if on else (NO_LANE,)


@contextlib.contextmanager
def tunnel(
    tb: TunnelBed, *, relay_lane: bool = True, client_lane: bool = True
) -> Iterator[tuple[RelayProcess, ClientProcess]]:
    """A routed relay (``--no-nat``: the target can reach the client) and one ready client.

    Both are stopped when the block ends, whatever happens in it (clients first).
    """
    relay = tb.start_relay("--no-nat", *lane_flags(relay_lane))
    client: ClientProcess | None = None
    try:
        client = tb.start_client(*lane_flags(client_lane), relay=relay)
        client.wait_ready(30)
        assert client.carrier == "datagram", client.connected
        assert client.ready.get("dataplane") == "compiled", client.ready
        if relay_lane:
            relay.wait_metric(LANES_ACTIVE, lambda v: v == 1, timeout=10)
        yield relay, client
    finally:
        if client is not None:
            client.ensure_stopped()
        relay.ensure_stopped()


@contextlib.contextmanager
def background(tb: TunnelBed, *args: object, **kwargs: object) -> Iterator[BackgroundTransfer]:
    """A :class:`BackgroundTransfer` that is killed at the end of the block if still running."""
    transfer = BackgroundTransfer(tb.bed, *args, **kwargs)  # type: ignore[arg-type]
    try:
        yield transfer
    finally:
        transfer.close()


def relay_lane(relay: RelayProcess) -> dict[str, float]:
    """The relay's lane counters plus ``lanes_active``; every series must be exposed."""
    metrics = relay.metrics()
    stats: dict[str, float] = {}
    for stat in LANE_STATS:
        key = metric_key(LANE, {"stat": stat})
        assert key in metrics, f"{key} missing from the relay's metrics"
        stats[stat] = metrics[key]
    assert LANES_ACTIVE in metrics, f"{LANES_ACTIVE} missing from the relay's metrics"
    stats["lanes_active"] = metrics[LANES_ACTIVE]
    return stats


def grew(after: dict[str, float], before: dict[str, float], stat: str) -> float:
    return after[stat] - before[stat]


def client_lane_stats(client: ClientProcess) -> dict[str, int] | None:
    """Stop the client (exit 0); its ``lane-stats`` counters, None if it printed none."""
    client.stop(15)
    events = client.events("lane-stats")
    if not events:
        return None
    fields = events[-1].fields
    assert set(LANE_STATS) <= set(fields), fields
    return {key: int(value) for key, value in fields.items()}


def min_packets(nbytes: int, client: ClientProcess) -> int:
    """The fewest tunnel packets ``nbytes`` of TCP payload can take (one per MTU)."""
    return nbytes // client.mtu


def assert_intact(result: TransferResult, nbytes: int, what: str) -> None:
    assert result.intact and result.bytes_received == result.bytes_sent == nbytes, (what, result)


def assert_pings(tb: TunnelBed, family: int, count: int = 5) -> None:
    result = ping(tb.bed, tb.client_ns, tb.target(family), count=count)
    assert (result.sent, result.received) == (count, count), f"IPv{family} ping: {result}"


def client_address(
    client: ClientProcess, family: int
) -> ipaddress.IPv4Address | ipaddress.IPv6Address:
    return client.v4 if family == 4 else client.v6


def signal_target_is_the_program(proc: EventProcess) -> None:
    """The pid we signal is the program itself: ``ip netns exec`` and ``env -C`` exec'd it."""
    cmdline = Path(f"/proc/{proc.pid}/cmdline").read_bytes().split(b"\0")
    program = Path(cmdline[0].decode()).name
    assert program not in ("ip", "env"), cmdline
    assert cmdline[: len(proc.argv)] == [a.encode() for a in proc.argv], (cmdline, proc.argv)


def stderr_with(proc: EventProcess, text: str) -> list[str]:
    return [line for line in proc.stderr_lines if text in line]


def sleep_until(start: float, offset: float) -> None:
    time.sleep(max(0.0, start + offset - time.monotonic()))


# -- 1. interop: lane on both sides, on one side only -----------------------------------

COMBINATIONS = [
    pytest.param(True, True, id="lane-both"),
    pytest.param(True, False, id="lane-relay-only"),
    pytest.param(False, True, id="lane-client-only"),
]


@pytest.mark.parametrize(("relay_on", "client_on"), COMBINATIONS)
def test_interop_ping_and_50mb_both_ways_both_families(
    tb: TunnelBed, relay_on: bool, client_on: bool
) -> None:
    """Every combination carries ping and verified 50 MB transfers; the lane does the work."""
    nbytes = INTEROP_BYTES
    with tunnel(tb, relay_lane=relay_on, client_lane=client_on) as (relay, client):
        need = int(LANE_SHARE * min_packets(nbytes, client))
        for family in (4, 6):
            assert_pings(tb, family)
        for family in (4, 6):
            for direction in ("upload", "download"):
                before = relay_lane(relay)
                if direction == "upload":
                    result = tcp_transfer(
                        tb.bed, tb.client_ns, tb.target_ns, tb.target(family), nbytes=nbytes
                    )
                else:
                    address = client_address(client, family)
                    result = tcp_transfer(
                        tb.bed, tb.target_ns, tb.client_ns, address, nbytes=nbytes
                    )
                assert_intact(result, nbytes, f"IPv{family} {direction}")
                after = relay_lane(relay)
                if relay_on:
                    # The bulk direction went through the relay's lane, in C.
                    stat = "datagrams_received" if direction == "upload" else "sent"
                    assert grew(after, before, stat) >= need, (family, direction, before, after)
        final = relay_lane(relay)
        lane_stats = client_lane_stats(client)

    if relay_on:
        assert final["lanes_active"] == 1, final
        assert final["received"] >= 2 * need and final["sent"] >= 2 * need, final
    else:
        assert all(value == 0 for value in final.values()), final  # no lane activity at all
    if client_on:
        assert lane_stats is not None, "the client's lane is on but it printed no lane-stats"
        # Two uploads sent and two downloads received through the client's lane.
        assert lane_stats["sent"] >= 2 * need, lane_stats
        assert lane_stats["datagrams_received"] >= 2 * need, lane_stats
    else:
        assert lane_stats is None, f"client with {NO_LANE} printed lane-stats: {lane_stats}"


# -- 2. key updates from each side mid-transfer --------------------------------------------


def test_key_updates_from_both_sides_mid_transfer(tb: TunnelBed) -> None:
    """Relay and client each rotate the 1-RTT keys during transfers both ways; nothing breaks."""
    nbytes, rate = 40 * MB, 80.0  # ~4.2 s each way
    with (
        tunnel(tb) as (relay, client),
        background(
            tb, tb.client_ns, tb.target_ns, tb.target_ipv4, nbytes=nbytes, rate_mbit=rate, port=5210
        ) as upload,
        background(
            tb, tb.target_ns, tb.client_ns, client.v6, nbytes=nbytes, rate_mbit=rate, port=5211
        ) as download,
    ):
        signal_target_is_the_program(relay)
        signal_target_is_the_program(client)
        start = time.monotonic()
        sleep_until(start, 1.0)
        before = relay_lane(relay)
        assert before["reinstalls"] == 0, before
        relay.send_signal(signal.SIGUSR1)
        # A key update changes the keys of both directions: two reinstalls.
        relay.wait_metric(
            LANE, lambda v: v >= before["reinstalls"] + 2, timeout=5, stat="reinstalls"
        )
        after_relay = relay_lane(relay)

        sleep_until(start, 2.5)
        mark = client.mark()
        client.send_signal(signal.SIGUSR1)
        client.wait_event("key-update", 5, since=mark)
        relay.wait_metric(
            LANE, lambda v: v >= before["reinstalls"] + 4, timeout=5, stat="reinstalls"
        )
        mid = relay_lane(relay)

        up, down = upload.wait(), download.wait()
        after = relay_lane(relay)
        assert stderr_with(relay, "key update requested on 1 connections"), relay.describe()
        lane_stats = client_lane_stats(client)

    assert_intact(up, nbytes, "IPv4 upload")
    assert_intact(down, nbytes, "IPv6 download")
    # The client's key phase flip reached the relay as packets its lane could not open
    # with the old keys: aioquic took them and the lane picked up the new keys.
    assert grew(mid, after_relay, "handed_to_aioquic") >= 1, (after_relay, mid)
    # After both updates the lane kept carrying the bulk of each direction, in C.
    assert grew(after, mid, "datagrams_received") > 1000, (mid, after)
    assert grew(after, mid, "sent") > 1000, (mid, after)
    assert after["reinstalls"] == mid["reinstalls"], (mid, after)  # no spurious rekeying
    assert after["lanes_active"] == 1, after
    assert lane_stats is not None
    assert lane_stats["reinstalls"] >= 4, lane_stats  # the client's lane followed both too


# -- 3. loss mid-transfer ------------------------------------------------------------------


def loss_rules(percent: int) -> str:
    return f"""
table inet {LOSS_TABLE} {{
    chain input {{
        type filter hook input priority -10; policy accept;
        udp dport {RELAY_PORT} numgen random mod 100 < {percent} counter drop
    }}
    chain output {{
        type filter hook output priority -10; policy accept;
        udp sport {RELAY_PORT} numgen random mod 100 < {percent} counter drop
    }}
}}
"""


def loss_drops(tb: TunnelBed) -> dict[str, int]:
    """Packets each loss chain dropped so far."""
    out = tb.run(tb.relay_ns, ["nft", "-j", "list", "table", "inet", LOSS_TABLE]).stdout
    drops: dict[str, int] = {}
    for item in json.loads(out)["nftables"]:
        rule = item.get("rule")
        if rule is None:
            continue
        for expr in rule["expr"]:
            if "counter" in expr:
                drops[rule["chain"]] = int(expr["counter"]["packets"])
    return drops


@pytest.mark.parametrize("percent", [1, 5])
def test_loss_mid_transfer(tb: TunnelBed, percent: int) -> None:
    """Random loss on the relay's QUIC port, both directions, during transfers both ways."""
    nbytes, rate = 30 * MB, 60.0  # ~4.2 s each way (more if loss slows TCP down)
    with (
        tunnel(tb) as (relay, client),
        background(
            tb, tb.client_ns, tb.target_ns, tb.target_ipv4, nbytes=nbytes, rate_mbit=rate, port=5220
        ) as upload,
        background(
            tb, tb.target_ns, tb.client_ns, client.v6, nbytes=nbytes, rate_mbit=rate, port=5221
        ) as download,
    ):
        start = time.monotonic()
        sleep_until(start, 1.0)
        before = relay_lane(relay)
        try:
            tb.run(tb.relay_ns, ["nft", "-f", "-"], input=loss_rules(percent).encode())
            sleep_until(start, 2.5)
            drops = loss_drops(tb)
            during = relay_lane(relay)
        finally:
            tb.run(tb.relay_ns, ["nft", "delete", "table", "inet", LOSS_TABLE], check=False)
        up, down = upload.wait(), download.wait()
        after = relay_lane(relay)
        lane_stats = client_lane_stats(client)

    assert_intact(up, nbytes, "IPv4 upload")
    assert_intact(down, nbytes, "IPv6 download")
    assert drops.get("input", 0) > 0 and drops.get("output", 0) > 0, drops
    # The lane kept handling both directions while packets were being lost...
    assert grew(during, before, "datagrams_received") > 500, (before, during)
    assert grew(during, before, "sent") > 500, (before, during)
    # ...and afterwards, still installed.
    assert grew(after, during, "received") > 0 and grew(after, during, "sent") > 0, (during, after)
    assert after["lanes_active"] == 1, after
    assert lane_stats is not None and lane_stats["received"] > 0, lane_stats


# -- 4. client rebinding mid-transfer ---------------------------------------------------------


def test_client_rebinding_mid_transfer(tb: TunnelBed) -> None:
    """The client moves to a new UDP port; aioquic validates the path; the lane follows."""
    nbytes, rate = 20 * MB, 60.0
    with tunnel(tb) as (relay, client):
        session = relay.events("session-start")[-1].fields
        old_port = int(session["peer"].rsplit(":", 1)[1])
        # Everything the relay sends to any other client port: the new one.
        bpf = f"udp and src port {RELAY_PORT} and not dst port {old_port}"
        with (
            tb.capture(tb.relay_ns, tb.bed.relay_client_link.ifname, bpf) as capture,
            background(
                tb,
                tb.client_ns,
                tb.target_ns,
                tb.target_ipv4,
                nbytes=nbytes,
                rate_mbit=rate,
                port=5230,
            ) as upload,
            background(
                tb, tb.target_ns, tb.client_ns, client.v6, nbytes=nbytes, rate_mbit=rate, port=5231
            ) as download,
        ):
            signal_target_is_the_program(client)
            start = time.monotonic()
            sleep_until(start, 1.0)
            before = relay_lane(relay)
            mark = client.mark()
            client.send_signal(signal.SIGUSR2)
            new_port = int(client.wait_for("rebound", 5, since=mark)["port"])
            assert new_port != old_port
            # Past this point the old socket is closed: whatever the lane receives
            # came from the new port, after aioquic validated it.
            time.sleep(0.3)
            rebound = relay_lane(relay)
            up, down = upload.wait(), download.wait()
            after = relay_lane(relay)
        lane_stats = client_lane_stats(client)
        to_new_port = [line for line in capture.text() if f".{new_port}:" in line]

    assert_intact(up, nbytes, "IPv4 upload")
    assert_intact(down, nbytes, "IPv6 download")
    # The relay answered the client on its new port, download included (tcpdump sees
    # GSO super-packets: fewer lines than QUIC packets).
    assert len(to_new_port) > 200, to_new_port[:5]
    # The lane carried traffic again after the rebinding, both ways.
    assert grew(after, rebound, "datagrams_received") > 1000, (rebound, after)
    assert grew(after, rebound, "sent") > 1000, (rebound, after)
    assert after["lanes_active"] == 1, after
    assert lane_stats is not None and lane_stats["received"] > 0, lane_stats
    # The packets from the new address were aioquic's to handle (migration).
    assert grew(after, before, "handed_to_aioquic") >= 1, (before, rebound, after)


# -- 5. two clients on one relay's lane table ---------------------------------------------------


def test_two_clients_share_the_relay_lane_table(tb: TunnelBed) -> None:
    with tunnel(tb) as (relay, client):
        client2 = tb.start_client(relay=relay, netns=tb.client2_ns)
        try:
            client2.wait_ready(30)
            relay.wait_metric(LANES_ACTIVE, lambda v: v == 2, timeout=10)
            before = relay_lane(relay)
            for netns in (tb.client_ns, tb.client2_ns):
                for family in (4, 6):
                    result = ping(tb.bed, netns, tb.target(family), count=5)
                    assert (result.sent, result.received) == (5, 5), (netns, family, result)
            both = relay_lane(relay)
            # 20 echo requests in, 20 replies out, all through the lane.
            assert grew(both, before, "datagrams_received") >= 20, (before, both)
            assert grew(both, before, "sent") >= 20, (before, both)
            assert client_lane_stats(client2) is not None
            relay.wait_metric(LANES_ACTIVE, lambda v: v == 1, timeout=10)
        finally:
            client2.ensure_stopped()
        # The first client still works through the lane; the gone lane's counts are kept.
        assert_pings(tb, 4)
        after = relay_lane(relay)
        assert after["received"] >= both["received"] + 5, (both, after)
        assert after["lanes_active"] == 1, after
        lane_stats = client_lane_stats(client)
    # 15 echo replies; the odd one may share a packet with a frame only aioquic handles.
    assert lane_stats is not None and lane_stats["datagrams_received"] >= 10, lane_stats
