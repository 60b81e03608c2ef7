"""``make bench``: throughput on the namespace test bed, as a table and a JSON file.

This first version measures the plain-routing baseline (client -> relay namespace
-> target, no tunnel) with iperf3, which every tunnel figure will be reported
against. ``--smoke`` runs a one-second variant so the harness cannot rot.
"""

from __future__ import annotations

import argparse
import datetime
import json
import os
import platform
import statistics
import subprocess
import sys
import time
from pathlib import Path

from tests.netbed import TestBed, open_testbed

RESULTS_DIR = Path(__file__).resolve().parent / "results"


def iperf3_tcp(bed: TestBed, *, seconds: int, streams: int, reverse: bool) -> float:
    """Return the received throughput in Mbit/s of one iperf3 TCP run client -> target."""
    server = bed.spawn(bed.target_ns, ["iperf3", "-s", "-1", "-B", str(bed.target_ipv4)])
    try:
        time.sleep(0.3)
        argv = ["iperf3", "-J", "-c", str(bed.target_ipv4), "-t", str(seconds), "-P", str(streams)]
        if reverse:
            argv.append("-R")
        for _attempt in range(20):  # the server may need a moment to listen
            result = bed.run(bed.client_ns, argv, check=False, timeout=seconds + 30)
            if result.returncode == 0:
                break
            time.sleep(0.2)
        else:
            raise RuntimeError(f"iperf3 failed: {result.stdout.decode()[-500:]}")
        report = json.loads(result.stdout)
        return float(report["end"]["sum_received"]["bits_per_second"]) / 1e6
    finally:
        server.kill()
        server.wait()


def machine_info() -> dict[str, object]:
    cpu = "unknown"
    with open("/proc/cpuinfo") as f:
        for line in f:
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    commit = subprocess.run(["git", "rev-parse", "HEAD"], capture_output=True, text=True)
    return {
        "commit": commit.stdout.strip() or "unknown",
        "kernel": platform.release(),
        "cpu_model": cpu,
        "cores": os.cpu_count(),
    }


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m bench")
    parser.add_argument("--smoke", action="store_true", help="one short run of each scenario")
    parser.add_argument("--seconds", type=int, default=5)
    parser.add_argument("--repeats", type=int, default=3)
    args = parser.parse_args(argv)
    seconds, repeats = (1, 1) if args.smoke else (args.seconds, args.repeats)

    scenarios = [
        ("tcp 1 stream c->t", 1, False),
        ("tcp 1 stream t->c", 1, True),
        ("tcp 4 streams c->t", 4, False),
    ]
    rows = []
    with open_testbed() as bed:
        for name, streams, reverse in scenarios:
            runs = [
                iperf3_tcp(bed, seconds=seconds, streams=streams, reverse=reverse)
                for _ in range(repeats)
            ]
            rows.append(
                {
                    "scenario": name,
                    "carrier": "baseline (plain routing)",
                    "mbit_s_runs": runs,
                    "mbit_s_median": statistics.median(runs),
                }
            )

    print(f"{'scenario':<22} {'carrier':<26} {'Mbit/s (median)':>16}")
    for row in rows:
        print(f"{row['scenario']:<22} {row['carrier']:<26} {row['mbit_s_median']:>16.0f}")
    RESULTS_DIR.mkdir(exist_ok=True)
    stamp = datetime.datetime.now(datetime.UTC).strftime("%Y%m%dT%H%M%SZ")
    out = RESULTS_DIR / f"bench-{stamp}.json"
    out.write_text(
        json.dumps({"machine": machine_info(), "parameters": vars(args), "results": rows}, indent=2)
    )
    print(f"wrote {out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
