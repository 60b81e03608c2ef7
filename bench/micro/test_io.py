"""Batch I/O of 64 packets: ``_fastpath.UdpSocket`` / ``_fastpath.Tun`` against Python.

UDP runs on loopback; TUN needs root (CAP_NET_ADMIN): two devices named
``mqbp<pid>`` / ``mqbc<pid>`` exist for the duration of each benchmark.
``tun_write_gro`` also makes its receiving TCP socket with TCP_REPAIR (CAP_NET_ADMIN).
"""

from __future__ import annotations

import pytest
from pytest_benchmark.fixture import BenchmarkFixture

from bench.micro import ops
from bench.micro.harness import measure
from bench.micro.ops import IMPLS, Impl

impl = pytest.mark.parametrize("impl", IMPLS)


@pytest.mark.benchmark(group="udp_send")
@impl
def test_udp_send(benchmark: BenchmarkFixture, impl: Impl) -> None:
    measure(benchmark, ops.UdpSend, impl)


@pytest.mark.benchmark(group="udp_recv")
@impl
def test_udp_recv(benchmark: BenchmarkFixture, impl: Impl) -> None:
    measure(benchmark, ops.UdpRecv, impl)


@pytest.mark.benchmark(group="tun_write")
@impl
def test_tun_write(benchmark: BenchmarkFixture, impl: Impl) -> None:
    measure(benchmark, ops.TunWrite, impl)


@pytest.mark.benchmark(group="tun_write_gro")
@impl
def test_tun_write_gro(benchmark: BenchmarkFixture, impl: Impl) -> None:
    measure(benchmark, ops.TunWriteGro, impl)


@pytest.mark.benchmark(group="tun_read")
@impl
def test_tun_read(benchmark: BenchmarkFixture, impl: Impl) -> None:
    measure(benchmark, ops.TunRead, impl)


@pytest.mark.benchmark(group="tun_read_batch")
@impl
def test_tun_read_batch(benchmark: BenchmarkFixture, impl: Impl) -> None:
    measure(benchmark, ops.TunReadBatch, impl)
