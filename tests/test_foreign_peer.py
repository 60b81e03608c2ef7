"""Interop: the relay's datagram path driven by a QUIC stack that is not aioquic.

tests/foreign_peer.py is a CONNECT-IP client on qh3 (its own native Rust QUIC
core, AEAD and header protection from aws-lc-rs). It runs in the client
namespace, pings the target over HTTP Datagrams (RFC 9297, in QUIC DATAGRAM
frames, RFC 9221) and checks every echo reply; no TUN on the client side.

Each test runs against a relay with the compiled data path and one without, as
tests/test_tunnel_e2e.py does; the TLS cipher suites and QUIC v2 get a run each,
since the relay's packet protection must handle every one a peer may pick.
"""

from __future__ import annotations

import subprocess
import sys
from collections.abc import Iterator

import pytest

from tests.tunnel_harness import (
    REPO_ROOT,
    Event,
    RelayProcess,
    TunnelBed,
    parse_event,
)

pytestmark = [pytest.mark.netns, pytest.mark.timeout(180)]

PACKETS = "masque_relay_packets_total"


@pytest.fixture(scope="module", params=["fast-path", "no-fast-path"])
def tb(
    request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[TunnelBed]:
    fast = request.param == "fast-path"
    with TunnelBed(tmp_path_factory.mktemp("foreign"), fast_path=fast) as bed:
        yield bed


@pytest.fixture(scope="module")
def relay(tb: TunnelBed) -> RelayProcess:
    return tb.start_relay()


class PeerRun:
    """What one run of the foreign peer printed, and how it exited."""

    def __init__(self, result: subprocess.CompletedProcess[bytes]) -> None:
        self.returncode = result.returncode
        self.stdout = result.stdout.decode(errors="replace")
        self.stderr = result.stderr.decode(errors="replace")
        self.events = [parse_event(i, line) for i, line in enumerate(self.stdout.splitlines())]

    def first(self, word: str) -> Event:
        found = [e for e in self.events if e.word == word]
        assert found, f"no {word!r} line\n{self!r}"
        return found[0]

    def all(self, word: str) -> list[Event]:
        return [e for e in self.events if e.word == word]

    def __repr__(self) -> str:  # pytest shows this as the assertion message
        return f"exit {self.returncode}\n--- stdout\n{self.stdout}--- stderr\n{self.stderr}"


def run_peer(
    tb: TunnelBed,
    relay: RelayProcess,
    *args: str,
    token: str | None = None,
    pin: str | None = None,
) -> PeerRun:
    argv = [
        "env",
        "-C",
        str(REPO_ROOT),
        sys.executable,
        "-m",
        "tests.foreign_peer",
        "--relay",
        tb.relay_endpoint(tb.client_ns),
        "--token",
        token or relay.token or "",
        "--pin-sha256",
        pin or relay.fingerprint,
        *args,
    ]
    return PeerRun(tb.run(tb.client_ns, argv, check=False, timeout=90))


def assert_all_replies(run: PeerRun, targets: dict[str, int]) -> None:
    """Exit 0, ``received == sent``, and ``count`` replies over datagrams from each target."""
    assert run.returncode == 0, run
    summary = run.first("received")
    assert summary.fields["received"] == summary.fields["sent"], run
    assert int(summary.fields["sent"]) == sum(targets.values()), run
    replies = run.all("reply")
    for target, count in targets.items():
        got = [r for r in replies if r.fields["from"] == target]
        assert len(got) == count, run
    assert all(r.fields["via"] == "datagram" for r in replies), run
    stats = run.first("stats").fields
    assert stats["capsule_packets"] == "0", run  # nothing fell back to DATAGRAM capsules
    assert int(stats["datagrams_received"]) >= len(replies), run


LANE = "masque_relay_lane"


def assert_lane_carried(tb: TunnelBed, relay: RelayProcess, before: dict[str, float]) -> None:
    """With the fast path, qh3's DATAGRAM packets were opened, and ours sealed, in C."""
    if not tb.fast_path:
        assert relay.metric(LANE, stat="received") == 0  # no lane without the fast path
        return
    for stat in ("received", "sent"):
        assert relay.metric(LANE, stat=stat) > before[stat], stat


def lane_counts(relay: RelayProcess) -> dict[str, float]:
    return {stat: relay.metric(LANE, stat=stat) for stat in ("received", "sent")}


def test_ping_v4_and_v6_over_http_datagrams(tb: TunnelBed, relay: RelayProcess) -> None:
    lane_before = lane_counts(relay)
    from_client = relay.metric(PACKETS, direction="from_client")
    to_client = relay.metric(PACKETS, direction="to_client")
    count = 5
    run = run_peer(
        tb, relay, "--ping", str(tb.target_ipv4), "--ping", str(tb.target_ipv6), "--count", "5"
    )
    assert_all_replies(run, {str(tb.target_ipv4): count, str(tb.target_ipv6): count})
    connected = run.first("connected").fields
    assert connected["alpn"] == "h3", run
    assigned = run.first("assigned").fields
    assert assigned["v4"] != "-" and assigned["v6"] != "-", run
    # The packets went through the relay's data path, both ways.
    relay.wait_metric(PACKETS, lambda v: v >= from_client + 2 * count, direction="from_client")
    assert relay.metric(PACKETS, direction="to_client") >= to_client + 2 * count
    assert_lane_carried(tb, relay, lane_before)


@pytest.mark.parametrize(
    "suite", ["AES_128_GCM_SHA256", "AES_256_GCM_SHA384", "CHACHA20_POLY1305_SHA256"]
)
def test_each_cipher_suite(tb: TunnelBed, relay: RelayProcess, suite: str) -> None:
    lane_before = lane_counts(relay)
    from_client = relay.metric(PACKETS, direction="from_client")
    run = run_peer(
        tb, relay, "--cipher-suite", suite, "--ping", str(tb.target_ipv4), "--count", "3"
    )
    assert run.first("connected").fields["cipher"] == suite, run
    assert_all_replies(run, {str(tb.target_ipv4): 3})
    relay.wait_metric(PACKETS, lambda v: v >= from_client + 3, direction="from_client")
    assert_lane_carried(tb, relay, lane_before)


def test_quic_version_2(tb: TunnelBed, relay: RelayProcess) -> None:
    run = run_peer(tb, relay, "--quic-version", "2", "--ping", str(tb.target_ipv6), "--count", "3")
    assert run.first("connected").fields["quic_version"] == "0x6b3343cf", run
    assert_all_replies(run, {str(tb.target_ipv6): 3})


def test_bad_token_is_refused(tb: TunnelBed, relay: RelayProcess) -> None:
    run = run_peer(tb, relay, "--ping", str(tb.target_ipv4), token="not-the-right-token-0123456789")
    assert run.returncode == 3, run
    assert run.first("refused").fields["status"] in ("401", "403"), run


def test_wrong_pin_fails_the_handshake(tb: TunnelBed, relay: RelayProcess) -> None:
    """qh3 checks the pin itself: the passing runs above really were pinned."""
    run = run_peer(tb, relay, "--ping", str(tb.target_ipv4), pin="00" * 32)
    assert run.returncode == 2, run
    reason = run.first("error").fields["reason"]
    assert reason.startswith("handshake:") and "Fingerprint" in reason, run
    assert not run.all("response"), run
