"""Build the BPF objects the tests load: ``make -C bpf``, one builder at a time."""

from __future__ import annotations

import fcntl
import shutil
import subprocess
from pathlib import Path

import pytest

BPF_DIR = Path(__file__).resolve().parent.parent / "bpf"


def build_bpf(obj_path: Path) -> None:
    """Bring every object in bpf/ up to date (a no-op when it is) and check ``obj_path``."""
    if shutil.which("make") is None or shutil.which("clang") is None:
        if obj_path.exists():
            return
        pytest.fail(f"{obj_path} is missing and make/clang are not installed: run `make bpf`")
    # One builder at a time (parallel test runners share bpf/build/).
    lock_path = BPF_DIR / "build" / ".make.lock"
    lock_path.parent.mkdir(exist_ok=True)
    with open(lock_path, "w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        proc = subprocess.run(
            ["make", "-C", str(BPF_DIR)], capture_output=True, text=True, check=False
        )
    assert proc.returncode == 0, f"`make -C bpf` failed:\n{proc.stdout}\n{proc.stderr}"
    assert obj_path.exists(), f"`make -C bpf` did not produce {obj_path}: run `make bpf`"
