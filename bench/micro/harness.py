"""How a benchmark times an operation: one batch per round, C or Python."""

from __future__ import annotations

import os
from collections.abc import Callable

from pytest_benchmark.fixture import BenchmarkFixture

from bench.micro.corpus import PACKETS
from bench.micro.ops import Impl, Operation

#: Rounds of a stateful operation (timed with an untimed reset before each
#: round); ``BENCH_MICRO_ROUNDS`` overrides. Stateless ones are calibrated by
#: pytest-benchmark (``--benchmark-max-time`` etc.).
ROUNDS = int(os.environ.get("BENCH_MICRO_ROUNDS", "1000"))


def measure(benchmark: BenchmarkFixture, operation: type[Operation], impl: Impl) -> None:
    """Benchmark ``impl`` of ``operation``, then check it agrees with the other one."""
    assert benchmark.group == operation.name, "mark the test with group=operation.name"
    benchmark.extra_info["packets"] = PACKETS
    benchmark.extra_info["operation"] = operation.description
    with operation() as op:
        run, prepare = op.functions(impl)
        if op.stateful:
            pedantic: Callable[..., object] = benchmark.pedantic  # untyped upstream
            pedantic(run, setup=prepare, rounds=ROUNDS, warmup_rounds=ROUNDS // 50)
        else:
            benchmark(run)
        other: Impl = "python" if impl == "c" else "c"
        assert op.once(impl) == op.once(other), f"{operation.name}: C and Python disagree"
