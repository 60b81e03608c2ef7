"""``masque-relay``: the CONNECT-IP relay's command line."""

from __future__ import annotations

import argparse
import sys
from collections.abc import Sequence


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="masque-relay",
        description="MASQUE CONNECT-IP (RFC 9484) relay: accepts IP-over-HTTP/3 tunnels "
        "from masque-client and forwards their packets.",
    )
    parser.add_argument("--version", action="version", version="masque-relay 0.1.0")
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    parser = build_parser()
    parser.parse_args(argv)
    # The relay's server loop arrives with the tunnel work; until then, say so.
    parser.print_help()
    print("\nmasque-relay: the relay service is not implemented in this version.", file=sys.stderr)
    return 2


if __name__ == "__main__":
    raise SystemExit(main())
