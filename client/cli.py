"""``masque-client``: the CONNECT-IP client's command line."""

from __future__ import annotations

import argparse
import sys
from collections.abc import Sequence


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="masque-client",
        description="MASQUE CONNECT-IP (RFC 9484) client: tunnels this host's IP traffic "
        "to a masque-relay over HTTP/3.",
    )
    parser.add_argument("--version", action="version", version="masque-client 0.1.0")
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    parser = build_parser()
    parser.parse_args(argv)
    parser.print_help()
    print("\nmasque-client: the tunnel client is not implemented in this version.", file=sys.stderr)
    return 2


if __name__ == "__main__":
    raise SystemExit(main())
