"""``make bench``: the tunnel against plain routing on the namespace test bed.

    python -m bench                      # baseline vs tunnel, 3 rounds, every scenario
    python -m bench --smoke              # one short round of a reduced set (< 1 min)
    python -m bench --carrier capsule    # the tunnel with DATAGRAM capsules
    python -m bench --compare carrier=datagram carrier=capsule --pairs 5
    python -m bench --scenarios tcp,ping --rounds 5

Prints a table, writes ``bench/results/<time>/bench.json`` and PNG plots next to
it; the last line of output is ``wrote <json path>``. Holds
/run/masque-bench.lock for the whole run so two benchmarks never overlap. Exit
status: 0 when every scenario produced figures, 1 when some failed (the JSON
says which), 2 for bad options or a feature this build does not have.
"""

from __future__ import annotations

import argparse
import dataclasses
import datetime
import json
import sys
import time
from collections.abc import Sequence
from pathlib import Path

from bench.lock import LockTimeout, bench_lock
from bench.procstat import machine_info
from bench.report import document, plot_all, results_from_document, table, write_json
from bench.scenarios import SCENARIOS, Plan, Results, RunSpec, run_rounds
from bench.topology import DEFAULT_FEATURES, FEATURES, Config, ConfigError, check_features
from tests.netbed import open_testbed

RESULTS_DIR = Path(__file__).resolve().parent / "results"


def _ints(text: str) -> tuple[int, ...]:
    try:
        values = tuple(int(v) for v in text.split(",") if v.strip())
    except ValueError:
        raise argparse.ArgumentTypeError(
            f"expected comma-separated integers, got {text!r}"
        ) from None
    if any(v < 0 for v in values):
        raise argparse.ArgumentTypeError("values must not be negative")
    return values


def _scenarios(text: str) -> tuple[str, ...]:
    names = tuple(v.strip() for v in text.split(",") if v.strip())
    unknown = [n for n in names if n not in SCENARIOS]
    if unknown or not names:
        raise argparse.ArgumentTypeError(
            f"unknown scenario(s) {unknown}; choose from {', '.join(SCENARIOS)}"
        )
    return names


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="python -m bench",
        description="Benchmarks of the CONNECT-IP tunnel against plain routing, on the "
        "client/relay/target namespace test bed.",
        formatter_class=argparse.RawDescriptionHelpFormatter,
        epilog="Configuration specs for --compare: 'baseline', 'tunnel', or key=value pairs "
        "joined by commas: mode=baseline|tunnel, carrier=datagram|capsule, nat=on|off, "
        + ", ".join(f"{name}=on|off" for name in FEATURES)
        + ". Specs start from the switches given (--carrier, --nat, ...).",
    )
    parser.add_argument("--smoke", action="store_true", help="one short round of a reduced set")
    what = parser.add_argument_group("what is compared")
    what.add_argument(
        "--carrier",
        choices=("datagram", "capsule"),
        default="datagram",
        help="how the tunnel carries packets (default datagram)",
    )
    what.add_argument(
        "--nat",
        choices=("on", "off"),
        default="off",
        help="relay masquerades the client pool (default off: routed, like the baseline)",
    )
    for name in FEATURES:
        default = "on" if name in DEFAULT_FEATURES else "off"
        what.add_argument(
            f"--{name}",
            choices=("on", "off"),
            default=default,
            help=f"{name} in the tunnel configuration (default {default})",
        )
    what.add_argument(
        "--compare",
        nargs=2,
        metavar=("A", "B"),
        help="run configurations A and B alternately (A B A B ...), ratios B/A pair by pair",
    )
    how = parser.add_argument_group("how much")
    how.add_argument(
        "--rounds",
        "--repeats",
        "--pairs",
        dest="rounds",
        type=int,
        help="rounds of A then B; each figure is the median over them (default 3, smoke 1)",
    )
    how.add_argument("--scenarios", type=_scenarios, help=f"subset of {','.join(SCENARIOS)}")
    how.add_argument("--tcp-seconds", "--seconds", dest="tcp_seconds", type=float)
    how.add_argument("--udp-seconds", type=float)
    how.add_argument("--udp-sizes", type=_ints, help="UDP payload sizes, bytes")
    how.add_argument("--udp-rates", type=_ints, help="offered packets/s of the sweep")
    how.add_argument("--ping-count", type=int)
    how.add_argument("--session-steps", type=_ints, help="open idle sessions at each step")
    how.add_argument("--session-concurrency", type=int)
    out = parser.add_argument_group("output")
    out.add_argument("--out", type=Path, help=f"results directory (default {RESULTS_DIR}/<time>)")
    out.add_argument("--no-plots", action="store_true")
    out.add_argument(
        "--report",
        type=Path,
        metavar="JSON",
        help="print the table and redraw the plots of a stored run (measures nothing)",
    )
    out.add_argument(
        "--lock-timeout",
        type=float,
        default=1800.0,
        help="seconds to wait for another benchmark to finish (default 1800)",
    )
    return parser


def _configs(args: argparse.Namespace) -> tuple[Config, Config]:
    defaults = Config(
        mode="tunnel",
        carrier=args.carrier,
        nat=args.nat == "on",
        features=frozenset(
            name for name in FEATURES if getattr(args, name.replace("-", "_")) == "on"
        ),
    )
    if args.compare:
        a, b = (Config.parse(spec, defaults) for spec in args.compare)
        return a, b
    return Config(mode="baseline"), defaults


def _plan(args: argparse.Namespace) -> Plan:
    plan = Plan.smoke() if args.smoke else Plan()
    overrides = {
        "scenarios": args.scenarios,
        "tcp_seconds": args.tcp_seconds,
        "udp_seconds": args.udp_seconds,
        "udp_sizes": args.udp_sizes,
        "udp_rates": args.udp_rates,
        "ping_count": args.ping_count,
        "session_steps": args.session_steps,
        "session_concurrency": args.session_concurrency,
    }
    return dataclasses.replace(plan, **{k: v for k, v in overrides.items() if v is not None})


def show(results: Results, mode: str, *, pairs: bool) -> None:
    """Print the heading, the table and any failures."""
    a, b = results.labels
    print(f"masque-relay bench ({mode}): A = {a}, B = {b}; {results.rounds} round(s), A B A B ...")
    for label, notes in results.notes.items():
        if notes:
            print(f"  {label}: {'; '.join(notes)}")
    print(f"  every figure is the median over the rounds; ratio = B / A ({b} / {a})")
    print(table(results, pairs=pairs))
    if results.errors:
        print(f"\n{len(results.errors)} scenario(s) failed:")
        for failure in results.errors:
            text = str(failure["error"]).strip()
            first = text.splitlines()[0] if text else ""
            print(f"  {failure['config']} round {failure['round']}: {failure['scenario']}: {first}")


def report_again(path: Path, *, plots: bool) -> int:
    """``--report``: the table (and plots, next to the file) of a stored run, no measuring."""
    doc = json.loads(path.read_text())
    results = results_from_document(doc)
    show(results, str(doc.get("mode", "?")), pairs=doc.get("mode") == "compare")
    for plot in plot_all(results, path.parent) if plots else []:
        print(f"plot {plot}")
    return 0


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    if args.report is not None:
        return report_again(args.report, plots=not args.no_plots)
    try:
        configs = _configs(args)
        for config in configs:
            check_features(config)
    except ConfigError as error:
        print(f"bench: {error}", file=sys.stderr)
        return 2
    plan = _plan(args)
    rounds = args.rounds or (1 if args.smoke else 3)
    if rounds < 1:
        print("bench: --rounds must be at least 1", file=sys.stderr)
        return 2
    spec = RunSpec(configs, plan, rounds)
    mode = "compare" if args.compare else "baseline-vs-tunnel"
    stamp = datetime.datetime.now(datetime.UTC).strftime("%Y%m%dT%H%M%SZ")
    directory = args.out or RESULTS_DIR / (
        stamp + ("-smoke" if args.smoke else "") + ("-compare" if args.compare else "")
    )

    started = time.monotonic()

    def progress(text: str) -> None:
        elapsed = time.monotonic() - started
        print(f"[{elapsed:6.1f}s] {text}", file=sys.stderr, flush=True)

    try:
        with bench_lock(timeout=args.lock_timeout):
            started = time.monotonic()
            with open_testbed() as bed:
                results = run_rounds(bed, spec, progress)
            duration = time.monotonic() - started
    except LockTimeout as error:
        print(f"bench: {error}", file=sys.stderr)
        return 1

    show(results, mode, pairs=bool(args.compare))

    directory.mkdir(parents=True, exist_ok=True)
    plots = [] if args.no_plots else plot_all(results, directory)
    for path in plots:
        print(f"plot {path}")
    header = {
        "schema": "masque-bench/1",
        "mode": mode,
        "started": datetime.datetime.fromtimestamp(spec.started, datetime.UTC).isoformat(),
        "duration_s": round(duration, 1),
        "machine": machine_info(),
        "parameters": {
            "argv": list(sys.argv[1:] if argv is None else argv),
            "options": {k: (str(v) if isinstance(v, Path) else v) for k, v in vars(args).items()},
            "rounds": rounds,
            "plan": dataclasses.asdict(plan),
            "configs": {"A": configs[0].as_dict(), "B": configs[1].as_dict()},
        },
        "plots": [str(p) for p in plots],
    }
    out = directory / "bench.json"
    write_json(out, document(results, header))
    print(f"wrote {out}")
    return 1 if results.errors else 0


if __name__ == "__main__":
    sys.exit(main())
