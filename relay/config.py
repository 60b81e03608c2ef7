"""The relay's configuration: typed, frozen, loaded from TOML, safe with no file at all.

``load_config(None)`` gives a working relay: listen on ``[::]:4433``, the RFC 9484
default URI template, a self-signed certificate and a token generated under the
state directory, pools 10.100.0.0/24 and fd00:6d61:7371::/64, full-tunnel routes,
NAT on. A TOML file (see :data:`EXAMPLE_TOML`, every key with its default)
overrides any of it. Validation is strict: an unknown key, a wrong type, a bad
prefix or an impossible combination raises :class:`ConfigError` naming the file,
the key and the problem. Relative paths in a file are relative to that file.

The default IPv6 pool ``fd00:6d61:7371::/64`` is a ULA (RFC 4193) whose 40-bit
Global ID spells "masq" (0x00 6d 61 73 71). It is fixed so that a relay and its
clients agree across restarts and documentation can name it; RFC 4193 §3.2
asks for a random Global ID, so an operator whose site may meet other ULA users
should pick their own (``python3 -c "import secrets; print(secrets.token_hex(5))"``).
"""

from __future__ import annotations

import difflib
import enum
import ipaddress
import re
import tomllib
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, TypeVar

from masque.errors import TemplateError
from masque.template import DEFAULT_PATH_TEMPLATE, UriTemplate
from relay.ipam import usable_blocks

__all__ = [
    "DEFAULT_PATH_TEMPLATE",
    "DEFAULT_STATE_DIR",
    "DEFAULT_URI_TEMPLATE",
    "EXAMPLE_TOML",
    "AuthConfig",
    "CarrierConfig",
    "CarrierMode",
    "ConfigError",
    "LimitsConfig",
    "ListenConfig",
    "LogConfig",
    "MetricsConfig",
    "NatConfig",
    "PoolConfig",
    "RelayConfig",
    "RoutesConfig",
    "TlsConfig",
    "TunConfig",
    "XdpConfig",
    "XdpMode",
    "interface_name_problem",
    "load_config",
    "parse_config",
    "parse_host_port",
    "path_from_uri_template",
    "token_problem",
    "xdp_interface_missing",
]

IPNetwork = ipaddress.IPv4Network | ipaddress.IPv6Network
N = TypeVar("N", ipaddress.IPv4Network, ipaddress.IPv6Network)

DEFAULT_STATE_DIR = Path("/var/lib/masque-relay")
DEFAULT_URI_TEMPLATE = "https://{host}:{port}/.well-known/masque/ip/{target}/{ipproto}/"
DEFAULT_IPV4_POOL = ipaddress.IPv4Network("10.100.0.0/24")
DEFAULT_IPV6_POOL = ipaddress.IPv6Network("fd00:6d61:7371::/64")

#: RFC 6750 §2.1 b64token (the token68 of RFC 9110 §11.2).
TOKEN_RE = re.compile(r"[A-Za-z0-9\-._~+/]+=*")
#: Shortest bearer token accepted: guessable tokens make the relay an open proxy.
MIN_TOKEN_LENGTH = 16

LOG_LEVELS = ("debug", "info", "warning", "error", "critical")
LOG_FORMATS = ("text", "json")


class ConfigError(ValueError):
    """The configuration cannot be used.

    ``source`` is the file (or ``"<defaults>"``/``"<string>"``), ``key`` the
    dotted key (``"pool.ipv4"``) or ``None`` for the file as a whole, and
    ``problem`` what is wrong; ``str()`` joins them as ``file: key: problem``.
    """

    source: str
    key: str | None
    problem: str

    def __init__(self, source: str, key: str | None, problem: str) -> None:
        self.source = source
        self.key = key
        self.problem = problem
        where = source if key is None else f"{source}: {key}"
        super().__init__(f"{where}: {problem}")


class CarrierMode(enum.StrEnum):
    """How the relay carries packets when the client supports more than one way."""

    DATAGRAM = "datagram"
    "HTTP/3 Datagrams (RFC 9297) where the client supports them, else DATAGRAM capsules."
    CAPSULE = "capsule"
    "Always DATAGRAM capsules on the CONNECT stream (reliable; for lossy middleboxes)."


class XdpMode(enum.StrEnum):
    """Whether and how the relay attaches its XDP front end (relay/xdp.py)."""

    OFF = "off"
    "No XDP: every packet reaches the relay through its UDP socket."
    AUTO = "auto"
    "Native (driver) mode where the driver supports it, else generic mode."
    NATIVE = "native"
    "Driver mode only."
    GENERIC = "generic"
    "Generic (SKB) mode only: works on any interface, with less benefit."


# -- the configuration ----------------------------------------------------------


@dataclass(frozen=True, slots=True)
class ListenConfig:
    """Where the relay accepts QUIC connections and which request path it serves."""

    host: str = "::"
    "Address to bind (``::`` accepts IPv4 too on a dual-stack host)."
    port: int = 4433
    "UDP port."
    path_template: str = DEFAULT_PATH_TEMPLATE
    "Path-and-query part of the URI template (RFC 6570 level 3, RFC 9484 §3 rules)."

    def template(self, host: str = "localhost") -> UriTemplate:
        """The template to match request paths with (its authority is ``host:port``)."""
        authority = f"[{host}]" if ":" in host else host
        return UriTemplate.parse(f"https://{authority}:{self.port}{self.path_template}")


@dataclass(frozen=True, slots=True)
class TlsConfig:
    """The relay's certificate (generated on first start when both files are absent)."""

    cert_file: Path = DEFAULT_STATE_DIR / "cert.pem"
    key_file: Path = DEFAULT_STATE_DIR / "key.pem"
    names: tuple[str, ...] = ()
    "Extra DNS names / IP addresses for a generated certificate's SAN."


@dataclass(frozen=True, slots=True)
class AuthConfig:
    """Who may open tunnels. See :mod:`relay.auth` for the policy."""

    tokens: tuple[str, ...] = ()
    "Bearer tokens written in the configuration itself."
    tokens_file: Path | None = DEFAULT_STATE_DIR / "tokens"
    "File of bearer tokens, one per line (``NAME TOKEN`` or ``TOKEN``; ``#`` comments)."
    tokens_file_required: bool = False
    "True when the file was named explicitly: then it must exist."
    client_ca_file: Path | None = None
    "PEM bundle of CAs whose client certificates are accepted (mTLS); ``None``: no mTLS."
    require_client_cert: bool = False
    "Refuse clients without a verified certificate (tokens, if any, are then needed too)."
    allow_anonymous: bool = False
    "Accept every client with no credentials (test beds only; conflicts with the rest)."


@dataclass(frozen=True, slots=True)
class PoolConfig:
    """Client address pools; ``None`` disables a family."""

    ipv4: ipaddress.IPv4Network | None = DEFAULT_IPV4_POOL
    ipv6: ipaddress.IPv6Network | None = DEFAULT_IPV6_POOL
    ipv4_client_prefix: int = 32
    "Length of the IPv4 prefix each session gets."
    ipv6_client_prefix: int = 128
    "Length of the IPv6 prefix each session gets."


@dataclass(frozen=True, slots=True)
class RoutesConfig:
    """Networks advertised to clients in ROUTE_ADVERTISEMENT (and allowed as destinations)."""

    allowed: tuple[IPNetwork, ...] = (
        ipaddress.IPv4Network("0.0.0.0/0"),
        ipaddress.IPv6Network("::/0"),
    )
    "Sorted IPv4 first, then by address; never overlapping (RFC 9484 §4.7.3)."


@dataclass(frozen=True, slots=True)
class NatConfig:
    """Masquerading of the pools to the egress address (nftables)."""

    enabled: bool = True
    egress_interface: str | None = None
    "Interface to masquerade on; ``None``: the one holding the default route."


@dataclass(frozen=True, slots=True)
class TunConfig:
    """The relay's TUN device."""

    name: str = "masque0"
    mtu: int = 1400
    "Tunnel MTU: 1400 inner + at most ~51 B HTTP/3 + 48 B IPv6/UDP fits a 1500 B path."


@dataclass(frozen=True, slots=True)
class CarrierConfig:
    """How packets ride the connection."""

    mode: CarrierMode = CarrierMode.DATAGRAM
    compat_length_framing: bool = False
    "Also accept the 2-byte length-prefixed stream framing of older tools (opt-in)."
    send_queue_packets: int = 1024
    "Bound of each session's send queue; packets beyond it are dropped."


@dataclass(frozen=True, slots=True)
class DataplaneConfig:
    """How packets move."""

    fast_path: bool = True
    "The compiled data path: batched TUN/UDP I/O with offloads, packet checks in C."
    datagram_lane: bool = True
    "Steady-state QUIC DATAGRAM packets handled in C (needs fast_path)."


@dataclass(frozen=True, slots=True)
class XdpConfig:
    """The XDP front end on the interface the relay's QUIC traffic arrives on."""

    mode: XdpMode = XdpMode.OFF
    interface: str | None = None
    "The interface to attach to; required unless ``mode`` is ``off``."
    handshake_rate_pps: int = 1000
    "Long-header (handshake) packets per second per source (IPv4 address, IPv6 /64); 0: no limit."
    handshake_burst: int = 100
    "Long-header packets a source may send at once before the rate applies."


@dataclass(frozen=True, slots=True)
class LimitsConfig:
    """Resource limits."""

    idle_timeout: float = 300.0
    "Seconds without packets after which a session is closed."
    max_sessions: int = 1024
    "Concurrent sessions; further requests are refused (the pools may refuse earlier)."
    session_rate_mbit: float = 0.0
    "Per-session bandwidth cap in Mbit/s, each direction (0: unlimited)."
    global_rate_mbit: float = 0.0
    "Whole-relay bandwidth cap in Mbit/s, each direction (0: unlimited)."


@dataclass(frozen=True, slots=True)
class LogConfig:
    level: str = "info"
    "One of debug, info, warning, error, critical."
    format: str = "text"
    "``text`` for people, ``json`` (one object per line) for log collectors."


@dataclass(frozen=True, slots=True)
class MetricsConfig:
    listen: tuple[str, int] | None = None
    "Host and port of the Prometheus endpoint; ``None``: no metrics server."


@dataclass(frozen=True, slots=True)
class RelayConfig:
    """Everything the relay needs to start. Build with :func:`load_config`."""

    state_dir: Path = DEFAULT_STATE_DIR
    "Where generated state lives (certificate, key, tokens)."
    listen: ListenConfig = field(default_factory=ListenConfig)
    tls: TlsConfig = field(default_factory=TlsConfig)
    auth: AuthConfig = field(default_factory=AuthConfig)
    pool: PoolConfig = field(default_factory=PoolConfig)
    routes: RoutesConfig = field(default_factory=RoutesConfig)
    nat: NatConfig = field(default_factory=NatConfig)
    tun: TunConfig = field(default_factory=TunConfig)
    carrier: CarrierConfig = field(default_factory=CarrierConfig)
    dataplane: DataplaneConfig = field(default_factory=DataplaneConfig)
    xdp: XdpConfig = field(default_factory=XdpConfig)
    limits: LimitsConfig = field(default_factory=LimitsConfig)
    log: LogConfig = field(default_factory=LogConfig)
    metrics: MetricsConfig = field(default_factory=MetricsConfig)
    source: str = field(default="<defaults>", compare=False)
    "Where this configuration came from (a file path, or ``<defaults>``)."

    @staticmethod
    def to_toml_example() -> str:
        """A complete, commented TOML file: every key, set to its default."""
        return EXAMPLE_TOML


# -- the example (kept valid by tests/test_relay_config.py) -----------------------

EXAMPLE_TOML = """\
# masque-relay configuration. Every key is optional; shown are the defaults.
# Relative paths are relative to this file.

# Generated state (certificate, key, tokens) lives here.
state_dir = "/var/lib/masque-relay"

[listen]
host = "::"                # "::" also accepts IPv4 on a dual-stack host
port = 4433                # UDP
# RFC 9484 template; the relay serves its path (host and port are informative).
uri_template = "https://{host}:{port}/.well-known/masque/ip/{target}/{ipproto}/"

[tls]
# Generated (self-signed ECDSA P-256, 1 year) on first start when both are absent.
# cert_file = "/var/lib/masque-relay/cert.pem"
# key_file = "/var/lib/masque-relay/key.pem"
names = []                 # extra SAN names/addresses for the generated certificate

[auth]
tokens = []                # bearer tokens (>= 16 chars of A-Z a-z 0-9 - . _ ~ + /)
# One token per line, "NAME TOKEN" or "TOKEN", "#" starts a comment. With no token
# and no client CA configured, a token is generated here on first start.
# tokens_file = "/var/lib/masque-relay/tokens"
# client_ca_file = "/etc/masque-relay/clients-ca.pem"   # enables mTLS
require_client_cert = false  # true: a verified client certificate is mandatory
allow_anonymous = false      # true: no authentication at all (test beds only)

[pool]
ipv4 = "10.100.0.0/24"     # false disables IPv4 for clients
ipv6 = "fd00:6d61:7371::/64"  # false disables IPv6 for clients
ipv4_client_prefix = 32    # each session gets one /32 ...
ipv6_client_prefix = 128   # ... and one /128

[routes]
# Advertised to every client. Must not overlap. Default: a full tunnel for
# each family that has a pool.
allowed = ["0.0.0.0/0", "::/0"]

[nat]
enabled = true             # masquerade the pools to the egress address
# egress_interface = "eth0"  # default: the interface of the default route

[tun]
name = "masque0"
mtu = 1400                 # >= 1280 when IPv6 is enabled

[carrier]
mode = "datagram"          # "datagram" (HTTP/3 Datagrams) or "capsule" (always on-stream)
compat_length_framing = false  # accept 2-byte length-prefixed stream framing too
send_queue_packets = 1024  # per-session send queue bound

[dataplane]
fast_path = true           # false: pure-Python packet path (comparison, debugging)
datagram_lane = true       # false: every QUIC packet through aioquic (needs fast_path)

[xdp]
mode = "off"               # "auto" (native, else generic), "native", "generic" or "off"
# interface = "eth0"       # where the QUIC traffic arrives; required unless mode = "off"
handshake_rate_pps = 1000  # long-header packets/s per source address (IPv6: per /64); 0: no limit
handshake_burst = 100      # long-header packets a source may send at once

[limits]
idle_timeout = 300.0       # seconds
max_sessions = 1024
session_rate_mbit = 0.0    # per-session cap, each direction (0: unlimited)
global_rate_mbit = 0.0     # whole-relay cap, each direction (0: unlimited)

[log]
level = "info"             # debug, info, warning, error, critical
format = "text"            # text or json

[metrics]
# listen = "127.0.0.1:9464"  # Prometheus endpoint; off by default
"""

# -- loading ----------------------------------------------------------------------


def load_config(path: Path | str | None, *, state_dir: Path | None = None) -> RelayConfig:
    """Read and validate the configuration file; ``None`` gives the defaults.

    ``state_dir`` (a command-line override) replaces the file's ``state_dir``;
    paths the file does not set explicitly follow it.
    """
    if path is None:
        return parse_config("", source="<defaults>", base_dir=Path.cwd(), state_dir=state_dir)
    path = Path(path)
    try:
        data = path.read_bytes()
    except OSError as exc:
        raise ConfigError(str(path), None, f"cannot read: {exc.strerror}") from exc
    try:
        text = data.decode("utf-8")
    except UnicodeDecodeError as exc:
        raise ConfigError(str(path), None, f"not UTF-8: {exc}") from exc
    return parse_config(text, source=str(path), base_dir=path.parent, state_dir=state_dir)


def parse_config(
    text: str,
    *,
    source: str = "<string>",
    base_dir: Path | None = None,
    state_dir: Path | None = None,
) -> RelayConfig:
    """Validate TOML ``text`` into a :class:`RelayConfig` (no I/O).

    ``source`` names the text in errors; relative paths are resolved against
    ``base_dir`` (default: the current directory).
    """
    try:
        doc = tomllib.loads(text)
    except tomllib.TOMLDecodeError as exc:
        raise ConfigError(source, None, f"not valid TOML: {exc}") from exc
    return _Parser(source, base_dir or Path.cwd()).parse(doc, state_dir)


def path_from_uri_template(template: str, *, host: str = "localhost", port: int = 4433) -> str:
    """The path-and-query part of a CONNECT-IP URI template, validated.

    Accepts an absolute template (``https://host:port/path{...}``, whose
    authority may hold the ``{host}``/``{port}`` placeholders, replaced by
    ``host``/``port`` before validation) or a bare path starting with ``/``.
    Validation is :meth:`masque.template.UriTemplate.parse`, the parser the
    relay matches requests with, so a template that loads is one it can serve.
    Raises :class:`~masque.errors.TemplateError` (its ``rule`` says which
    RFC 9484 §3 requirement failed).
    """
    authority_host = f"[{host}]" if ":" in host else host
    if template.startswith("/"):
        absolute = f"https://{authority_host}:{port}{template}"
    else:
        scheme, sep, rest = template.partition("://")
        cut = min((i for i in (rest.find("/"), rest.find("?")) if i >= 0), default=len(rest))
        authority = rest[:cut].replace("{host}", authority_host).replace("{port}", str(port))
        absolute = f"{scheme}{sep}{authority}{rest[cut:]}"
    return UriTemplate.parse(absolute).path_template


_LABEL = r"[A-Za-z0-9](?:[A-Za-z0-9-]{0,61}[A-Za-z0-9])?"
_HOSTNAME = re.compile(rf"(?=.{{1,253}}$){_LABEL}(?:\.{_LABEL})*\.?")
_IFNAME = re.compile(r"[^/\s:]{1,15}")
_U32_MAX = 0xFFFFFFFF

# Special-purpose ranges a pool must not touch (RFC 6890 and friends).
_FORBIDDEN_V4 = tuple(
    ipaddress.IPv4Network(n)
    for n in (
        "0.0.0.0/8",
        "127.0.0.0/8",
        "169.254.0.0/16",
        "224.0.0.0/4",
        "240.0.0.0/4",
    )
)
_FORBIDDEN_V6 = tuple(
    ipaddress.IPv6Network(n)
    for n in ("::/127", "::ffff:0:0/96", "64:ff9b::/96", "fe80::/10", "ff00::/8")
)


class _Table:
    """One TOML table being read: typed getters that record which keys were used."""

    def __init__(self, parser: _Parser, data: Mapping[str, Any], prefix: str) -> None:
        self._parser = parser
        self._data = data
        self._prefix = prefix
        self._seen: set[str] = set()

    def key(self, name: str) -> str:
        return f"{self._prefix}{name}"

    def has(self, name: str) -> bool:
        return name in self._data

    def raw(self, name: str) -> Any:
        self._seen.add(name)
        return self._data.get(name)

    def error(self, name: str, problem: str) -> ConfigError:
        return ConfigError(self._parser.source, self.key(name), problem)

    def _typed(self, name: str, kind: type | tuple[type, ...], label: str) -> Any:
        value = self.raw(name)
        # bool is an int subclass: never accept true for a number or vice versa
        if isinstance(value, bool) != (kind is bool) or not isinstance(value, kind):
            raise self.error(name, f"must be {label}, not {_describe(value)}")
        return value

    def string(self, name: str, default: str) -> str:
        if not self.has(name):
            self._seen.add(name)
            return default
        value: str = self._typed(name, str, "a string")
        return value

    def boolean(self, name: str, default: bool) -> bool:
        if not self.has(name):
            self._seen.add(name)
            return default
        value: bool = self._typed(name, bool, "true or false")
        return value

    def integer(self, name: str, default: int, lo: int, hi: int) -> int:
        if not self.has(name):
            self._seen.add(name)
            return default
        value: int = self._typed(name, int, "an integer")
        if not lo <= value <= hi:
            raise self.error(name, f"must be between {lo} and {hi}, not {value}")
        return value

    def number(self, name: str, default: float, lo: float, hi: float) -> float:
        if not self.has(name):
            self._seen.add(name)
            return default
        value = float(self._typed(name, (int, float), "a number"))
        if not lo <= value <= hi:
            raise self.error(name, f"must be between {lo:g} and {hi:g}, not {value:g}")
        return value

    def strings(self, name: str, default: tuple[str, ...]) -> tuple[str, ...]:
        if not self.has(name):
            self._seen.add(name)
            return default
        value = self._typed(name, list, "a list of strings")
        for i, item in enumerate(value):
            if not isinstance(item, str):
                raise self.error(f"{name}[{i}]", f"must be a string, not {_describe(item)}")
        return tuple(value)

    def table(self, name: str) -> _Table:
        if not self.has(name):
            self._seen.add(name)
            return _Table(self._parser, {}, f"{self.key(name)}.")
        value = self._typed(name, dict, "a table")
        return _Table(self._parser, value, f"{self.key(name)}.")

    def finish(self) -> None:
        """Reject keys nobody asked for, suggesting the closest known key."""
        for name in self._data:
            if name not in self._seen:
                hint = difflib.get_close_matches(name, sorted(self._seen), n=1)
                known = f"did you mean {hint[0]!r}?" if hint else f"known: {sorted(self._seen)}"
                raise self.error(name, f"unknown key ({known})")


def _describe(value: object) -> str:
    if value is None:
        return "nothing"
    names = {bool: "a boolean", int: "an integer", float: "a number", str: "a string"}
    names |= {list: "a list", dict: "a table"}
    return names.get(type(value), type(value).__name__)


class _Parser:
    def __init__(self, source: str, base_dir: Path) -> None:
        self.source = source
        self.base_dir = base_dir

    def path(self, table: _Table, name: str, default: Path) -> Path:
        if not table.has(name):
            table.raw(name)
            return default
        text = table.string(name, "")
        if not text:
            raise table.error(name, "must not be empty")
        p = Path(text).expanduser()
        return p if p.is_absolute() else (self.base_dir / p)

    def parse(self, doc: Mapping[str, Any], state_dir_override: Path | None) -> RelayConfig:
        root = _Table(self, doc, "")
        state_dir = self.path(root, "state_dir", DEFAULT_STATE_DIR)
        if state_dir_override is not None:
            state_dir = state_dir_override
        pool = self._pool(root.table("pool"))
        cfg = RelayConfig(
            state_dir=state_dir,
            listen=self._listen(root.table("listen")),
            tls=self._tls(root.table("tls"), state_dir),
            auth=self._auth(root.table("auth"), state_dir),
            pool=pool,
            routes=self._routes(root.table("routes"), pool),
            nat=self._nat(root.table("nat")),
            tun=self._tun(root.table("tun")),
            carrier=self._carrier(root.table("carrier")),
            dataplane=self._dataplane(root.table("dataplane")),
            xdp=self._xdp(root.table("xdp")),
            limits=self._limits(root.table("limits")),
            log=self._log(root.table("log")),
            metrics=self._metrics(root.table("metrics")),
            source=self.source,
        )
        root.finish()
        self._cross_checks(cfg)
        return cfg

    # -- sections ------------------------------------------------------------------

    def _listen(self, t: _Table) -> ListenConfig:
        host = t.string("host", "::")
        if not _valid_host(host):
            raise t.error("host", f"{host!r} is neither an IP address nor a host name")
        port = t.integer("port", 4433, 1, 65535)
        template = t.string("uri_template", DEFAULT_URI_TEMPLATE)
        try:
            path = path_from_uri_template(template, port=port)
        except TemplateError as exc:
            raise t.error("uri_template", f"{exc} [{exc.rule}]") from None
        t.finish()
        return ListenConfig(host=host, port=port, path_template=path)

    def _tls(self, t: _Table, state_dir: Path) -> TlsConfig:
        cert = self.path(t, "cert_file", state_dir / "cert.pem")
        key = self.path(t, "key_file", state_dir / "key.pem")
        names = t.strings("names", ())
        for i, name in enumerate(names):
            if not _valid_host(name):
                raise t.error(f"names[{i}]", f"{name!r} is neither an IP address nor a DNS name")
        if cert == key:
            raise t.error("key_file", "must differ from cert_file")
        t.finish()
        return TlsConfig(cert_file=cert, key_file=key, names=names)

    def _auth(self, t: _Table, state_dir: Path) -> AuthConfig:
        tokens = t.strings("tokens", ())
        for i, token in enumerate(tokens):
            problem = token_problem(token)
            if problem:
                raise t.error(f"tokens[{i}]", problem)
        explicit_file = t.has("tokens_file")
        tokens_file = self.path(t, "tokens_file", state_dir / "tokens")
        ca: Path | None = None
        if t.has("client_ca_file"):
            ca = self.path(t, "client_ca_file", Path())
        else:
            t.raw("client_ca_file")
        require = t.boolean("require_client_cert", False)
        anonymous = t.boolean("allow_anonymous", False)
        t.finish()
        if require and ca is None:
            raise t.error("require_client_cert", "needs auth.client_ca_file to verify against")
        if anonymous and (tokens or explicit_file or ca is not None):
            raise t.error(
                "allow_anonymous",
                "conflicts with tokens, tokens_file and client_ca_file: "
                "it would make them pointless",
            )
        return AuthConfig(
            tokens=tuple(dict.fromkeys(tokens)),
            tokens_file=None if anonymous else tokens_file,
            tokens_file_required=explicit_file,
            client_ca_file=ca,
            require_client_cert=require,
            allow_anonymous=anonymous,
        )

    def _pool(self, t: _Table) -> PoolConfig:
        v4 = self._pool_network(t, "ipv4", DEFAULT_IPV4_POOL)
        v6 = self._pool_network(t, "ipv6", DEFAULT_IPV6_POOL)
        p4 = t.integer("ipv4_client_prefix", 32, 0, 32)
        p6 = t.integer("ipv6_client_prefix", 128, 0, 128)
        t.finish()
        if v4 is None and v6 is None:
            raise t.error("ipv4", "IPv4 and IPv6 are both disabled: clients would get no address")
        for name, net, plen in (("ipv4", v4, p4), ("ipv6", v6, p6)):
            if net is None:
                continue
            if plen < net.prefixlen:
                raise t.error(
                    f"{name}_client_prefix",
                    f"/{plen} is shorter than the pool {net} (/{net.prefixlen} or longer)",
                )
            try:
                usable = usable_blocks(net, plen)
            except ValueError as exc:
                raise t.error(name, str(exc)) from None
            if usable < 1:
                raise t.error(
                    name,
                    f"{net} cut into /{plen} leaves no block for clients once the network, "
                    "gateway and broadcast addresses are reserved",
                )
        return PoolConfig(ipv4=v4, ipv6=v6, ipv4_client_prefix=p4, ipv6_client_prefix=p6)

    def _pool_network(self, t: _Table, name: str, default: N) -> N | None:
        version = default.version
        if not t.has(name):
            t.raw(name)
            return default
        value = t.raw(name)
        if value is False:
            return None
        if not isinstance(value, str):
            raise t.error(name, f"must be a prefix string or false, not {_describe(value)}")
        net = _network(t, name, value)
        if not isinstance(net, type(default)):
            raise t.error(name, f"{value!r} is not an IPv{version} prefix")
        forbidden = _FORBIDDEN_V4 if version == 4 else _FORBIDDEN_V6
        for special in forbidden:
            if net.overlaps(special):
                raise t.error(name, f"{net} overlaps the special-purpose range {special}")
        return net

    def _routes(self, t: _Table, pool: PoolConfig) -> RoutesConfig:
        # Default: a full tunnel for each family that has a pool.
        full = (("0.0.0.0/0",) if pool.ipv4 else ()) + (("::/0",) if pool.ipv6 else ())
        raw = t.strings("allowed", full)
        nets = [_network(t, f"allowed[{i}]", text) for i, text in enumerate(raw)]
        for i, a in enumerate(nets):
            for j in range(i):
                b = nets[j]
                if a.version == b.version and a.overlaps(b):
                    raise t.error(
                        f"allowed[{i}]",
                        f"{a} overlaps {b} (allowed[{j}]): ROUTE_ADVERTISEMENT ranges "
                        "must not overlap (RFC 9484 §4.7.3)",
                    )
        t.finish()
        ordered = sorted(nets, key=lambda n: (n.version, int(n.network_address)))
        return RoutesConfig(allowed=tuple(ordered))

    def _nat(self, t: _Table) -> NatConfig:
        enabled = t.boolean("enabled", True)
        egress: str | None = None
        if t.has("egress_interface"):
            egress = t.string("egress_interface", "")
            if not _IFNAME.fullmatch(egress) or egress in (".", ".."):
                raise t.error("egress_interface", f"{egress!r} is not an interface name")
        else:
            t.raw("egress_interface")
        t.finish()
        return NatConfig(enabled=enabled, egress_interface=egress)

    def _tun(self, t: _Table) -> TunConfig:
        name = t.string("name", "masque0")
        if not _IFNAME.fullmatch(name) or name in (".", ".."):
            raise t.error("name", f"{name!r} is not an interface name (1-15 chars, no '/')")
        mtu = t.integer("mtu", 1400, 576, 65535)
        t.finish()
        return TunConfig(name=name, mtu=mtu)

    def _carrier(self, t: _Table) -> CarrierConfig:
        mode_text = t.string("mode", CarrierMode.DATAGRAM.value)
        try:
            mode = CarrierMode(mode_text)
        except ValueError:
            choices = ", ".join(repr(m.value) for m in CarrierMode)
            raise t.error("mode", f"must be one of {choices}, not {mode_text!r}") from None
        compat = t.boolean("compat_length_framing", False)
        queue = t.integer("send_queue_packets", 1024, 1, 1 << 20)
        t.finish()
        return CarrierConfig(mode=mode, compat_length_framing=compat, send_queue_packets=queue)

    def _dataplane(self, t: _Table) -> DataplaneConfig:
        fast_path = t.boolean("fast_path", True)
        datagram_lane = t.boolean("datagram_lane", True)
        t.finish()
        return DataplaneConfig(fast_path=fast_path, datagram_lane=datagram_lane)

    def _xdp(self, t: _Table) -> XdpConfig:
        mode_text = t.string("mode", XdpMode.OFF.value)
        try:
            mode = XdpMode(mode_text)
        except ValueError:
            choices = ", ".join(repr(m.value) for m in XdpMode)
            raise t.error("mode", f"must be one of {choices}, not {mode_text!r}") from None
        interface: str | None = None
        if t.has("interface"):
            interface = t.string("interface", "")
            problem = interface_name_problem(interface)
            if problem:
                raise t.error("interface", problem)
        else:
            t.raw("interface")
        rate = t.integer("handshake_rate_pps", 1000, 0, _U32_MAX)
        burst = t.integer("handshake_burst", 100, 1, _U32_MAX)
        t.finish()
        if mode is not XdpMode.OFF and interface is None:
            raise t.error("interface", xdp_interface_missing(mode))
        return XdpConfig(
            mode=mode, interface=interface, handshake_rate_pps=rate, handshake_burst=burst
        )

    def _limits(self, t: _Table) -> LimitsConfig:
        idle = t.number("idle_timeout", 300.0, 1.0, 7 * 24 * 3600.0)
        max_sessions = t.integer("max_sessions", 1024, 1, 1 << 24)
        session_rate = t.number("session_rate_mbit", 0.0, 0.0, 1e6)
        global_rate = t.number("global_rate_mbit", 0.0, 0.0, 1e6)
        t.finish()
        return LimitsConfig(
            idle_timeout=idle,
            max_sessions=max_sessions,
            session_rate_mbit=session_rate,
            global_rate_mbit=global_rate,
        )

    def _log(self, t: _Table) -> LogConfig:
        level = t.string("level", "info").lower()
        if level not in LOG_LEVELS:
            raise t.error("level", f"must be one of {', '.join(LOG_LEVELS)}, not {level!r}")
        fmt = t.string("format", "text")
        if fmt not in LOG_FORMATS:
            raise t.error("format", f"must be one of {', '.join(LOG_FORMATS)}, not {fmt!r}")
        t.finish()
        return LogConfig(level=level, format=fmt)

    def _metrics(self, t: _Table) -> MetricsConfig:
        listen: tuple[str, int] | None = None
        if t.has("listen"):
            text = t.string("listen", "")
            try:
                listen = parse_host_port(text)
            except ValueError as exc:
                raise t.error("listen", f"{text!r}: {exc}") from None
        else:
            t.raw("listen")
        t.finish()
        return MetricsConfig(listen=listen)

    def _cross_checks(self, cfg: RelayConfig) -> None:
        if cfg.pool.ipv6 is not None and cfg.tun.mtu < 1280:
            raise ConfigError(
                self.source,
                "tun.mtu",
                f"{cfg.tun.mtu} is below 1280, the IPv6 minimum (RFC 9484 §10); "
                "raise it or disable pool.ipv6",
            )
        for net in cfg.routes.allowed:
            if (net.version == 4 and cfg.pool.ipv4 is None) or (
                net.version == 6 and cfg.pool.ipv6 is None
            ):
                raise ConfigError(
                    self.source,
                    "routes.allowed",
                    f"{net} is IPv{net.version} but pool.ipv{net.version} is disabled: "
                    "clients could not use it",
                )


def _network(t: _Table, name: str, text: str) -> IPNetwork:
    try:
        return ipaddress.ip_network(text, strict=True)
    except ValueError as exc:
        raise t.error(name, f"{text!r} is not a valid prefix ({exc})") from None


def _valid_host(host: str) -> bool:
    try:
        ipaddress.ip_address(host)
    except ValueError:
        return bool(_HOSTNAME.fullmatch(host))
    return True


def interface_name_problem(name: str) -> str | None:
    """Why ``name`` cannot be a network interface name, or ``None`` if it can."""
    if not _IFNAME.fullmatch(name) or name in (".", ".."):
        return f"{name!r} is not an interface name (1-15 chars, no '/', ':' or spaces)"
    return None


def xdp_interface_missing(mode: XdpMode) -> str:
    """The problem of an ``[xdp]`` table with a mode but no interface."""
    return (
        f"required when xdp.mode is {mode.value!r}: name the interface the relay's "
        'QUIC traffic arrives on (e.g. "eth0"; --xdp-interface on the command line)'
    )


def token_problem(token: str) -> str | None:
    """Why ``token`` cannot be a bearer token, or ``None`` if it can."""
    if not TOKEN_RE.fullmatch(token):
        return (
            "is not a bearer token: only A-Z a-z 0-9 - . _ ~ + / and trailing '=' (RFC 6750 §2.1)"
        )
    if len(token) < MIN_TOKEN_LENGTH:
        return f"is too short: at least {MIN_TOKEN_LENGTH} characters"
    return None


def parse_host_port(text: str) -> tuple[str, int]:
    """Split ``host:port`` / ``[v6]:port`` into a validated pair (``ValueError`` if not)."""
    if text.startswith("["):
        host, sep, port = text[1:].partition("]:")
        if not sep:
            raise ValueError("an IPv6 address needs the form [addr]:port")
        try:
            ipaddress.IPv6Address(host)
        except ValueError:
            raise ValueError(f"{host!r} is not an IPv6 address") from None
    else:
        host, sep, port = text.rpartition(":")
        if not sep or not host:
            raise ValueError("needs the form host:port")
        if ":" in host:
            raise ValueError("write an IPv6 address as [addr]:port")
        if not _valid_host(host):
            raise ValueError(f"{host!r} is neither an IP address nor a host name")
    if not port.isdigit() or not 1 <= int(port) <= 65535:
        raise ValueError(f"port {port!r} is not between 1 and 65535")
    return host, int(port)
