"""Session-setup load generator: many CONNECT-IP sessions from one process, no TUN.

Run inside the client namespace (``ip netns exec ... python -m bench.loadgen``).
Each session is what a real client does up to the point where it would create
its TUN: a QUIC connection (full handshake, certificate pin checked), the
extended CONNECT ``connect-ip`` request with the bearer token, then wait for the
2xx and the relay's ADDRESS_ASSIGN capsule. The session then stays open and
idle (QUIC PINGs keep the connection alive) while more are opened.

``--steps 1,100,1000`` opens sessions until that many are open, step by step,
``--concurrency`` handshakes in flight at a time. After each step it waits
``--settle`` seconds and, with ``--watch-pid``, reads that process's resident
memory (the relay's: /proc is shared across network namespaces). Output, one
line per event on stdout (``word key=value ...``)::

    start rss=<bytes>
    step target=<n> open=<n> failed=<n> seconds=<s> rss=<bytes> p50_ms=<ms> p99_ms=<ms>
    done open=<n> failed=<n>

``seconds`` is the wall time of that step alone; ``p50_ms``/``p99_ms`` the
setup latency (connect to ADDRESS_ASSIGN) of its sessions. Exits 1 when too
many sessions fail (``--max-failures``).
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import math
import resource
import sys
import time
from collections.abc import Sequence
from typing import Any

from aioquic.asyncio.client import connect
from aioquic.asyncio.protocol import QuicConnectionProtocol
from aioquic.h3.connection import H3_ALPN, ErrorCode
from aioquic.h3.events import DataReceived, HeadersReceived
from aioquic.quic.configuration import QuicConfiguration
from aioquic.quic.connection import QuicConnection
from aioquic.quic.events import ConnectionTerminated, QuicEvent

from client.tls import TlsPolicy
from masque.events import AddressesAssigned
from masque.request import build_connect_ip_headers
from masque.session import ConnectIpSession, Role
from masque.template import UriTemplate
from netio.h3 import ConnectIpH3Connection

KEEPALIVE_INTERVAL = 10.0
SETUP_TIMEOUT = 15.0


def _line(word: str, **fields: object) -> None:
    text = " ".join(f"{key}={value}" for key, value in fields.items())
    print(f"{word} {text}".rstrip(), flush=True)


def _rss(pid: int | None) -> int:
    if pid is None:
        return 0
    try:
        with open(f"/proc/{pid}/status") as f:
            for line in f:
                if line.startswith("VmRSS:"):
                    return int(line.split()[1]) * 1024
    except OSError:
        pass
    return 0


def _percentile(values: Sequence[float], pct: float) -> float:
    if not values:
        return 0.0
    ordered = sorted(values)
    rank = max(0, min(len(ordered) - 1, math.ceil(pct / 100 * len(ordered)) - 1))
    return ordered[rank]


class SessionProtocol(QuicConnectionProtocol):
    """One QUIC connection carrying one CONNECT-IP request."""

    def __init__(self, quic: QuicConnection, *, datagrams: bool, **kwargs: Any) -> None:
        super().__init__(quic, **kwargs)
        self.h3 = ConnectIpH3Connection(quic, enable_datagrams=datagrams)
        self.session = ConnectIpSession(Role.CLIENT)
        self.stream_id = -1
        self.status = 0
        self.assigned = asyncio.Event()
        self.failed = asyncio.Event()

    def quic_event_received(self, event: QuicEvent) -> None:
        if isinstance(event, ConnectionTerminated):
            self.failed.set()
        for h3_event in self.h3.handle_event(event):
            if getattr(h3_event, "stream_id", None) != self.stream_id:
                continue
            if isinstance(h3_event, HeadersReceived):
                status = dict(h3_event.headers).get(b":status", b"0")
                self.status = int(status) if status.isdigit() else 0
                if not 200 <= self.status < 300:
                    self.failed.set()
            elif isinstance(h3_event, DataReceived):
                for capsule_event in self.session.receive_capsule_data(
                    h3_event.data, end_stream=h3_event.stream_ended
                ):
                    if isinstance(capsule_event, AddressesAssigned):
                        self.assigned.set()
                if h3_event.stream_ended:
                    self.failed.set()


class LoadGenerator:
    def __init__(self, args: argparse.Namespace) -> None:
        host, _, port = args.relay.rpartition(":")
        self.host = host.strip("[]")
        self.port = int(port)
        self.datagrams = not args.no_datagrams
        self.policy = TlsPolicy(pin_sha256=args.pin_sha256, insecure=args.pin_sha256 is None)
        self.headers = build_connect_ip_headers(
            UriTemplate.default(self.host, self.port),
            authorization=f"Bearer {args.token}" if args.token else None,
        )
        self.stack = contextlib.AsyncExitStack()
        self.protocols: list[SessionProtocol] = []
        self.failed = 0

    def _configuration(self) -> QuicConfiguration:
        configuration = QuicConfiguration(
            is_client=True,
            alpn_protocols=H3_ALPN,
            max_datagram_size=1452,
            idle_timeout=60.0,
            server_name=self.host,
        )
        if self.datagrams:
            configuration.max_datagram_frame_size = 65536
        self.policy.apply(configuration)
        return configuration

    async def open_one(self) -> float:
        """Open one session; its setup time in seconds."""
        started = time.perf_counter()
        stack = contextlib.AsyncExitStack()
        try:

            def create_protocol(quic: QuicConnection, **kwargs: Any) -> SessionProtocol:
                return SessionProtocol(quic, datagrams=self.datagrams, **kwargs)

            async with asyncio.timeout(SETUP_TIMEOUT):
                protocol = await stack.enter_async_context(
                    connect(
                        self.host,
                        self.port,
                        configuration=self._configuration(),
                        create_protocol=create_protocol,
                    )
                )
                assert isinstance(protocol, SessionProtocol)
                self.policy.check_peer(protocol._quic)
                protocol.stream_id = protocol._quic.get_next_available_stream_id()
                protocol.h3.send_headers(protocol.stream_id, self.headers, end_stream=False)
                protocol.transmit()
                assigned = asyncio.ensure_future(protocol.assigned.wait())
                failed = asyncio.ensure_future(protocol.failed.wait())
                await asyncio.wait({assigned, failed}, return_when=asyncio.FIRST_COMPLETED)
                assigned.cancel()
                failed.cancel()
                if not protocol.assigned.is_set():
                    raise ConnectionError(f"session refused (status {protocol.status})")
        except BaseException:
            with contextlib.suppress(Exception):
                await asyncio.wait_for(stack.aclose(), 2.0)
            raise
        self.protocols.append(protocol)
        await self.stack.enter_async_context(stack)
        return time.perf_counter() - started

    async def step(self, target: int, concurrency: int, max_failures: int) -> list[float]:
        """Open sessions until ``target`` are open; the setup time of each."""
        latencies: list[float] = []
        semaphore = asyncio.Semaphore(concurrency)

        async def worker() -> None:
            while len(self.protocols) + pending[0] < target:
                if self.failed > max_failures:
                    return
                pending[0] += 1
                try:
                    async with semaphore:
                        latencies.append(await self.open_one())
                except (ConnectionError, OSError, TimeoutError) as error:
                    self.failed += 1
                    print(f"loadgen: session failed: {error}", file=sys.stderr, flush=True)
                finally:
                    pending[0] -= 1

        pending = [0]
        await asyncio.gather(*(worker() for _ in range(concurrency)))
        return latencies

    async def keepalive(self) -> None:
        uid = 0
        while True:
            await asyncio.sleep(KEEPALIVE_INTERVAL)
            for protocol in list(self.protocols):
                uid += 1
                protocol._quic.send_ping(uid)
                protocol.transmit()

    async def close(self) -> None:
        for protocol in self.protocols:
            protocol._quic.close(error_code=ErrorCode.H3_NO_ERROR, reason_phrase="bench done")
            protocol.transmit()
        # Skip the draining waits: the relay has been told and is stopped next anyway.
        with contextlib.suppress(Exception):
            await asyncio.wait_for(self.stack.aclose(), 3.0)


async def run(args: argparse.Namespace) -> int:
    steps = [int(n) for n in args.steps.split(",") if n]
    generator = LoadGenerator(args)
    _line("start", rss=_rss(args.watch_pid))
    keepalive = asyncio.create_task(generator.keepalive())
    ok = True
    try:
        for target in steps:
            failed_before = generator.failed
            started = time.perf_counter()
            latencies = await generator.step(target, args.concurrency, args.max_failures)
            seconds = time.perf_counter() - started
            await asyncio.sleep(args.settle)
            _line(
                "step",
                target=target,
                open=len(generator.protocols),
                failed=generator.failed - failed_before,
                seconds=f"{seconds:.4f}",
                rss=_rss(args.watch_pid),
                p50_ms=f"{_percentile(latencies, 50) * 1000:.2f}",
                p99_ms=f"{_percentile(latencies, 99) * 1000:.2f}",
            )
            if len(generator.protocols) < target:
                ok = False
                break
    finally:
        keepalive.cancel()
        _line("done", open=len(generator.protocols), failed=generator.failed)
        await generator.close()
    return 0 if ok else 1


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m bench.loadgen", description=__doc__)
    parser.add_argument("--relay", required=True, metavar="HOST:PORT")
    parser.add_argument("--token")
    parser.add_argument("--pin-sha256", help="relay certificate pin (default: no check)")
    parser.add_argument("--no-datagrams", action="store_true", help="do not offer H3 datagrams")
    parser.add_argument("--steps", default="1,100,1000", help="open sessions up to these totals")
    parser.add_argument("--concurrency", type=int, default=32, help="handshakes in flight")
    parser.add_argument("--settle", type=float, default=1.0, help="pause before reading memory")
    parser.add_argument("--watch-pid", type=int, help="report this process's RSS after each step")
    parser.add_argument("--max-failures", type=int, default=20)
    args = parser.parse_args(argv)
    # One UDP socket per connection: a thousand sessions need more than 1024 files.
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    wanted = max(soft, max(int(n) for n in args.steps.split(",") if n) + 256)
    if hard != resource.RLIM_INFINITY:
        wanted = min(wanted, hard)
    resource.setrlimit(resource.RLIMIT_NOFILE, (wanted, hard))
    try:
        import uvloop
    except ImportError:
        return asyncio.run(run(args))
    return uvloop.run(run(args))


if __name__ == "__main__":
    raise SystemExit(main())
