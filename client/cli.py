"""``masque-client``: the CONNECT-IP client's command line.

Events go to stdout one per line (``connected ...``, ``ready ...``,
``disconnected ...``, ``refused ...``); logs go to stderr. Exit codes: 0 after
SIGINT/SIGTERM (routes and TUN removed), 2 for bad options, 3 when the relay
refuses our credentials (401/403).
"""

from __future__ import annotations

import argparse
import asyncio
import logging
import signal
import sys
from collections.abc import Coroutine, Sequence
from pathlib import Path
from typing import Any

from client.tls import TlsPolicy
from client.tunnel import DEFAULT_MAX_MTU, ClientOptions, ClientTunnel
from masque.template import as_ipproto, parse_target


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="masque-client",
        description="MASQUE CONNECT-IP (RFC 9484) client: tunnels this host's IP traffic "
        "to a masque-relay over HTTP/3.",
    )
    parser.add_argument("--version", action="version", version="masque-client 0.1.0")
    parser.add_argument(
        "--relay",
        required=True,
        metavar="HOST:PORT",
        help="the relay's UDP address ([v6]:port for IPv6)",
    )
    parser.add_argument("--token", help="bearer token the relay printed or was given")
    verify = parser.add_mutually_exclusive_group(required=True)
    verify.add_argument(
        "--pin-sha256",
        metavar="HEX",
        help="SHA-256 of the relay's certificate (self-signed relays)",
    )
    verify.add_argument("--ca-file", type=Path, help="CA bundle that signed the relay's cert")
    verify.add_argument(
        "--insecure",
        action="store_true",
        help="do not verify the relay's certificate (testing only)",
    )
    parser.add_argument("--client-cert", type=Path, help="PEM certificate for mTLS")
    parser.add_argument("--client-key", type=Path, help="PEM key of --client-cert")
    parser.add_argument("--server-name", help="TLS server name (default: the relay host)")
    parser.add_argument("--template", help="the relay's URI template (default RFC 9484 §3)")
    parser.add_argument("--target", default="*", help="scope: prefix, hostname or * (default)")
    parser.add_argument("--ipproto", default="*", help="scope: IP protocol number or *")
    parser.add_argument(
        "--no-datagrams",
        action="store_true",
        help="do not negotiate HTTP/3 datagrams: packets go in capsules",
    )
    parser.add_argument(
        "--routes", default="advertised", help="advertised (default), full, or CIDR[,CIDR...]"
    )
    parser.add_argument("--tun-name", default="mqtun0")
    parser.add_argument(
        "--mtu",
        type=int,
        default=DEFAULT_MAX_MTU,
        help=f"upper bound on the tunnel MTU (default {DEFAULT_MAX_MTU})",
    )
    parser.add_argument(
        "--reconnect-max",
        type=float,
        default=30.0,
        help="longest pause between reconnection attempts (s)",
    )
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
    parser.add_argument("--log-level", default="info")
    return parser


def _split_relay(text: str) -> tuple[str, int]:
    if text.startswith("["):
        host, sep, port = text[1:].partition("]:")
    else:
        host, sep, port = text.rpartition(":")
    if not sep or not host or not port.isdigit() or not 1 <= int(port) <= 65535:
        raise ValueError(f"--relay {text!r}: expected HOST:PORT or [IPv6]:PORT")
    return host, int(port)


def options_from_args(args: argparse.Namespace) -> ClientOptions:
    host, port = _split_relay(args.relay)
    tls = TlsPolicy(ca_file=args.ca_file, pin_sha256=args.pin_sha256, insecure=args.insecure)
    tls.validate()
    if (args.client_cert is None) != (args.client_key is None):
        raise ValueError("--client-cert and --client-key go together")
    return ClientOptions(
        relay_host=host,
        relay_port=port,
        tls=tls,
        token=args.token,
        client_cert=args.client_cert,
        client_key=args.client_key,
        server_name=args.server_name,
        template=args.template,
        target=parse_target(args.target),
        ipproto=as_ipproto(args.ipproto),
        datagrams=not args.no_datagrams,
        routes=args.routes,
        tun_name=args.tun_name,
        mtu=args.mtu,
        reconnect_max=args.reconnect_max,
        fast_path=not args.no_fast_path,
        datagram_lane=not args.no_datagram_lane,
    )


async def run(options: ClientOptions) -> int:
    """Run the tunnel until SIGINT/SIGTERM (exit 0) or a final refusal (exit 3)."""
    loop = asyncio.get_running_loop()
    tunnel = ClientTunnel(options)
    task = asyncio.ensure_future(tunnel.run())
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, task.cancel)
    # SIGUSR1: rotate the 1-RTT keys (RFC 9001 §6); SIGUSR2: move to a new UDP port,
    # as a NAT rebinding would (RFC 9000 §9). For operators, and for the tests.
    loop.add_signal_handler(signal.SIGUSR1, tunnel.request_key_update)
    loop.add_signal_handler(signal.SIGUSR2, tunnel.rebind)
    try:
        return await task
    except asyncio.CancelledError:
        return 0  # the tunnel's exit stack removed the routes and the TUN


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        options = options_from_args(args)
    except ValueError as error:
        print(f"masque-client: {error}", file=sys.stderr)
        return 2
    logging.basicConfig(
        level=args.log_level.upper(),
        stream=sys.stderr,
        format="%(asctime)s %(levelname)s %(name)s: %(message)s",
    )
    # aioquic logs every connection's handshake at INFO: keep that for debug runs.
    if logging.getLogger().level > logging.DEBUG:
        logging.getLogger("quic").setLevel(logging.WARNING)
    return _run_loop(run(options))


def _run_loop(main_coroutine: Coroutine[Any, Any, int]) -> int:
    """Run on uvloop (a dependency: far cheaper per UDP datagram), asyncio if absent."""
    try:
        import uvloop
    except ImportError:
        return asyncio.run(main_coroutine)
    return uvloop.run(main_coroutine)


if __name__ == "__main__":
    raise SystemExit(main())
