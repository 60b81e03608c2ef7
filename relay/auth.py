"""Who may open a tunnel: bearer tokens and client certificates (RFC 9484 §11).

The relay answers every CONNECT-IP request with :meth:`Authenticator.authenticate`,
which takes the request's ``authorization`` field value and the client
certificate of the QUIC connection, and returns an :class:`AuthResult` carrying
the HTTP status to send.

Policy
------
- ``allow_anonymous``: everyone is accepted (test beds only; the configuration
  refuses it together with any credential).
- Otherwise a client is accepted with a valid bearer token **or** a client
  certificate that chains to a configured CA. With ``require_client_cert`` a
  verified certificate is mandatory, and when tokens are configured as well a
  valid token is required too (both factors).
- A presented certificate that fails verification is refused outright, even if
  a token would have been accepted: a broken credential is a configuration
  error the operator should see, not something to paper over.

Status codes (RFC 9110 §15.5.2/§15.5.4, RFC 6750 §3.1)
--------------------------------------------------------
- **401** with ``www-authenticate: Bearer realm="masque-relay"`` when no usable
  credentials were sent (no ``authorization`` field, or another scheme).
- **401** with ``error="invalid_token"`` for a well-formed token that is not
  valid. RFC 6750 §3.1 names 401 for this case; RFC 9110 would also allow 403,
  but 401 with the error code tells a client exactly what to fix.
- **400** with ``error="invalid_request"`` for a malformed Bearer credential
  (RFC 6750 §3.1).
- **403** when the client is identified (or presented a TLS credential) but is
  not permitted: a certificate that fails verification, or no certificate where
  one is required. No HTTP challenge could fix these, so no 401.

Cost: tokens are kept only as SHA-256 digests; a presented token is hashed once
and compared with :func:`hmac.compare_digest` against *every* configured digest
(no early exit, equal lengths, so neither which token matched nor how much of it
matched leaks through timing). Refusals return shared, pre-built results:
refusing a client allocates nothing beyond hashing its token.

Client certificates and aioquic 1.7.2
-------------------------------------
aioquic's TLS server never asks for a client certificate on its own:
``tls.Context._request_client_certificate`` (private, "for test purposes only")
is the only switch, ``QuicConfiguration`` has no option for it, and
``verify_mode``/``cafile`` apply to the *client's* check of the server only.
When the switch is on, aioquic sends a CertificateRequest, verifies the
client's CertificateVerify signature (proof that it holds the key), and accepts
an empty Certificate message (a client without a certificate) without error. It
never checks the chain, the dates or the purpose of the client certificate:
:class:`ClientCertificateVerifier` does that here. The received certificate is
in ``connection.tls._peer_certificate`` and the rest of the chain in
``connection.tls._peer_certificate_chain`` (both private); no event carries it.
:func:`request_client_certificate` and :func:`peer_certificates` wrap these
private attributes in one place (tests pin them against aioquic 1.7.2). With
TLS session resumption (PSK) no CertificateRequest is sent and no certificate
is received: a relay that uses mTLS must not issue session tickets.
"""

from __future__ import annotations

import datetime as dt
import hashlib
import hmac
import os
import re
import secrets
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

from cryptography import x509
from cryptography.hazmat.primitives import hashes
from cryptography.x509.oid import ExtendedKeyUsageOID
from cryptography.x509.verification import (
    Criticality,
    ExtensionPolicy,
    Policy,
    PolicyBuilder,
    Store,
    VerificationError,
)

from relay.config import AuthConfig, ConfigError, token_problem

if TYPE_CHECKING:
    from aioquic.quic.connection import QuicConnection

__all__ = [
    "REALM",
    "AuthResult",
    "Authenticator",
    "ClientCertificateError",
    "ClientCertificateVerifier",
    "TokenEntry",
    "ensure_default_token",
    "parse_bearer",
    "peer_certificates",
    "read_tokens_file",
    "request_client_certificate",
]

REALM = "masque-relay"

#: Longest ``authorization`` value looked at; longer ones are malformed.
MAX_AUTHORIZATION_LENGTH = 4096

_B64TOKEN = re.compile(r"[A-Za-z0-9\-._~+/]+=*")  # RFC 6750 §2.1
_TCHARS = re.compile(r"[!#$%&'*+\-.^_`|~0-9A-Za-z]+")  # RFC 9110 §5.6.2 token
_TOKEN_NAME = re.compile(r"[A-Za-z0-9._@-]{1,64}")

CertificateInput = x509.Certificate | bytes


@dataclass(frozen=True, slots=True)
class AuthResult:
    """The verdict on one request."""

    ok: bool
    "Whether the tunnel may be opened."
    status: int
    "HTTP status to answer with when refused (200 when ``ok``)."
    reason: str
    "Words for the log; never contains the token."
    rule: str
    "Short stable label for metrics: ok, anonymous, missing-credentials, ..."
    identity: str | None = None
    "Who the client is when ``ok``: ``token:NAME``, ``cert:SUBJECT`` or ``anonymous``."
    www_authenticate: str | None = None
    "Value of the ``www-authenticate`` field to send with a 401/400, else ``None``."


@dataclass(frozen=True, slots=True)
class TokenEntry:
    """A bearer token and the name it is logged as."""

    token: str
    name: str

    @classmethod
    def unnamed(cls, token: str) -> TokenEntry:
        """Name the token by the first 8 hex digits of its SHA-256 (safe to log)."""
        return cls(token, "sha256-" + hashlib.sha256(token.encode("ascii")).hexdigest()[:8])


class ClientCertificateError(Exception):
    """A client certificate is not acceptable; the message says why."""


# -- Authorization field parsing ---------------------------------------------------

_OK, _OTHER_SCHEME, _MALFORMED = 0, 1, 2


def _classify(value: str | bytes) -> tuple[int, str]:
    """(kind, token): a Bearer token, another scheme, or a malformed field."""
    if len(value) > MAX_AUTHORIZATION_LENGTH:
        return _MALFORMED, ""
    text = value.decode("latin-1") if isinstance(value, bytes) else value
    text = text.strip(" \t")
    scheme, _, rest = text.partition(" ")
    if not _TCHARS.fullmatch(scheme):
        return _MALFORMED, ""
    if scheme.lower() != "bearer":
        return _OTHER_SCHEME, ""
    token = rest.lstrip(" ")  # credentials = auth-scheme 1*SP token68
    if not _B64TOKEN.fullmatch(token):
        return _MALFORMED, ""
    return _OK, token


def parse_bearer(value: str | bytes) -> str | None:
    """The token of a ``Bearer`` credential (RFC 6750 §2.1, RFC 9110 §11.4).

    The scheme is case-insensitive and separated from the token by one or more
    spaces; surrounding spaces/tabs are ignored. Returns ``None`` when the
    field uses another scheme; raises ``ValueError`` when it is a malformed
    Bearer credential (or not a credential at all).
    """
    kind, token = _classify(value)
    if kind == _MALFORMED:
        raise ValueError("malformed authorization field")
    return token if kind == _OK else None


# -- tokens --------------------------------------------------------------------------


def read_tokens_file(path: Path) -> list[TokenEntry]:
    """Tokens from a file: ``TOKEN`` or ``NAME TOKEN`` per line, ``#`` comments.

    Raises :class:`ConfigError` naming the file and line for a bad line or a
    token listed twice.
    """
    try:
        text = path.read_text(encoding="utf-8")
    except OSError as exc:
        raise ConfigError(str(path), None, f"cannot read tokens: {exc.strerror}") from exc
    except UnicodeDecodeError as exc:
        raise ConfigError(str(path), None, f"not UTF-8: {exc}") from exc
    entries: list[TokenEntry] = []
    seen: dict[str, int] = {}
    for number, line in enumerate(text.splitlines(), start=1):
        fields = line.split("#", 1)[0].split()
        if not fields:
            continue
        where = f"line {number}"
        if len(fields) > 2:
            raise ConfigError(str(path), where, "expected 'TOKEN' or 'NAME TOKEN'")
        token = fields[-1]
        problem = token_problem(token)
        if problem:
            raise ConfigError(str(path), where, f"token {problem}")
        if token in seen:
            raise ConfigError(str(path), where, f"token already listed on line {seen[token]}")
        seen[token] = number
        if len(fields) == 2:
            if not _TOKEN_NAME.fullmatch(fields[0]):
                raise ConfigError(
                    str(path), where, f"name {fields[0]!r}: use 1-64 of A-Z a-z 0-9 . _ @ -"
                )
            entries.append(TokenEntry(token, fields[0]))
        else:
            entries.append(TokenEntry.unnamed(token))
    return entries


def ensure_default_token(auth: AuthConfig) -> str | None:
    """Generate a token on first start when no credential is configured.

    When the configuration names no token and no client CA (and is not
    anonymous), and the tokens file does not exist yet, write a fresh random
    token to it (mode 0600) and return it so the relay can print it once.
    Returns ``None`` when nothing was generated.
    """
    if auth.allow_anonymous or auth.tokens or auth.client_ca_file is not None:
        return None
    path = auth.tokens_file
    if path is None or path.exists():
        return None
    token = secrets.token_urlsafe(32)  # 43 chars of [A-Za-z0-9_-]: a valid b64token
    path.parent.mkdir(mode=0o700, parents=True, exist_ok=True)
    content = (
        "# masque-relay bearer tokens: 'NAME TOKEN' or 'TOKEN' per line, '#' comments.\n"
        f"default {token}\n"
    )
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    with os.fdopen(fd, "w", encoding="utf-8") as f:
        os.fchmod(f.fileno(), 0o600)
        f.write(content)
    return token


# -- client certificates ---------------------------------------------------------------


def _check_client_eku(_policy: Policy, _cert: x509.Certificate, ext: object) -> None:
    if ext is None:
        return
    assert isinstance(ext, x509.ExtendedKeyUsage)
    if (
        ExtendedKeyUsageOID.CLIENT_AUTH not in ext
        and ExtendedKeyUsageOID.ANY_EXTENDED_KEY_USAGE not in ext
    ):
        raise ValueError("extended key usage does not allow client authentication")


def _check_not_ca(_policy: Policy, _cert: x509.Certificate, ext: object) -> None:
    if ext is not None:
        assert isinstance(ext, x509.BasicConstraints)
        if ext.ca:
            raise ValueError("a CA certificate cannot identify a client")


def _check_ca_key_usage(_policy: Policy, _cert: x509.Certificate, ext: object) -> None:
    if ext is not None:
        assert isinstance(ext, x509.KeyUsage)
        if not ext.key_cert_sign:
            raise ValueError("CA key usage does not allow signing certificates")


# Private CAs rarely follow the Web PKI profile (SAN and AKI on every leaf,
# keyUsage on every CA), so the extension policies are relaxed to what matters
# for a VPN client: a CA must be a CA (basicConstraints, enforced by the
# library too), a leaf must not be one, and an EKU, when present, must allow
# clientAuth. Signatures, validity dates, path length and unknown critical
# extensions are always checked.
_CA_POLICY = (
    ExtensionPolicy.permit_all()
    .require_present(x509.BasicConstraints, Criticality.AGNOSTIC, None)
    .may_be_present(x509.KeyUsage, Criticality.AGNOSTIC, _check_ca_key_usage)
)
_EE_POLICY = (
    ExtensionPolicy.permit_all()
    .may_be_present(x509.ExtendedKeyUsage, Criticality.AGNOSTIC, _check_client_eku)
    .may_be_present(x509.BasicConstraints, Criticality.AGNOSTIC, _check_not_ca)
)


class ClientCertificateVerifier:
    """Checks client certificates against a set of trusted CAs (what aioquic does not).

    Verifies the signature chain up to one of the CAs, every certificate's
    validity dates at ``now``, CA constraints, and the leaf's purpose.
    """

    def __init__(self, cas: Sequence[x509.Certificate], *, max_chain_depth: int = 4) -> None:
        if not cas:
            raise ValueError("at least one CA certificate is needed")
        self._store = Store(list(cas))
        self._depth = max_chain_depth

    @classmethod
    def from_pem_file(cls, path: Path) -> ClientCertificateVerifier:
        """Load a PEM bundle of CA certificates (:class:`ConfigError` if unusable)."""
        try:
            data = path.read_bytes()
        except OSError as exc:
            raise ConfigError(str(path), None, f"cannot read client CA: {exc.strerror}") from exc
        try:
            cas = x509.load_pem_x509_certificates(data)
        except ValueError as exc:
            raise ConfigError(str(path), None, f"no PEM certificate in client CA: {exc}") from exc
        for cert in cas:
            try:
                bc = cert.extensions.get_extension_for_class(x509.BasicConstraints).value
            except x509.ExtensionNotFound:
                bc = None
            if bc is None or not bc.ca:
                raise ConfigError(
                    str(path),
                    None,
                    f"{cert.subject.rfc4514_string()!r} is not a CA certificate "
                    "(basicConstraints CA:TRUE missing)",
                )
        return cls(cas)

    def verify(
        self,
        leaf: CertificateInput,
        intermediates: Sequence[CertificateInput] = (),
        *,
        now: dt.datetime | None = None,
    ) -> str:
        """The client's identity (``cert:SUBJECT``); :class:`ClientCertificateError` if refused."""
        try:
            leaf_cert = _as_certificate(leaf)
            chain = [_as_certificate(c) for c in intermediates]
        except ValueError:
            raise ClientCertificateError("client certificate could not be parsed") from None
        verifier = (
            PolicyBuilder()
            .store(self._store)
            .time(now or dt.datetime.now(dt.UTC))
            .max_chain_depth(self._depth)
            .extension_policies(ca_policy=_CA_POLICY, ee_policy=_EE_POLICY)
            .build_client_verifier()
        )
        try:
            verifier.verify(leaf_cert, chain)
        except VerificationError as exc:
            message = str(exc).split(" (encountered processing", 1)[0]
            raise ClientCertificateError(message[:200]) from None
        subject = leaf_cert.subject.rfc4514_string()
        if not subject:
            subject = "sha256-" + leaf_cert.fingerprint(hashes.SHA256()).hex()[:16]
        return f"cert:{subject}"


def _as_certificate(value: CertificateInput) -> x509.Certificate:
    if isinstance(value, x509.Certificate):
        return value
    return x509.load_der_x509_certificate(value)


# -- the authenticator -----------------------------------------------------------------


def _challenge(error: str | None = None) -> str:
    if error is None:
        return f'Bearer realm="{REALM}"'
    return f'Bearer realm="{REALM}", error="{error}"'


_MISSING = AuthResult(
    False, 401, "no credentials", "missing-credentials", www_authenticate=_challenge()
)
_OTHER = AuthResult(
    False,
    401,
    "unsupported authorization scheme",
    "unsupported-scheme",
    www_authenticate=_challenge(),
)
_MALFORMED_RESULT = AuthResult(
    False,
    400,
    "malformed authorization field",
    "malformed-authorization",
    www_authenticate=_challenge("invalid_request"),
)
_INVALID = AuthResult(
    False, 401, "invalid token", "invalid-token", www_authenticate=_challenge("invalid_token")
)
_CERT_REQUIRED = AuthResult(False, 403, "client certificate required", "client-cert-required")
_ANONYMOUS = AuthResult(True, 200, "anonymous access", "anonymous", identity="anonymous")


class Authenticator:
    """Decides, per CONNECT-IP request, whether the client may open a tunnel.

    Build it with :meth:`from_config`; it is immutable afterwards (rebuild it to
    reload tokens) and safe to share between sessions.
    """

    def __init__(
        self,
        tokens: Iterable[TokenEntry | str] = (),
        *,
        client_verifier: ClientCertificateVerifier | None = None,
        require_client_cert: bool = False,
        allow_anonymous: bool = False,
    ) -> None:
        entries = [TokenEntry.unnamed(t) if isinstance(t, str) else t for t in tokens]
        if allow_anonymous and (entries or client_verifier is not None):
            raise ValueError("allow_anonymous cannot be combined with tokens or a client CA")
        if require_client_cert and client_verifier is None:
            raise ValueError("require_client_cert needs a client CA")
        if not allow_anonymous and not entries and client_verifier is None:
            raise ValueError("no token and no client CA: every client would be refused")
        self._digests = tuple(hashlib.sha256(e.token.encode("ascii")).digest() for e in entries)
        self._accepted = tuple(
            AuthResult(True, 200, "valid token", "token", identity=f"token:{e.name}")
            for e in entries
        )
        self._names = tuple(e.name for e in entries)
        self._verifier = client_verifier
        self._require_cert = require_client_cert
        self._anonymous = allow_anonymous

    @classmethod
    def from_config(cls, auth: AuthConfig) -> Authenticator:
        """Read the tokens file and client CA named by ``auth``.

        A missing tokens file is an error only if it was named explicitly.
        Raises :class:`ConfigError` when nothing would let any client in.
        """
        entries = [TokenEntry.unnamed(t) for t in auth.tokens]
        path = auth.tokens_file
        if path is not None and (auth.tokens_file_required or path.exists()):
            entries += read_tokens_file(path)
        unique = list({e.token: e for e in entries}.values())
        verifier = None
        if auth.client_ca_file is not None:
            verifier = ClientCertificateVerifier.from_pem_file(auth.client_ca_file)
        try:
            return cls(
                unique,
                client_verifier=verifier,
                require_client_cert=auth.require_client_cert,
                allow_anonymous=auth.allow_anonymous,
            )
        except ValueError as exc:
            source = str(path) if path is not None else "<config>"
            raise ConfigError(source, "auth", str(exc)) from None

    @property
    def requests_client_certificate(self) -> bool:
        """Whether the TLS server should send a CertificateRequest (a client CA is set)."""
        return self._verifier is not None

    @property
    def token_names(self) -> tuple[str, ...]:
        """Names of the accepted tokens, for logs (never the tokens)."""
        return self._names

    def authenticate(
        self,
        authorization: str | bytes | None,
        peer_cert: CertificateInput | None = None,
        peer_chain: Sequence[CertificateInput] = (),
        *,
        now: dt.datetime | None = None,
    ) -> AuthResult:
        """Judge one request: its ``authorization`` value and the TLS client certificate.

        ``peer_cert``/``peer_chain`` are what :func:`peer_certificates` returns
        (``x509.Certificate`` or DER bytes); ``now`` is for tests.
        """
        if self._anonymous:
            return _ANONYMOUS

        cert_identity: str | None = None
        if peer_cert is not None and self._verifier is not None:
            try:
                cert_identity = self._verifier.verify(peer_cert, peer_chain, now=now)
            except ClientCertificateError as exc:
                return AuthResult(
                    False, 403, f"client certificate rejected: {exc}", "client-cert-rejected"
                )
        if cert_identity is None and (self._require_cert or not self._digests):
            return _CERT_REQUIRED
        if cert_identity is not None and not (self._require_cert and self._digests):
            return AuthResult(True, 200, "verified client certificate", "cert", cert_identity)

        # A token is needed: no certificate, or certificate and token both required.
        if authorization is None:
            return _MISSING
        kind, token = _classify(authorization)
        if kind == _OTHER_SCHEME:
            return _OTHER
        if kind == _MALFORMED:
            return _MALFORMED_RESULT
        index = self._match(token)
        if index < 0:
            return _INVALID
        accepted = self._accepted[index]
        if cert_identity is None:
            return accepted
        return AuthResult(
            True,
            200,
            "verified client certificate and token",
            "cert+token",
            f"{cert_identity} {accepted.identity}",
        )

    def _match(self, token: str) -> int:
        """Index of the matching token or -1, comparing against every digest."""
        digest = hashlib.sha256(token.encode("ascii")).digest()
        found = -1
        for i, reference in enumerate(self._digests):
            if hmac.compare_digest(reference, digest):
                found = i
        return found


# -- aioquic access (private attributes, pinned by tests for aioquic 1.7.2) ---------


def request_client_certificate(connection: QuicConnection) -> None:
    """Make a server-side aioquic connection send a TLS CertificateRequest.

    Call it right after creating the ``QuicConnection`` (for ``QuicServer``: in
    the ``create_protocol`` factory), before the first datagram is received:
    the TLS context only exists from the first Initial packet on, and the
    request must be decided before the ClientHello is processed, so this wraps
    the connection's ``_initialize`` to set ``tls._request_client_certificate``.
    """
    if connection._is_client:
        raise ValueError("only a server connection can request a client certificate")
    initialize = connection._initialize

    def _initialize_and_request(peer_cid: bytes) -> None:
        initialize(peer_cid)
        connection.tls._request_client_certificate = True

    setattr(connection, "_initialize", _initialize_and_request)  # noqa: B010


def peer_certificates(
    connection: QuicConnection,
) -> tuple[x509.Certificate | None, list[x509.Certificate]]:
    """The certificate the peer sent in the handshake and the rest of its chain.

    ``(None, [])`` before the handshake, when the client sent no certificate,
    or when none was requested.
    """
    tls = getattr(connection, "tls", None)
    if tls is None:
        return None, []
    return tls._peer_certificate, list(tls._peer_certificate_chain)
