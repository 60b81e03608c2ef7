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
