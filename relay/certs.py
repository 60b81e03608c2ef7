"""The relay's TLS certificate: generated on first start, loaded unchanged afterwards.

A relay started with no configuration needs a certificate for QUIC. On first
start :func:`ensure_certificate` writes a self-signed ECDSA P-256 certificate
(about one year of validity, SANs for the given names plus ``localhost`` and the
loopback addresses) and its private key (mode 0600) to the configured paths.
Clients pin it by the SHA-256 fingerprint of its DER encoding
(:func:`certificate_sha256`), which the relay prints at start.

Existing files are never rewritten. If only the key exists (a first start that
was interrupted, or an operator who brought a key), a certificate is made for
that key; a certificate without its key is an error.
"""

from __future__ import annotations

import datetime as dt
import hashlib
import ipaddress
import os
import secrets
import socket
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path

from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.hazmat.primitives.asymmetric.types import PrivateKeyTypes
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

__all__ = [
    "CertificateError",
    "CertificateState",
    "certificate_names",
    "certificate_sha256",
    "ensure_certificate",
    "fingerprint",
    "generate_self_signed",
]

#: Validity of a generated certificate.
VALIDITY = dt.timedelta(days=365)
#: Back-dating of notBefore, so a client whose clock is a little behind accepts it.
CLOCK_SKEW = dt.timedelta(minutes=5)

_WILDCARD_HOSTS = frozenset({"", "::", "0.0.0.0", "*"})


class CertificateError(Exception):
    """The configured certificate or key cannot be used (unreadable, mismatched)."""


@dataclass(frozen=True, slots=True)
class CertificateState:
    """What :func:`ensure_certificate` found or made."""

    cert_file: Path
    key_file: Path
    created: bool
    "True when this call wrote the certificate (and the key, if it was absent)."
    sha256: str
    "Lower-case hex SHA-256 of the certificate's DER encoding (the client's pin)."
    not_valid_after: dt.datetime
    "End of validity (UTC)."


def fingerprint(cert: x509.Certificate) -> str:
    """Lower-case hex SHA-256 of ``cert``'s DER encoding (64 characters)."""
    return hashlib.sha256(cert.public_bytes(serialization.Encoding.DER)).hexdigest()


def certificate_sha256(path: Path | str) -> str:
    """Lower-case hex SHA-256 of the DER encoding of the first certificate in a PEM file."""
    try:
        data = Path(path).read_bytes()
    except OSError as exc:
        raise CertificateError(f"{path}: cannot read certificate: {exc.strerror}") from exc
    return fingerprint(_load_first_certificate(data, Path(path)))


def certificate_names(listen_host: str, extra: Iterable[str] = ()) -> list[str]:
    """Names for a generated certificate's SAN, in order, without duplicates.

    The configured extra names, the listen host unless it is a wildcard, this
    machine's host name, ``localhost``, 127.0.0.1 and ::1.
    """
    names: list[str] = []
    candidates = [*extra]
    if listen_host not in _WILDCARD_HOSTS:
        candidates.append(listen_host)
    hostname = socket.gethostname()
    if hostname:
        candidates.append(hostname)
    candidates += ["localhost", "127.0.0.1", "::1"]
    seen: set[str] = set()
    for name in candidates:
        key = _normalise_name(name)
        if key not in seen:
            seen.add(key)
            names.append(name)
    return names


def generate_self_signed(
    names: Sequence[str],
    *,
    key: ec.EllipticCurvePrivateKey | None = None,
    now: dt.datetime | None = None,
    validity: dt.timedelta = VALIDITY,
) -> tuple[x509.Certificate, ec.EllipticCurvePrivateKey]:
    """A self-signed ECDSA P-256 / SHA-256 server certificate for ``names``.

    IP literals go into the SAN as IP addresses, everything else as DNS names.
    The first name is the subject's common name.
    """
    if not names:
        raise ValueError("a certificate needs at least one name")
    if key is None:
        key = ec.generate_private_key(ec.SECP256R1())
    now = now or dt.datetime.now(dt.UTC)
    subject = x509.Name(
        [
            x509.NameAttribute(NameOID.ORGANIZATION_NAME, "masque-relay"),
            x509.NameAttribute(NameOID.COMMON_NAME, names[0][:64]),
        ]
    )
    san: list[x509.GeneralName] = []
    for name in names:
        try:
            san.append(x509.IPAddress(ipaddress.ip_address(name)))
        except ValueError:
            san.append(x509.DNSName(name))
    public_key = key.public_key()
    cert = (
        x509.CertificateBuilder()
        .subject_name(subject)
        .issuer_name(subject)
        .public_key(public_key)
        .serial_number(secrets.randbits(127) | 1)
        .not_valid_before(now - CLOCK_SKEW)
        .not_valid_after(now + validity)
        .add_extension(x509.SubjectAlternativeName(san), critical=False)
        .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
        .add_extension(
            x509.KeyUsage(
                digital_signature=True,
                content_commitment=False,
                key_encipherment=False,
                data_encipherment=False,
                key_agreement=False,
                key_cert_sign=False,
                crl_sign=False,
                encipher_only=False,
                decipher_only=False,
            ),
            critical=True,
        )
        .add_extension(x509.ExtendedKeyUsage([ExtendedKeyUsageOID.SERVER_AUTH]), critical=False)
        .add_extension(x509.SubjectKeyIdentifier.from_public_key(public_key), critical=False)
        .sign(key, hashes.SHA256())
    )
    return cert, key


def ensure_certificate(
    cert_file: Path,
    key_file: Path,
    names: Sequence[str],
    *,
    now: dt.datetime | None = None,
) -> CertificateState:
    """Load the relay's certificate, generating it (and the key) on first start.

    - both files exist: both are parsed and checked to belong together, and left
      as they are (``created=False``);
    - only the key exists: a self-signed certificate is made for it;
    - neither exists: a new key (mode 0600) and certificate are written;
    - only the certificate exists: :class:`CertificateError` (never guess a key).

    Parent directories that are missing are created with mode 0700.
    """
    cert_exists = cert_file.exists()
    key_exists = key_file.exists()
    if cert_exists and key_exists:
        cert = _load_first_certificate(_read(cert_file, "certificate"), cert_file)
        key = _load_key(key_file)
        if cert.public_key() != key.public_key():
            raise CertificateError(
                f"{cert_file}: certificate does not belong to the private key in {key_file}"
            )
        return CertificateState(
            cert_file, key_file, False, fingerprint(cert), cert.not_valid_after_utc
        )
    if cert_exists:
        raise CertificateError(
            f"{cert_file} exists but its private key {key_file} does not: "
            "restore the key, or remove the certificate to generate a new pair"
        )

    existing_key: ec.EllipticCurvePrivateKey | None = None
    if key_exists:
        loaded = _load_key(key_file)
        if not isinstance(loaded, ec.EllipticCurvePrivateKey):
            raise CertificateError(
                f"{key_file}: only an ECDSA key can get a generated certificate; "
                "provide the certificate as well"
            )
        existing_key = loaded
    cert, key = generate_self_signed(names, key=existing_key, now=now)
    if existing_key is None:
        key_pem = key.private_bytes(
            serialization.Encoding.PEM,
            serialization.PrivateFormat.PKCS8,
            serialization.NoEncryption(),
        )
        _write_new(key_file, key_pem, 0o600)
    _write_new(cert_file, cert.public_bytes(serialization.Encoding.PEM), 0o644)
    return CertificateState(cert_file, key_file, True, fingerprint(cert), cert.not_valid_after_utc)


# -- helpers -------------------------------------------------------------------


def _normalise_name(name: str) -> str:
    try:
        return str(ipaddress.ip_address(name))
    except ValueError:
        return name.lower().rstrip(".")


def _read(path: Path, what: str) -> bytes:
    try:
        return path.read_bytes()
    except OSError as exc:
        raise CertificateError(f"{path}: cannot read {what}: {exc.strerror}") from exc


def _load_first_certificate(data: bytes, path: Path) -> x509.Certificate:
    try:
        certs = x509.load_pem_x509_certificates(data)
    except ValueError as exc:
        raise CertificateError(f"{path}: not a PEM certificate: {exc}") from exc
    return certs[0]


def _load_key(path: Path) -> PrivateKeyTypes:
    try:
        return serialization.load_pem_private_key(_read(path, "private key"), password=None)
    except (ValueError, TypeError) as exc:
        raise CertificateError(f"{path}: not an unencrypted PEM private key: {exc}") from exc


def _write_new(path: Path, data: bytes, mode: int) -> None:
    """Write ``data`` to a new file with ``mode``, atomically (temp file + rename).

    The temporary file is created with ``mode`` already set, so a private key is
    never readable by others, not even for a moment.
    """
    path.parent.mkdir(mode=0o700, parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.{secrets.token_hex(4)}.tmp")
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL, mode)
    try:
        with os.fdopen(fd, "wb") as f:
            os.fchmod(f.fileno(), mode)  # the umask must not change it
            f.write(data)
            f.flush()
            os.fsync(f.fileno())
        # link() fails if the target appeared meanwhile: never overwrite a file.
        os.link(tmp, path)
    except FileExistsError as exc:
        raise CertificateError(f"{path} appeared while it was being generated") from exc
    finally:
        tmp.unlink(missing_ok=True)
