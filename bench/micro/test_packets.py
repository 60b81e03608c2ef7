"""Per-packet work on a batch of 64 packets: C (``_fastpath``) against Python."""

from __future__ import annotations

import pytest
from pytest_benchmark.fixture import BenchmarkFixture

from bench.micro import ops
from bench.micro.harness import measure
from bench.micro.ops import IMPLS, Impl

impl = pytest.mark.parametrize("impl", IMPLS)


@pytest.mark.benchmark(group="parse")
@impl
def test_parse(benchmark: BenchmarkFixture, impl: Impl) -> None:
    measure(benchmark, ops.Parse, impl)


@pytest.mark.benchmark(group="is_link_scoped")
@impl
def test_is_link_scoped(benchmark: BenchmarkFixture, impl: Impl) -> None:
    measure(benchmark, ops.LinkScoped, impl)


@pytest.mark.benchmark(group="checksum")
@impl
def test_checksum(benchmark: BenchmarkFixture, impl: Impl) -> None:
    measure(benchmark, ops.Checksum, impl)


@pytest.mark.benchmark(group="decrement_ttl")
@impl
def test_decrement_ttl(benchmark: BenchmarkFixture, impl: Impl) -> None:
    measure(benchmark, ops.DecrementTtl, impl)


@pytest.mark.benchmark(group="check_incoming")
@impl
def test_check_incoming(benchmark: BenchmarkFixture, impl: Impl) -> None:
    measure(benchmark, ops.CheckIncoming, impl)


@pytest.mark.benchmark(group="check_outgoing")
@impl
def test_check_outgoing(benchmark: BenchmarkFixture, impl: Impl) -> None:
    measure(benchmark, ops.CheckOutgoing, impl)


@pytest.mark.benchmark(group="check_routed")
@impl
def test_check_routed(benchmark: BenchmarkFixture, impl: Impl) -> None:
    measure(benchmark, ops.CheckRouted, impl)


@pytest.mark.benchmark(group="lookup")
@impl
def test_lookup(benchmark: BenchmarkFixture, impl: Impl) -> None:
    measure(benchmark, ops.Lookup, impl)


@pytest.mark.benchmark(group="vnet_split")
@impl
def test_vnet_split(benchmark: BenchmarkFixture, impl: Impl) -> None:
    measure(benchmark, ops.VnetSplit, impl)


@pytest.mark.benchmark(group="frame_datagrams")
@impl
def test_frame_datagrams(benchmark: BenchmarkFixture, impl: Impl) -> None:
    measure(benchmark, ops.FrameDatagrams, impl)
