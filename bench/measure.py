"""The measuring tools, each run once: iperf3 TCP and UDP, ping, all between namespaces.

Traffic always goes client namespace -> target (``c->t``) or back (``t->c``,
iperf3 ``-R``), through whatever the configuration put in between. The iperf3
server runs in the target namespace for the whole run.
"""

from __future__ import annotations

import json
import re
import subprocess
import time
from dataclasses import dataclass

from bench.procstat import CpuSample
from tests.netbed import TestBed

_RTT_RE = re.compile(r"time=([\d.]+) ms")
_COUNTS_RE = re.compile(r"(\d+) packets transmitted, (\d+) received")


class MeasureError(RuntimeError):
    """A tool failed or printed something we cannot read."""


class IperfServer:
    """``iperf3 -s`` in the target namespace, restarted when it wedges."""

    def __init__(self, bed: TestBed) -> None:
        self.bed = bed
        self.proc: subprocess.Popen[bytes] | None = None
        self.start()

    def start(self) -> None:
        self.stop()
        self.proc = self.bed.spawn(
            self.bed.target_ns,
            ["iperf3", "-s", "-B", str(self.bed.target_ipv4)],
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
        )
        # Wait until it listens (the client's connect would fail otherwise).
        deadline = time.monotonic() + 5
        while time.monotonic() < deadline:
            out = self.bed.run(self.bed.target_ns, ["ss", "-Htln", "sport = :5201"], check=False)
            if out.stdout.strip():
                return
            time.sleep(0.05)
        raise MeasureError("iperf3 server did not start listening")

    def stop(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.proc.kill()
            self.proc.wait()
        self.proc = None


def _iperf3(
    bed: TestBed, server: IperfServer, argv: list[str], seconds: float
) -> dict[str, object]:
    """Run the iperf3 client; its JSON report. Retries once with a fresh server."""
    full = ["iperf3", "-J", "-c", str(bed.target_ipv4), "-t", f"{seconds:g}", *argv]
    error = ""
    for attempt in range(3):
        result = bed.run(bed.client_ns, full, check=False, timeout=seconds + 40)
        try:
            report: dict[str, object] = json.loads(result.stdout)
        except json.JSONDecodeError:
            report = {"error": result.stdout.decode(errors="replace")[-300:]}
        if result.returncode == 0 and "error" not in report:
            return report
        error = str(report.get("error", result.stderr.decode(errors="replace")[-300:]))
        if attempt < 2:  # e.g. "the server is busy" after a broken test: start it afresh
            server.start()
    raise MeasureError(f"iperf3 {' '.join(argv)} failed: {error}")


@dataclass(frozen=True)
class TcpResult:
    mbit_s: float
    bytes: int
    seconds: float
    cpu: dict[str, float]  # CPU seconds used during the transfer: machine, relay, client


def iperf3_tcp(
    bed: TestBed,
    server: IperfServer,
    *,
    seconds: float,
    streams: int,
    reverse: bool,
    pids: dict[str, int],
) -> TcpResult:
    """One iperf3 TCP run; throughput as received, and the CPU it cost."""
    argv = ["-P", str(streams), *(["-R"] if reverse else [])]
    before = CpuSample.take(pids)
    report = _iperf3(bed, server, argv, seconds)
    cpu = CpuSample.take(pids).since(before)
    received = report["end"]["sum_received"]  # type: ignore[index]
    return TcpResult(
        mbit_s=float(received["bits_per_second"]) / 1e6,
        bytes=int(received["bytes"]),
        seconds=float(received["seconds"]),
        cpu=cpu,
    )


@dataclass(frozen=True)
class UdpResult:
    offered_pps: float  # what the sender managed to send
    delivered_pps: float
    loss_percent: float


def iperf3_udp(
    bed: TestBed, server: IperfServer, *, seconds: float, payload: int, pps: int
) -> UdpResult:
    """One iperf3 UDP run of ``payload``-byte datagrams at ``pps`` (0: as fast as possible)."""
    rate = str(pps * payload * 8) if pps else "0"
    report = _iperf3(bed, server, ["-u", "-l", str(payload), "-b", rate], seconds)
    end = report["end"]
    sent, received = end["sum_sent"], end["sum_received"]  # type: ignore[index]
    packets, lost = int(received["packets"]), int(received["lost_packets"])
    sent_seconds = float(sent["seconds"]) or seconds
    received_seconds = float(received["seconds"]) or seconds
    return UdpResult(
        offered_pps=int(sent["packets"]) / sent_seconds,
        delivered_pps=max(0, packets - lost) / received_seconds,
        loss_percent=100.0 * lost / packets if packets else 100.0,
    )


@dataclass(frozen=True)
class PingResult:
    rtts_ms: list[float]
    sent: int
    received: int

    @property
    def loss_percent(self) -> float:
        return 100.0 * (self.sent - self.received) / self.sent if self.sent else 100.0

    def percentile(self, pct: float) -> float | None:
        return percentile(self.rtts_ms, pct)


def percentile(values: list[float], pct: float) -> float | None:
    """Nearest-rank percentile (``None`` for no values)."""
    if not values:
        return None
    ordered = sorted(values)
    rank = max(0, min(len(ordered) - 1, -(-pct * len(ordered) // 100) - 1))
    return ordered[int(rank)]


def ping(bed: TestBed, *, count: int, interval: float = 0.01) -> PingResult:
    """``count`` echo requests client -> target, ``interval`` apart; every RTT."""
    result = bed.run(
        bed.client_ns,
        ["ping", "-n", "-i", f"{interval:g}", "-c", str(count), "-W", "2", str(bed.target_ipv4)],
        check=False,
        timeout=count * interval + 30,
    )
    text = result.stdout.decode(errors="replace")
    counts = _COUNTS_RE.search(text)
    if counts is None:
        raise MeasureError(f"ping printed no summary: {text[-300:]} {result.stderr.decode()}")
    rtts = [float(m) for m in _RTT_RE.findall(text)]
    return PingResult(rtts, int(counts.group(1)), int(counts.group(2)))


def ping_under_load(
    bed: TestBed, server: IperfServer, *, seconds: float, interval: float = 0.01
) -> PingResult:
    """Ping while one iperf3 TCP stream fills the path client -> target for ``seconds``."""
    load = subprocess.Popen(
        [
            "ip",
            "netns",
            "exec",
            bed.client_ns,
            "iperf3",
            "-J",
            "-c",
            str(bed.target_ipv4),
            "-t",
            f"{seconds:g}",
        ],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
    )
    try:
        time.sleep(1.0)  # past TCP slow start: the queues are full by now
        count = max(10, int((seconds - 1.5) / interval))
        result = ping(bed, count=count, interval=interval)
        out, _ = load.communicate(timeout=seconds + 40)
    finally:
        if load.poll() is None:
            load.kill()
            load.wait()
    if load.returncode != 0:
        server.start()
        raise MeasureError(f"iperf3 load for ping failed: {out.decode(errors='replace')[-300:]}")
    return result
