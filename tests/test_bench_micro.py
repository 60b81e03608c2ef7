"""``make bench-micro`` inside the suite: every microbenchmark runs, and on the very
inputs it times, the C and the Python implementation of each operation agree.

bench/micro is outside ``testpaths``; it only runs from here (once per benchmark,
``--benchmark-disable``). The TUN operations need root, like the netns tests.
"""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

import _fastpath
from bench.micro.corpus import PACKETS
from bench.micro.ops import OPERATIONS, CheckRouted
from bench.micro.report import Row, rows, table

ROOT = Path(__file__).resolve().parent.parent
_ROOT_ONLY = {"tun_write", "tun_write_gro", "tun_read", "tun_read_batch"}
QUIET = ("-q", "-p", "no:cacheprovider")


@pytest.mark.netns
def test_every_microbenchmark_runs_once() -> None:
    result = subprocess.run(
        [sys.executable, "-m", "pytest", "bench/micro", "--benchmark-disable", *QUIET],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert result.returncode == 0, result.stdout + result.stderr
    assert f"{2 * len(OPERATIONS)} passed" in result.stdout, result.stdout


@pytest.mark.parametrize(
    "name",
    [pytest.param(n, marks=pytest.mark.netns) if n in _ROOT_ONLY else n for n in OPERATIONS],
)
def test_c_and_python_agree_on_the_benchmark_inputs(name: str) -> None:
    with OPERATIONS[name]() as op:
        c = op.once("c")
        python = op.once("python")
    assert c == python
    # The round did the whole batch: 64 results, or (count, 64 results).
    if isinstance(c, tuple):
        count, items = c
        assert count in (PACKETS, [63] * PACKETS), count
    else:
        items = c
    assert isinstance(items, list) and len(items) == PACKETS


def test_report_table_from_benchmark_json() -> None:
    def bench(group: str, impl: str, median: float) -> dict[str, object]:
        return {
            "group": group,
            "params": {"impl": impl},
            "stats": {"median": median},
            "extra_info": {"packets": 64},
        }

    document = {
        "benchmarks": [
            bench("udp_send", "python", 64e-4),
            bench("checksum", "c", 64e-6),
            bench("checksum", "python", 64e-5),
            bench("udp_send", "c", 64e-5),
        ]
    }
    found = rows(document)
    assert [r.operation for r in found] == ["checksum", "udp_send"]  # OPERATIONS order
    assert found[0].c == pytest.approx(1e6)
    assert found[0].python == pytest.approx(1e5)
    assert found[1].speedup == pytest.approx(10.0)
    assert Row("x", 1.0, None).speedup is None
    text = table(found)
    assert text.splitlines()[0] == "| operation | C packets/s | Python packets/s | speed-up |"
    assert "| checksum | 1 M | 100 k | 10.0x |" in text


def test_check_routed_checks_each_packet_against_its_own_session() -> None:
    """The interleaving matters: half the packets are refused by the other session."""
    with CheckRouted() as op:
        assert op.once("c") == [0] * PACKETS
        one_session = list(_fastpath.check_routed_batch(op.batch, [1] * PACKETS, op.policies))
    assert one_session[0::2] == [0] * (PACKETS // 2)
    assert all(one_session[1::2])
