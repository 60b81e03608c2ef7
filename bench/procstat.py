"""What the benchmark reads from /proc: CPU time, memory, and the machine it ran on.

Processes started with ``ip netns exec`` stay in the root PID namespace, so their
``/proc/<pid>`` entries are readable from here as they are.
"""

from __future__ import annotations

import os
import platform
import shutil
import subprocess
from dataclasses import dataclass
from importlib import metadata
from pathlib import Path

CLOCK_TICKS = os.sysconf("SC_CLK_TCK")
REPO_ROOT = Path(__file__).resolve().parent.parent


def process_cpu_seconds(pid: int) -> float:
    """User + system CPU seconds used so far by process ``pid`` (all its threads)."""
    with open(f"/proc/{pid}/stat") as f:
        text = f.read()
    # The command name (field 2) is in parentheses and may hold spaces.
    fields = text[text.rindex(")") + 2 :].split()
    utime, stime = int(fields[11]), int(fields[12])  # fields 14 and 15 of proc(5)
    return (utime + stime) / CLOCK_TICKS


def machine_busy_seconds() -> float:
    """CPU seconds the whole machine spent not idle, summed over all cores.

    user + nice + system + irq + softirq + steal from ``/proc/stat``: packet
    forwarding in the kernel (softirq) counts, waiting (idle, iowait) does not.
    """
    with open("/proc/stat") as f:
        first = f.readline().split()
    assert first[0] == "cpu"
    user, nice, system, _idle, _iowait, irq, softirq, steal = (int(v) for v in first[1:9])
    return (user + nice + system + irq + softirq + steal) / CLOCK_TICKS


def rss_bytes(pid: int) -> int:
    """Resident set size of process ``pid`` (``VmRSS`` in /proc/<pid>/status)."""
    with open(f"/proc/{pid}/status") as f:
        for line in f:
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) * 1024
    raise RuntimeError(f"process {pid} has no VmRSS (a zombie?)")


@dataclass(frozen=True)
class CpuSample:
    """CPU counters at one instant: the machine, and each watched process."""

    machine: float
    processes: dict[str, float]

    @staticmethod
    def take(pids: dict[str, int]) -> CpuSample:
        return CpuSample(
            machine_busy_seconds(),
            {name: process_cpu_seconds(pid) for name, pid in pids.items()},
        )

    def since(self, earlier: CpuSample) -> dict[str, float]:
        """CPU seconds used between ``earlier`` and this sample, by name (``machine`` too)."""
        used = {"machine": self.machine - earlier.machine}
        for name, value in self.processes.items():
            if name in earlier.processes:
                used[name] = value - earlier.processes[name]
        return used


def _cpu_model() -> str:
    with open("/proc/cpuinfo") as f:
        for line in f:
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    return platform.processor() or "unknown"


def _git(*argv: str) -> str:
    try:
        result = subprocess.run(
            ["git", "-C", str(REPO_ROOT), *argv], capture_output=True, text=True, timeout=10
        )
    except (OSError, subprocess.TimeoutExpired):
        return ""
    return result.stdout.strip() if result.returncode == 0 else ""


def _version(package: str) -> str:
    try:
        return metadata.version(package)
    except metadata.PackageNotFoundError:
        return "not installed"


def _iperf3_version() -> str:
    if shutil.which("iperf3") is None:
        return "not installed"
    out = subprocess.run(["iperf3", "--version"], capture_output=True, text=True).stdout
    return out.split("\n", 1)[0].strip()


def machine_info() -> dict[str, object]:
    """Where and on what the benchmark ran: recorded in every JSON file."""
    meminfo = Path("/proc/meminfo").read_text().split("\n", 1)[0].split()
    return {
        "commit": _git("rev-parse", "HEAD") or "unknown",
        "commit_dirty": bool(_git("status", "--porcelain", "--untracked-files=no")),
        "kernel": platform.release(),
        "cpu_model": _cpu_model(),
        "cores": os.cpu_count(),
        "memory_kib": int(meminfo[1]) if len(meminfo) > 1 else None,
        "python": platform.python_version(),
        "aioquic": _version("aioquic"),
        "uvloop": _version("uvloop"),
        "iperf3": _iperf3_version(),
        "hostname": platform.node(),
    }
