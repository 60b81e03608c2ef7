"""relay.auth: bearer tokens (constant time), header parsing, mTLS, aioquic client certs."""

from __future__ import annotations

import datetime as dt
import hashlib
import hmac
import os
import ssl
import stat
from pathlib import Path

import pytest
from aioquic.quic.configuration import QuicConfiguration
from aioquic.quic.connection import QuicConnection
from aioquic.quic.events import HandshakeCompleted
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import ExtendedKeyUsageOID

from relay.auth import (
    Authenticator,
    ClientCertificateError,
    ClientCertificateVerifier,
    TokenEntry,
    ensure_default_token,
    parse_bearer,
    peer_certificates,
    read_tokens_file,
    request_client_certificate,
)
from relay.certs import ensure_certificate
from relay.config import AuthConfig, ConfigError
from tests.pki import NOW, Pki
from tests.pki import name as pki_name

TOKEN_A = "alpha-token-0123456789abcdef"
TOKEN_B = "bravo-token-0123456789abcdef"
TOKEN_C = "charlie-token-0123456789abcd"


# -- a small PKI -------------------------------------------------------------------


@pytest.fixture(scope="module")
def pki() -> Pki:
    return Pki()


# -- Authorization header parsing -------------------------------------------------------


@pytest.mark.parametrize(
    ("value", "token"),
    [
        (f"Bearer {TOKEN_A}", TOKEN_A),
        (f"bearer {TOKEN_A}", TOKEN_A),
        (f"BEARER {TOKEN_A}", TOKEN_A),
        (f"BeArEr    {TOKEN_A}", TOKEN_A),  # 1*SP
        (f"  Bearer {TOKEN_A}\t ", TOKEN_A),  # surrounding OWS
        ("Bearer abc+/_~.-XYZ==", "abc+/_~.-XYZ=="),  # the whole b64token alphabet
        (f"Bearer {TOKEN_A}".encode(), TOKEN_A),  # aioquic hands over bytes
        ("Basic dXNlcjpwYXNz", None),  # another scheme
        ("Digest username=x", None),
        ("Bearerx abc", None),  # a different scheme name
    ],
)
def test_parse_bearer_accepts(value: str | bytes, token: str | None) -> None:
    assert parse_bearer(value) == token


@pytest.mark.parametrize(
    "value",
    [
        "",
        "   ",
        "Bearer",
        "Bearer ",
        "Bearer\tabc",  # tab is not SP
        "Bearer abc def",
        "Bearer abc,",
        "Bearer =abc",
        "Bearer ab=c",
        "Bearer abc\x00",
        "Bearer äbc",
        b"Bearer \xff\xfe",
        "Bear(er abc",
        "Bearer " + "a" * 5000,  # oversized
    ],
)
def test_parse_bearer_rejects_malformed(value: str | bytes) -> None:
    with pytest.raises(ValueError):
        parse_bearer(value)


# -- tokens -------------------------------------------------------------------------


def make_auth(*tokens: str) -> Authenticator:
    return Authenticator(tokens or (TOKEN_A, TOKEN_B, TOKEN_C))


def test_valid_token_accepted_with_identity() -> None:
    auth = Authenticator([TokenEntry(TOKEN_A, "alice"), TOKEN_B])
    r = auth.authenticate(f"Bearer {TOKEN_A}")
    assert (r.ok, r.status, r.identity, r.rule) == (True, 200, "token:alice", "token")
    r = auth.authenticate(f"bearer {TOKEN_B}".encode())
    expected = "token:sha256-" + hashlib.sha256(TOKEN_B.encode()).hexdigest()[:8]
    assert r.ok and r.identity == expected
    assert TOKEN_B not in (r.identity or "") and TOKEN_B not in r.reason


def test_missing_credentials_is_401_with_bearer_challenge() -> None:
    r = make_auth().authenticate(None)
    assert (r.ok, r.status, r.rule) == (False, 401, "missing-credentials")
    assert r.www_authenticate == 'Bearer realm="masque-relay"'
    assert r.identity is None


def test_wrong_token_is_401_invalid_token() -> None:
    r = make_auth().authenticate("Bearer wrong-token-0123456789abcdef")
    assert (r.ok, r.status, r.rule) == (False, 401, "invalid-token")
    assert r.www_authenticate == 'Bearer realm="masque-relay", error="invalid_token"'


def test_prefix_or_extension_of_a_token_is_rejected() -> None:
    auth = make_auth()
    for guess in (TOKEN_A[:-1], TOKEN_A + "x", TOKEN_A.upper(), TOKEN_A + "="):
        assert not auth.authenticate(f"Bearer {guess}").ok


def test_other_scheme_is_401_and_malformed_is_400() -> None:
    auth = make_auth()
    r = auth.authenticate("Basic dXNlcjpwYXNz")
    assert (r.status, r.rule) == (401, "unsupported-scheme")
    assert r.www_authenticate == 'Bearer realm="masque-relay"'
    r = auth.authenticate("Bearer a b")
    assert (r.status, r.rule) == (400, "malformed-authorization")
    assert r.www_authenticate == 'Bearer realm="masque-relay", error="invalid_request"'


def test_refusals_are_shared_constants() -> None:
    auth = make_auth()
    assert auth.authenticate(None) is auth.authenticate(None)
    assert auth.authenticate("Bearer nope-nope-nope-nope") is auth.authenticate("Bearer x")
    assert auth.authenticate("Basic x") is auth.authenticate("Negotiate y")
    # acceptance of a token does not allocate a new result either
    assert auth.authenticate(f"Bearer {TOKEN_A}") is auth.authenticate(f"Bearer {TOKEN_A}")


_real_compare_digest = hmac.compare_digest


@pytest.mark.parametrize("presented", [TOKEN_A, TOKEN_B, TOKEN_C, "not-a-valid-token-at-all"])
def test_every_token_is_compared_in_constant_time(
    monkeypatch: pytest.MonkeyPatch, presented: str
) -> None:
    auth = make_auth()
    calls: list[tuple[bytes, bytes]] = []

    def spy(a: bytes, b: bytes) -> bool:
        calls.append((a, b))
        return _real_compare_digest(a, b)

    monkeypatch.setattr(hmac, "compare_digest", spy)
    result = auth.authenticate(f"Bearer {presented}")
    assert result.ok == (presented != "not-a-valid-token-at-all")
    # one comparison per configured token, whichever matched: no early exit
    assert len(calls) == 3
    presented_digest = hashlib.sha256(presented.encode()).digest()
    for reference, candidate in calls:
        # fixed-length digests, so lengths leak nothing; never the raw token
        assert len(reference) == len(candidate) == 32
        assert candidate == presented_digest
    assert {ref for ref, _ in calls} == {
        hashlib.sha256(t.encode()).digest() for t in (TOKEN_A, TOKEN_B, TOKEN_C)
    }


def test_authenticator_refuses_to_lock_everyone_out() -> None:
    with pytest.raises(ValueError, match="every client would be refused"):
        Authenticator([])
    with pytest.raises(ValueError):
        Authenticator([TOKEN_A], allow_anonymous=True)
    with pytest.raises(ValueError):
        Authenticator([TOKEN_A], require_client_cert=True)


def test_anonymous() -> None:
    r = Authenticator(allow_anonymous=True).authenticate(None)
    assert (r.ok, r.identity) == (True, "anonymous")


# -- tokens file ---------------------------------------------------------------------------


def test_tokens_file_format(tmp_path: Path) -> None:
    path = tmp_path / "tokens"
    path.write_text(
        f"# comment line\n\nalice {TOKEN_A}   # trailing comment\n   {TOKEN_B}\nbob\t{TOKEN_C}\n"
    )
    entries = read_tokens_file(path)
    assert [e.name for e in entries] == ["alice", entries[1].name, "bob"]
    assert entries[1].name.startswith("sha256-")
    assert [e.token for e in entries] == [TOKEN_A, TOKEN_B, TOKEN_C]


@pytest.mark.parametrize(
    ("content", "where", "words"),
    [
        (f"{TOKEN_A}\n{TOKEN_A}\n", "line 2", "already listed on line 1"),
        ("short\n", "line 1", "too short"),
        (f"a b {TOKEN_A}\n", "line 1", "NAME TOKEN"),
        (f"bad/name {TOKEN_A}\n", "line 1", "name"),
        ("\n\nnot;a;token;at;all;really\n", "line 3", "not a bearer token"),
    ],
)
def test_tokens_file_errors_name_the_line(
    tmp_path: Path, content: str, where: str, words: str
) -> None:
    path = tmp_path / "tokens"
    path.write_text(content)
    with pytest.raises(ConfigError) as info:
        read_tokens_file(path)
    assert info.value.source == str(path) and info.value.key == where
    assert words in info.value.problem


def test_from_config_merges_inline_tokens_and_file(tmp_path: Path) -> None:
    path = tmp_path / "tokens"
    path.write_text(f"bob {TOKEN_B}\n{TOKEN_A}\n")
    auth = Authenticator.from_config(AuthConfig(tokens=(TOKEN_A,), tokens_file=path))
    assert auth.authenticate(f"Bearer {TOKEN_A}").ok
    assert auth.authenticate(f"Bearer {TOKEN_B}").identity == "token:bob"
    assert len(auth.token_names) == 2
    assert not auth.requests_client_certificate


def test_from_config_missing_files(tmp_path: Path) -> None:
    missing = tmp_path / "none"
    # the default (implicit) tokens file may be absent when inline tokens exist
    auth = Authenticator.from_config(AuthConfig(tokens=(TOKEN_A,), tokens_file=missing))
    assert auth.authenticate(f"Bearer {TOKEN_A}").ok
    # an explicitly named one must exist
    with pytest.raises(ConfigError, match="cannot read"):
        Authenticator.from_config(
            AuthConfig(tokens=(TOKEN_A,), tokens_file=missing, tokens_file_required=True)
        )
    # nothing configured at all: refuse to start rather than refuse everyone
    with pytest.raises(ConfigError, match="every client would be refused"):
        Authenticator.from_config(AuthConfig(tokens_file=missing))


def test_default_token_generated_once_and_accepted(tmp_path: Path) -> None:
    cfg = AuthConfig(tokens_file=tmp_path / "state" / "tokens")
    token = ensure_default_token(cfg)
    assert token is not None and len(token) >= 40
    path = tmp_path / "state" / "tokens"
    assert stat.S_IMODE(os.stat(path).st_mode) == 0o600
    assert ensure_default_token(cfg) is None  # never overwritten
    auth = Authenticator.from_config(cfg)
    r = auth.authenticate(f"Bearer {token}")
    assert r.ok and r.identity == "token:default"
    # not generated when credentials are configured
    other = tmp_path / "other"
    assert ensure_default_token(AuthConfig(tokens=(TOKEN_A,), tokens_file=other)) is None
    assert ensure_default_token(AuthConfig(allow_anonymous=True, tokens_file=None)) is None
    assert not other.exists()


# -- client certificates -------------------------------------------------------------


def test_verifier_accepts_chain_to_ca(pki: Pki) -> None:
    verifier = ClientCertificateVerifier([pki.cert])
    cert, _ = pki.issue("alice", eku=[ExtendedKeyUsageOID.CLIENT_AUTH])
    assert verifier.verify(cert) == "cert:CN=alice"
    der = cert.public_bytes(serialization.Encoding.DER)
    assert verifier.verify(der) == "cert:CN=alice"  # DER bytes work too


def test_verifier_with_intermediate(pki: Pki) -> None:
    inter_cert, inter_key = pki.issue("Intermediate", ca=True)
    leaf_key = ec.generate_private_key(ec.SECP256R1())
    leaf = (
        x509.CertificateBuilder()
        .subject_name(pki_name("carol"))
        .issuer_name(inter_cert.subject)
        .public_key(leaf_key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(NOW - dt.timedelta(days=1))
        .not_valid_after(NOW + dt.timedelta(days=1))
        .sign(inter_key, hashes.SHA256())
    )
    verifier = ClientCertificateVerifier([pki.cert])
    assert verifier.verify(leaf, [inter_cert]) == "cert:CN=carol"
    with pytest.raises(ClientCertificateError):
        verifier.verify(leaf)  # the intermediate is needed


@pytest.mark.parametrize(
    ("kind", "words"),
    [
        ("expired", "not valid at validation time"),
        ("not-yet-valid", "not valid at validation time"),
        ("other-ca", "candidates exhausted"),
        ("server-eku", "client authentication"),
        ("ca-as-client", "CA certificate cannot identify a client"),
        ("garbage", "could not be parsed"),
    ],
)
def test_verifier_rejects(pki: Pki, kind: str, words: str) -> None:
    verifier = ClientCertificateVerifier([pki.cert])
    leaf: x509.Certificate | bytes
    if kind == "expired":
        leaf, _ = pki.issue("old", days=(-10, -1))
    elif kind == "not-yet-valid":
        leaf, _ = pki.issue("future", days=(1, 10))
    elif kind == "other-ca":
        leaf, _ = Pki("Other CA").issue("mallory")
    elif kind == "server-eku":
        leaf, _ = pki.issue("srv", eku=[ExtendedKeyUsageOID.SERVER_AUTH])
    elif kind == "ca-as-client":
        leaf = pki.cert
    else:
        leaf = b"\x30\x03\x02\x01\x00"
    with pytest.raises(ClientCertificateError, match=words):
        verifier.verify(leaf)


def test_verifier_uses_given_time(pki: Pki) -> None:
    cert, _ = pki.issue("alice")
    verifier = ClientCertificateVerifier([pki.cert])
    with pytest.raises(ClientCertificateError):
        verifier.verify(cert, now=NOW + dt.timedelta(days=20))


def test_ca_file_loading(tmp_path: Path, pki: Pki) -> None:
    good = pki.pem_file(tmp_path / "ca.pem")
    assert ClientCertificateVerifier.from_pem_file(good)
    leaf, _ = pki.issue("not-a-ca")
    bad = tmp_path / "leaf.pem"
    bad.write_bytes(leaf.public_bytes(serialization.Encoding.PEM))
    with pytest.raises(ConfigError, match="not a CA certificate"):
        ClientCertificateVerifier.from_pem_file(bad)
    junk = tmp_path / "junk.pem"
    junk.write_text("hello")
    with pytest.raises(ConfigError, match="no PEM certificate"):
        ClientCertificateVerifier.from_pem_file(junk)


def _mtls(
    pki: Pki, tmp_path: Path, *, tokens: tuple[str, ...] = (), require: bool = False
) -> Authenticator:
    cfg = AuthConfig(
        tokens=tokens,
        tokens_file=tmp_path / "absent",
        client_ca_file=pki.pem_file(tmp_path / "ca.pem"),
        require_client_cert=require,
    )
    return Authenticator.from_config(cfg)


def test_mtls_or_token_policy(pki: Pki, tmp_path: Path) -> None:
    auth = _mtls(pki, tmp_path, tokens=(TOKEN_A,))
    assert auth.requests_client_certificate
    good, _ = pki.issue("alice")
    bad, _ = Pki("Rogue").issue("alice")
    r = auth.authenticate(None, good)
    assert (r.ok, r.identity, r.rule) == (True, "cert:CN=alice", "cert")
    assert auth.authenticate(f"Bearer {TOKEN_A}", None).ok
    r = auth.authenticate(f"Bearer {TOKEN_A}", bad)  # a bad cert is not papered over
    assert (r.ok, r.status, r.rule) == (False, 403, "client-cert-rejected")
    assert auth.authenticate(None, None).status == 401


def test_mtls_only(pki: Pki, tmp_path: Path) -> None:
    auth = _mtls(pki, tmp_path)
    good, _ = pki.issue("alice")
    assert auth.authenticate(None, good).ok
    r = auth.authenticate(f"Bearer {TOKEN_A}", None)
    assert (r.ok, r.status, r.rule) == (False, 403, "client-cert-required")


def test_mtls_required_with_tokens_needs_both(pki: Pki, tmp_path: Path) -> None:
    auth = _mtls(pki, tmp_path, tokens=(TOKEN_A,), require=True)
    good, _ = pki.issue("alice")
    r = auth.authenticate(f"Bearer {TOKEN_A}", good)
    assert r.ok and r.identity == "cert:CN=alice token:" + TokenEntry.unnamed(TOKEN_A).name
    assert auth.authenticate(None, good).status == 401
    assert auth.authenticate("Bearer wrong-wrong-wrong-wrong", good).status == 401
    assert auth.authenticate(f"Bearer {TOKEN_A}", None).status == 403


# -- aioquic: requesting and reading the client certificate ------------------------------

CLIENT_ADDR = ("10.0.0.2", 40000)
SERVER_ADDR = ("10.0.0.1", 4433)


def _handshake(
    tmp_path: Path,
    *,
    client_cert: tuple[x509.Certificate, ec.EllipticCurvePrivateKey] | None,
    request: bool,
) -> QuicConnection:
    """Run a QUIC handshake in memory (no sockets); return the server connection."""
    ensure_certificate(tmp_path / "srv.pem", tmp_path / "srv.key", ["localhost"])
    server_conf = QuicConfiguration(is_client=False, alpn_protocols=["h3"])
    server_conf.load_cert_chain(tmp_path / "srv.pem", tmp_path / "srv.key")
    client_conf = QuicConfiguration(is_client=True, alpn_protocols=["h3"], server_name="localhost")
    client_conf.verify_mode = ssl.CERT_NONE
    if client_cert is not None:
        client_conf.certificate, client_conf.private_key = client_cert
    client = QuicConnection(configuration=client_conf)
    server = QuicConnection(
        configuration=server_conf,
        original_destination_connection_id=client.original_destination_connection_id,
    )
    if request:
        request_client_certificate(server)
    now = 1000.0
    client.connect(SERVER_ADDR, now=now)
    done = False
    for _ in range(20):
        for data, _addr in client.datagrams_to_send(now):
            server.receive_datagram(data, CLIENT_ADDR, now)
        for data, _addr in server.datagrams_to_send(now):
            client.receive_datagram(data, SERVER_ADDR, now)
        while (event := server.next_event()) is not None:
            done = done or isinstance(event, HandshakeCompleted)
        now += 0.01
        if done:
            break
    assert done, "handshake did not complete"
    return server


def test_aioquic_sends_client_cert_only_when_requested(pki: Pki, tmp_path: Path) -> None:
    cert, key = pki.issue("alice", eku=[ExtendedKeyUsageOID.CLIENT_AUTH])
    # By default an aioquic server never asks for a client certificate.
    server = _handshake(tmp_path, client_cert=(cert, key), request=False)
    assert peer_certificates(server) == (None, [])
    # With the switch on, the certificate arrives and verifies against the CA.
    server = _handshake(tmp_path, client_cert=(cert, key), request=True)
    peer, chain = peer_certificates(server)
    assert peer == cert and chain == []
    auth = _mtls(pki, tmp_path, require=True)
    r = auth.authenticate(None, peer, chain)
    assert r.ok and r.identity == "cert:CN=alice"


def test_aioquic_accepts_client_without_cert(pki: Pki, tmp_path: Path) -> None:
    server = _handshake(tmp_path, client_cert=None, request=True)
    assert peer_certificates(server) == (None, [])
    r = _mtls(pki, tmp_path, require=True).authenticate(None, None)
    assert (r.ok, r.status) == (False, 403)


def test_aioquic_does_not_verify_client_chain(tmp_path: Path, pki: Pki) -> None:
    """aioquic completes the handshake with a certificate from an unknown CA: we must check."""
    rogue = Pki("Rogue CA").issue("mallory")
    server = _handshake(tmp_path, client_cert=rogue, request=True)
    peer, chain = peer_certificates(server)
    assert peer == rogue[0]
    r = _mtls(pki, tmp_path, require=True).authenticate(None, peer, chain)
    assert (r.ok, r.status, r.rule) == (False, 403, "client-cert-rejected")


def test_request_client_certificate_is_server_only() -> None:
    client = QuicConnection(configuration=QuicConfiguration(is_client=True))
    with pytest.raises(ValueError):
        request_client_certificate(client)
    assert peer_certificates(client) == (None, [])  # no TLS context yet
