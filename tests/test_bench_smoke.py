"""``make bench-smoke`` inside the suite: the benchmark harness must keep working."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

pytestmark = pytest.mark.netns

ROOT = Path(__file__).resolve().parent.parent


def test_bench_smoke_produces_a_table_and_json() -> None:
    result = subprocess.run(
        [sys.executable, "-m", "bench", "--smoke"],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert result.returncode == 0, result.stderr
    assert "tcp 1 stream c->t" in result.stdout
    written = Path(result.stdout.strip().splitlines()[-1].removeprefix("wrote "))
    report = json.loads(written.read_text())
    assert report["machine"]["kernel"]
    assert all(row["mbit_s_median"] > 0 for row in report["results"])
    written.unlink()
