"""relay.config: defaults, the example file, and strict validation naming file and key."""

from __future__ import annotations

import dataclasses
import re
from ipaddress import IPv4Network, IPv6Network, ip_network
from pathlib import Path

import pytest

from relay.cli import build_parser, config_from_args
from relay.config import (
    DEFAULT_PATH_TEMPLATE,
    EXAMPLE_TOML,
    CarrierMode,
    ConfigError,
    RelayConfig,
    XdpConfig,
    XdpMode,
    load_config,
    parse_config,
    path_from_uri_template,
)

REPO = Path(__file__).resolve().parent.parent


def test_no_config_gives_safe_defaults() -> None:
    cfg = load_config(None)
    assert cfg == RelayConfig()
    assert (cfg.listen.host, cfg.listen.port) == ("::", 4433)
    assert cfg.listen.path_template == DEFAULT_PATH_TEMPLATE
    assert cfg.state_dir == Path("/var/lib/masque-relay")
    assert cfg.tls.cert_file == cfg.state_dir / "cert.pem"
    assert cfg.tls.key_file == cfg.state_dir / "key.pem"
    assert cfg.auth.tokens_file == cfg.state_dir / "tokens"
    assert not cfg.auth.tokens_file_required and not cfg.auth.allow_anonymous
    assert cfg.pool.ipv4 == IPv4Network("10.100.0.0/24")
    assert cfg.pool.ipv6 == IPv6Network("fd00:6d61:7371::/64")
    assert (cfg.pool.ipv4_client_prefix, cfg.pool.ipv6_client_prefix) == (32, 128)
    assert cfg.routes.allowed == (ip_network("0.0.0.0/0"), ip_network("::/0"))
    assert cfg.nat.enabled and cfg.nat.egress_interface is None
    assert (cfg.tun.name, cfg.tun.mtu) == ("masque0", 1400)
    assert cfg.carrier.mode is CarrierMode.DATAGRAM and not cfg.carrier.compat_length_framing
    assert cfg.metrics.listen is None
    assert cfg.log.level == "info"
    assert cfg.xdp == XdpConfig(
        mode=XdpMode.OFF, interface=None, handshake_rate_pps=1000, handshake_burst=100
    )


def test_config_is_frozen() -> None:
    cfg = load_config(None)
    with pytest.raises(dataclasses.FrozenInstanceError):
        cfg.listen.port = 1  # type: ignore[misc]


def test_example_parses_to_the_defaults() -> None:
    assert RelayConfig.to_toml_example() == EXAMPLE_TOML
    assert parse_config(EXAMPLE_TOML) == load_config(None)


def test_example_commented_keys_are_valid_too() -> None:
    """Uncommenting every `# key = value` line of the example still parses."""
    lines = []
    for line in EXAMPLE_TOML.splitlines():
        m = re.match(r"# ([a-z_]+ = .*)$", line)
        lines.append(m.group(1) if m else line)
    cfg = parse_config("\n".join(lines), base_dir=Path("/etc/masque-relay"))
    assert cfg.metrics.listen == ("127.0.0.1", 9464)
    assert cfg.auth.client_ca_file == Path("/etc/masque-relay/clients-ca.pem")
    assert cfg.nat.egress_interface == "eth0"
    assert cfg.auth.tokens_file_required
    assert cfg.xdp.interface == "eth0" and cfg.xdp.mode is XdpMode.OFF


def test_readme_toml_examples_parse() -> None:
    """Any ```toml block in the README that starts with '# masque-relay' must be valid."""
    readme = (REPO / "README.md").read_text(encoding="utf-8")
    for block in re.findall(r"```toml\n(.*?)```", readme, flags=re.S):
        if block.startswith("# masque-relay"):
            parse_config(block, source="README.md")


def test_load_from_file_resolves_relative_paths(tmp_path: Path) -> None:
    conf = tmp_path / "etc" / "relay.toml"
    conf.parent.mkdir()
    conf.write_text(
        'state_dir = "state"\n'
        "[auth]\n"
        'tokens_file = "tokens.txt"\n'
        'tokens = ["abcdefghijklmnop-0123"]\n'
        "[tls]\n"
        'cert_file = "/abs/cert.pem"\n'
    )
    cfg = load_config(conf)
    assert cfg.source == str(conf)
    assert cfg.state_dir == conf.parent / "state"
    assert cfg.tls.cert_file == Path("/abs/cert.pem")
    assert cfg.tls.key_file == conf.parent / "state" / "key.pem"  # follows state_dir
    assert cfg.auth.tokens_file == conf.parent / "tokens.txt"
    assert cfg.auth.tokens_file_required
    assert cfg.auth.tokens == ("abcdefghijklmnop-0123",)


def test_state_dir_override_moves_derived_paths(tmp_path: Path) -> None:
    cfg = load_config(None, state_dir=tmp_path)
    assert cfg.tls.cert_file == tmp_path / "cert.pem"
    assert cfg.auth.tokens_file == tmp_path / "tokens"


def test_full_custom_config() -> None:
    cfg = parse_config(
        """
        [listen]
        host = "192.0.2.1"
        port = 443
        uri_template = "https://vpn.example/masque{?target,ipproto}"
        [pool]
        ipv4 = "100.64.0.0/16"
        ipv4_client_prefix = 30
        ipv6 = "2001:db8:1::/48"
        ipv6_client_prefix = 64
        [routes]
        allowed = ["::/0", "192.0.2.0/24", "10.0.0.0/8"]
        [carrier]
        mode = "capsule"
        compat_length_framing = true
        send_queue_packets = 64
        [limits]
        idle_timeout = 30
        max_sessions = 10
        [log]
        level = "DEBUG"
        format = "json"
        [metrics]
        listen = "[::1]:9100"
        """
    )
    assert cfg.listen.path_template == "/masque{?target,ipproto}"
    assert cfg.pool.ipv4_client_prefix == 30
    # sorted for ROUTE_ADVERTISEMENT: IPv4 first, then by address
    assert [str(n) for n in cfg.routes.allowed] == ["10.0.0.0/8", "192.0.2.0/24", "::/0"]
    assert cfg.carrier.mode is CarrierMode.CAPSULE and cfg.carrier.compat_length_framing
    assert cfg.limits.idle_timeout == 30.0 and isinstance(cfg.limits.idle_timeout, float)
    assert cfg.log.level == "debug"
    assert cfg.metrics.listen == ("::1", 9100)


def test_disabling_ipv6_drops_the_default_v6_route_and_relaxes_mtu() -> None:
    cfg = parse_config("[pool]\nipv6 = false\n[tun]\nmtu = 1200\n")
    assert cfg.pool.ipv6 is None
    assert cfg.routes.allowed == (ip_network("0.0.0.0/0"),)
    assert cfg.tun.mtu == 1200


def test_anonymous_config() -> None:
    cfg = parse_config("[auth]\nallow_anonymous = true\n")
    assert cfg.auth.allow_anonymous and cfg.auth.tokens_file is None


# (toml, key named in the error, words in the problem)
BAD = [
    ("[listen]\nprot = 1", "listen.prot", "did you mean 'port'"),
    ("[pools]\nipv4 = '10.0.0.0/24'", "pools", "did you mean 'pool'"),
    ("surprise = 1", "surprise", "unknown key"),
    ("[listen]\nport = '4433'", "listen.port", "must be an integer, not a string"),
    ("[listen]\nport = true", "listen.port", "not a boolean"),
    ("[listen]\nport = 70000", "listen.port", "between 1 and 65535"),
    ("[listen]\nhost = 'not a host!'", "listen.host", "neither an IP address"),
    ("listen = 5", "listen", "must be a table"),
    ("[listen]\nuri_template = 'http://x/{target}'", "listen.uri_template", "[template-scheme]"),
    ("[listen]\nuri_template = 'https://x/a/{+target}'", "listen.uri_template", "('+')"),
    ("[listen]\nuri_template = 'https://x/a/{/target}'", "listen.uri_template", "('/')"),
    ("[listen]\nuri_template = 'https://x/a/{target'", "listen.uri_template", "[template-syntax]"),
    ("[listen]\nuri_template = 'https://x/a b'", "listen.uri_template", "0x21-0x7E"),
    (
        "[listen]\nuri_template = 'https://{target}/a'",
        "listen.uri_template",
        "[template-authority]",
    ),
    ("[listen]\nuri_template = 'https://x/{t:3}'", "listen.uri_template", "[template-modifier]"),
    ("[listen]\nuri_template = 'https://x/{user}'", "listen.uri_template", "[template-variable]"),
    ("[listen]\nuri_template = 'relative/{target}'", "listen.uri_template", "[template-syntax]"),
    ("[pool]\nipv4 = '10.100.0.1/24'", "pool.ipv4", "host bits set"),
    ("[pool]\nipv4 = '10.100.0.0/33'", "pool.ipv4", "not a valid prefix"),
    ("[pool]\nipv4 = 'fd00::/64'", "pool.ipv4", "not an IPv4 prefix"),
    ("[pool]\nipv6 = '10.0.0.0/8'", "pool.ipv6", "not an IPv6 prefix"),
    ("[pool]\nipv4 = '127.0.0.0/24'", "pool.ipv4", "special-purpose range 127.0.0.0/8"),
    ("[pool]\nipv4 = '169.254.1.0/24'", "pool.ipv4", "169.254.0.0/16"),
    ("[pool]\nipv6 = 'fe80::/64'", "pool.ipv6", "fe80::/10"),
    ("[pool]\nipv6 = 'ff02::/64'", "pool.ipv6", "ff00::/8"),
    ("[pool]\nipv4 = true", "pool.ipv4", "prefix string or false"),
    ("[pool]\nipv4 = '10.0.0.0/31'", "pool.ipv4", "too small"),
    ("[pool]\nipv4_client_prefix = 16", "pool.ipv4_client_prefix", "shorter than the pool"),
    ("[pool]\nipv6_client_prefix = 129", "pool.ipv6_client_prefix", "between 0 and 128"),
    ("[pool]\nipv4 = false\nipv6 = false", "pool.ipv4", "both disabled"),
    (
        "[pool]\nipv4 = '10.0.0.0/30'\nipv4_client_prefix = 31",
        "pool.ipv4",
        "leaves no block",
    ),
    (
        "[routes]\nallowed = ['10.0.0.0/8', '10.1.0.0/16']",
        "routes.allowed[1]",
        "overlaps 10.0.0.0/8",
    ),
    ("[routes]\nallowed = ['10.0.0.1/8']", "routes.allowed[0]", "host bits"),
    ("[routes]\nallowed = [1]", "routes.allowed[0]", "must be a string"),
    ("[routes]\nallowed = '0.0.0.0/0'", "routes.allowed", "list of strings"),
    ("[pool]\nipv6 = false\n[routes]\nallowed = ['::/0']", "routes.allowed", "disabled"),
    ("[tun]\nmtu = 1279", "tun.mtu", "1280"),
    ("[tun]\nmtu = 100", "tun.mtu", "between 576"),
    ("[tun]\nname = 'much-too-long-name0'", "tun.name", "interface name"),
    ("[tun]\nname = 'a/b'", "tun.name", "interface name"),
    ("[nat]\negress_interface = ''", "nat.egress_interface", "interface name"),
    ("[nat]\nenabled = 'yes'", "nat.enabled", "true or false"),
    ("[carrier]\nmode = 'stream'", "carrier.mode", "'datagram', 'capsule'"),
    ("[carrier]\nsend_queue_packets = 0", "carrier.send_queue_packets", "between 1"),
    ("[limits]\nidle_timeout = 0", "limits.idle_timeout", "between 1"),
    ("[limits]\nidle_timeout = 'long'", "limits.idle_timeout", "must be a number"),
    ("[limits]\nmax_sessions = 1.5", "limits.max_sessions", "must be an integer"),
    ("[log]\nlevel = 'loud'", "log.level", "debug, info"),
    ("[log]\nformat = 'xml'", "log.format", "text, json"),
    ("[metrics]\nlisten = '9100'", "metrics.listen", "host:port"),
    ("[metrics]\nlisten = '::1:9100'", "metrics.listen", "[addr]:port"),
    ("[metrics]\nlisten = 'localhost:99999'", "metrics.listen", "port"),
    ("[auth]\ntokens = ['short']", "auth.tokens[0]", "too short"),
    ("[auth]\ntokens = ['has space in it, sadly']", "auth.tokens[0]", "not a bearer token"),
    ("[auth]\ntokens = ['abcdefghijklmnop', 5]", "auth.tokens[1]", "must be a string"),
    ("[auth]\nrequire_client_cert = true", "auth.require_client_cert", "client_ca_file"),
    (
        "[auth]\nallow_anonymous = true\ntokens = ['abcdefghijklmnopq']",
        "auth.allow_anonymous",
        "conflicts",
    ),
    ("[auth]\ntokens_file = ''", "auth.tokens_file", "must not be empty"),
    ("[tls]\ncert_file = 'x.pem'\nkey_file = 'x.pem'", "tls.key_file", "must differ"),
    ("[tls]\nnames = ['ok.example', 'bad name']", "tls.names[1]", "DNS name"),
    ("[xdp]\nmode = 'fast'", "xdp.mode", "'off', 'auto', 'native', 'generic'"),
    ("[xdp]\nmode = true", "xdp.mode", "must be a string"),
    ("[xdp]\nmode = 'auto'", "xdp.interface", "required when xdp.mode is 'auto'"),
    ("[xdp]\nmode = 'native'", "xdp.interface", "required when xdp.mode is 'native'"),
    ("[xdp]\nmode = 'generic'\ninterface = 'a/b'", "xdp.interface", "not an interface name"),
    ("[xdp]\ninterface = 'much-too-long-name0'", "xdp.interface", "not an interface name"),
    ("[xdp]\ninterface = ''", "xdp.interface", "not an interface name"),
    ("[xdp]\ninterface = 3", "xdp.interface", "must be a string"),
    ("[xdp]\nhandshake_rate_pps = -1", "xdp.handshake_rate_pps", "between 0 and 4294967295"),
    ("[xdp]\nhandshake_rate_pps = 4294967296", "xdp.handshake_rate_pps", "between 0"),
    ("[xdp]\nhandshake_rate_pps = 1.5", "xdp.handshake_rate_pps", "must be an integer"),
    ("[xdp]\nhandshake_burst = 0", "xdp.handshake_burst", "between 1 and 4294967295"),
    ("[xdp]\nhandshake_burst = '10'", "xdp.handshake_burst", "must be an integer"),
    ("[xdp]\nhandshake_rate = 5", "xdp.handshake_rate", "did you mean 'handshake_rate_pps'"),
    ("xdp = 'auto'", "xdp", "must be a table"),
]


@pytest.mark.parametrize(("text", "key", "words"), BAD, ids=[b[1] for b in BAD])
def test_bad_config_names_file_and_key(text: str, key: str, words: str) -> None:
    with pytest.raises(ConfigError) as info:
        parse_config(text, source="relay.toml")
    err = info.value
    assert err.source == "relay.toml"
    assert err.key == key, str(err)
    assert words in err.problem, str(err)
    assert str(err).startswith(f"relay.toml: {key}: ")


def test_invalid_toml_names_the_file(tmp_path: Path) -> None:
    conf = tmp_path / "broken.toml"
    conf.write_text("[listen\nport = 1\n")
    with pytest.raises(ConfigError) as info:
        load_config(conf)
    assert info.value.source == str(conf) and info.value.key is None
    assert "not valid TOML" in str(info.value)


def test_missing_file_is_a_config_error(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="cannot read"):
        load_config(tmp_path / "nope.toml")


@pytest.mark.parametrize(
    ("template", "path"),
    [
        (
            "https://{host}:{port}/.well-known/masque/ip/{target}/{ipproto}/",
            "/.well-known/masque/ip/{target}/{ipproto}/",
        ),
        ("https://proxy.example.org:4443/masque/ip?t={target}&i={ipproto}", None),
        ("https://proxy.example.org:4443/masque/ip{?target,ipproto}", None),
        ("https://masque.example.org/?user=bob", None),
        ("/vpn", "/vpn"),
        ("https://h/x{?target}{&ipproto}", None),
    ],
)
def test_rfc9484_example_templates_are_accepted(template: str, path: str | None) -> None:
    got = path_from_uri_template(template)
    if path is not None:
        assert got == path
    assert got.startswith("/")
    assert parse_config(f"[listen]\nuri_template = {template!r}\n").listen.path_template == got


def test_listen_template_matches_request_paths() -> None:
    listen = load_config(None).listen
    tpl = listen.template()
    assert tpl.path_template == DEFAULT_PATH_TEMPLATE and tpl.port == 4433
    scope = tpl.match("/.well-known/masque/ip/*/*/")
    assert scope is not None
    assert listen.template("::1").host == "::1"


def test_with_replaced_config_still_compares_by_value() -> None:
    cfg = load_config(None)
    changed = dataclasses.replace(cfg, tun=dataclasses.replace(cfg.tun, mtu=1300))
    assert changed != cfg and changed.tun.mtu == 1300


# -- [xdp] and its command-line options -------------------------------------------------


@pytest.mark.parametrize("mode", list(XdpMode))
def test_xdp_table(mode: XdpMode) -> None:
    cfg = parse_config(
        f"[xdp]\nmode = '{mode.value}'\ninterface = 'enp1s0'\n"
        "handshake_rate_pps = 0\nhandshake_burst = 4294967295\n"
    )
    assert cfg.xdp == XdpConfig(
        mode=mode, interface="enp1s0", handshake_rate_pps=0, handshake_burst=0xFFFFFFFF
    )
    assert cfg.xdp.mode is mode


def test_xdp_off_needs_no_interface_and_keeps_one_given() -> None:
    assert parse_config("[xdp]\nmode = 'off'\n").xdp.interface is None
    assert parse_config("[xdp]\ninterface = 'eth1'\n").xdp == XdpConfig(interface="eth1")


def _cli(*argv: str) -> RelayConfig:
    return config_from_args(build_parser().parse_args(list(argv)))


def test_xdp_command_line_options() -> None:
    assert _cli().xdp == XdpConfig()
    cfg = _cli("--xdp", "native", "--xdp-interface", "veth0")
    assert cfg.xdp == XdpConfig(mode=XdpMode.NATIVE, interface="veth0")


def test_xdp_command_line_overrides_the_file(tmp_path: Path) -> None:
    conf = tmp_path / "relay.toml"
    conf.write_text("[xdp]\nmode = 'auto'\ninterface = 'eth0'\nhandshake_burst = 7\n")
    assert _cli("-c", str(conf)).xdp == XdpConfig(XdpMode.AUTO, "eth0", 1000, 7)
    assert _cli("-c", str(conf), "--xdp", "off").xdp.mode is XdpMode.OFF
    cfg = _cli("-c", str(conf), "--xdp", "generic", "--xdp-interface", "eth1")
    assert cfg.xdp == XdpConfig(XdpMode.GENERIC, "eth1", 1000, 7)
    # The file names the interface, the command line turns XDP on.
    conf.write_text("[xdp]\ninterface = 'eth2'\n")
    assert _cli("-c", str(conf), "--xdp", "auto").xdp == XdpConfig(XdpMode.AUTO, "eth2")


def test_xdp_command_line_without_interface_is_an_error() -> None:
    with pytest.raises(ConfigError) as info:
        _cli("--xdp", "auto")
    assert info.value.key == "xdp.interface"
    assert "--xdp-interface" in info.value.problem


def test_xdp_command_line_interface_is_validated() -> None:
    with pytest.raises(ConfigError, match="not an interface name"):
        _cli("--xdp", "auto", "--xdp-interface", "no/slash")


def test_xdp_command_line_mode_is_validated(capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit):
        build_parser().parse_args(["--xdp", "fast"])
    assert "invalid choice: 'fast'" in capsys.readouterr().err
