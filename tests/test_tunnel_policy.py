"""End to end: the operator's policies on a real tunnel (mTLS, bandwidth limits)."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest
from cryptography.x509.oid import ExtendedKeyUsageOID

from tests.pki import Pki
from tests.traffic import ping, tcp_transfer
from tests.tunnel_harness import TunnelBed

pytestmark = pytest.mark.netns


def _write_pki(directory: Path) -> tuple[Path, Path, Path]:
    """A CA, and a client certificate it issued; returns (ca.pem, client.pem, client.key)."""
    pki = Pki("masque test clients CA")
    cert, key = pki.write_issued(directory, "client-1", eku=[ExtendedKeyUsageOID.CLIENT_AUTH])
    return pki.pem_file(directory / "ca.pem"), cert, key


@pytest.fixture(params=["fast-path", "no-fast-path"])
def tb(request: pytest.FixtureRequest) -> Iterator[TunnelBed]:
    """Each test runs with the compiled data path and again without."""
    with TunnelBed(fast_path=request.param == "fast-path") as bed:
        yield bed


def test_mtls_client_certificate_is_required_and_accepted(tb: TunnelBed) -> None:
    ca, cert, key = _write_pki(tb.new_dir("pki"))
    config = tb.new_dir("relay-config") / "relay.toml"
    config.write_text(f'[auth]\nclient_ca_file = "{ca}"\nrequire_client_cert = true\n')
    relay = tb.start_relay("-c", str(config), token=None)

    # No certificate: refused with 403 before any session exists.
    anonymous = tb.start_client(relay=relay, send_token=False)
    assert anonymous.wait_exit(30) == 3
    assert anonymous.events("refused")[-1].fields["status"] == "403"
    assert relay.metric("masque_relay_sessions_total") == 0

    # The CA's client certificate: a working tunnel, no token needed.
    client = tb.start_client(
        "--client-cert", str(cert), "--client-key", str(key), relay=relay, send_token=False
    )
    client.wait_ready()
    result = ping(tb.bed, tb.client_ns, tb.target_ipv4, count=3)
    assert result.received == 3
    assert relay.metric("masque_relay_sessions_total") == 1


def test_session_rate_limit_caps_throughput_and_counts_drops(tb: TunnelBed) -> None:
    relay = tb.start_relay("--session-rate-mbit", "4")
    client = tb.start_client(relay=relay)
    client.wait_ready()
    transfer = tcp_transfer(tb.bed, tb.client_ns, tb.target_ns, tb.target_ipv4, nbytes=3 << 20)
    assert transfer.intact
    mbit = transfer.bytes_received * 8 / transfer.seconds / 1e6
    # 4 Mbit/s plus the bucket's burst: clearly below the ~100 Mbit/s unlimited figure.
    assert mbit < 8, f"{mbit:.1f} Mbit/s through a 4 Mbit/s session limit"
    assert relay.metric("masque_relay_packets_dropped_total", reason="rate_limited") > 0
