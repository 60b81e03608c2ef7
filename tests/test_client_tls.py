"""client.tls: CA-file, pinned and insecure verification over real aioquic handshakes.

Every handshake here is a real one: an aioquic server on 127.0.0.1 (ephemeral
UDP port) with certificates made in the test, and aioquic's asyncio client.
"""

from __future__ import annotations

import asyncio
import datetime as dt
import functools
import ipaddress
import ssl
from collections.abc import AsyncIterator, Callable, Coroutine
from contextlib import asynccontextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest
from aioquic.asyncio.client import connect
from aioquic.asyncio.protocol import QuicConnectionProtocol
from aioquic.asyncio.server import QuicServer
from aioquic.quic import events
from aioquic.quic.configuration import QuicConfiguration
from aioquic.quic.connection import NetworkAddress
from aioquic.tls import SessionTicket
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import NameOID

from client.tls import (
    CRYPTO_ERROR_BAD_CERTIFICATE,
    CertificatePinError,
    TlsCheckedProtocol,
    TlsPolicy,
    TlsPolicyError,
    certificate_fingerprint,
    normalize_pin,
)
from netio import aioquic_internals

ALPN = ["masque-tls-test"]


# -- certificates --------------------------------------------------------------


def make_cert(
    subject: str,
    *,
    issuer: tuple[x509.Certificate, ec.EllipticCurvePrivateKey] | None = None,
    ca: bool = False,
    names: tuple[str, ...] = ("localhost", "127.0.0.1"),
) -> tuple[x509.Certificate, ec.EllipticCurvePrivateKey]:
    """A P-256 certificate: self-signed when ``issuer`` is None, else signed by it."""
    key = ec.generate_private_key(ec.SECP256R1())
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, subject)])
    now = dt.datetime.now(dt.UTC)
    issuer_name, signing_key = (name, key) if issuer is None else (issuer[0].subject, issuer[1])
    builder = (
        x509.CertificateBuilder()
        .subject_name(name)
        .issuer_name(issuer_name)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - dt.timedelta(minutes=5))
        .not_valid_after(now + dt.timedelta(days=1))
        .add_extension(x509.BasicConstraints(ca=ca, path_length=None), critical=True)
        .add_extension(x509.SubjectKeyIdentifier.from_public_key(key.public_key()), critical=False)
    )
    if ca:
        builder = builder.add_extension(
            x509.KeyUsage(
                digital_signature=True,
                content_commitment=False,
                key_encipherment=False,
                data_encipherment=False,
                key_agreement=False,
                key_cert_sign=True,
                crl_sign=True,
                encipher_only=False,
                decipher_only=False,
            ),
            critical=True,
        )
    else:
        san: list[x509.GeneralName] = []
        for entry in names:
            try:
                san.append(x509.IPAddress(ipaddress.ip_address(entry)))
            except ValueError:
                san.append(x509.DNSName(entry))
        builder = builder.add_extension(x509.SubjectAlternativeName(san), critical=False)
    if issuer is not None:
        builder = builder.add_extension(
            x509.AuthorityKeyIdentifier.from_issuer_public_key(issuer[1].public_key()),
            critical=False,
        )
    return builder.sign(signing_key, hashes.SHA256()), key


def write_pem(path: Path, *certs: x509.Certificate) -> Path:
    path.write_bytes(b"".join(c.public_bytes(serialization.Encoding.PEM) for c in certs))
    return path


@pytest.fixture(scope="module")
def self_signed() -> tuple[x509.Certificate, ec.EllipticCurvePrivateKey]:
    return make_cert("relay.test")


@pytest.fixture(scope="module")
def test_ca() -> tuple[x509.Certificate, ec.EllipticCurvePrivateKey]:
    return make_cert("masque test CA", ca=True)


@pytest.fixture(scope="module")
def ca_issued(
    test_ca: tuple[x509.Certificate, ec.EllipticCurvePrivateKey],
) -> tuple[x509.Certificate, ec.EllipticCurvePrivateKey]:
    return make_cert("relay.test", issuer=test_ca)


# -- a loopback aioquic server and client --------------------------------------


@dataclass
class ServerLog:
    """What the server's connections saw."""

    seen: list[events.QuicEvent] = field(default_factory=list)

    def handshakes(self) -> int:
        return sum(isinstance(e, events.HandshakeCompleted) for e in self.seen)

    def terminations(self) -> list[events.ConnectionTerminated]:
        return [e for e in self.seen if isinstance(e, events.ConnectionTerminated)]


def recording_protocol(log: ServerLog) -> Callable[..., QuicConnectionProtocol]:
    class Recording(QuicConnectionProtocol):
        def quic_event_received(self, event: events.QuicEvent) -> None:
            log.seen.append(event)

    return Recording


@asynccontextmanager
async def quic_server(
    cert: x509.Certificate,
    key: ec.EllipticCurvePrivateKey,
    *,
    tickets: dict[bytes, SessionTicket] | None = None,
) -> AsyncIterator[tuple[int, ServerLog]]:
    configuration = QuicConfiguration(is_client=False, alpn_protocols=ALPN)
    configuration.certificate = cert
    configuration.private_key = key
    log = ServerLog()
    store = {} if tickets is None else tickets
    loop = asyncio.get_running_loop()
    transport, server = await loop.create_datagram_endpoint(
        lambda: QuicServer(
            configuration=configuration,
            create_protocol=recording_protocol(log),
            session_ticket_fetcher=store.pop if tickets is not None else None,
            session_ticket_handler=(
                (lambda t: store.__setitem__(t.ticket, t)) if tickets is not None else None
            ),
        ),
        local_addr=("127.0.0.1", 0),
    )
    try:
        yield transport.get_extra_info("sockname")[1], log
    finally:
        server.close()


def client_configuration(policy: TlsPolicy, server_name: str | None = None) -> QuicConfiguration:
    configuration = QuicConfiguration(is_client=True, alpn_protocols=ALPN, idle_timeout=5)
    configuration.server_name = server_name
    policy.apply(configuration)
    return configuration


async def connect_and_ping(
    port: int,
    policy: TlsPolicy,
    *,
    server_name: str | None = None,
    session_ticket: SessionTicket | None = None,
    tickets: list[SessionTicket] | None = None,
    protocol: type[TlsCheckedProtocol] = TlsCheckedProtocol,
) -> str:
    """Connect with ``policy``, prove the connection works, return the relay's fingerprint."""
    configuration = client_configuration(policy, server_name)
    configuration.session_ticket = session_ticket
    async with connect(
        "127.0.0.1",
        port,
        configuration=configuration,
        create_protocol=functools.partial(protocol, tls_policy=policy),
        session_ticket_handler=None if tickets is None else tickets.append,
    ) as client:
        await asyncio.wait_for(client.ping(), 5)
        cert = aioquic_internals.peer_certificate(client._quic)
        return "" if cert is None else certificate_fingerprint(cert)


def run_async(test: Callable[..., Coroutine[Any, Any, None]]) -> Callable[..., None]:
    """Run an async test on a fresh event loop (no pytest-asyncio here)."""

    @functools.wraps(test)
    def wrapper(*args: Any, **kwargs: Any) -> None:
        asyncio.run(asyncio.wait_for(test(*args, **kwargs), 60))

    return wrapper


# -- pinning -------------------------------------------------------------------


@run_async
async def test_correct_pin_connects(
    self_signed: tuple[x509.Certificate, ec.EllipticCurvePrivateKey],
) -> None:
    fingerprint = certificate_fingerprint(self_signed[0])
    async with quic_server(*self_signed) as (port, log):
        assert await connect_and_ping(port, TlsPolicy(pin_sha256=fingerprint)) == fingerprint
        # the colon-separated, upper-case form that tools print works as well
        colons = ":".join(fingerprint[i : i + 2] for i in range(0, 64, 2)).upper()
        assert await connect_and_ping(port, TlsPolicy(pin_sha256=colons)) == fingerprint
        assert log.handshakes() == 2


@run_async
async def test_wrong_pin_fails_the_handshake(
    self_signed: tuple[x509.Certificate, ec.EllipticCurvePrivateKey],
) -> None:
    actual = certificate_fingerprint(self_signed[0])
    wrong = "ab" * 32
    async with quic_server(*self_signed) as (port, log):
        with pytest.raises(CertificatePinError) as caught:
            await connect_and_ping(port, TlsPolicy(pin_sha256=wrong))
        assert caught.value.expected == wrong
        assert caught.value.actual == actual
        assert f"expected sha256:{wrong}" in str(caught.value)
        assert f"got sha256:{actual}" in str(caught.value)
        # Refused inside the handshake: the client never sent its Finished, so the
        # server never completed its side (no request could have been sent), and
        # it was told why with a TLS bad_certificate alert.
        for _ in range(50):
            if log.terminations():
                break
            await asyncio.sleep(0.05)
        assert log.handshakes() == 0
        [terminated] = log.terminations()
        assert terminated.error_code == CRYPTO_ERROR_BAD_CERTIFICATE


class PostHandshakeOnly(TlsCheckedProtocol):
    """A client that skips the in-handshake check, to exercise the fallback."""

    def connect(self, addr: NetworkAddress, transmit: bool = True) -> None:
        self._quic.connect(addr, now=self._loop.time())
        if transmit:
            self.transmit()


@run_async
async def test_wrong_pin_is_caught_after_the_handshake_without_the_hook(
    self_signed: tuple[x509.Certificate, ec.EllipticCurvePrivateKey],
) -> None:
    actual = certificate_fingerprint(self_signed[0])
    async with quic_server(*self_signed) as (port, log):
        with pytest.raises(CertificatePinError) as caught:
            await connect_and_ping(
                port, TlsPolicy(pin_sha256="00" * 32), protocol=PostHandshakeOnly
            )
        assert caught.value.actual == actual
        for _ in range(50):
            if log.terminations():
                break
            await asyncio.sleep(0.05)
        [terminated] = log.terminations()
        assert terminated.error_code == CRYPTO_ERROR_BAD_CERTIFICATE
        assert "does not match the pin" in terminated.reason_phrase


@run_async
async def test_check_peer_on_a_connected_client(
    self_signed: tuple[x509.Certificate, ec.EllipticCurvePrivateKey],
) -> None:
    fingerprint = certificate_fingerprint(self_signed[0])
    async with quic_server(*self_signed) as (port, _):
        policy = TlsPolicy(insecure=True)
        async with connect("127.0.0.1", port, configuration=client_configuration(policy)) as client:
            quic = client._quic
            assert aioquic_internals.peer_certificate(quic) == self_signed[0]
            for name in aioquic_internals.TLS_CONTEXT_ATTRIBUTES:
                assert hasattr(quic.tls, name), name
            TlsPolicy(pin_sha256=fingerprint).check_peer(quic)
            TlsPolicy(insecure=True).check_peer(quic)  # nothing to add
            with pytest.raises(CertificatePinError, match=fingerprint):
                TlsPolicy(pin_sha256="11" * 32).check_peer(quic)


@run_async
async def test_resumed_session_has_no_certificate_and_is_refused(
    self_signed: tuple[x509.Certificate, ec.EllipticCurvePrivateKey],
) -> None:
    fingerprint = certificate_fingerprint(self_signed[0])
    policy = TlsPolicy(pin_sha256=fingerprint)
    tickets: list[SessionTicket] = []
    async with quic_server(*self_signed, tickets={}) as (port, _):
        await connect_and_ping(port, policy, tickets=tickets)
        assert tickets, "the server issued no session ticket"
        with pytest.raises(CertificatePinError, match="no certificate") as caught:
            await connect_and_ping(port, policy, session_ticket=tickets[-1])
        assert caught.value.actual is None


# -- CA file -------------------------------------------------------------------


@run_async
async def test_ca_file_verifies_a_certificate_issued_by_the_ca(
    tmp_path: Path,
    test_ca: tuple[x509.Certificate, ec.EllipticCurvePrivateKey],
    ca_issued: tuple[x509.Certificate, ec.EllipticCurvePrivateKey],
) -> None:
    policy = TlsPolicy(ca_file=write_pem(tmp_path / "ca.pem", test_ca[0]))
    async with quic_server(*ca_issued) as (port, _):
        # the name checked is the host dialled (an IP SAN here) or server_name
        await connect_and_ping(port, policy)
        await connect_and_ping(port, policy, server_name="localhost")


@run_async
async def test_ca_file_rejects_an_unknown_issuer_and_a_wrong_name(
    tmp_path: Path,
    test_ca: tuple[x509.Certificate, ec.EllipticCurvePrivateKey],
    ca_issued: tuple[x509.Certificate, ec.EllipticCurvePrivateKey],
    self_signed: tuple[x509.Certificate, ec.EllipticCurvePrivateKey],
) -> None:
    other_ca, _ = make_cert("some other CA", ca=True)
    trusts_other = TlsPolicy(ca_file=write_pem(tmp_path / "other.pem", other_ca))
    trusts_test = TlsPolicy(ca_file=write_pem(tmp_path / "ca.pem", test_ca[0]))
    async with quic_server(*ca_issued) as (port, log):
        with pytest.raises(ConnectionError) as caught:
            await connect_and_ping(port, trusts_other)
        assert not isinstance(caught.value, CertificatePinError)
        with pytest.raises(ConnectionError):
            await connect_and_ping(port, trusts_test, server_name="elsewhere.example")
        assert log.handshakes() == 0
    async with quic_server(*self_signed) as (port, log):
        with pytest.raises(ConnectionError):
            await connect_and_ping(port, trusts_test)
        assert log.handshakes() == 0


# -- insecure ------------------------------------------------------------------


@run_async
async def test_insecure_connects_to_anything(
    self_signed: tuple[x509.Certificate, ec.EllipticCurvePrivateKey],
) -> None:
    async with quic_server(*self_signed) as (port, log):
        await connect_and_ping(port, TlsPolicy(insecure=True), server_name="not.the.name")
        assert log.handshakes() == 1


def test_insecure_logs_a_warning(caplog: pytest.LogCaptureFixture) -> None:
    configuration = QuicConfiguration(is_client=True)
    with caplog.at_level("WARNING"):
        TlsPolicy(insecure=True).apply(configuration)
    assert configuration.verify_mode == ssl.CERT_NONE
    assert "verification is OFF" in caplog.text


# -- validation ----------------------------------------------------------------


def test_apply_sets_verify_mode(tmp_path: Path, test_ca: tuple[x509.Certificate, Any]) -> None:
    ca_file = write_pem(tmp_path / "ca.pem", test_ca[0])
    configuration = QuicConfiguration(is_client=True)
    TlsPolicy(ca_file=ca_file).apply(configuration)
    assert configuration.verify_mode == ssl.CERT_REQUIRED
    assert configuration.cafile == str(ca_file)
    configuration = QuicConfiguration(is_client=True)
    TlsPolicy(pin_sha256="ab" * 32).apply(configuration)
    assert configuration.verify_mode == ssl.CERT_NONE
    with pytest.raises(TlsPolicyError, match="client"):
        TlsPolicy(insecure=True).apply(QuicConfiguration(is_client=False))


def test_exactly_one_policy(tmp_path: Path, test_ca: tuple[x509.Certificate, Any]) -> None:
    ca_file = write_pem(tmp_path / "ca.pem", test_ca[0])
    with pytest.raises(TlsPolicyError, match="got none"):
        TlsPolicy().validate()  # insecure is never the default
    with pytest.raises(TlsPolicyError, match="got ca_file, pin_sha256"):
        TlsPolicy(ca_file=ca_file, pin_sha256="ab" * 32).validate()
    with pytest.raises(TlsPolicyError, match="got pin_sha256, insecure"):
        TlsPolicy(pin_sha256="ab" * 32, insecure=True).validate()
    with pytest.raises(TlsPolicyError):
        TlsPolicy().apply(QuicConfiguration(is_client=True))
    for policy in (TlsPolicy(ca_file=ca_file), TlsPolicy(pin_sha256="ab" * 32)):
        policy.validate()
    assert TlsPolicy(insecure=True).mode == "insecure"


@pytest.mark.parametrize(
    "pin",
    [
        "ab" * 31,  # too short
        "ab" * 33,  # too long
        "zz" * 32,  # not hex
        "sha256:" + "ab" * 32,
        "",
    ],
)
def test_bad_pins_are_refused(pin: str) -> None:
    with pytest.raises(TlsPolicyError, match="64 hex digits"):
        TlsPolicy(pin_sha256=pin).validate()


def test_pin_normalisation() -> None:
    hexdigits = "0123456789abcdef" * 4
    colons = ":".join(hexdigits[i : i + 2] for i in range(0, 64, 2))
    assert normalize_pin(colons.upper()) == hexdigits
    assert normalize_pin(f"  {hexdigits.upper()}\n") == hexdigits
    assert TlsPolicy(pin_sha256=colons).pin == hexdigits


def test_unusable_ca_files_are_refused(tmp_path: Path) -> None:
    with pytest.raises(TlsPolicyError, match="cannot read"):
        TlsPolicy(ca_file=tmp_path / "missing.pem").validate()
    garbage = tmp_path / "garbage.pem"
    garbage.write_text("not a certificate\n")
    with pytest.raises(TlsPolicyError, match="no PEM certificate"):
        TlsPolicy(ca_file=garbage).validate()


def test_handshake_check_needs_a_started_client_connection() -> None:
    from aioquic.quic.connection import QuicConnection

    quic = QuicConnection(configuration=QuicConfiguration(is_client=True))
    with pytest.raises(RuntimeError, match="connect"):
        TlsPolicy(pin_sha256="ab" * 32).install_handshake_check(quic)
    assert aioquic_internals.peer_certificate(quic) is None
    TlsPolicy(insecure=True).install_handshake_check(quic)  # no-op, no error
