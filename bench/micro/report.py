"""``make bench-micro``: run the microbenchmarks, print packets/s of C and Python.

    python -m bench.micro                 # every operation (~20 s on 2 vCPUs)
    python -m bench.micro -k "udp or tun" # a subset (pytest -k expression)
    python -m bench.micro --max-time 2 --rounds 3000

Runs ``pytest bench/micro`` with ``--benchmark-json`` (in one process, one
thread: the figures are per core), then prints a markdown table: per
operation, packets/s = packets per round / median round time for the C and
the Python implementation, and their ratio. Writes the table (``table.md``)
and pytest-benchmark's JSON (``benchmarks.json``, every round's timing, the
machine and the commit) to ``bench/results/micro/<UTC time>/``; the last line
of output is ``wrote <json path>``. Holds the machine-wide benchmark lock
(``bench.lock``) so it never overlaps ``make bench``. Exit status: pytest's.
"""

from __future__ import annotations

import argparse
import datetime
import json
import os
import subprocess
import sys
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from bench.lock import LockTimeout, bench_lock
from bench.micro.ops import OPERATIONS
from bench.procstat import machine_info

ROOT = Path(__file__).resolve().parents[2]
MICRO_DIR = Path(__file__).resolve().parent
RESULTS_DIR = ROOT / "bench" / "results" / "micro"


@dataclass(frozen=True)
class Row:
    operation: str
    c: float | None  # packets/s
    python: float | None

    @property
    def speedup(self) -> float | None:
        if self.c is None or self.python is None or self.python == 0:
            return None
        return self.c / self.python


def rows(document: dict[str, Any]) -> list[Row]:
    """One row per benchmark group of a pytest-benchmark JSON document, in table order."""
    rates: dict[str, dict[str, float]] = {}
    for bench in document.get("benchmarks", []):
        impl = (bench.get("params") or {}).get("impl")
        median = bench["stats"]["median"]
        packets = bench.get("extra_info", {}).get("packets")
        if impl not in ("c", "python") or not packets or median <= 0:
            continue
        rates.setdefault(bench["group"], {})[impl] = packets / median
    known = [name for name in OPERATIONS if name in rates]
    order = known + sorted(set(rates) - set(known))
    return [Row(name, rates[name].get("c"), rates[name].get("python")) for name in order]


def fmt_rate(value: float | None) -> str:
    if value is None:
        return "-"
    for scale, suffix in ((1e9, "G"), (1e6, "M"), (1e3, "k")):
        if value >= scale:
            return f"{value / scale:.3g} {suffix}"
    return f"{value:.3g}"


def fmt_speedup(value: float | None) -> str:
    if value is None:
        return "-"
    return f"{value:.1f}x" if value >= 10 else f"{value:.2f}x"


def table(table_rows: Sequence[Row]) -> str:
    """The markdown table: operation | C packets/s | Python packets/s | speed-up."""
    lines = [
        "| operation | C packets/s | Python packets/s | speed-up |",
        "|---|--:|--:|--:|",
    ]
    lines += [
        f"| {r.operation} | {fmt_rate(r.c)} | {fmt_rate(r.python)} | {fmt_speedup(r.speedup)} |"
        for r in table_rows
    ]
    return "\n".join(lines)


def legend(table_rows: Sequence[Row]) -> str:
    return "\n".join(
        f"- `{r.operation}`: {OPERATIONS[r.operation].description}"
        for r in table_rows
        if r.operation in OPERATIONS
    )


def document_text(document: dict[str, Any]) -> str:
    """Table, what each row measures and where it was measured, as markdown."""
    found = rows(document)
    machine = document.get("micro_machine", {})
    facts = {
        "cpu_model": "{}",
        "cores": "{} cores",
        "kernel": "Linux {}",
        "python": "Python {}",
        "commit": "commit {:.12}",
    }
    where = ", ".join(
        form.format(machine[key]) for key, form in facts.items() if machine.get(key) is not None
    )
    if machine.get("commit_dirty"):
        where += " (dirty tree)"
    head = (
        "Microbenchmarks: one batch of 64 packets per round, one thread; "
        "packets/s = 64 / median round time."
    )
    parts = [head, "", table(found), "", legend(found)]
    if where:
        parts += ["", f"Machine: {where}."]
    return "\n".join(parts) + "\n"


def _arguments(argv: Sequence[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        prog="python -m bench.micro", description=__doc__.split("\n\n", 1)[0]
    )
    parser.add_argument("-k", dest="select", help="pytest -k expression (a subset)")
    parser.add_argument(
        "--max-time",
        type=float,
        default=1.0,
        help="seconds per stateless benchmark (pytest-benchmark calibrates rounds); default 1",
    )
    parser.add_argument(
        "--rounds",
        type=int,
        default=1000,
        help="rounds of each stateful benchmark (TTL, QUIC, UDP, TUN); default 1000",
    )
    parser.add_argument(
        "--out", type=Path, help=f"results directory (default {RESULTS_DIR}/<time>)"
    )
    parser.add_argument(
        "--lock-timeout", type=float, default=1800.0, help="seconds to wait for another benchmark"
    )
    return parser.parse_args(argv)


def main(argv: Sequence[str] | None = None) -> int:
    args = _arguments(argv)
    stamp = datetime.datetime.now(datetime.UTC).strftime("%Y%m%dT%H%M%SZ")
    out = args.out or RESULTS_DIR / stamp
    out.mkdir(parents=True, exist_ok=True)
    json_path = out / "benchmarks.json"
    command = [
        sys.executable,
        "-m",
        "pytest",
        str(MICRO_DIR),
        "-q",
        "-p",
        "no:cacheprovider",
        f"--benchmark-json={json_path}",
        f"--benchmark-max-time={args.max_time}",
        "--benchmark-sort=name",
        "--benchmark-columns=median,iqr,rounds,iterations",
    ]
    if args.select:
        command += ["-k", args.select]
    env = {**os.environ, "BENCH_MICRO_ROUNDS": str(args.rounds)}
    try:
        with bench_lock(timeout=args.lock_timeout):
            status = subprocess.run(command, cwd=ROOT, env=env, check=False).returncode
    except LockTimeout as error:
        print(f"bench.micro: {error}", file=sys.stderr)
        return 2
    if not json_path.exists():
        print(f"bench.micro: pytest exited {status} without results", file=sys.stderr)
        return status or 1
    document = json.loads(json_path.read_text())
    document["micro_machine"] = machine_info()
    json_path.write_text(json.dumps(document, indent=2) + "\n")
    text = document_text(document)
    (out / "table.md").write_text(text)
    print()
    print(text)
    print(f"wrote {out / 'table.md'}")
    print(f"wrote {json_path}")
    return status
