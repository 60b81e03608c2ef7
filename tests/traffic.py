"""Real traffic across the test bed: ping and a verified TCP transfer.

Shared by the end-to-end tests, ``make demo`` and the benchmarks. Everything runs
inside the test bed's namespaces, through real sockets and the real kernel.
"""

from __future__ import annotations

import hashlib
import ipaddress
import os
import re
import sys
import time
from dataclasses import dataclass

from tests.netbed import TestBed

_PING_RE = re.compile(r"(\d+) packets transmitted, (\d+) received")
_RTT_RE = re.compile(r"= [\d.]+/([\d.]+)/")

# Receives one TCP connection, prints the byte count and SHA-256 of what arrived.
_SINK = """
import hashlib, socket, sys
family = socket.AF_INET6 if ':' in sys.argv[1] else socket.AF_INET
srv = socket.socket(family, socket.SOCK_STREAM)
srv.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
srv.bind((sys.argv[1], int(sys.argv[2])))
srv.listen(1)
print('listening', flush=True)
srv.settimeout(30)
conn, _ = srv.accept()
conn.settimeout(30)
digest, total = hashlib.sha256(), 0
while chunk := conn.recv(65536):
    digest.update(chunk)
    total += len(chunk)
print(total, digest.hexdigest(), flush=True)
"""

# Connects and sends stdin's bytes.
_SOURCE = """
import socket, sys
data = sys.stdin.buffer.read()
family = socket.AF_INET6 if ':' in sys.argv[1] else socket.AF_INET
with socket.create_connection((sys.argv[1], int(sys.argv[2])), timeout=30) as conn:
    conn.sendall(data)
"""


@dataclass(frozen=True)
class PingResult:
    sent: int
    received: int
    avg_rtt_ms: float | None


@dataclass(frozen=True)
class TransferResult:
    bytes_sent: int
    bytes_received: int
    intact: bool  # the SHA-256 of what arrived equals that of what was sent
    seconds: float


def ping(
    bed: TestBed,
    netns: str,
    address: ipaddress.IPv4Address | ipaddress.IPv6Address,
    *,
    count: int = 3,
    size: int = 56,
) -> PingResult:
    """Ping ``address`` from ``netns``; return what ping counted."""
    result = bed.run(
        netns,
        [
            "ping",
            "-n",
            "-q",
            "-c",
            str(count),
            "-i",
            "0.2",
            "-W",
            "2",
            "-s",
            str(size),
            str(address),
        ],
        check=False,
    )
    text = result.stdout.decode()
    counts = _PING_RE.search(text)
    if counts is None:
        raise RuntimeError(f"ping printed no summary: {text} {result.stderr.decode()}")
    rtt = _RTT_RE.search(text)
    return PingResult(
        int(counts.group(1)), int(counts.group(2)), float(rtt.group(1)) if rtt else None
    )


def tcp_transfer(
    bed: TestBed,
    src_ns: str,
    dst_ns: str,
    dst: ipaddress.IPv4Address | ipaddress.IPv6Address,
    *,
    nbytes: int = 1 << 20,
    port: int = 5201,
) -> TransferResult:
    """Send ``nbytes`` of random data over TCP from ``src_ns`` to ``dst`` and verify them."""
    payload = os.urandom(nbytes)
    sink = bed.spawn(dst_ns, [sys.executable, "-c", _SINK, str(dst), str(port)])
    try:
        assert sink.stdout is not None and sink.stderr is not None
        ready = sink.stdout.readline().decode().strip()
        if ready != "listening":
            raise RuntimeError(f"TCP sink did not start: {sink.stderr.read().decode()}")
        start = time.monotonic()
        bed.run(src_ns, [sys.executable, "-c", _SOURCE, str(dst), str(port)], input=payload)
        out, err = sink.communicate(timeout=60)
        seconds = time.monotonic() - start
    finally:
        if sink.poll() is None:
            sink.kill()
            sink.wait()
    fields = out.decode().split()
    if len(fields) != 2:
        raise RuntimeError(f"TCP sink failed: {out.decode()} {err.decode()}")
    received, digest = int(fields[0]), fields[1]
    return TransferResult(nbytes, received, digest == hashlib.sha256(payload).hexdigest(), seconds)


# Connects, sends ``nbytes`` random bytes at most ``rate`` Mbit/s (0: as fast as it
# can), prints the count and SHA-256 of what it sent.
_PACED_SOURCE = """
import hashlib, os, socket, sys, time
dst, port, nbytes, rate = sys.argv[1], int(sys.argv[2]), int(sys.argv[3]), float(sys.argv[4])
digest, sent, start = hashlib.sha256(), 0, time.monotonic()
with socket.create_connection((dst, port), timeout=30) as conn:
    conn.settimeout(60)
    while sent < nbytes:
        chunk = os.urandom(min(65536, nbytes - sent))
        conn.sendall(chunk)
        digest.update(chunk)
        sent += len(chunk)
        if rate > 0:
            ahead = sent * 8 / (rate * 1e6) - (time.monotonic() - start)
            if ahead > 0:
                time.sleep(ahead)
print(sent, digest.hexdigest(), flush=True)
"""


class BackgroundTransfer:
    """A verified TCP transfer running while the test does something else.

    Start it, disturb the tunnel (key update, loss, rebinding...), then
    :meth:`wait` for the result: the byte count and whether the SHA-256 the
    receiver computed equals the sender's.
    """

    def __init__(
        self,
        bed: TestBed,
        src_ns: str,
        dst_ns: str,
        dst: ipaddress.IPv4Address | ipaddress.IPv6Address,
        *,
        nbytes: int,
        rate_mbit: float = 0.0,
        port: int = 5202,
    ) -> None:
        self.nbytes = nbytes
        self._sink = bed.spawn(dst_ns, [sys.executable, "-c", _SINK, str(dst), str(port)])
        assert self._sink.stdout is not None
        ready = self._sink.stdout.readline().decode().strip()
        if ready != "listening":
            raise RuntimeError("TCP sink did not start")
        self.started = time.monotonic()
        self._source = bed.spawn(
            src_ns,
            [sys.executable, "-c", _PACED_SOURCE, str(dst), str(port), str(nbytes), str(rate_mbit)],
        )

    def wait(self, timeout: float = 120.0) -> TransferResult:
        """Wait for both ends; the transfer's result."""
        out, err = self._source.communicate(timeout=timeout)
        sink_out, sink_err = self._sink.communicate(timeout=timeout)
        seconds = time.monotonic() - self.started
        sent = out.decode().split()
        got = sink_out.decode().split()
        if len(sent) != 2 or len(got) != 2:
            raise RuntimeError(
                f"transfer failed: source {out!r} {err!r}; sink {sink_out!r} {sink_err!r}"
            )
        return TransferResult(int(sent[0]), int(got[0]), sent[1] == got[1], seconds)

    def close(self) -> None:
        """Teardown: kill whichever end is still running (after :meth:`wait`: nothing to do)."""
        for proc in (self._source, self._sink):
            if proc.poll() is None:
                proc.kill()
                proc.wait(timeout=10)
