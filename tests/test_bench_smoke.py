"""``make bench-smoke`` inside the suite: the benchmark harness must keep working."""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from bench.lock import LockTimeout, bench_lock
from bench.topology import FEATURES, Config, ConfigError, check_features, feature_args

ROOT = Path(__file__).resolve().parent.parent
PNG_MAGIC = b"\x89PNG\r\n\x1a\n"


@pytest.mark.netns
def test_bench_smoke_produces_table_json_and_plots() -> None:
    result = subprocess.run(
        [sys.executable, "-m", "bench", "--smoke"],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert result.returncode == 0, result.stdout + result.stderr
    out = result.stdout
    # The table: both configurations, and the ratio of every tunnel figure to the baseline.
    assert "A = baseline, B = tunnel/datagram" in out
    assert "tcp 1 stream c->t" in out and "ratio" in out
    assert "session setup" in out
    written = Path(out.strip().splitlines()[-1].removeprefix("wrote "))
    try:
        report = json.loads(written.read_text())
        machine = report["machine"]
        for key in ("commit", "kernel", "cpu_model", "cores"):
            assert machine[key], key
        params = report["parameters"]
        assert params["configs"]["A"]["mode"] == "baseline"
        assert params["configs"]["B"]["carrier"] == "datagram"
        assert params["plan"]["tcp_seconds"] > 0 and params["rounds"] == 1
        rows = {row["key"]: row for row in report["results"]}
        tcp = rows["tcp.1.c2t.throughput"]
        assert tcp["median"]["baseline"] > 0 and tcp["median"]["tunnel/datagram"] > 0
        assert tcp["ratio"] == pytest.approx(
            tcp["median"]["tunnel/datagram"] / tcp["median"]["baseline"]
        )
        assert rows["tcp.1.c2t.cpu.relay"]["median"]["tunnel/datagram"] > 0
        assert rows["udp.512.max.delivered"]["median"]["tunnel/datagram"] > 0
        assert rows["ping.idle.p50"]["median"]["tunnel/datagram"] > 0
        assert rows["sessions.rate"]["median"]["tunnel/datagram"] > 0
        assert rows["sessions.rss.10"]["median"]["tunnel/datagram"] > 0
        assert rows["sessions.rate"]["median"]["baseline"] is None  # no relay to measure
        assert report["errors"] == []
        plots = [Path(p) for p in report["plots"]]
        assert {p.name for p in plots} >= {"tcp.png", "udp.png", "ping.png", "sessions.png"}
        for plot in plots:
            assert plot.read_bytes()[:8] == PNG_MAGIC, plot
    finally:
        shutil.rmtree(written.parent, ignore_errors=True)


def test_every_feature_switch_reaches_the_relay() -> None:
    # Each feature the benchmark can switch is an option this relay has.
    for name in FEATURES:
        check_features(Config.parse(f"{name}=on"))
    assert feature_args(Config.parse("af-xdp=on")) == []  # given with its interface


def test_fast_path_switch_reaches_relay_and_client() -> None:
    on = Config.parse("fast-path=on")
    off = Config.parse("fast-path=off")
    check_features(on)  # the relay has the switch
    assert feature_args(on) == []  # on is the default
    assert feature_args(off) == ["--no-fast-path"]


def test_config_specs() -> None:
    assert Config.parse("baseline").mode == "baseline"
    capsule = Config.parse("carrier=capsule,nat=on")
    assert (capsule.mode, capsule.carrier, capsule.nat) == ("tunnel", "capsule", True)
    assert capsule.label == "tunnel/capsule+nat"
    assert Config.parse("fast-path=on").features == frozenset({"fast-path", "datagram-lane"})
    assert Config.parse("datagram-lane=off").features == frozenset({"fast-path"})
    for bad in ("carrier=pigeon", "speed=11", "nat=maybe", "carrier"):
        with pytest.raises(ConfigError):
            Config.parse(bad)


def test_lock_excludes_a_second_benchmark(tmp_path: Path) -> None:
    lock = tmp_path / "bench.lock"
    with bench_lock(lock), pytest.raises(LockTimeout), bench_lock(lock, timeout=0.3):
        pass
    with bench_lock(lock, timeout=0.3):  # released on exit
        pass
