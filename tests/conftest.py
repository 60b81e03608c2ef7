"""Suite-wide guards: a run that tests nothing, skips something or leaks fails.

- pytest exits 5 when nothing is collected; we also fail a session in which no
  test passed (everything deselected or skipped), so CI can never go green idle.
- A skipped test fails the session unless MASQUE_ALLOW_SKIPS=1: CI runs as root
  on a machine that has everything, so a skip there hides a missing install step.
- Network namespaces present after the run that were not there before it fail
  the session: every test must tear down what it created.
"""

from __future__ import annotations

import os
import subprocess

import pytest
from hypothesis import HealthCheck, settings

# Hypothesis judges speed by the wall clock. On a 2-vCPU VM that also runs the
# namespace tests' relays, a single draw can stall for a second (a fresh clone in
# CI hit one): timing is not a property of the code under test, so neither a
# per-example deadline nor the "input generation is slow" check fails the suite.
# Every example still runs and every assertion still holds.
settings.register_profile("masque", deadline=None, suppress_health_check=[HealthCheck.too_slow])
settings.load_profile("masque")

_NETNS_BEFORE: set[str] = set()


def _netns() -> set[str]:
    try:
        out = subprocess.run(["ip", "netns", "list"], capture_output=True, check=False).stdout
    except FileNotFoundError:
        return set()
    return {line.split()[0] for line in out.decode().splitlines() if line.strip()}


def _ours_or_orphaned(netns: str) -> bool:
    """A test-bed namespace made by this run, or by a process of it that is gone.

    Namespaces of other, still running processes (a concurrent run on the same
    machine) are not ours to judge.
    """
    parts = netns.split("-")
    if len(parts) < 3 or parts[0] != "mqtb" or not parts[1].isdigit():
        return False
    pid = int(parts[1])
    return pid == os.getpid() or not os.path.exists(f"/proc/{pid}")


def pytest_sessionstart(session: pytest.Session) -> None:
    _NETNS_BEFORE.clear()
    _NETNS_BEFORE.update(_netns())


def pytest_sessionfinish(session: pytest.Session, exitstatus: int) -> None:
    reporter = session.config.pluginmanager.get_plugin("terminalreporter")
    if reporter is None or session.config.option.collectonly:
        return
    passed = len(reporter.stats.get("passed", []))
    skipped = len(reporter.stats.get("skipped", []))
    problems = []
    if passed == 0 and exitstatus == 0:
        problems.append("no test passed: refusing to report success for an idle run")
        session.exitstatus = pytest.ExitCode.NO_TESTS_COLLECTED
    if skipped and os.environ.get("MASQUE_ALLOW_SKIPS") != "1":
        problems.append(f"{skipped} test(s) skipped (set MASQUE_ALLOW_SKIPS=1 to allow)")
        session.exitstatus = pytest.ExitCode.TESTS_FAILED
    leaked = {ns for ns in _netns() - _NETNS_BEFORE if _ours_or_orphaned(ns)}
    if leaked:
        problems.append(f"network namespaces left behind: {sorted(leaked)}")
        session.exitstatus = pytest.ExitCode.TESTS_FAILED
    for problem in problems:
        reporter.write_line(f"masque-relay suite guard: {problem}", red=True, bold=True)
