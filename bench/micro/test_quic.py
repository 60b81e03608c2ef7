"""The QUIC datagram lane's packet protection, 64 packets: ``_fastpath`` against aioquic."""

from __future__ import annotations

import pytest
from pytest_benchmark.fixture import BenchmarkFixture

from bench.micro import ops
from bench.micro.harness import measure
from bench.micro.ops import IMPLS, Impl

impl = pytest.mark.parametrize("impl", IMPLS)


@pytest.mark.benchmark(group="quic_protect")
@impl
def test_quic_protect(benchmark: BenchmarkFixture, impl: Impl) -> None:
    measure(benchmark, ops.QuicProtect, impl)


@pytest.mark.benchmark(group="quic_lane_receive")
@impl
def test_quic_lane_receive(benchmark: BenchmarkFixture, impl: Impl) -> None:
    measure(benchmark, ops.QuicLaneReceive, impl)
