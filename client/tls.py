"""How the client decides to trust the relay's certificate.

Exactly one of three policies (:class:`TlsPolicy`):

``ca_file``
    Standard verification: the relay's chain must lead to a CA in this PEM
    file, be within its dates, and name the server (the configuration's
    ``server_name``, which ``aioquic.asyncio.connect`` sets to the host it
    dials when left empty; an IP literal is matched against IP SANs).
    aioquic does all of it during the handshake.

``pin_sha256``
    For self-signed relays (``relay.certs`` prints this pin at start): the
    SHA-256 of the relay certificate's DER encoding must equal the pin. No CA,
    name or date is checked; the pin *is* the identity, as with SSH host keys.
    The relay still proves it holds the certificate's private key: aioquic checks
    the CertificateVerify signature whatever ``verify_mode`` says.

``insecure=True``
    No verification at all (test beds). Never the default: a policy with
    nothing chosen is invalid, and this one logs a warning when applied.

Pinning and aioquic 1.7.2
-------------------------
aioquic's TLS has no certificate-verification hook: with ``verify_mode``
CERT_REQUIRED it insists on a CA chain, so pinning runs with CERT_NONE and
checks the certificate itself. :meth:`TlsPolicy.install_handshake_check` puts
the check inside the handshake, where aioquic installs the client's 1-RTT read
key: after the server's Certificate, CertificateVerify and Finished were
checked, before our Finished is sent (see
:func:`netio.aioquic_internals.on_client_handshake_verified`). A mismatch fails
the handshake with a TLS ``bad_certificate`` alert (QUIC CRYPTO_ERROR 0x12a),
so no request is ever sent to a relay with the wrong certificate; the server
is told why. aioquic reports only a closed connection, so the check also hands
its :class:`CertificatePinError` (naming both fingerprints) to the caller.
:meth:`TlsPolicy.check_peer` is the same check as a plain call, for use after
the handshake (defence in depth, or a connection made without the hook).
:class:`TlsCheckedProtocol` wires both into aioquic's asyncio client.

A resumed session (TLS PSK) carries no certificate, so the pin cannot be
checked and the handshake is refused: don't give a pinned client session
tickets.
"""

from __future__ import annotations

import hashlib
import hmac
import logging
import re
import ssl
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Literal

from aioquic import tls
from aioquic.asyncio.protocol import QuicConnectionProtocol, QuicStreamHandler
from aioquic.quic.configuration import QuicConfiguration
from aioquic.quic.connection import NetworkAddress, QuicConnection
from aioquic.quic.packet import QuicErrorCode
from cryptography import x509
from cryptography.hazmat.primitives import serialization

from netio import aioquic_internals

__all__ = [
    "CertificatePinError",
    "TlsCheckedProtocol",
    "TlsPolicy",
    "TlsPolicyError",
    "certificate_fingerprint",
    "normalize_pin",
]

logger = logging.getLogger(__name__)

_PIN = re.compile(r"[0-9a-f]{64}\Z")

#: QUIC CRYPTO_ERROR for the TLS bad_certificate alert (RFC 9001 §4.8, RFC 8446 §6).
CRYPTO_ERROR_BAD_CERTIFICATE = QuicErrorCode.CRYPTO_ERROR + tls.AlertDescription.bad_certificate


class TlsPolicyError(ValueError):
    """The TLS options are unusable: none or several chosen, a bad pin, an unreadable CA file."""


class CertificatePinError(Exception):
    """The relay's certificate does not match the configured SHA-256 pin."""

    def __init__(self, expected: str, actual: str | None) -> None:
        self.expected = expected
        "The configured pin (lower-case hex, no colons)."
        self.actual = actual
        "The presented certificate's SHA-256, or None if the relay presented none."
        if actual is None:
            message = (
                f"relay presented no certificate to check against pin sha256:{expected} "
                "(a resumed TLS session? pinning needs a full handshake)"
            )
        else:
            message = (
                f"relay certificate does not match the pin: "
                f"expected sha256:{expected}, got sha256:{actual}"
            )
        super().__init__(message)


def normalize_pin(pin: str) -> str:
    """A SHA-256 pin as 64 lower-case hex digits; colons, case and outer spaces ignored.

    Raises :class:`TlsPolicyError` for anything else.
    """
    value = pin.strip().replace(":", "").lower()
    if not _PIN.match(value):
        raise TlsPolicyError(
            f"pin_sha256 must be a SHA-256 fingerprint: 64 hex digits, colons allowed; got {pin!r}"
        )
    return value


def certificate_fingerprint(cert: x509.Certificate) -> str:
    """Lower-case hex SHA-256 of ``cert``'s DER encoding (what a pin is compared with)."""
    return hashlib.sha256(cert.public_bytes(serialization.Encoding.DER)).hexdigest()


@dataclass(frozen=True, slots=True)
class TlsPolicy:
    """Which relay certificates the client accepts: set exactly one field."""

    ca_file: Path | None = None
    "PEM file of the CA certificates to verify the relay's chain against."
    pin_sha256: str | None = None
    "SHA-256 of the relay certificate's DER encoding (hex; colons and upper case allowed)."
    insecure: bool = False
    "Accept any certificate. For test beds only."

    @property
    def mode(self) -> Literal["ca", "pin", "insecure"]:
        """The chosen policy (after :meth:`validate`)."""
        self.validate()
        if self.ca_file is not None:
            return "ca"
        if self.pin_sha256 is not None:
            return "pin"
        return "insecure"

    @property
    def pin(self) -> str | None:
        """The pin normalised to 64 lower-case hex digits, or None."""
        return None if self.pin_sha256 is None else normalize_pin(self.pin_sha256)

    def validate(self) -> None:
        """Check that exactly one policy is chosen and that it is usable.

        A CA file must be readable and hold at least one PEM certificate (read
        now: aioquic would only fail on it in the middle of a handshake).
        """
        chosen = [
            name
            for name, on in (
                ("ca_file", self.ca_file is not None),
                ("pin_sha256", self.pin_sha256 is not None),
                ("insecure", self.insecure),
            )
            if on
        ]
        if len(chosen) != 1:
            raise TlsPolicyError(
                "choose exactly one way to verify the relay: ca_file, pin_sha256 or "
                f"insecure=True (got {', '.join(chosen) if chosen else 'none'})"
            )
        if self.pin_sha256 is not None:
            normalize_pin(self.pin_sha256)
        if self.ca_file is not None:
            try:
                data = Path(self.ca_file).read_bytes()
            except OSError as exc:
                raise TlsPolicyError(
                    f"ca_file {self.ca_file}: cannot read: {exc.strerror}"
                ) from exc
            try:
                x509.load_pem_x509_certificates(data)
            except ValueError as exc:
                raise TlsPolicyError(
                    f"ca_file {self.ca_file}: no PEM certificate in it ({exc})"
                ) from exc

    def apply(self, configuration: QuicConfiguration) -> None:
        """Set up a client ``configuration`` for this policy (validating it first)."""
        mode = self.mode
        if not configuration.is_client:
            raise TlsPolicyError("TlsPolicy applies to client configurations only")
        if mode == "ca":
            assert self.ca_file is not None
            configuration.verify_mode = ssl.CERT_REQUIRED
            configuration.load_verify_locations(cafile=str(self.ca_file))
        elif mode == "pin":
            # CERT_REQUIRED would demand a CA chain; the pin is checked by us instead.
            configuration.verify_mode = ssl.CERT_NONE
        else:
            logger.warning("relay certificate verification is OFF (insecure=True)")
            configuration.verify_mode = ssl.CERT_NONE

    def install_handshake_check(
        self,
        quic: QuicConnection,
        on_failure: Callable[[CertificatePinError], None] | None = None,
    ) -> None:
        """Make ``quic``'s handshake fail unless the relay's certificate matches the pin.

        Call right after ``quic.connect()`` and before any datagram from the relay
        is received (:class:`TlsCheckedProtocol` does). On a mismatch the error
        is logged and passed to ``on_failure`` (aioquic itself reports only a
        closed connection), and the handshake is aborted with a TLS
        ``bad_certificate`` alert. A no-op for the other policies, whose checks
        aioquic already makes during the handshake.
        """
        expected = self.pin
        if expected is None:
            return

        def check() -> None:
            error = _pin_error(quic, expected)
            if error is not None:
                logger.error("%s", error)
                if on_failure is not None:
                    on_failure(error)
                raise tls.AlertBadCertificate(str(error))

        aioquic_internals.on_client_handshake_verified(quic, check)

    def check_peer(self, quic: QuicConnection) -> None:
        """Raise :class:`CertificatePinError` unless the relay's certificate matches the pin.

        For a pinned policy, call it once the handshake is complete and before
        any request is sent. The CA and insecure policies have nothing to add to
        aioquic's own checks, so it returns.
        """
        expected = self.pin
        if expected is None:
            return
        error = _pin_error(quic, expected)
        if error is not None:
            raise error


def _pin_error(quic: QuicConnection, expected: str) -> CertificatePinError | None:
    cert = aioquic_internals.peer_certificate(quic)
    if cert is None:
        return CertificatePinError(expected, None)
    actual = certificate_fingerprint(cert)
    if hmac.compare_digest(actual, expected):
        return None
    return CertificatePinError(expected, actual)


class TlsCheckedProtocol(QuicConnectionProtocol):
    """aioquic's client protocol, with a :class:`TlsPolicy` enforced in the handshake.

    Use it (or a subclass) as ``create_protocol`` for ``aioquic.asyncio.connect``,
    e.g. ``functools.partial(TlsCheckedProtocol, tls_policy=policy)``, with a
    configuration prepared by ``policy.apply()``. Connecting to a relay whose
    certificate does not match the pin then raises :class:`CertificatePinError`
    from ``connect()`` instead of a bare :class:`ConnectionError`.
    """

    def __init__(
        self,
        quic: QuicConnection,
        stream_handler: QuicStreamHandler | None = None,
        *,
        tls_policy: TlsPolicy,
    ) -> None:
        super().__init__(quic, stream_handler)
        self.tls_policy = tls_policy
        self.pin_error: CertificatePinError | None = None
        "Why the handshake was refused, if the pin was the reason."

    def connect(self, addr: NetworkAddress, transmit: bool = True) -> None:
        """Start the handshake, with the policy's check installed before anything arrives."""
        self._quic.connect(addr, now=self._loop.time())
        self.tls_policy.install_handshake_check(self._quic, self._pin_failed)
        if transmit:
            self.transmit()

    async def wait_connected(self) -> None:
        """Wait for the handshake; :class:`CertificatePinError` if the relay failed the pin."""
        try:
            await super().wait_connected()
        except ConnectionError as exc:
            if self.pin_error is not None:
                raise self.pin_error from exc
            raise
        try:
            self.tls_policy.check_peer(self._quic)
        except CertificatePinError as error:  # the handshake check was not installed
            self._quic.close(error_code=CRYPTO_ERROR_BAD_CERTIFICATE, reason_phrase=str(error))
            self.transmit()
            raise

    def _pin_failed(self, error: CertificatePinError) -> None:
        self.pin_error = error
