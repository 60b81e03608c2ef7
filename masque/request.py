"""The CONNECT-IP extended CONNECT request (RFC 9484 §4.4, RFC 9220, RFC 8441).

Client side: :func:`build_connect_ip_headers` produces the HTTP/3 header list.
Relay side: :func:`validate_connect_ip_request` checks a received header list
and returns a :class:`ConnectIpRequest`, or raises
:class:`~masque.errors.RequestError` carrying the status to answer and a
distinct ``rule`` per failure.

Status codes (each decision cites the text that drives it):

===== ============================== =================================================
400   malformed request              RFC 9114 §4.1.2/§4.2/§4.3.1 (field syntax,
                                     pseudo-header rules), RFC 9484 §4.4 ("a request
                                     that does not conform ... is malformed"),
                                     RFC 9297 §3.2 (content fields with capsules)
405   method other than CONNECT      RFC 9110 §15.5.6; the response MUST carry
      (no ``:protocol``)             ``allow: CONNECT``
400   ``:protocol`` on a non-CONNECT RFC 8441 §4 / RFC 9220 define ``:protocol`` only
                                     for extended CONNECT; elsewhere it is an invalid
                                     pseudo-header (RFC 9114 §4.3.1)
501   unknown ``:protocol`` value    RFC 9220 §3 ("SHOULD respond ... 501")
421   ``:authority`` not ours        RFC 9110 §15.5.20 (not authoritative)
404   ``:path`` not from template    RFC 9110 §15.5.5
414   ``:path`` too long             RFC 9110 §15.5.15
===== ============================== =================================================
"""

from __future__ import annotations

import base64
import binascii
import string
from collections.abc import Collection, Iterable, Sequence
from dataclasses import dataclass
from typing import Final, TypeAlias

from masque.errors import RequestError
from masque.template import (
    TARGET_ANY,
    IpprotoLike,
    Scope,
    TargetLike,
    UriTemplate,
    split_authority,
)

__all__ = [
    "CONNECT_IP_PROTOCOL",
    "ConnectIpRequest",
    "Headers",
    "build_connect_ip_headers",
    "build_connect_ip_response_headers",
    "parse_capsule_protocol",
    "validate_connect_ip_request",
]

Headers: TypeAlias = list[tuple[bytes, bytes]]

CONNECT_IP_PROTOCOL: Final = "connect-ip"  # RFC 9484 §12.1 upgrade token

_REQUEST_PSEUDO_HEADERS: Final = frozenset(
    {b":method", b":scheme", b":authority", b":path", b":protocol"}
)
# RFC 9114 §4.2: connection-specific fields make a message malformed.
_CONNECTION_SPECIFIC: Final = frozenset(
    {b"connection", b"keep-alive", b"proxy-connection", b"transfer-encoding", b"upgrade"}
)
# RFC 9297 §3.2: the Capsule Protocol MUST NOT be used with these.
_CONTENT_FIELDS: Final = frozenset({b"content-length", b"content-type"})
# Fields this module sets itself in a request; callers may not add them again.
_BUILT_FIELDS: Final = frozenset({b"capsule-protocol", b"authorization", b"host"})
# RFC 9110 §5.6.2 tchar, lowercase only (RFC 9114 §4.2 forbids uppercase names).
_NAME_BYTES: Final = frozenset(
    (string.ascii_lowercase + string.digits + "!#$%&'*+-.^_`|~").encode()
)
_UPPER_BYTES: Final = frozenset(string.ascii_uppercase.encode())
# ":protocol" carries an upgrade token, a token (RFC 9110 §5.6.2) compared exactly.
_TOKEN_BYTES: Final = _NAME_BYTES | _UPPER_BYTES
_FORBIDDEN_VALUE_BYTES: Final = frozenset(b"\x00\r\n")
_OWS: Final = frozenset(b" \t")


@dataclass(frozen=True, slots=True)
class ConnectIpRequest:
    """A CONNECT-IP request that passed :func:`validate_connect_ip_request`."""

    scope: Scope
    """Requested target and IP protocol (RFC 9484 §4.6)."""
    authority: str
    """``:authority`` as sent by the client."""
    path: str
    """``:path`` as sent by the client."""
    authorization: str | None
    """Value of the single ``authorization`` field, or ``None`` if absent."""
    capsule_protocol: bool
    """``True`` if ``capsule-protocol`` was a valid ``?1`` (RFC 9297 §3.4)."""
    headers: tuple[tuple[bytes, bytes], ...]
    """All received header fields, unmodified and in order."""


# ---------------------------------------------------------------------- client side


def build_connect_ip_headers(
    template: UriTemplate | str,
    target: TargetLike = TARGET_ANY,
    ipproto: IpprotoLike = None,
    *,
    authority: str | None = None,
    authorization: str | None = None,
    extra_headers: Iterable[tuple[bytes, bytes]] = (),
) -> Headers:
    """Build the HTTP/3 extended CONNECT header list for a CONNECT-IP request.

    ``template`` is a :class:`UriTemplate` or its text; an already expanded URI
    is a template without variables and works too (with the default wildcard
    scope). ``authority`` overrides the template's (e.g. to add a port);
    ``authorization`` becomes the ``authorization`` field. ``extra_headers``
    are appended after the fields built here.

    Raises :class:`~masque.errors.TemplateError` for a bad template text and
    ``ValueError`` for a scope the template cannot express, a bad authority, or
    header values that are not ASCII or contain CR/LF/NUL.
    """
    tpl = template if isinstance(template, UriTemplate) else UriTemplate.parse(template)
    path = tpl.expand(target, ipproto)
    if authority is None:
        authority = tpl.authority
    else:
        split_authority(authority)  # raises ValueError with the reason
    headers: Headers = [
        (b":method", b"CONNECT"),
        (b":protocol", CONNECT_IP_PROTOCOL.encode()),
        (b":scheme", tpl.scheme.encode()),
        (b":authority", authority.encode("ascii")),
        (b":path", path.encode("ascii")),
        # RFC 9297 §3.4: SHOULD be sent; some relays refuse requests without it.
        (b"capsule-protocol", b"?1"),
    ]
    if authorization is not None:
        headers.append((b"authorization", _client_value("authorization", authorization)))
    for name, value in extra_headers:
        _check_extra_header(name, value)
        headers.append((name, value))
    return headers


def _client_value(name: str, value: str) -> bytes:
    try:
        raw = value.encode("ascii")
    except UnicodeEncodeError:
        raise ValueError(f"{name} value must be ASCII") from None
    _check_client_value(name.encode(), raw)
    return raw


def _check_client_value(name: bytes, value: bytes) -> None:
    # A CR or LF here would let a configured token inject header fields.
    if _FORBIDDEN_VALUE_BYTES.intersection(value) or (
        value and (value[0] in _OWS or value[-1] in _OWS)
    ):
        raise ValueError(
            f"{name.decode(errors='replace')} value has CR, LF, NUL or edge whitespace"
        )


def _check_extra_header(name: bytes, value: bytes) -> None:
    if not isinstance(name, bytes) or not isinstance(value, bytes):
        raise TypeError("extra_headers must be (bytes, bytes) pairs")
    if not name or not _NAME_BYTES.issuperset(name):
        raise ValueError(f"extra header name {name!r} is not a lowercase token")
    if (
        name in _BUILT_FIELDS
        or name in _CONNECTION_SPECIFIC
        or name in _CONTENT_FIELDS
        or name == b"te"
    ):
        raise ValueError(f"extra header {name!r} is set by this module or forbidden here")
    _check_client_value(name, value)


# ----------------------------------------------------------------------- relay side


def validate_connect_ip_request(
    headers: Sequence[tuple[bytes, bytes]],
    template: UriTemplate,
    *,
    authorities: Collection[str] | None = None,
    require_capsule_protocol: bool = True,
) -> ConnectIpRequest:
    """Validate a received CONNECT-IP request (RFC 9484 §4.4) and return it.

    ``headers`` is the list aioquic delivers (``HeadersReceived.headers``).
    ``authorities``, when given, lists the ``host[:port]`` values this relay
    answers for; others get 421. Host comparison ignores case and a missing port
    means 443. ``require_capsule_protocol`` refuses requests without
    ``capsule-protocol: ?1``; RFC 9297 §3.4 only says clients SHOULD send it, so
    an operator may turn this off for clients that omit it.

    Checks run in this order, so the first failure decides the answer: field
    syntax and pseudo-header structure, ``:method``, ``:protocol``, ``:scheme``,
    ``:authority``, ``capsule-protocol``, ``authorization``, then ``:path``
    against the template (so 404 means "a valid CONNECT-IP request, unknown
    path"). Rules raised here, all with status 400 unless noted:

    ``invalid-header-name``, ``uppercase-header-name``, ``invalid-header-value``,
    ``pseudo-header-after-regular``, ``unknown-pseudo-header``,
    ``duplicate-pseudo-header``, ``connection-specific-header``, ``invalid-te``,
    ``content-with-capsule-protocol``, ``missing-method``,
    ``method-not-allowed`` (405; answer with ``allow: CONNECT``),
    ``protocol-without-connect``, ``missing-protocol``, ``invalid-protocol``,
    ``unsupported-protocol`` (501), ``missing-scheme``, ``invalid-scheme``,
    ``missing-authority``, ``invalid-authority``, ``host-authority-mismatch``,
    ``misdirected-authority`` (421), ``missing-capsule-protocol``,
    ``invalid-capsule-protocol``, ``capsule-protocol-false``,
    ``duplicate-authorization``, ``missing-path``; and those of
    :meth:`UriTemplate.match` (404, 414, 400).
    """
    pseudo, fields = _split_fields(headers)

    method = pseudo.get(b":method")
    protocol = pseudo.get(b":protocol")
    if method is None:
        raise _bad("request has no :method", "missing-method")
    if method != b"CONNECT":
        if protocol is not None:
            raise _bad(
                f":protocol is only defined for CONNECT, not {_show(method)}",
                "protocol-without-connect",
            )
        raise RequestError(
            f"method {_show(method)} is not allowed here; CONNECT-IP needs CONNECT",
            http_status=405,
            rule="method-not-allowed",
        )
    if protocol is None:
        raise _bad(
            "CONNECT without :protocol; CONNECT-IP needs :protocol connect-ip", "missing-protocol"
        )
    if not protocol or not _TOKEN_BYTES.issuperset(protocol):
        raise _bad(f":protocol {_show(protocol)} is not a token", "invalid-protocol")
    if protocol != CONNECT_IP_PROTOCOL.encode():
        raise RequestError(
            f":protocol {_show(protocol)} is not supported (only {CONNECT_IP_PROTOCOL})",
            http_status=501,
            rule="unsupported-protocol",
        )

    scheme = pseudo.get(b":scheme")
    if not scheme:
        raise _bad("extended CONNECT without :scheme", "missing-scheme")
    if scheme != template.scheme.encode():
        raise _bad(
            f":scheme is {_show(scheme)}; CONNECT-IP needs {template.scheme}", "invalid-scheme"
        )

    authority = _check_authority(pseudo.get(b":authority"), fields.get(b"host"), authorities)

    capsule_protocol = parse_capsule_protocol(fields.get(b"capsule-protocol", []))
    if require_capsule_protocol and not capsule_protocol:
        _refuse_capsule_protocol(fields.get(b"capsule-protocol", []))

    auth_values = fields.get(b"authorization", [])
    if len(auth_values) > 1:
        # RFC 9110 §11.6.2: Authorization holds one credentials value, not a list;
        # two lines would leave the relay guessing which one to check.
        raise _bad("more than one authorization field", "duplicate-authorization")
    authorization = _ascii(auth_values[0], "authorization") if auth_values else None

    raw_path = pseudo.get(b":path")
    if not raw_path:
        raise _bad("extended CONNECT without :path", "missing-path")
    scope = template.match(raw_path)
    return ConnectIpRequest(
        scope=scope,
        authority=authority,
        path=_ascii(raw_path, ":path"),
        authorization=authorization,
        capsule_protocol=capsule_protocol,
        headers=tuple(headers),
    )


def build_connect_ip_response_headers(status: int) -> Headers:
    """Header list for the relay's response with ``status``.

    A 2xx response carries ``capsule-protocol: ?1`` (RFC 9484 §4.5, RFC 9297
    §3.4); any other status MUST NOT (RFC 9297 §3.4). A 405 carries
    ``allow: CONNECT`` (RFC 9110 §15.5.6 requires an Allow field).
    """
    if not 200 <= status <= 599 or status == 101:
        raise ValueError(f"status {status} is not a final HTTP/3 status")
    headers: Headers = [(b":status", str(status).encode())]
    if 200 <= status <= 299:
        headers.append((b"capsule-protocol", b"?1"))
    elif status == 405:
        headers.append((b"allow", b"CONNECT"))
    return headers


def _bad(message: str, rule: str) -> RequestError:
    return RequestError(message, http_status=400, rule=rule)


def _show(value: bytes) -> str:
    # Peer bytes go into messages and logs: printable, short.
    text = value[:64].decode("ascii", errors="backslashreplace")
    return repr(text + ("..." if len(value) > 64 else ""))


def _ascii(value: bytes, name: str) -> str:
    try:
        return value.decode("ascii")
    except UnicodeDecodeError:
        raise _bad(f"{name} value is not ASCII", "invalid-header-value") from None


def _split_fields(
    headers: Sequence[tuple[bytes, bytes]],
) -> tuple[dict[bytes, bytes], dict[bytes, list[bytes]]]:
    """Check field syntax (RFC 9114 §4.2, §4.3.1); return pseudo-headers and fields."""
    pseudo: dict[bytes, bytes] = {}
    fields: dict[bytes, list[bytes]] = {}
    for name, value in headers:
        if not isinstance(name, bytes) or not isinstance(value, bytes):
            raise TypeError("headers must be (bytes, bytes) pairs")
        is_pseudo = name.startswith(b":")
        bare = name[1:] if is_pseudo else name
        if _UPPER_BYTES.intersection(bare):
            raise _bad(f"header name {_show(name)} has uppercase letters", "uppercase-header-name")
        if not bare or not _NAME_BYTES.issuperset(bare):
            raise _bad(f"header name {_show(name)} is not a valid token", "invalid-header-name")
        if _FORBIDDEN_VALUE_BYTES.intersection(value) or (
            value and (value[0] in _OWS or value[-1] in _OWS)
        ):
            raise _bad(
                f"header {_show(name)} value has CR, LF, NUL or edge whitespace",
                "invalid-header-value",
            )
        if is_pseudo:
            if fields:
                raise _bad(
                    f"pseudo-header {_show(name)} after regular fields",
                    "pseudo-header-after-regular",
                )
            if name not in _REQUEST_PSEUDO_HEADERS:
                raise _bad(
                    f"pseudo-header {_show(name)} is not defined for requests",
                    "unknown-pseudo-header",
                )
            if name in pseudo:
                raise _bad(f"pseudo-header {_show(name)} appears twice", "duplicate-pseudo-header")
            pseudo[name] = value
            continue
        if name in _CONNECTION_SPECIFIC:
            raise _bad(
                f"connection-specific field {_show(name)} in HTTP/3", "connection-specific-header"
            )
        if name == b"te" and value.lower() != b"trailers":
            raise _bad("te may only be 'trailers' (RFC 9114 §4.2)", "invalid-te")
        if name in _CONTENT_FIELDS:
            raise _bad(
                f"{_show(name)} is not allowed with the Capsule Protocol (RFC 9297 §3.2)",
                "content-with-capsule-protocol",
            )
        fields.setdefault(name, []).append(value)
    return pseudo, fields


def _check_authority(
    authority_raw: bytes | None,
    host_values: list[bytes] | None,
    authorities: Collection[str] | None,
) -> str:
    if not authority_raw:
        raise _bad("extended CONNECT without :authority (RFC 9484 §4.4)", "missing-authority")
    authority = _ascii(authority_raw, ":authority")
    try:
        host, port = split_authority(authority)
    except ValueError as exc:
        raise _bad(f":authority: {exc}", "invalid-authority") from None
    # RFC 9114 §4.3.1: if Host is also present it MUST equal :authority.
    if host_values is not None and host_values != [authority_raw]:
        raise _bad("host field differs from :authority", "host-authority-mismatch")
    if authorities is not None:
        allowed = {_normalize_authority(a) for a in authorities}
        if (host, port) not in allowed:
            raise RequestError(
                f":authority {authority!r} is not served here",
                http_status=421,
                rule="misdirected-authority",
            )
    return authority


def _normalize_authority(authority: str) -> tuple[str, int]:
    try:
        return split_authority(authority)
    except ValueError as exc:
        # Configuration, not peer input: a programming/config error.
        raise ValueError(f"configured authority {authority!r}: {exc}") from None


def _refuse_capsule_protocol(values: list[bytes]) -> None:
    if not values:
        raise _bad("capsule-protocol field is missing (need ?1)", "missing-capsule-protocol")
    item = _parse_sf_item(b", ".join(values))
    if item is False:
        raise _bad(
            "capsule-protocol is ?0; CONNECT-IP uses the Capsule Protocol", "capsule-protocol-false"
        )
    raise _bad(
        "capsule-protocol is not a structured-field Boolean (RFC 9297 §3.4)",
        "invalid-capsule-protocol",
    )


# ---------------------------------------------------------- RFC 8941 Item parsing


def parse_capsule_protocol(values: Sequence[bytes]) -> bool:
    """Interpret ``capsule-protocol`` field lines per RFC 9297 §3.4 and RFC 8941.

    The lines are combined with ``", "`` (RFC 8941 §4.2) and parsed as an Item;
    parameters are ignored. Returns ``True`` only for Boolean true; false, an
    absent field, a non-Boolean or a parse failure all mean "not in use", which
    is why two lines (a List once combined) give ``False``.
    """
    if not values:
        return False
    return _parse_sf_item(b", ".join(values)) is True


class _SfToken(str):
    """RFC 8941 Token, kept distinct from String."""

    __slots__ = ()


_BareItem: TypeAlias = int | float | str | bytes | bool
_SF_TCHAR: Final = frozenset(string.ascii_letters + string.digits + "!#$%&'*+-.^_`|~")
_SF_KEY_FIRST: Final = frozenset(string.ascii_lowercase + "*")
_SF_KEY_REST: Final = frozenset(string.ascii_lowercase + string.digits + "_-.*")
_SF_BASE64: Final = frozenset(string.ascii_letters + string.digits + "+/=")


class _SfError(ValueError):
    pass


def _parse_sf_item(raw: bytes) -> _BareItem | None:
    """Parse an Item Structured Field (RFC 8941 §4.2); return its bare item or ``None``.

    Follows the §4.2 algorithms: leading and trailing SP are discarded,
    parameters are parsed and dropped, anything left over fails parsing.
    """
    try:
        text = raw.decode("ascii")
    except UnicodeDecodeError:
        return None
    parser = _SfParser(text.lstrip(" "))
    try:
        item = parser.bare_item()
        parser.parameters()
    except _SfError:
        return None
    if parser.rest().lstrip(" "):
        return None
    return item


class _SfParser:
    """Cursor over an ASCII string implementing RFC 8941 §4.2.3-§4.2.8."""

    __slots__ = ("_pos", "_text")

    def __init__(self, text: str) -> None:
        self._text = text
        self._pos = 0

    def rest(self) -> str:
        return self._text[self._pos :]

    def _peek(self) -> str:
        return self._text[self._pos] if self._pos < len(self._text) else ""

    def bare_item(self) -> _BareItem:
        ch = self._peek()
        if ch == "-" or ch.isdigit():
            return self._number()
        if ch == '"':
            return self._string()
        if ch == ":":
            return self._byte_sequence()
        if ch == "?":
            return self._boolean()
        if ch.isalpha() or ch == "*":
            return self._token()
        raise _SfError("unrecognised bare item")

    def parameters(self) -> dict[str, _BareItem]:
        params: dict[str, _BareItem] = {}
        while self._peek() == ";":
            self._pos += 1
            while self._peek() == " ":
                self._pos += 1
            key = self._key()
            value: _BareItem = True
            if self._peek() == "=":
                self._pos += 1
                value = self.bare_item()
            params[key] = value
        return params

    def _key(self) -> str:
        if self._peek() not in _SF_KEY_FIRST or not self._peek():
            raise _SfError("bad key")
        start = self._pos
        while self._peek() and self._peek() in _SF_KEY_REST:
            self._pos += 1
        return self._text[start : self._pos]

    def _number(self) -> int | float:
        sign = 1
        if self._peek() == "-":
            sign = -1
            self._pos += 1
        if not self._peek().isdigit():
            raise _SfError("number without digits")
        start = self._pos
        is_decimal = False
        while True:
            ch = self._peek()
            if ch.isdigit():
                self._pos += 1
            elif ch == "." and not is_decimal:
                if self._pos - start > 12:
                    raise _SfError("decimal integer part too long")
                is_decimal = True
                self._pos += 1
            else:
                break
            length = self._pos - start
            if (not is_decimal and length > 15) or (is_decimal and length > 16):
                raise _SfError("number too long")
        number = self._text[start : self._pos]
        if not is_decimal:
            return sign * int(number)
        frac = number.partition(".")[2]
        if not frac or len(frac) > 3:
            raise _SfError("bad decimal fraction")
        return sign * float(number)

    def _string(self) -> str:
        self._pos += 1  # opening DQUOTE
        out: list[str] = []
        while self._pos < len(self._text):
            ch = self._text[self._pos]
            self._pos += 1
            if ch == "\\":
                nxt = self._peek()
                if nxt not in ('"', "\\") or not nxt:
                    raise _SfError("bad escape")
                out.append(nxt)
                self._pos += 1
            elif ch == '"':
                return "".join(out)
            elif not " " <= ch <= "~":
                raise _SfError("control character in string")
            else:
                out.append(ch)
        raise _SfError("unterminated string")

    def _token(self) -> _SfToken:
        start = self._pos
        self._pos += 1
        while self._peek() and (self._peek() in _SF_TCHAR or self._peek() in ":/"):
            self._pos += 1
        return _SfToken(self._text[start : self._pos])

    def _byte_sequence(self) -> bytes:
        end = self._text.find(":", self._pos + 1)
        if end == -1:
            raise _SfError("unterminated byte sequence")
        content = self._text[self._pos + 1 : end]
        self._pos = end + 1
        if not _SF_BASE64.issuperset(content):
            raise _SfError("bad base64 character")
        try:
            # §4.2.7: synthesise missing padding rather than fail on it.
            return base64.b64decode(content.rstrip("=") + "=" * (-len(content.rstrip("=")) % 4))
        except (binascii.Error, ValueError):
            raise _SfError("bad base64") from None

    def _boolean(self) -> bool:
        self._pos += 1  # "?"
        ch = self._peek()
        if ch == "1":
            self._pos += 1
            return True
        if ch == "0":
            self._pos += 1
            return False
        raise _SfError("bad boolean")
