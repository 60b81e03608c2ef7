"""relay.certs: first-start certificate generation, pinning fingerprint, reuse."""

from __future__ import annotations

import datetime as dt
import hashlib
import ipaddress
import os
import stat
from pathlib import Path

import pytest
from cryptography import x509
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec, rsa
from cryptography.x509.oid import ExtendedKeyUsageOID

from relay.certs import (
    CertificateError,
    certificate_names,
    certificate_sha256,
    ensure_certificate,
    generate_self_signed,
)


def load(path: Path) -> x509.Certificate:
    return x509.load_pem_x509_certificate(path.read_bytes())


def test_first_start_generates_p256_cert_and_private_key(tmp_path: Path) -> None:
    cert_file, key_file = tmp_path / "state" / "cert.pem", tmp_path / "state" / "key.pem"
    now = dt.datetime(2026, 1, 1, tzinfo=dt.UTC)
    state = ensure_certificate(cert_file, key_file, ["relay.example", "192.0.2.7"], now=now)
    assert state.created
    cert = load(cert_file)
    key = serialization.load_pem_private_key(key_file.read_bytes(), password=None)
    assert isinstance(key, ec.EllipticCurvePrivateKey)
    assert isinstance(key.curve, ec.SECP256R1)
    assert cert.public_key() == key.public_key()
    # self-signed: the signature verifies with its own key
    cert.verify_directly_issued_by(cert)
    san = cert.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
    assert san.get_values_for_type(x509.DNSName) == ["relay.example"]
    assert san.get_values_for_type(x509.IPAddress) == [ipaddress.ip_address("192.0.2.7")]
    eku = cert.extensions.get_extension_for_class(x509.ExtendedKeyUsage).value
    assert ExtendedKeyUsageOID.SERVER_AUTH in eku
    assert not cert.extensions.get_extension_for_class(x509.BasicConstraints).value.ca
    # about a year, back-dated a little for clock skew
    assert cert.not_valid_before_utc < now
    assert dt.timedelta(days=360) < cert.not_valid_after_utc - now <= dt.timedelta(days=366)
    assert state.not_valid_after == cert.not_valid_after_utc
    # permissions: key private, state directory private
    assert stat.S_IMODE(os.stat(key_file).st_mode) == 0o600
    assert stat.S_IMODE(os.stat(cert_file).st_mode) == 0o644
    assert stat.S_IMODE(os.stat(tmp_path / "state").st_mode) == 0o700
    # no temporary files left behind
    assert sorted(p.name for p in (tmp_path / "state").iterdir()) == ["cert.pem", "key.pem"]


def test_key_is_0600_even_with_permissive_umask(tmp_path: Path) -> None:
    old = os.umask(0)
    try:
        ensure_certificate(tmp_path / "c.pem", tmp_path / "k.pem", ["localhost"])
    finally:
        os.umask(old)
    assert stat.S_IMODE(os.stat(tmp_path / "k.pem").st_mode) == 0o600


def test_fingerprint_is_sha256_of_der(tmp_path: Path) -> None:
    state = ensure_certificate(tmp_path / "c.pem", tmp_path / "k.pem", ["localhost"])
    der = load(tmp_path / "c.pem").public_bytes(serialization.Encoding.DER)
    expected = hashlib.sha256(der).hexdigest()
    assert certificate_sha256(tmp_path / "c.pem") == expected == state.sha256
    assert len(expected) == 64 and expected == expected.lower()


def test_existing_files_are_loaded_unchanged(tmp_path: Path) -> None:
    cert_file, key_file = tmp_path / "c.pem", tmp_path / "k.pem"
    first = ensure_certificate(cert_file, key_file, ["localhost"])
    before = (cert_file.read_bytes(), key_file.read_bytes(), cert_file.stat().st_mtime_ns)
    second = ensure_certificate(cert_file, key_file, ["other.example"])
    assert not second.created
    assert second.sha256 == first.sha256
    assert (cert_file.read_bytes(), key_file.read_bytes(), cert_file.stat().st_mtime_ns) == before


def test_operator_supplied_rsa_pair_is_accepted(tmp_path: Path) -> None:
    key = rsa.generate_private_key(public_exponent=65537, key_size=2048)
    ec_cert, _ = generate_self_signed(["localhost"])  # only to borrow the builder inputs
    cert = (
        x509.CertificateBuilder()
        .subject_name(ec_cert.subject)
        .issuer_name(ec_cert.subject)
        .public_key(key.public_key())
        .serial_number(7)
        .not_valid_before(ec_cert.not_valid_before_utc)
        .not_valid_after(ec_cert.not_valid_after_utc)
        .sign(key, ec_cert.signature_hash_algorithm)  # type: ignore[arg-type]
    )
    (tmp_path / "c.pem").write_bytes(cert.public_bytes(serialization.Encoding.PEM))
    (tmp_path / "k.pem").write_bytes(
        key.private_bytes(
            serialization.Encoding.PEM,
            serialization.PrivateFormat.PKCS8,
            serialization.NoEncryption(),
        )
    )
    state = ensure_certificate(tmp_path / "c.pem", tmp_path / "k.pem", ["localhost"])
    assert not state.created


def test_mismatched_pair_is_an_error(tmp_path: Path) -> None:
    ensure_certificate(tmp_path / "a.pem", tmp_path / "a.key", ["localhost"])
    ensure_certificate(tmp_path / "b.pem", tmp_path / "b.key", ["localhost"])
    with pytest.raises(CertificateError, match="does not belong"):
        ensure_certificate(tmp_path / "a.pem", tmp_path / "b.key", ["localhost"])


def test_certificate_without_key_is_an_error_and_nothing_is_written(tmp_path: Path) -> None:
    ensure_certificate(tmp_path / "c.pem", tmp_path / "k.pem", ["localhost"])
    (tmp_path / "k.pem").unlink()
    with pytest.raises(CertificateError, match="private key"):
        ensure_certificate(tmp_path / "c.pem", tmp_path / "k.pem", ["localhost"])
    assert not (tmp_path / "k.pem").exists()


def test_key_without_certificate_gets_a_certificate_for_that_key(tmp_path: Path) -> None:
    ensure_certificate(tmp_path / "c.pem", tmp_path / "k.pem", ["localhost"])
    key_bytes = (tmp_path / "k.pem").read_bytes()
    (tmp_path / "c.pem").unlink()
    state = ensure_certificate(tmp_path / "c.pem", tmp_path / "k.pem", ["localhost"])
    assert state.created
    assert (tmp_path / "k.pem").read_bytes() == key_bytes
    key = serialization.load_pem_private_key(key_bytes, password=None)
    assert load(tmp_path / "c.pem").public_key() == key.public_key()


def test_garbage_files_are_reported(tmp_path: Path) -> None:
    (tmp_path / "c.pem").write_text("not a certificate")
    (tmp_path / "k.pem").write_text("not a key")
    with pytest.raises(CertificateError, match=r"c\.pem"):
        ensure_certificate(tmp_path / "c.pem", tmp_path / "k.pem", ["localhost"])
    with pytest.raises(CertificateError, match="cannot read"):
        certificate_sha256(tmp_path / "missing.pem")


def test_certificate_names() -> None:
    names = certificate_names("::", ["vpn.example", "VPN.example."])
    assert names[0] == "vpn.example"
    assert "VPN.example." not in names  # duplicate, case and trailing dot ignored
    assert {"localhost", "127.0.0.1", "::1"} <= set(names)
    assert "::" not in names
    assert certificate_names("192.0.2.1")[0] == "192.0.2.1"


def test_generate_requires_a_name() -> None:
    with pytest.raises(ValueError):
        generate_self_signed([])
