"""One benchmark at a time per machine: an exclusive ``flock`` on a lock file.

Two benchmarks on the same (small) machine would steal each other's CPU and
every figure of both would be wrong, so :func:`bench_lock` holds
``/run/masque-bench.lock`` for the whole run. A second run waits for it (saying
who holds it) and gives up after ``timeout`` seconds. The kernel drops the lock
when the holder exits, however it exits, so a killed run never leaves it stuck.
"""

from __future__ import annotations

import contextlib
import fcntl
import os
import sys
import time
from collections.abc import Iterator
from pathlib import Path

LOCK_PATH = Path("/run/masque-bench.lock")


class LockTimeout(RuntimeError):
    """Another benchmark held the lock for longer than we were willing to wait."""


def _holder(fd: int) -> str:
    with contextlib.suppress(OSError):
        os.lseek(fd, 0, os.SEEK_SET)
        text = os.read(fd, 200).decode(errors="replace").strip()
        if text:
            return text
    return "unknown process"


@contextlib.contextmanager
def bench_lock(path: Path = LOCK_PATH, *, timeout: float = 1800.0) -> Iterator[None]:
    """Hold the machine-wide benchmark lock for the duration of the ``with`` block."""
    fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o644)
    acquired = False
    try:
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            print(
                f"bench: waiting for another benchmark to finish ({_holder(fd)}, lock {path})",
                file=sys.stderr,
                flush=True,
            )
            deadline = time.monotonic() + timeout
            while True:
                try:
                    fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
                    break
                except BlockingIOError:
                    if time.monotonic() >= deadline:
                        raise LockTimeout(
                            f"another benchmark ({_holder(fd)}) held {path} for {timeout:.0f} s"
                        ) from None
                    time.sleep(0.5)
        acquired = True
        os.ftruncate(fd, 0)
        os.pwrite(fd, f"pid {os.getpid()}: {' '.join(sys.argv)}\n".encode(), 0)
        yield
    finally:
        if acquired:
            with contextlib.suppress(OSError):
                os.ftruncate(fd, 0)
        os.close(fd)  # closing the descriptor releases the flock
