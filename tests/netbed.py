"""A real three-namespace network test bed: client <-> relay <-> target.

Used by the end-to-end tests, ``make demo`` and ``bench/``. Everything it creates
carries a per-run name, and everything is torn down on exit, even when the body
raises or the run is interrupted:

- namespace names are ``mqtb-<pid>-<rand>-<role>``; a later run deletes the
  namespaces of runs whose creator process is gone (a SIGKILLed test run);
- every process started through :meth:`TestBed.spawn` is killed with its process
  group, and any process still living inside a namespace is killed before the
  namespace is deleted (deleting a namespace also deletes its veth pairs).

Topology (addresses are private to the namespaces this bed creates)::

    client (veth c-r)  ----  (veth r-c) relay (veth r-t)  ----  (veth t-r) target
    10.201.1.2/24            10.201.1.1/24    10.201.2.1/24          10.201.2.2/24
    fd00:201:1::2/64         fd00:201:1::1/64 fd00:201:2::1/64       fd00:201:2::2/64

The client and the target route everything through the relay, which forwards.
"""

from __future__ import annotations

import contextlib
import ipaddress
import os
import re
import secrets
import signal
import subprocess
import time
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field

NETNS_PREFIX = "mqtb"
_NETNS_RE = re.compile(rf"^{NETNS_PREFIX}-(\d+)-[0-9a-f]+-\w+$")


@dataclass(frozen=True)
class Link:
    """One end of a veth pair inside a namespace."""

    netns: str
    ifname: str
    ipv4: ipaddress.IPv4Interface
    ipv6: ipaddress.IPv6Interface


@dataclass
class TestBed:
    """Three namespaces joined by veth pairs; create with :func:`open_testbed`."""

    run_id: str
    client_ns: str
    relay_ns: str
    target_ns: str
    client_link: Link
    relay_client_link: Link
    relay_target_link: Link
    target_link: Link
    _processes: list[subprocess.Popen[bytes]] = field(default_factory=list)

    __test__ = False  # not a pytest test class

    @property
    def namespaces(self) -> tuple[str, str, str]:
        return (self.client_ns, self.relay_ns, self.target_ns)

    @property
    def target_ipv4(self) -> ipaddress.IPv4Address:
        return self.target_link.ipv4.ip

    @property
    def target_ipv6(self) -> ipaddress.IPv6Address:
        return self.target_link.ipv6.ip

    @property
    def relay_ipv4(self) -> ipaddress.IPv4Address:
        """The relay's address as the client sees it."""
        return self.relay_client_link.ipv4.ip

    @property
    def relay_ipv6(self) -> ipaddress.IPv6Address:
        return self.relay_client_link.ipv6.ip

    def run(
        self,
        netns: str,
        argv: Sequence[str],
        *,
        check: bool = True,
        timeout: float = 60.0,
        input: bytes | None = None,
    ) -> subprocess.CompletedProcess[bytes]:
        """Run a command inside ``netns`` to completion and return its result."""
        return _run(
            ["ip", "netns", "exec", netns, *argv], check=check, timeout=timeout, input=input
        )

    def spawn(
        self,
        netns: str,
        argv: Sequence[str],
        *,
        env: dict[str, str] | None = None,
        stdout: int | None = subprocess.PIPE,
        stderr: int | None = subprocess.PIPE,
    ) -> subprocess.Popen[bytes]:
        """Start a long-running process inside ``netns``; it is killed at teardown."""
        proc = subprocess.Popen(
            ["ip", "netns", "exec", netns, *argv],
            stdin=subprocess.DEVNULL,
            stdout=stdout,
            stderr=stderr,
            env=env,
            start_new_session=True,  # own process group: teardown kills the whole tree
        )
        self._processes.append(proc)
        return proc

    def stop_processes(self) -> None:
        """Stop every process spawned here: SIGTERM, then SIGKILL after a grace period."""
        for proc in self._processes:
            _signal_group(proc, signal.SIGTERM)
        deadline = time.monotonic() + 3.0
        for proc in self._processes:
            try:
                proc.wait(timeout=max(0.0, deadline - time.monotonic()))
            except subprocess.TimeoutExpired:
                _signal_group(proc, signal.SIGKILL)
                proc.wait(timeout=5.0)
            for stream in (proc.stdout, proc.stderr):
                if stream is not None:
                    stream.close()
        self._processes.clear()

    def teardown(self) -> None:
        """Kill everything started here and delete the namespaces (and their veths)."""
        try:
            self.stop_processes()
        finally:
            for netns in self.namespaces:
                delete_netns(netns)


def _run(
    argv: Sequence[str], *, check: bool = True, timeout: float = 60.0, input: bytes | None = None
) -> subprocess.CompletedProcess[bytes]:
    result = subprocess.run(argv, capture_output=True, timeout=timeout, input=input)
    if check and result.returncode != 0:
        raise RuntimeError(
            f"command failed ({result.returncode}): {' '.join(argv)}\n"
            f"{result.stderr.decode(errors='replace').strip()}"
        )
    return result


def _signal_group(proc: subprocess.Popen[bytes], sig: signal.Signals) -> None:
    if proc.poll() is not None:
        return
    with contextlib.suppress(ProcessLookupError, PermissionError):
        os.killpg(proc.pid, sig)


def list_netns() -> list[str]:
    """Names of all network namespaces known to iproute2."""
    out = _run(["ip", "netns", "list"]).stdout.decode()
    return [line.split()[0] for line in out.splitlines() if line.strip()]


def delete_netns(netns: str) -> None:
    """Kill every process left inside ``netns``, then delete it. Missing is fine."""
    if netns not in list_netns():
        return
    pids = _run(["ip", "netns", "pids", netns], check=False).stdout.split()
    for pid in pids:
        with contextlib.suppress(ProcessLookupError, ValueError):
            os.kill(int(pid), signal.SIGKILL)
    # A killed process may take a moment to release the namespace; deletion of
    # the name works regardless, the kernel frees the namespace when it is unused.
    _run(["ip", "netns", "delete", netns], check=False)


def sweep_stale_netns() -> list[str]:
    """Delete test-bed namespaces whose creating process no longer exists."""
    removed = []
    for netns in list_netns():
        match = _NETNS_RE.match(netns)
        if match and not os.path.exists(f"/proc/{match.group(1)}"):
            delete_netns(netns)
            removed.append(netns)
    return removed


def add_netns(netns: str) -> None:
    """Create a namespace with loopback up and no duplicate address detection."""
    _run(["ip", "netns", "add", netns])
    _run(["ip", "-n", netns, "link", "set", "lo", "up"])
    # No duplicate address detection: link-local addresses would otherwise stay
    # tentative for ~2 s and the first IPv6 packets would wait on them.
    _run(
        [
            "ip",
            "netns",
            "exec",
            netns,
            "sysctl",
            "-q",
            "-w",
            "net.ipv6.conf.all.accept_dad=0",
            "net.ipv6.conf.default.accept_dad=0",
        ]
    )


def connect_links(a: Link, b: Link) -> None:
    """Join two namespaces with a veth pair and give both ends their addresses.

    The pair is created directly inside its namespaces: nothing ever appears in
    the root namespace, so concurrent runs cannot collide on interface names.
    """
    _run(
        [
            "ip",
            "link",
            "add",
            a.ifname,
            "netns",
            a.netns,
            "type",
            "veth",
            "peer",
            "name",
            b.ifname,
            "netns",
            b.netns,
        ]
    )
    for link in (a, b):
        _run(["ip", "-n", link.netns, "addr", "add", str(link.ipv4), "dev", link.ifname])
        # nodad: the address is usable at once instead of after duplicate detection.
        _run(
            [
                "ip",
                "-n",
                link.netns,
                "-6",
                "addr",
                "add",
                str(link.ipv6),
                "dev",
                link.ifname,
                "nodad",
            ]
        )
        _run(["ip", "-n", link.netns, "link", "set", link.ifname, "up"])


def route_default_via(link: Link, via: Link) -> None:
    """Send everything from ``link``'s namespace to ``via`` (both families)."""
    _run(["ip", "-n", link.netns, "route", "add", "default", "via", str(via.ipv4.ip)])
    _run(["ip", "-n", link.netns, "-6", "route", "add", "default", "via", str(via.ipv6.ip)])


def resolve_neighbour(netns: str, address: ipaddress.IPv6Address) -> None:
    """Resolve an IPv6 neighbour now: a veth that has just come up may lose the
    first Neighbour Solicitation, and the kernel retries only after 1 s."""
    _run(["ip", "netns", "exec", netns, "ping", "-n", "-q", "-c", "1", "-w", "5", str(address)])


def _setup(bed: TestBed) -> None:
    for netns in bed.namespaces:
        add_netns(netns)
    connect_links(bed.client_link, bed.relay_client_link)
    connect_links(bed.relay_target_link, bed.target_link)
    route_default_via(bed.client_link, bed.relay_client_link)
    route_default_via(bed.target_link, bed.relay_target_link)
    bed.run(
        bed.relay_ns,
        ["sysctl", "-q", "-w", "net.ipv4.ip_forward=1", "net.ipv6.conf.all.forwarding=1"],
    )
    for link in (bed.client_link, bed.target_link):
        resolve_neighbour(bed.relay_ns, link.ipv6.ip)


@contextlib.contextmanager
def open_testbed() -> Iterator[TestBed]:
    """Create the client/relay/target namespaces, yield them, always tear down."""
    if os.geteuid() != 0:
        raise PermissionError("the network test bed needs root (network namespaces)")
    sweep_stale_netns()
    run_id = f"{os.getpid()}-{secrets.token_hex(3)}"

    def ns(role: str) -> str:
        return f"{NETNS_PREFIX}-{run_id}-{role}"

    def link(netns: str, ifname: str, v4: str, v6: str) -> Link:
        return Link(netns, ifname, ipaddress.IPv4Interface(v4), ipaddress.IPv6Interface(v6))

    client_ns, relay_ns, target_ns = ns("client"), ns("relay"), ns("target")
    bed = TestBed(
        run_id=run_id,
        client_ns=client_ns,
        relay_ns=relay_ns,
        target_ns=target_ns,
        client_link=link(client_ns, "veth-cr", "10.201.1.2/24", "fd00:201:1::2/64"),
        relay_client_link=link(relay_ns, "veth-rc", "10.201.1.1/24", "fd00:201:1::1/64"),
        relay_target_link=link(relay_ns, "veth-rt", "10.201.2.1/24", "fd00:201:2::1/64"),
        target_link=link(target_ns, "veth-tr", "10.201.2.2/24", "fd00:201:2::2/64"),
    )
    # SIGTERM (e.g. CI's timeout) must unwind through the finally below too.
    previous = signal.getsignal(signal.SIGTERM)
    installed = False
    if previous in (signal.SIG_DFL, None):
        with contextlib.suppress(ValueError):  # not in the main thread
            signal.signal(signal.SIGTERM, _raise_keyboard_interrupt)
            installed = True
    try:
        _setup(bed)
        yield bed
    finally:
        bed.teardown()
        if installed:
            signal.signal(signal.SIGTERM, signal.SIG_DFL)


def _raise_keyboard_interrupt(signum: int, frame: object) -> None:
    raise KeyboardInterrupt(f"signal {signum}")
