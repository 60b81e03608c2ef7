"""CONNECT-IP URI templates (RFC 9484 §3) and request scopes (RFC 9484 §4.6).

An operator configures the relay with one absolute ``https`` URI template; the
client expands it into the ``:path`` of its extended CONNECT request and the
relay matches that ``:path`` back against the same template to recover the
requested scope.

Supported RFC 6570 subset, chosen so that matching is unambiguous:

- simple expressions with one variable, ``{target}`` / ``{ipproto}``, anywhere
  in the path or query (``/ip/{target}/{ipproto}/``, ``?t={target}&i={ipproto}``);
- form-style query expressions ``{?target,ipproto}`` and continuations
  ``{&target,ipproto}``, which must end the template.

Rejected with :class:`~masque.errors.TemplateError`: the operators RFC 9484 §3
forbids (``+ # . / ;``), RFC 6570's reserved operators (``= , ! @ |``), level-4
modifiers (``:N``, ``*``), variables other than ``target`` and ``ipproto``, a
variable used twice, and two simple expressions with no literal between them.

Wire forms (RFC 9484 §4.6, Figure 6)::

    target  = IPv6prefix / IPv4prefix / reg-name / "*"
    ipproto = 1*3DIGIT / "*"

An IP prefix travels as ``address%2Flen`` with IPv6 colons as ``%3A``; an
address without ``/len`` is a single host (/32 or /128).
"""

from __future__ import annotations

import ipaddress
import re
import string
from dataclasses import dataclass
from typing import Final, TypeAlias

from masque.errors import RequestError, TemplateError

__all__ = [
    "DEFAULT_PATH_TEMPLATE",
    "MAX_PATH_LENGTH",
    "TARGET_ANY",
    "IPNetwork",
    "IpprotoLike",
    "Scope",
    "TargetAny",
    "TargetHostname",
    "TargetLike",
    "TargetPrefix",
    "TargetScope",
    "UriTemplate",
    "as_ipproto",
    "as_target",
    "format_target",
    "parse_ipproto",
    "parse_target",
    "split_authority",
]

IPNetwork: TypeAlias = ipaddress.IPv4Network | ipaddress.IPv6Network

# RFC 9484 §3: the default template, offered for clients that can only be
# configured with a host and a port.
DEFAULT_PATH_TEMPLATE: Final = "/.well-known/masque/ip/{target}/{ipproto}/"

# A valid request path is a few hundred bytes at most (a 253-byte hostname is the
# longest value). Refusing longer paths up front bounds the matcher's work;
# RFC 9110 §15.5.15 gives the status (414 URI Too Long).
MAX_PATH_LENGTH: Final = 8192

_HTTPS_DEFAULT_PORT: Final = 443
_VARIABLES: Final = frozenset({"target", "ipproto"})


# --------------------------------------------------------------------------- scopes


class _ScopeValueError(ValueError):
    """A target or ipproto value is malformed; ``rule`` labels why (metrics)."""

    def __init__(self, message: str, rule: str) -> None:
        super().__init__(message)
        self.rule = rule


@dataclass(frozen=True, slots=True)
class TargetAny:
    """The wildcard target ``*``: any host the relay allows (RFC 9484 §4.6)."""

    def __str__(self) -> str:
        return "*"


TARGET_ANY: Final = TargetAny()


@dataclass(frozen=True, slots=True)
class TargetPrefix:
    """A target IP prefix; a single host is a /32 or /128.

    ``network`` is an ``ipaddress`` network, whose constructor already refuses
    host bits set below the prefix length (RFC 9484 §4.6 requires them zero).
    """

    network: IPNetwork

    def __post_init__(self) -> None:
        if not isinstance(self.network, ipaddress.IPv4Network | ipaddress.IPv6Network):
            raise TypeError(
                f"TargetPrefix needs an IPv4Network or IPv6Network, not {self.network!r}"
            )

    @property
    def version(self) -> int:
        """IP version of the prefix: 4 or 6 (a prefix scopes a request to one version)."""
        return self.network.version

    def __str__(self) -> str:
        return self.network.with_prefixlen


@dataclass(frozen=True, slots=True)
class TargetHostname:
    """A target DNS name, canonical: lowercase, no trailing dot.

    The relay resolves it before answering (RFC 9484 §4.1). Build one from user
    input with :func:`parse_target`, which canonicalises; the constructor only
    accepts the canonical form so that equal scopes compare equal.
    """

    name: str

    def __post_init__(self) -> None:
        problem = _hostname_problem(self.name)
        if problem is not None:
            raise ValueError(f"invalid hostname {self.name!r}: {problem}")
        if self.name != self.name.lower():
            raise ValueError(f"hostname {self.name!r} is not lowercase; use parse_target()")

    def __str__(self) -> str:
        return self.name


TargetScope: TypeAlias = TargetAny | TargetPrefix | TargetHostname
TargetLike: TypeAlias = (
    TargetScope | IPNetwork | ipaddress.IPv4Address | ipaddress.IPv6Address | str
)
IpprotoLike: TypeAlias = int | str | None


@dataclass(frozen=True, slots=True)
class Scope:
    """What a CONNECT-IP request asks for (RFC 9484 §4.6).

    ``ipproto`` is ``None`` for "any protocol". Note that ``0`` is the IP protocol
    number 0 (HOPOPT), not "any": only ROUTE_ADVERTISEMENT gives 0 that meaning.
    ICMP is always allowed whatever ``ipproto`` says (RFC 9484 §4.6).
    """

    target: TargetScope = TARGET_ANY
    ipproto: int | None = None

    def __post_init__(self) -> None:
        if not isinstance(self.target, TargetAny | TargetPrefix | TargetHostname):
            raise TypeError(f"Scope.target must be a TargetScope, not {self.target!r}")
        if self.ipproto is not None and (
            isinstance(self.ipproto, bool)
            or not isinstance(self.ipproto, int)
            or not 0 <= self.ipproto <= 255
        ):
            raise ValueError(f"ipproto must be None or an int in 0..255, not {self.ipproto!r}")

    def __str__(self) -> str:
        proto = "*" if self.ipproto is None else str(self.ipproto)
        return f"target={self.target} ipproto={proto}"


def _hostname_problem(name: str) -> str | None:
    """Say what makes ``name`` (no trailing dot) an invalid DNS hostname, or ``None``.

    LDH labels (RFC 1123 §2.1): 1-63 letters, digits or hyphens, no hyphen at
    either end; 253 characters in all. The last label must not be all digits
    (RFC 3696 §2): otherwise a mistyped IPv4 literal such as ``192.0.2.256``
    would pass as a name and be sent to DNS.
    """
    if not name:
        return "empty"
    if len(name) > 253:
        return "longer than 253 characters"
    labels = name.split(".")
    for label in labels:
        if not label:
            return "empty label"
        if len(label) > 63:
            return f"label {label[:16]!r}... longer than 63 characters"
        if not all(c in _LDH for c in label):
            return f"label {label!r} has characters other than letters, digits and '-'"
        if label[0] == "-" or label[-1] == "-":
            return f"label {label!r} starts or ends with '-'"
    if labels[-1].isdigit():
        return "all-numeric top-level label (not a valid IPv4 address either)"
    return None


_LDH: Final = frozenset(string.ascii_letters + string.digits + "-")


def _parse_address(text: str, version: int) -> ipaddress.IPv4Address | ipaddress.IPv6Address:
    # ipaddress accepts IPv6 zone IDs ("fe80::1%eth0"); RFC 9484 §4.6 excludes
    # them, and a "%" left after percent-decoding can only be one.
    if "%" in text:
        raise _ScopeValueError(
            f"IPv6 zone identifiers are not supported in target {text!r}", "invalid-target"
        )
    try:
        if version == 4:
            return ipaddress.IPv4Address(text)
        return ipaddress.IPv6Address(text)
    except ValueError:
        raise _ScopeValueError(
            f"target {text!r} is not a valid IPv{version} address", "invalid-target"
        ) from None


def parse_target(text: str) -> TargetScope:
    """Parse a decoded ``target`` value: ``*``, ``addr``, ``addr/len`` or a hostname.

    Raises ``ValueError`` (with a ``rule`` attribute) when the value breaks
    RFC 9484 §4.6: empty, bad address or prefix length (``1*2DIGIT`` for IPv4,
    ``1*3DIGIT`` for IPv6, at most 32/128), host bits set below the prefix
    length, a zone identifier, or a hostname that is not LDH syntax. Hostnames
    are returned lowercase without a trailing dot.
    """
    if text == "":
        raise _ScopeValueError("target must not be empty (RFC 9484 §3)", "empty-variable")
    if text == "*":
        return TARGET_ANY
    addr_text, slash, len_text = text.partition("/")
    # Only IPv6 literals contain ":"; only IP literals carry "/len"; a value made
    # only of digits and dots is an IPv4 attempt, not a name (see _hostname_problem).
    if ":" in addr_text:
        version = 6
    elif slash or all(c in "0123456789." for c in addr_text):
        version = 4
    else:
        name = text[:-1] if text.endswith(".") else text
        problem = _hostname_problem(name)
        if problem is not None:
            raise _ScopeValueError(
                f"target {text!r} is not a valid hostname: {problem}", "invalid-target"
            )
        return TargetHostname(name.lower())
    address = _parse_address(addr_text, version)
    max_len = address.max_prefixlen
    if not slash:
        return TargetPrefix(ipaddress.ip_network(address))
    max_digits = 2 if version == 4 else 3
    if not (1 <= len(len_text) <= max_digits and len_text.isascii() and len_text.isdigit()):
        raise _ScopeValueError(
            f"prefix length {len_text!r} in target {text!r} is not 1-{max_digits} digits",
            "invalid-target",
        )
    prefix_len = int(len_text)
    if prefix_len > max_len:
        raise _ScopeValueError(
            f"prefix length {prefix_len} in target {text!r} exceeds {max_len}", "invalid-target"
        )
    try:
        network = ipaddress.ip_network((address, prefix_len), strict=True)
    except ValueError:
        raise _ScopeValueError(
            f"target {text!r} has host bits set below /{prefix_len} (RFC 9484 §4.6)",
            "target-host-bits-set",
        ) from None
    return TargetPrefix(network)


def parse_ipproto(text: str) -> int | None:
    """Parse a decoded ``ipproto`` value: ``*`` (``None``) or ``1*3DIGIT`` in 0..255.

    Leading zeros are accepted because the ABNF (``1*3DIGIT``) allows them.
    """
    if text == "":
        raise _ScopeValueError("ipproto must not be empty (RFC 9484 §3)", "empty-variable")
    if text == "*":
        return None
    if not (len(text) <= 3 and text.isascii() and text.isdigit()):
        raise _ScopeValueError(
            f"ipproto {text!r} is not '*' or a decimal number 0-255", "invalid-ipproto"
        )
    value = int(text)
    if value > 255:
        raise _ScopeValueError(f"ipproto {value} exceeds 255", "invalid-ipproto")
    return value


def as_target(value: TargetLike) -> TargetScope:
    """Convert what a caller may hold (address, network, string, scope) to a TargetScope."""
    if isinstance(value, TargetAny | TargetPrefix | TargetHostname):
        return value
    if isinstance(value, ipaddress.IPv4Network | ipaddress.IPv6Network):
        return TargetPrefix(value)
    if isinstance(value, ipaddress.IPv4Address | ipaddress.IPv6Address):
        return TargetPrefix(ipaddress.ip_network(value))
    if isinstance(value, str):
        return parse_target(value)
    raise TypeError(f"cannot use {value!r} as a CONNECT-IP target")


def as_ipproto(value: IpprotoLike) -> int | None:
    """Convert ``None``, ``"*"``, a decimal string or an int to ``int | None``."""
    if value is None:
        return None
    if isinstance(value, str):
        return parse_ipproto(value)
    if isinstance(value, bool) or not isinstance(value, int):
        raise TypeError(f"ipproto must be an int, a string or None, not {value!r}")
    if not 0 <= value <= 255:
        raise ValueError(f"ipproto {value} is outside 0..255")
    return value


def format_target(target: TargetScope) -> str:
    """Render a target as its decoded text: ``*``, ``addr`` (host), ``addr/len`` or a name.

    A full-length prefix is sent as the bare address, the form RFC 9484's own
    examples use and the one relays that only handle hosts understand.
    """
    if isinstance(target, TargetAny):
        return "*"
    if isinstance(target, TargetHostname):
        return target.name
    net = target.network
    if net.prefixlen == net.max_prefixlen:
        return str(net.network_address)
    return net.with_prefixlen


# ------------------------------------------------------------------ percent-coding

_UNRESERVED: Final = frozenset(string.ascii_letters + string.digits + "-._~")
# RFC 6570 would encode "*" as %2A, but RFC 9484's examples (Figures 2 and 4) send
# it raw and some relays compare the decoded-or-not value with "*". A raw "*" is
# a legal pchar and query character, so sending it raw works everywhere.
_EXPAND_SAFE: Final = _UNRESERVED | {"*"}
_HEXDIGITS: Final = frozenset(string.hexdigits)


def _pct_encode(text: str) -> str:
    """Encode every character outside unreserved (and ``*``) as %XX (RFC 6570 §3.2.1)."""
    out: list[str] = []
    for ch in text:
        if ch in _EXPAND_SAFE:
            out.append(ch)
        else:
            out.extend(f"%{b:02X}" for b in ch.encode("utf-8"))
    return "".join(out)


def _pct_decode(text: str) -> str:
    """Decode %XX escapes; malformed escapes or non-ASCII results are a 400."""
    if "%" not in text:
        return text
    out = bytearray()
    i = 0
    while i < len(text):
        ch = text[i]
        if ch == "%":
            hex2 = text[i + 1 : i + 3]
            if len(hex2) != 2 or not all(c in _HEXDIGITS for c in hex2):
                raise _ScopeValueError(
                    f"malformed percent-encoding in {_clip(text)!r}", "bad-percent-encoding"
                )
            out.append(int(hex2, 16))
            i += 3
        else:
            out.append(ord(ch))
            i += 1
    if not out.isascii():
        raise _ScopeValueError(
            f"percent-decoded value {_clip(text)!r} is not ASCII", "bad-percent-encoding"
        )
    return out.decode("ascii")


def _clip(text: str, limit: int = 96) -> str:
    # Peer-controlled text ends up in logs: keep messages short.
    return text if len(text) <= limit else text[:limit] + "..."


# ---------------------------------------------------------------------- authority

_REG_NAME_RE: Final = re.compile(r"(?:[A-Za-z0-9\-._~!$&'()*+,;=]|%[0-9A-Fa-f]{2})+")


def split_authority(authority: str) -> tuple[str, int]:
    """Split ``host[:port]`` into ``(host, port)``; port defaults to 443.

    The host comes back lowercase, IPv6 literals without brackets. Raises
    ``ValueError`` for userinfo (forbidden in ``https`` authorities, RFC 9114
    §4.3.1), a bad IP literal, bad host characters or a port outside 1..65535.
    """
    if not authority:
        raise ValueError("authority is empty")
    if "@" in authority:
        raise ValueError(f"authority {authority!r} has userinfo, which https forbids")
    if authority.startswith("["):
        end = authority.find("]")
        if end == -1:
            raise ValueError(f"authority {authority!r} has an unterminated IPv6 literal")
        host = authority[1:end]
        rest = authority[end + 1 :]
        if "%" in host:
            raise ValueError(f"authority {authority!r} has an IPv6 zone identifier")
        try:
            ipaddress.IPv6Address(host)
        except ValueError:
            raise ValueError(f"authority {authority!r} has an invalid IPv6 literal") from None
    else:
        host, colon, port_text = authority.partition(":")
        rest = colon + port_text
        if not _REG_NAME_RE.fullmatch(host):
            raise ValueError(f"authority {authority!r} has an invalid host")
    port = _HTTPS_DEFAULT_PORT
    if rest:
        port_text = rest[1:]
        if not (
            rest[0] == ":"
            and 1 <= len(port_text) <= 5
            and port_text.isascii()
            and port_text.isdigit()
        ):
            raise ValueError(f"authority {authority!r} has an invalid port")
        port = int(port_text)
        if not 1 <= port <= 65535:
            raise ValueError(f"authority {authority!r} has port {port} outside 1..65535")
    return host.lower(), port


# ------------------------------------------------------------------------ template


@dataclass(frozen=True, slots=True)
class _Literal:
    text: str


@dataclass(frozen=True, slots=True)
class _Expr:
    op: str  # "" (simple), "?" or "&" (form-style query)
    names: tuple[str, ...]
    in_query: bool  # for simple expressions: placed after the '?' of the URI


_Token: TypeAlias = _Literal | _Expr

# RFC 6570 §2.2 operators. RFC 9484 §3 forbids the level-2 ones and the
# level-3 ones except form-style query; the op-reserve set is undefined.
_FORBIDDEN_OPERATORS: Final = {
    "+": "reserved expansion ('+')",
    "#": "fragment expansion ('#')",
    ".": "label expansion with dot-prefix ('.')",
    "/": "path segment expansion ('/')",
    ";": "path-style parameter expansion (';')",
}
_RESERVED_OPERATORS: Final = frozenset("=,!@|")
# RFC 6570 §2.1: characters a literal may not contain. "#" is added because a
# fragment cannot travel in :path; whitespace and non-ASCII are refused earlier.
_LITERAL_FORBIDDEN: Final = frozenset("\"'<>\\^`|#")
_VARNAME_RE: Final = re.compile(
    r"(?:[A-Za-z0-9_]|%[0-9A-Fa-f]{2})(?:\.?(?:[A-Za-z0-9_]|%[0-9A-Fa-f]{2}))*"
)
_PCT_TRIPLET_RE: Final = re.compile(r"%[0-9A-Fa-f]{2}")
_ABSOLUTE_RE: Final = re.compile(r"([A-Za-z][A-Za-z0-9+.\-]*)://([^/?#]*)(.*)", re.DOTALL)
# Character classes a simple expression's value may span when matching: a path
# value stops at the next "/" or at the query; a query value at the next "&".
_PATH_VALUE: Final = r"[^/?#]*"
_QUERY_VALUE: Final = r"[^&#]*"
_FORM_GROUP: Final = "_form"


class UriTemplate:
    """A validated CONNECT-IP URI template (RFC 9484 §3).

    Build with :meth:`parse` (or :meth:`default`). The client calls
    :meth:`expand` for its ``:path``; the relay calls :meth:`match` on each
    request's ``:path``. Instances are immutable and compare by template text.
    """

    __slots__ = (
        "_authority",
        "_form_op",
        "_form_vars",
        "_host",
        "_path_template",
        "_port",
        "_regex",
        "_scheme",
        "_simple_vars",
        "_text",
        "_tokens",
    )

    _text: str
    _scheme: str
    _authority: str
    _host: str
    _port: int
    _path_template: str
    _tokens: tuple[_Token, ...]
    _simple_vars: frozenset[str]
    _form_vars: tuple[str, ...]
    _form_op: str
    _regex: re.Pattern[str]

    def __init__(self) -> None:
        raise TypeError("use UriTemplate.parse(text) or UriTemplate.default(host, port)")

    # -- construction ------------------------------------------------------------

    @classmethod
    def parse(cls, text: str) -> UriTemplate:
        """Parse and validate a template; raise :class:`TemplateError` if unusable.

        Each error's ``rule`` says which requirement failed: ``template-charset``,
        ``template-syntax``, ``template-scheme``, ``template-authority``,
        ``template-path``, ``template-operator``, ``template-modifier``,
        ``template-variable`` or ``template-layout``.
        """
        if not isinstance(text, str):
            raise TypeError(f"template must be a str, not {type(text).__name__}")
        # RFC 9484 §3: only ASCII 0x21-0x7E (percent-encoding is how anything
        # else gets in).
        for ch in text:
            if not "\x21" <= ch <= "\x7e":
                raise TemplateError(
                    f"template contains {ch!r}; only ASCII 0x21-0x7E is allowed (RFC 9484 §3)",
                    rule="template-charset",
                )
        m = _ABSOLUTE_RE.fullmatch(text)
        if m is None:
            raise TemplateError(
                f"template {text!r} is not an absolute URI 'https://authority/path' (RFC 9484 §3)",
                rule="template-syntax",
            )
        scheme, authority, rest = m.group(1), m.group(2), m.group(3)
        if scheme.lower() != "https":
            raise TemplateError(
                f"template scheme is {scheme!r}; CONNECT-IP over HTTP/3 needs 'https'",
                rule="template-scheme",
            )
        if "{" in authority or "}" in authority:
            raise TemplateError(
                "template expressions may only appear in the path or query (RFC 9484 §3), "
                "and the path must begin with '/'",
                rule="template-authority",
            )
        if not authority:
            raise TemplateError(
                "template authority is empty (RFC 9484 §3)", rule="template-authority"
            )
        try:
            host, port = split_authority(authority)
        except ValueError as exc:
            raise TemplateError(f"template authority: {exc}", rule="template-authority") from None
        if not rest.startswith("/"):
            raise TemplateError(
                "template path must be non-empty and begin with '/' (RFC 9484 §3)",
                rule="template-path",
            )

        tpl = object.__new__(cls)
        tpl._text = text
        tpl._scheme = "https"
        tpl._authority = authority
        tpl._host = host
        tpl._port = port
        tpl._path_template = rest
        tpl._tokens = _tokenize(rest)
        tpl._simple_vars = frozenset(
            name
            for tok in tpl._tokens
            if isinstance(tok, _Expr) and tok.op == ""
            for name in tok.names
        )
        form = [tok for tok in tpl._tokens if isinstance(tok, _Expr) and tok.op != ""]
        tpl._form_vars = tuple(name for tok in form for name in tok.names)
        tpl._form_op = form[0].op if form else ""
        tpl._regex = tpl._compile()
        return tpl

    @classmethod
    def default(cls, host: str, port: int = _HTTPS_DEFAULT_PORT) -> UriTemplate:
        """The RFC 9484 §3 default template for ``host`` and ``port``."""
        if ":" in host and not host.startswith("["):
            host = f"[{host}]"
        return cls.parse(f"https://{host}:{port}{DEFAULT_PATH_TEMPLATE}")

    def _compile(self) -> re.Pattern[str]:
        parts: list[str] = []
        for tok in self._tokens:
            if isinstance(tok, _Literal):
                parts.append(re.escape(tok.text))
            elif tok.op == "":
                value = _QUERY_VALUE if tok.in_query else _PATH_VALUE
                parts.append(f"(?P<{tok.names[0]}>{value})")
        if self._form_vars:
            # The whole form-style section is optional: RFC 6570 omits undefined
            # variables and RFC 9484 §4.6 reads a missing variable as "*".
            parts.append(f"(?:{re.escape(self._form_op)}(?P<{_FORM_GROUP}>[^#]*))?")
        return re.compile("".join(parts), re.DOTALL)

    # -- properties ----------------------------------------------------------------

    @property
    def text(self) -> str:
        """The template exactly as configured."""
        return self._text

    @property
    def scheme(self) -> str:
        """Always ``"https"`` (lowercase), the value for ``:scheme``."""
        return self._scheme

    @property
    def authority(self) -> str:
        """The authority as written in the template, the default ``:authority``."""
        return self._authority

    @property
    def host(self) -> str:
        """Host to connect to: lowercase, IPv6 literals without brackets."""
        return self._host

    @property
    def port(self) -> int:
        """Port to connect to (443 when the template names none)."""
        return self._port

    @property
    def path_template(self) -> str:
        """The path-and-query part of the template (from the first '/')."""
        return self._path_template

    @property
    def variables(self) -> frozenset[str]:
        """Variables the template uses: a subset of ``{"target", "ipproto"}``."""
        return self._simple_vars | frozenset(self._form_vars)

    def __eq__(self, other: object) -> bool:
        if not isinstance(other, UriTemplate):
            return NotImplemented
        return self._text == other._text

    def __hash__(self) -> int:
        return hash(self._text)

    def __repr__(self) -> str:
        return f"UriTemplate({self._text!r})"

    def __str__(self) -> str:
        return self._text

    # -- client side ---------------------------------------------------------------

    def expand(self, target: TargetLike = TARGET_ANY, ipproto: IpprotoLike = None) -> str:
        """Expand the template into the request ``:path`` (path and query).

        ``target`` may be a :data:`TargetScope`, an ``ipaddress`` address or
        network, or a string parsed by :func:`parse_target`; ``ipproto`` an int,
        a decimal string, ``"*"`` or ``None`` (any). Both variables are always
        given a value (``*`` for wildcards), so the result is plain RFC 6570
        output apart from ``*`` being sent unencoded.

        Raises ``ValueError`` if a non-wildcard value is asked for but the
        template has no variable to carry it: sending the request anyway would
        silently widen the scope.
        """
        scope_target = as_target(target)
        scope_ipproto = as_ipproto(ipproto)
        variables = self.variables
        if not isinstance(scope_target, TargetAny) and "target" not in variables:
            raise ValueError(
                f"template {self._text!r} has no 'target' variable; cannot request {scope_target}"
            )
        if scope_ipproto is not None and "ipproto" not in variables:
            raise ValueError(
                f"template {self._text!r} has no 'ipproto' variable; cannot request {scope_ipproto}"
            )
        values = {
            "target": _pct_encode(format_target(scope_target)),
            "ipproto": "*" if scope_ipproto is None else str(scope_ipproto),
        }
        out: list[str] = []
        for tok in self._tokens:
            if isinstance(tok, _Literal):
                out.append(tok.text)
            elif tok.op == "":
                out.append(values[tok.names[0]])
            else:
                # RFC 6570 §3.2.8/§3.2.9: "?" or "&" before the first pair, "&" between.
                pairs = "&".join(f"{name}={values[name]}" for name in tok.names)
                out.append(tok.op + pairs)
        return "".join(out)

    def expand_uri(self, target: TargetLike = TARGET_ANY, ipproto: IpprotoLike = None) -> str:
        """Like :meth:`expand` but return the absolute URI (``https://authority/path``)."""
        return f"{self._scheme}://{self._authority}{self.expand(target, ipproto)}"

    # -- relay side ----------------------------------------------------------------

    def match(self, path: str | bytes) -> Scope:
        """Match a request ``:path`` against the template and return its scope.

        Values are percent-decoded before validation, so ``*`` and ``%2A`` are
        the same, as are ``:`` and ``%3A``. Variables the template lacks, or
        that a form-style query omits, are wildcards (RFC 9484 §4.6).

        Raises :class:`RequestError` with the status to answer:

        - 414 ``path-too-long``: longer than :data:`MAX_PATH_LENGTH`;
        - 400 ``invalid-path``: not visible ASCII;
        - 404 ``no-template-match``: the path is not an expansion of this template
          (including unknown query parameters);
        - 400 ``bad-percent-encoding``, ``empty-variable``, ``invalid-target``,
          ``target-host-bits-set``, ``invalid-ipproto``, ``duplicate-variable``,
          ``malformed-query``: RFC 9484 §4.1 makes a request whose values break
          §4.6 malformed, and RFC 9114 §4.1.2 lets the server answer that with
          an error response before resetting the stream.
        """
        if isinstance(path, bytes | bytearray | memoryview):
            try:
                path = bytes(path).decode("ascii")
            except UnicodeDecodeError:
                raise RequestError(
                    "request :path is not ASCII", http_status=400, rule="invalid-path"
                ) from None
        if len(path) > MAX_PATH_LENGTH:
            raise RequestError(
                f"request :path is {len(path)} bytes, more than {MAX_PATH_LENGTH}",
                http_status=414,
                rule="path-too-long",
            )
        if not path or not all("\x21" <= ch <= "\x7e" for ch in path):
            raise RequestError(
                f"request :path {_clip(path)!r} is empty or not visible ASCII",
                http_status=400,
                rule="invalid-path",
            )
        m = self._regex.fullmatch(path)
        if m is None:
            raise RequestError(
                f"request :path {_clip(path)!r} does not match template {self._path_template!r}",
                http_status=404,
                rule="no-template-match",
            )
        raw: dict[str, str] = {name: m.group(name) for name in self._simple_vars}
        form = m.group(_FORM_GROUP) if self._form_vars else None
        if form:
            self._collect_form(form, path, raw)
        try:
            target = parse_target(_pct_decode(raw["target"])) if "target" in raw else TARGET_ANY
            ipproto = parse_ipproto(_pct_decode(raw["ipproto"])) if "ipproto" in raw else None
        except _ScopeValueError as exc:
            raise RequestError(str(exc), http_status=400, rule=exc.rule) from None
        return Scope(target, ipproto)

    def _collect_form(self, form: str, path: str, raw: dict[str, str]) -> None:
        for pair in form.split("&"):
            if not pair:
                continue  # "?&target=..." or "a=1&&b=2": harmless, and some encoders emit it
            name, eq, value = pair.partition("=")
            if not eq:
                # RFC 6570 form-style expansion always writes "name=" (§3.2.8).
                raise RequestError(
                    f"query parameter {_clip(pair)!r} has no '='",
                    http_status=400,
                    rule="malformed-query",
                )
            if name not in self._form_vars:
                raise RequestError(
                    f"request :path {_clip(path)!r} has query parameter {_clip(name)!r}, "
                    f"which template {self._path_template!r} does not define",
                    http_status=404,
                    rule="no-template-match",
                )
            if name in raw:
                raise RequestError(
                    f"query parameter {name!r} appears more than once",
                    http_status=400,
                    rule="duplicate-variable",
                )
            raw[name] = value


def _tokenize(rest: str) -> tuple[_Token, ...]:
    """Split the path-and-query part into literals and validated expressions."""
    tokens: list[_Token] = []
    seen: set[str] = set()
    in_query = False
    in_form = False  # a form-style expression has been seen: only more may follow
    i = 0
    while i < len(rest):
        open_at = rest.find("{", i)
        close_at = rest.find("}", i)
        if close_at != -1 and (open_at == -1 or close_at < open_at):
            raise TemplateError(
                f"unmatched '}}' at offset {close_at} of the path", rule="template-syntax"
            )
        literal = rest[i:] if open_at == -1 else rest[i:open_at]
        if literal:
            if in_form:
                raise TemplateError(
                    "form-style query expressions ({?...}, {&...}) must end the template",
                    rule="template-layout",
                )
            _check_literal(literal)
            tokens.append(_Literal(literal))
            in_query = in_query or "?" in literal
        if open_at == -1:
            break
        end = rest.find("}", open_at + 1)
        if end == -1:
            raise TemplateError("unterminated expression: '{' without '}'", rule="template-syntax")
        body = rest[open_at + 1 : end]
        if "{" in body:
            raise TemplateError(f"nested '{{' in expression {{{body}}}", rule="template-syntax")
        expr = _parse_expression(body, in_query)
        for name in expr.names:
            if name in seen:
                # Matching needs one place per variable: two could disagree.
                raise TemplateError(f"variable {name!r} appears twice", rule="template-variable")
            seen.add(name)
        if expr.op == "":
            if in_form:
                raise TemplateError(
                    "form-style query expressions ({?...}, {&...}) must end the template",
                    rule="template-layout",
                )
            if tokens and isinstance(tokens[-1], _Expr):
                # "{target}{ipproto}" has no boundary between the two values.
                raise TemplateError(
                    f"expression {{{body}}} follows another expression with no literal between",
                    rule="template-layout",
                )
        elif expr.op == "?":
            if in_query:
                raise TemplateError(
                    f"{{{body}}} would start a second query; use '{{&...}}' after a '?'",
                    rule="template-layout",
                )
            in_query = in_form = True
        else:  # "&"
            if not in_query:
                raise TemplateError(
                    f"{{{body}}} continues a query, but no '?' or '{{?...}}' comes before it",
                    rule="template-layout",
                )
            in_form = True
        tokens.append(expr)
        i = end + 1
    return tuple(tokens)


def _check_literal(literal: str) -> None:
    for ch in literal:
        if ch in _LITERAL_FORBIDDEN:
            what = "a fragment ('#')" if ch == "#" else repr(ch)
            raise TemplateError(
                f"template literal {literal!r} contains {what}, not allowed by RFC 6570 §2.1",
                rule="template-syntax",
            )
    if literal.count("%") != len(_PCT_TRIPLET_RE.findall(literal)):
        raise TemplateError(
            f"template literal {literal!r} has a '%' that does not start a %XX escape",
            rule="template-syntax",
        )


def _parse_expression(body: str, in_query: bool) -> _Expr:
    if not body:
        raise TemplateError("empty expression '{}'", rule="template-syntax")
    op = body[0]
    if op in _FORBIDDEN_OPERATORS:
        raise TemplateError(
            f"expression {{{body}}} uses {_FORBIDDEN_OPERATORS[op]}, forbidden by RFC 9484 §3",
            rule="template-operator",
        )
    if op in _RESERVED_OPERATORS:
        raise TemplateError(
            f"expression {{{body}}} uses operator {op!r}, reserved by RFC 6570 §2.2",
            rule="template-operator",
        )
    if op not in "?&":
        op = ""
    specs = body[len(op) :].split(",")
    for spec in specs:
        if spec.endswith("*") or ":" in spec:
            raise TemplateError(
                f"expression {{{body}}} uses a level-4 modifier; "
                "RFC 9484 §3 allows level 3 at most",
                rule="template-modifier",
            )
        if not _VARNAME_RE.fullmatch(spec):
            raise TemplateError(
                f"expression {{{body}}} has an invalid variable name {spec!r}",
                rule="template-syntax",
            )
        if spec not in _VARIABLES:
            raise TemplateError(
                f"unknown variable {spec!r} in {{{body}}}: "
                "only 'target' and 'ipproto' are supported",
                rule="template-variable",
            )
    if op == "" and len(specs) > 1:
        # "{target,ipproto}" joins with "," and drops undefined values, so a lone
        # value could be either variable.
        raise TemplateError(
            f"expression {{{body}}} lists several variables; write one per expression",
            rule="template-layout",
        )
    return _Expr(op, tuple(specs), in_query)
