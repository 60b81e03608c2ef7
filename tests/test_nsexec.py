"""tests.nsexec: functions really run inside the namespace, results and errors come back."""

from __future__ import annotations

import os
import subprocess
from collections.abc import Iterator

import pytest

from netio.tun import TunDevice
from tests.netbed import TestBed, open_testbed
from tests.nsexec import run_in_netns

pytestmark = pytest.mark.netns


@pytest.fixture
def bed() -> Iterator[TestBed]:
    with open_testbed() as testbed:
        yield testbed


class CustomError(Exception):
    def __init__(self, code: int) -> None:
        super().__init__(f"code {code}")
        self.code = code

    def __reduce__(self) -> tuple[type[CustomError], tuple[int]]:
        return CustomError, (self.code,)


def interfaces() -> list[str]:
    return sorted(os.listdir("/proc/sys/net/ipv4/conf"))


def add(a: int, b: int, *, c: int = 0) -> int:
    print("printed output must not corrupt the result")
    subprocess.run(["echo", "nor must a child's"], check=True)
    return a + b + c


def fail(code: int) -> None:
    raise CustomError(code)


def leave_a_tun_open_and_fail() -> None:
    tun = TunDevice.open("mqleak%d", mtu=1400)
    raise RuntimeError(f"failing with {tun.name} open")


def test_runs_in_the_namespace_and_returns_the_result(bed: TestBed) -> None:
    assert "veth-rc" in run_in_netns(bed.relay_ns, interfaces)
    assert "veth-rc" not in run_in_netns(bed.client_ns, interfaces)
    assert run_in_netns(bed.client_ns, add, 1, 2, c=3) == 6


def test_exception_is_reraised_with_the_child_traceback(bed: TestBed) -> None:
    with pytest.raises(CustomError) as raised:
        run_in_netns(bed.target_ns, fail, 7)
    assert raised.value.code == 7
    assert any("in fail" in note for note in getattr(raised.value, "__notes__", []))


def test_what_a_failing_function_opened_dies_with_it(bed: TestBed) -> None:
    with pytest.raises(RuntimeError, match="mqleak0"):
        run_in_netns(bed.relay_ns, leave_a_tun_open_and_fail)
    links = bed.run(bed.relay_ns, ["ip", "-o", "link"]).stdout.decode()
    assert "mqleak" not in links
