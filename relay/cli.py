"""``masque-relay``: the CONNECT-IP relay's command line.

Runs with safe defaults and no configuration at all; a TOML file (``-c``) sets
everything, and the options below override the file. Events go to stdout one
per line (``ready ...``, ``session-start ...``); logs go to stderr.
"""

from __future__ import annotations

import argparse
import asyncio
import dataclasses
import ipaddress
import json
import logging
import signal
import sys
from collections.abc import Coroutine, Sequence
from pathlib import Path
from typing import Any

from relay.config import (
    CarrierMode,
    ConfigError,
    RelayConfig,
    XdpMode,
    interface_name_problem,
    load_config,
    parse_host_port,
    xdp_interface_missing,
)


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="masque-relay",
        description="MASQUE CONNECT-IP (RFC 9484) relay: accepts IP-over-HTTP/3 tunnels "
        "from masque-client and forwards their packets.",
    )
    parser.add_argument("--version", action="version", version="masque-relay 0.1.0")
    parser.add_argument("-c", "--config", type=Path, help="TOML configuration file")
    parser.add_argument(
        "--state-dir",
        type=Path,
        help="where the certificate, key and generated token live (default /var/lib/masque-relay)",
    )
    parser.add_argument("--listen", metavar="HOST:PORT", help="UDP address to serve HTTP/3 on")
    parser.add_argument(
        "--token", action="append", default=[], help="accept this bearer token (repeatable)"
    )
    parser.add_argument("--pool-v4", metavar="CIDR", help="IPv4 client pool ('off' disables)")
    parser.add_argument("--pool-v6", metavar="CIDR", help="IPv6 client pool ('off' disables)")
    parser.add_argument("--no-nat", action="store_true", help="route the pools, no masquerade")
    parser.add_argument("--egress", metavar="IFNAME", help="NAT egress interface")
    parser.add_argument(
        "--carrier",
        choices=[m.value for m in CarrierMode],
        help="datagram (default) or capsule (never use HTTP/3 datagrams)",
    )
    parser.add_argument("--tun-name", help="relay TUN device name")
    parser.add_argument("--tun-mtu", type=int, help="relay TUN device MTU")
    parser.add_argument("--metrics", metavar="HOST:PORT", help="serve Prometheus metrics here")
    parser.add_argument("--idle-timeout", type=float, help="end sessions idle this long (s)")
    parser.add_argument(
        "--no-fast-path",
        action="store_true",
        help="pure-Python packet path instead of the compiled one (comparison, debugging)",
    )
    parser.add_argument(
        "--no-datagram-lane",
        action="store_true",
        help="every QUIC packet through aioquic (no DATAGRAM packets handled in C)",
    )
    parser.add_argument(
        "--xdp",
        choices=[m.value for m in XdpMode],
        help="XDP front end: off (default), auto (native, else generic), native, generic",
    )
    parser.add_argument(
        "--xdp-interface", metavar="IFNAME", help="interface to attach the XDP front end to"
    )
    parser.add_argument("--session-rate-mbit", type=float, help="per-session bandwidth cap")
    parser.add_argument("--global-rate-mbit", type=float, help="whole-relay bandwidth cap")
    parser.add_argument("--log-level", help="debug, info, warning, error")
    parser.add_argument("--log-format", choices=["text", "json"], help="stderr log format")
    return parser


def _pool(text: str) -> ipaddress.IPv4Network | ipaddress.IPv6Network | None:
    return None if text == "off" else ipaddress.ip_network(text)


def config_from_args(args: argparse.Namespace) -> RelayConfig:
    """The configuration file (or defaults) with the command-line overrides applied."""
    cfg = load_config(args.config, state_dir=args.state_dir)
    replace = dataclasses.replace
    if args.listen:
        host, port = parse_host_port(args.listen)
        cfg = replace(cfg, listen=replace(cfg.listen, host=host, port=port))
    if args.token:
        cfg = replace(cfg, auth=replace(cfg.auth, tokens=(*cfg.auth.tokens, *args.token)))
    if args.pool_v4:
        cfg = replace(cfg, pool=replace(cfg.pool, ipv4=_pool(args.pool_v4)))
    if args.pool_v6:
        cfg = replace(cfg, pool=replace(cfg.pool, ipv6=_pool(args.pool_v6)))
    if args.no_nat:
        cfg = replace(cfg, nat=replace(cfg.nat, enabled=False))
    if args.egress:
        cfg = replace(cfg, nat=replace(cfg.nat, egress_interface=args.egress))
    if args.carrier:
        cfg = replace(cfg, carrier=replace(cfg.carrier, mode=CarrierMode(args.carrier)))
    if args.tun_name:
        cfg = replace(cfg, tun=replace(cfg.tun, name=args.tun_name))
    if args.tun_mtu:
        cfg = replace(cfg, tun=replace(cfg.tun, mtu=args.tun_mtu))
    if args.metrics:
        cfg = replace(cfg, metrics=replace(cfg.metrics, listen=parse_host_port(args.metrics)))
    if args.idle_timeout:
        cfg = replace(cfg, limits=replace(cfg.limits, idle_timeout=args.idle_timeout))
    if args.no_fast_path:
        cfg = replace(cfg, dataplane=replace(cfg.dataplane, fast_path=False))
    if args.no_datagram_lane:
        cfg = replace(cfg, dataplane=replace(cfg.dataplane, datagram_lane=False))
    if args.xdp:
        cfg = replace(cfg, xdp=replace(cfg.xdp, mode=XdpMode(args.xdp)))
    if args.xdp_interface:
        problem = interface_name_problem(args.xdp_interface)
        if problem:
            raise ConfigError("--xdp-interface", None, problem)
        cfg = replace(cfg, xdp=replace(cfg.xdp, interface=args.xdp_interface))
    if cfg.xdp.mode is not XdpMode.OFF and cfg.xdp.interface is None:
        raise ConfigError(cfg.source, "xdp.interface", xdp_interface_missing(cfg.xdp.mode))
    if args.session_rate_mbit is not None:
        cfg = replace(cfg, limits=replace(cfg.limits, session_rate_mbit=args.session_rate_mbit))
    if args.global_rate_mbit is not None:
        cfg = replace(cfg, limits=replace(cfg.limits, global_rate_mbit=args.global_rate_mbit))
    if args.log_format:
        cfg = replace(cfg, log=replace(cfg.log, format=args.log_format))
    if args.log_level:
        cfg = replace(cfg, log=replace(cfg.log, level=args.log_level))
    return cfg


async def run(cfg: RelayConfig) -> int:
    """Serve until SIGTERM/SIGINT, then drain."""
    from relay.server import RelayServer

    server = RelayServer(cfg)
    loop = asyncio.get_running_loop()
    stop = asyncio.Event()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, stop.set)
    # An operator (or a test) can rotate every connection's 1-RTT keys (RFC 9001 §6).
    loop.add_signal_handler(signal.SIGUSR1, server.request_key_updates)
    try:
        await server.start()
        await stop.wait()
    finally:
        await server.stop()
    return 0


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        cfg = config_from_args(args)
    except (ConfigError, ValueError) as error:
        print(f"masque-relay: configuration error: {error}", file=sys.stderr)
        return 2
    logging.basicConfig(
        level=cfg.log.level.upper(),
        stream=sys.stderr,
        format="%(asctime)s %(levelname)s %(name)s: %(message)s",
    )
    # aioquic logs every connection's handshake at INFO: keep that for debug runs.
    if logging.getLogger().level > logging.DEBUG:
        logging.getLogger("quic").setLevel(logging.WARNING)
    try:
        return _run_loop(run(cfg))
    except PermissionError as error:
        print(f"masque-relay: {error} (the relay needs root: TUN, nftables)", file=sys.stderr)
        return 1


class JsonFormatter(logging.Formatter):
    """One JSON object per log line, for log shippers (``[log] format = "json"``)."""

    def format(self, record: logging.LogRecord) -> str:
        entry = {
            "time": self.formatTime(record, "%Y-%m-%dT%H:%M:%S"),
            "level": record.levelname.lower(),
            "logger": record.name,
            "message": record.getMessage(),
        }
        if record.exc_info:
            entry["exception"] = self.formatException(record.exc_info)
        return json.dumps(entry)


def _run_loop(main_coroutine: Coroutine[Any, Any, int]) -> int:
    """Run on uvloop (a dependency: far cheaper per UDP datagram), asyncio if absent."""
    try:
        import uvloop
    except ImportError:
        return asyncio.run(main_coroutine)
    return uvloop.run(main_coroutine)


if __name__ == "__main__":
    raise SystemExit(main())
