"""End-to-end harness for the tunnel: relay and client processes in the test bed.

Built on :func:`tests.netbed.open_testbed`. A :class:`TunnelBed` adds what the
tunnel tests need on top of the three namespaces:

- a fourth namespace, ``client2``, joined to the relay by its own veth pair (a
  second client with its own routing table)::

      client2 (veth-c2r) ---- (veth-rc2) relay
      10.201.3.2/24            10.201.3.1/24
      fd00:201:3::2/64         fd00:201:3::1/64

- :meth:`TunnelBed.start_relay` / :meth:`TunnelBed.start_client`: ``masque-relay``
  and ``masque-client`` started in their namespaces, their stdout event lines
  (``word key=value ...``) collected by daemon threads and waited for with
  :meth:`EventProcess.wait_for`; the relay's Prometheus metrics read from inside
  the relay namespace;
- :meth:`TunnelBed.capture`: tcpdump on one interface of one namespace, read back
  as packets (scapy) or tcpdump text;
- :meth:`TunnelBed.start_udp_echo` and :func:`udp_exchange`: a UDP echo server that
  reports the source address of every datagram, and a verifying sender;
- :func:`inject_packet`: write a hand-made IP packet into a TUN device (as if the
  kernel had routed it there), e.g. with a spoofed source address.

Teardown is guaranteed: every process started here is stopped (SIGTERM, then
SIGKILL of its process group), the ``client2`` namespace is deleted and the
underlying bed tears down the rest, whether the body returns or raises. Reader
threads are daemons and end at the pipes' EOF.
"""

from __future__ import annotations

import contextlib
import ipaddress
import json
import os
import re
import secrets
import shlex
import signal
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path
from types import TracebackType
from typing import Any

from tests.netbed import (
    NETNS_PREFIX,
    Link,
    TestBed,
    _run,
    add_netns,
    connect_links,
    delete_netns,
    open_testbed,
    resolve_neighbour,
    route_default_via,
)

__all__ = [
    "CLIENT_TUN",
    "DEFAULT_TOKEN",
    "METRICS_PORT",
    "RELAY_PORT",
    "RELAY_TUN",
    "REPO_ROOT",
    "Capture",
    "ClientProcess",
    "Event",
    "EventProcess",
    "IcmpSeen",
    "OuterLinkReport",
    "PingText",
    "ProcessFailed",
    "RelayProcess",
    "TunnelBed",
    "UdpEcho",
    "UdpExchangeResult",
    "find_icmp",
    "inject_packet",
    "link_exists",
    "metric_key",
    "nft_masquerades",
    "nft_table_exists",
    "outer_link_report",
    "parse_event",
    "parse_prometheus",
    "ping_reported_mtu",
    "ping_reported_prohibited",
    "ping_text",
    "route_snapshot",
    "udp_exchange",
]

REPO_ROOT = Path(__file__).resolve().parent.parent
RELAY_PORT = 4433
METRICS_PORT = 9464
RELAY_TUN = "mqr0"
CLIENT_TUN = "mqtun0"
NFT_TABLE = ("inet", "masque_relay")
# A valid bearer token (>= 16 chars of [A-Za-z0-9-._~+/]); tests that need a
# generated one pass ``token=None`` to start_relay.
DEFAULT_TOKEN = "e2e-token-" + "0123456789abcdef"

IPAddress = ipaddress.IPv4Address | ipaddress.IPv6Address
IPInterface = ipaddress.IPv4Interface | ipaddress.IPv6Interface


# -- event lines ---------------------------------------------------------------------


@dataclass(frozen=True)
class Event:
    """One stdout line: a leading word and its ``key=value`` fields."""

    index: int
    "Position among all stdout lines of the process (0-based)."
    word: str
    fields: dict[str, str]
    line: str


def parse_event(index: int, line: str) -> Event:
    """Parse ``word k=v k=v``; a line that starts with ``k=v`` has the word ``k``.

    ``token=abc`` gives word ``token`` and fields ``{"token": "abc"}``. Tokens
    without ``=`` after the first are ignored (free text is not part of the contract).
    """
    parts = line.split()
    if not parts:
        return Event(index, "", {}, line)
    first = parts[0]
    word = first.split("=", 1)[0]
    fields: dict[str, str] = {}
    for part in parts if "=" in first else parts[1:]:
        if "=" in part:
            key, value = part.split("=", 1)
            fields[key] = value
    return Event(index, word, fields, line)


class ProcessFailed(AssertionError):
    """A managed process did not do what the contract says (with its output attached)."""


def _spawn_env() -> dict[str, str]:
    env = dict(os.environ)
    env["PYTHONUNBUFFERED"] = "1"
    env["PYTHONPATH"] = os.pathsep.join(p for p in (str(REPO_ROOT), env.get("PYTHONPATH", "")) if p)
    return env


class EventProcess:
    """A process in a namespace whose stdout lines are events; see :func:`parse_event`.

    Started through :meth:`TestBed.spawn` (so the bed kills it at teardown too) with
    ``cwd`` at the repository root (``env -C``, which execs: the Popen's pid is the
    program's). Two daemon threads read stdout (events) and stderr (kept for error
    messages) until EOF, so a chatty process never blocks on a full pipe.
    """

    def __init__(self, bed: TestBed, netns: str, argv: Sequence[str], *, name: str) -> None:
        self.bed = bed
        self.netns = netns
        self.name = name
        self.argv = list(argv)
        self.started_at = time.monotonic()
        self.proc = bed.spawn(netns, ["env", "-C", str(REPO_ROOT), *self.argv], env=_spawn_env())
        self._cond = threading.Condition()
        self._events: list[Event] = []
        self._stderr: list[str] = []
        self._stdout_eof = False
        self._cursors: dict[str, int] = {}
        assert self.proc.stdout is not None and self.proc.stderr is not None
        self._threads = [
            threading.Thread(
                target=self._read_stdout,
                args=(self.proc.stdout,),
                daemon=True,
                name=f"{name}-stdout",
            ),
            threading.Thread(
                target=self._read_stderr,
                args=(self.proc.stderr,),
                daemon=True,
                name=f"{name}-stderr",
            ),
        ]
        for thread in self._threads:
            thread.start()

    # -- readers ---------------------------------------------------------------------

    def _read_stdout(self, stream: Any) -> None:
        try:
            for raw in iter(stream.readline, b""):
                line = raw.decode(errors="replace").rstrip("\r\n")
                with self._cond:
                    self._events.append(parse_event(len(self._events), line))
                    self._cond.notify_all()
        except (OSError, ValueError):  # the pipe was closed under us at teardown
            pass
        finally:
            with self._cond:
                self._stdout_eof = True
                self._cond.notify_all()

    def _read_stderr(self, stream: Any) -> None:
        try:
            for raw in iter(stream.readline, b""):
                with self._cond:
                    self._stderr.append(raw.decode(errors="replace").rstrip("\r\n"))
                    if len(self._stderr) > 2000:
                        del self._stderr[:1000]
                    self._cond.notify_all()
        except (OSError, ValueError):
            pass

    # -- looking at the output ----------------------------------------------------------

    @property
    def pid(self) -> int:
        return self.proc.pid

    @property
    def lines(self) -> list[str]:
        with self._cond:
            return [e.line for e in self._events]

    @property
    def stderr_lines(self) -> list[str]:
        with self._cond:
            return list(self._stderr)

    def events(self, word: str | None = None) -> list[Event]:
        """Every event so far (with ``word``: only those)."""
        with self._cond:
            return [e for e in self._events if word is None or e.word == word]

    def mark(self) -> int:
        """The number of stdout lines so far: pass as ``since`` to wait for later lines."""
        with self._cond:
            return len(self._events)

    def describe(self, tail: int = 40) -> str:
        with self._cond:
            out = [e.line for e in self._events[-tail:]]
            err = self._stderr[-tail:]
        code = self.proc.poll()
        return (
            f"{self.name} in {self.netns} (pid {self.pid}, exit {code}): {' '.join(self.argv)}\n"
            f"--- stdout (last {tail}) ---\n" + "\n".join(out) + "\n"
            f"--- stderr (last {tail}) ---\n" + "\n".join(err)
        )

    def wait_event(self, word: str, timeout: float = 30.0, *, since: int | None = None) -> Event:
        """The next not-yet-waited-for event ``word`` (at index >= ``since`` if given).

        Each word has its own cursor: successive calls return successive events of
        that word. Raises :class:`ProcessFailed` on timeout or when stdout ends
        (the process exited) without one.
        """
        deadline = time.monotonic() + timeout
        with self._cond:
            while True:
                start = max(self._cursors.get(word, 0), since or 0)
                for event in self._events[start:]:
                    if event.word == word:
                        self._cursors[word] = event.index + 1
                        return event
                if self._stdout_eof:
                    # Let the stderr reader catch up so the message shows why.
                    self._cond.wait(0.2)
                    raise ProcessFailed(
                        f"{self.name} ended its output without a {word!r} line\n" + self.describe()
                    )
                remaining = deadline - time.monotonic()
                if remaining <= 0:
                    raise ProcessFailed(
                        f"no {word!r} line from {self.name} within {timeout:.0f} s\n"
                        + self.describe()
                    )
                self._cond.wait(remaining)

    def wait_for(
        self, word: str, timeout: float = 30.0, *, since: int | None = None
    ) -> dict[str, str]:
        """Like :meth:`wait_event`, returning just the event's ``key=value`` fields."""
        return self.wait_event(word, timeout, since=since).fields

    # -- ending it ------------------------------------------------------------------------

    @property
    def returncode(self) -> int | None:
        return self.proc.poll()

    def alive(self) -> bool:
        return self.proc.poll() is None

    def send_signal(self, sig: signal.Signals) -> None:
        """Signal the program itself (not its process group)."""
        if self.proc.poll() is None:
            with contextlib.suppress(ProcessLookupError):
                os.kill(self.proc.pid, sig)

    def wait_exit(self, timeout: float = 15.0) -> int:
        """Wait for the process to exit on its own; its exit code."""
        try:
            code = self.proc.wait(timeout=timeout)
        except subprocess.TimeoutExpired:
            raise ProcessFailed(
                f"{self.name} still running after {timeout:.0f} s\n" + self.describe()
            ) from None
        self._join_readers()
        return code

    def kill(self) -> None:
        """SIGKILL the whole process group (a crash: nothing gets cleaned up)."""
        if self.proc.poll() is None:
            with contextlib.suppress(ProcessLookupError, PermissionError):
                os.killpg(self.proc.pid, signal.SIGKILL)
            self.proc.wait(timeout=10)
        self._join_readers()

    def stop(
        self, timeout: float = 15.0, *, sig: signal.Signals = signal.SIGTERM, expect: int = 0
    ) -> int:
        """Send ``sig``, wait up to ``timeout`` s and assert the exit code is ``expect``.

        A process that does not exit in time is killed (with its group) and the
        failure is raised; nothing is ever left running.
        """
        if self.proc.poll() is not None:
            code = self.proc.returncode
            self._join_readers()
            if code != expect:
                raise ProcessFailed(
                    f"{self.name} had already exited with {code} (expected {expect})\n"
                    + self.describe()
                )
            return code
        self.send_signal(sig)
        try:
            code = self.proc.wait(timeout=timeout)
        except subprocess.TimeoutExpired:
            self.kill()
            raise ProcessFailed(
                f"{self.name} did not exit within {timeout:.0f} s of {sig.name}; killed\n"
                + self.describe()
            ) from None
        self._join_readers()
        if code != expect:
            raise ProcessFailed(
                f"{self.name} exited with {code} after {sig.name} (expected {expect})\n"
                + self.describe()
            )
        return code

    def ensure_stopped(self, grace: float = 10.0) -> None:
        """Teardown: SIGTERM, then SIGKILL of the group after ``grace`` s; never raises."""
        if self.proc.poll() is None:
            self.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(timeout=grace)
            except subprocess.TimeoutExpired:
                self.kill()
        self._join_readers()

    def _join_readers(self) -> None:
        for thread in self._threads:
            thread.join(timeout=2.0)


# -- the relay --------------------------------------------------------------------------

_METRIC_RE = re.compile(
    r"^(?P<name>[A-Za-z_:][A-Za-z0-9_:]*)(?:\{(?P<labels>.*)\})?\s+(?P<value>\S+)(?:\s+\S+)?$"
)
_LABEL_RE = re.compile(r'\s*([A-Za-z_][A-Za-z0-9_]*)\s*=\s*"((?:[^"\\]|\\.)*)"\s*,?')

_FETCH = """
import sys, urllib.request
with urllib.request.urlopen(sys.argv[1], timeout=5) as response:
    sys.stdout.write(response.read().decode())
"""


def metric_key(name: str, labels: dict[str, str] | None = None) -> str:
    """The canonical series key: ``name{a="x",b="y"}`` with labels sorted; bare ``name``."""
    if not labels:
        return name
    inner = ",".join(f'{k}="{v}"' for k, v in sorted(labels.items()))
    return f"{name}{{{inner}}}"


def parse_prometheus(text: str) -> dict[str, float]:
    """Samples of a Prometheus text exposition, keyed by :func:`metric_key`."""
    samples: dict[str, float] = {}
    for raw in text.splitlines():
        line = raw.strip()
        if not line or line.startswith("#"):
            continue
        match = _METRIC_RE.match(line)
        if match is None:
            raise ValueError(f"not a Prometheus sample line: {line!r}")
        labels = {k: v for k, v in _LABEL_RE.findall(match.group("labels") or "")}
        samples[metric_key(match.group("name"), labels)] = float(match.group("value"))
    return samples


class RelayProcess(EventProcess):
    """``masque-relay`` in the relay namespace; started by :meth:`TunnelBed.start_relay`."""

    def __init__(
        self,
        bed: TestBed,
        argv: Sequence[str],
        *,
        state_dir: Path,
        token: str | None,
        metrics_address: str | None,
    ) -> None:
        super().__init__(bed, bed.relay_ns, argv, name="masque-relay")
        self.state_dir = state_dir
        self.given_token = token
        self.metrics_address = metrics_address
        self.fingerprint = ""
        self.cert_path = ""
        self.generated_token: str | None = None
        self.ready: dict[str, str] = {}

    def wait_started(self, timeout: float = 30.0) -> dict[str, str]:
        """Wait for ``ready``; pick up the certificate and any generated token first."""
        ready = self.wait_event("ready", timeout)
        cert = [e for e in self.events("certificate") if e.index < ready.index]
        if not cert or not re.fullmatch(r"[0-9a-f]{64}", cert[-1].fields.get("sha256", "")):
            raise ProcessFailed(
                "relay printed no 'certificate sha256=<64 hex>' line before 'ready'\n"
                + self.describe()
            )
        self.fingerprint = cert[-1].fields["sha256"]
        self.cert_path = cert[-1].fields.get("path", "")
        tokens = [e for e in self.events("token") if e.index < ready.index]
        self.generated_token = tokens[-1].fields["token"] if tokens else None
        self.ready = ready.fields
        return ready.fields

    @property
    def token(self) -> str | None:
        """The token clients should present: the one given, else the generated one."""
        return self.given_token or self.generated_token

    @property
    def tun(self) -> str:
        return self.ready["tun"]

    @property
    def mtu(self) -> int:
        return int(self.ready["mtu"])

    def metrics(self) -> dict[str, float]:
        """GET /metrics from inside the relay namespace, parsed (see :func:`metric_key`)."""
        if self.metrics_address is None:
            raise RuntimeError("this relay was started without --metrics")
        url = f"http://{self.metrics_address}/metrics"
        result = self.bed.run(
            self.netns, [sys.executable, "-c", _FETCH, url], check=False, timeout=20
        )
        if result.returncode != 0:
            raise ProcessFailed(
                f"fetching {url} failed: {result.stderr.decode(errors='replace')}\n"
                + self.describe()
            )
        return parse_prometheus(result.stdout.decode())

    def metric(self, name: str, **labels: str) -> float:
        """One series' value; an absent series (a counter never incremented) is 0."""
        return self.metrics().get(metric_key(name, labels), 0.0)

    def metric_sum(self, name: str) -> float:
        """Sum over every label set of ``name`` (e.g. all ICMP kinds)."""
        prefix = name + "{"
        return sum(v for k, v in self.metrics().items() if k == name or k.startswith(prefix))

    def wait_metric(
        self,
        name: str,
        predicate: Callable[[float], bool],
        *,
        timeout: float = 10.0,
        **labels: str,
    ) -> float:
        """Poll until ``predicate(value)`` holds; the last value. Raises on timeout."""
        deadline = time.monotonic() + timeout
        while True:
            value = self.metric(name, **labels)
            if predicate(value):
                return value
            if time.monotonic() >= deadline:
                raise ProcessFailed(
                    f"metric {metric_key(name, labels)} = {value}: condition not met within "
                    f"{timeout:.0f} s\n" + self.describe()
                )
            time.sleep(0.2)


# -- the client --------------------------------------------------------------------------


class ClientProcess(EventProcess):
    """``masque-client`` in a client namespace; started by :meth:`TunnelBed.start_client`."""

    def __init__(self, bed: TestBed, netns: str, argv: Sequence[str]) -> None:
        super().__init__(bed, netns, argv, name=f"masque-client@{netns.rsplit('-', 1)[-1]}")
        self.connected: dict[str, str] = {}
        self.ready: dict[str, str] = {}

    def wait_ready(self, timeout: float = 30.0, *, since: int | None = None) -> dict[str, str]:
        """Wait for ``connected`` then ``ready``; the ``ready`` fields."""
        deadline = time.monotonic() + timeout
        connected = self.wait_event("connected", timeout, since=since)
        ready = self.wait_event(
            "ready", max(0.1, deadline - time.monotonic()), since=connected.index
        )
        self.connected = connected.fields
        self.ready = ready.fields
        return ready.fields

    @property
    def carrier(self) -> str:
        return self.connected["carrier"]

    @property
    def tun(self) -> str:
        return self.ready["tun"]

    @property
    def mtu(self) -> int:
        return int(self.ready["mtu"])

    def _assigned(self, key: str) -> IPInterface | None:
        value = self.ready.get(key, "-")
        return None if value in ("-", "") else ipaddress.ip_interface(value)

    @property
    def v4(self) -> ipaddress.IPv4Address:
        """The assigned IPv4 address (the first of the assigned prefix)."""
        iface = self._assigned("v4")
        if not isinstance(iface, ipaddress.IPv4Interface):
            raise ProcessFailed(f"client has no IPv4 assignment: {self.ready}")
        return iface.ip

    @property
    def v6(self) -> ipaddress.IPv6Address:
        iface = self._assigned("v6")
        if not isinstance(iface, ipaddress.IPv6Interface):
            raise ProcessFailed(f"client has no IPv6 assignment: {self.ready}")
        return iface.ip

    def has(self, family: int) -> bool:
        return self._assigned("v4" if family == 4 else "v6") is not None


# -- capture ----------------------------------------------------------------------------


class Capture:
    """tcpdump on ``ifname`` in ``netns`` writing a pcap; use as a context manager.

    Entering waits until tcpdump is listening; leaving stops it (SIGINT, so it
    flushes) after a short settle delay. Then :meth:`packets` (scapy objects) and
    :meth:`text` (``tcpdump -nn -r`` lines) show what crossed the interface.
    """

    def __init__(self, bed: TestBed, netns: str, ifname: str, bpf_filter: str, path: Path) -> None:
        self.bed = bed
        self.netns = netns
        self.ifname = ifname
        self.bpf_filter = bpf_filter
        self.path = path
        self._proc: EventProcess | None = None

    def start(self, timeout: float = 10.0) -> Capture:
        argv = [
            "tcpdump",
            "-i",
            self.ifname,
            "-nn",
            "-U",
            "--immediate-mode",
            "-Z",
            "root",
            "-s",
            "0",
            "-w",
            str(self.path),
        ]
        if self.bpf_filter:
            argv.append(self.bpf_filter)
        self._proc = EventProcess(self.bed, self.netns, argv, name=f"tcpdump@{self.ifname}")
        deadline = time.monotonic() + timeout
        while not any("listening on" in line for line in self._proc.stderr_lines):
            if not self._proc.alive() or time.monotonic() > deadline:
                self._proc.ensure_stopped(1.0)
                raise ProcessFailed("tcpdump did not start\n" + self._proc.describe())
            time.sleep(0.05)
        return self

    def stop(self, settle: float = 0.3) -> None:
        if self._proc is None:
            return
        proc, self._proc = self._proc, None
        if proc.alive():
            time.sleep(settle)
        with contextlib.suppress(ProcessFailed):
            proc.stop(10.0, sig=signal.SIGINT)
        proc.ensure_stopped(1.0)

    def __enter__(self) -> Capture:
        return self.start()

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.stop()

    def packets(self) -> list[Any]:
        """The captured packets as scapy objects (Ethernet, or IP/IPv6 on a TUN)."""
        from scapy.layers.inet import IP
        from scapy.layers.inet6 import IPv6
        from scapy.layers.l2 import CookedLinux, Ether
        from scapy.packet import Raw
        from scapy.utils import RawPcapReader

        packets: list[Any] = []
        with RawPcapReader(str(self.path)) as reader:
            linktype = reader.linktype
            for data, _meta in reader:
                if linktype == 1:
                    packets.append(Ether(data))
                elif linktype == 113:
                    packets.append(CookedLinux(data))
                elif linktype in (12, 14, 101, 228, 229):  # raw IP (a TUN)
                    version = data[0] >> 4 if data else 0
                    layer = IP if version == 4 else IPv6 if version == 6 else Raw
                    packets.append(layer(data))
                else:
                    packets.append(Raw(data))
        return packets

    def raw(self) -> list[bytes]:
        """The captured frames as bytes (link layer included)."""
        from scapy.utils import RawPcapReader

        with RawPcapReader(str(self.path)) as reader:
            return [bytes(data) for data, _meta in reader]

    def text(self) -> list[str]:
        """``tcpdump -nn -r`` of the capture, one line per packet."""
        out = _run(["tcpdump", "-nn", "-r", str(self.path)], check=False).stdout
        return out.decode(errors="replace").splitlines()


# ICMPv6 that every IPv6 link carries by itself: MLD (130-132, 143), RS/RA/NS/NA/redirect.
_LINK_ICMP6 = {130, 131, 132, 133, 134, 135, 136, 137, 143}


@dataclass(frozen=True)
class OuterLinkReport:
    carrier_packets: int
    "UDP packets from or to the relay's port."
    violations: list[str]
    "Summaries of every other IP packet (link housekeeping excepted)."


def outer_link_report(packets: Iterable[Any], port: int = RELAY_PORT) -> OuterLinkReport:
    """Classify a capture of the client-relay link: tunnel carrier vs anything else.

    ARP and IPv6 neighbour discovery / MLD are link housekeeping and ignored.
    Everything else must be UDP with source or destination port ``port``.
    """
    from scapy.layers.inet import IP, UDP
    from scapy.layers.inet6 import IPv6
    from scapy.layers.l2 import ARP

    carrier = 0
    violations: list[str] = []
    for pkt in packets:
        if pkt.haslayer(ARP):
            continue
        ip = pkt.getlayer(IP) or pkt.getlayer(IPv6)
        if ip is None:
            violations.append(f"non-IP: {pkt.summary()}")
            continue
        if isinstance(ip, IPv6):
            nh = _icmp6_type(ip)
            if nh is not None and nh in _LINK_ICMP6:
                continue
        udp = ip.getlayer(UDP)
        if udp is not None and port in (udp.sport, udp.dport) and not _is_icmp_error(ip):
            carrier += 1
            continue
        violations.append(pkt.summary())
    return OuterLinkReport(carrier, violations)


def _icmp6_layer(ip6: Any) -> Any | None:
    """The ICMPv6 layer of an IPv6 packet (after any extension headers), or None."""
    nh, layer = int(ip6.nh), ip6.payload
    while nh in (0, 43, 60) and hasattr(layer, "nh"):  # hop-by-hop, routing, dest. options
        nh, layer = int(layer.nh), layer.payload
    return layer if nh == 58 else None


def _icmp6_type(ip6: Any) -> int | None:
    layer = _icmp6_layer(ip6)
    raw = bytes(layer) if layer is not None else b""
    return raw[0] if raw else None


def _is_icmp_error(ip: Any) -> bool:
    """An ICMP error quoting a UDP packet would otherwise look like UDP to the port."""
    from scapy.layers.inet import IP

    if isinstance(ip, IP):
        return int(ip.proto) == 1
    return _icmp6_type(ip) is not None


@dataclass(frozen=True)
class IcmpSeen:
    src: str
    dst: str
    type: int
    code: int
    mtu: int
    "The MTU of a Fragmentation Needed / Packet Too Big message (else 0)."


def find_icmp(packets: Iterable[Any]) -> list[IcmpSeen]:
    """Every ICMP / ICMPv6 message in a capture (outermost), with its MTU when it has one."""
    from scapy.layers.inet import IP
    from scapy.layers.inet6 import IPv6

    seen: list[IcmpSeen] = []
    for pkt in packets:
        ip = pkt.getlayer(IP) or pkt.getlayer(IPv6)
        if ip is None:
            continue
        if isinstance(ip, IP):
            if int(ip.proto) != 1:
                continue
            raw = bytes(ip.payload)
            frag_needed = len(raw) >= 8 and raw[0] == 3 and raw[1] == 4
        else:
            layer = _icmp6_layer(ip)
            if layer is None:
                continue
            raw = bytes(layer)
            frag_needed = len(raw) >= 8 and raw[0] == 2
        if len(raw) < 2:
            continue
        if isinstance(ip, IP):
            mtu = int.from_bytes(raw[6:8], "big") if frag_needed else 0
        else:
            mtu = int.from_bytes(raw[4:8], "big") if frag_needed else 0
        seen.append(IcmpSeen(str(ip.src), str(ip.dst), raw[0], raw[1], mtu))
    return seen


# -- UDP echo -----------------------------------------------------------------------------

_ECHO = """
import socket, sys
port = int(sys.argv[1])
sock = socket.socket(socket.AF_INET6, socket.SOCK_DGRAM)
sock.setsockopt(socket.IPPROTO_IPV6, socket.IPV6_V6ONLY, 0)
sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
sock.bind(("::", port))
print(f"ready port={port}", flush=True)
while True:
    data, addr = sock.recvfrom(65535)
    sock.sendto(data, addr)
    host = addr[0][7:] if addr[0].startswith("::ffff:") else addr[0]
    print(f"from={host} port={addr[1]} len={len(data)} head={data[:8].hex()}", flush=True)
"""


class UdpEcho(EventProcess):
    """UDP echo server (dual-stack) printing ``from=<addr> port= len= head=`` per datagram."""

    def __init__(self, bed: TestBed, netns: str, port: int) -> None:
        super().__init__(
            bed, netns, [sys.executable, "-c", _ECHO, str(port)], name=f"udp-echo:{port}"
        )
        self.port = port
        self.wait_for("ready", 10)

    def sources(self, head: str | None = None) -> list[str]:
        """Source addresses seen, optionally only for datagrams starting with ``head`` (hex)."""
        return [
            e.fields["from"]
            for e in self.events("from")
            if head is None or e.fields.get("head") == head
        ]


_UDP_SEND = """
import json, os, socket, sys, time
dst, port, head = sys.argv[1], int(sys.argv[2]), bytes.fromhex(sys.argv[3])
sizes = [int(s) for s in sys.argv[4].split(",")]
family = socket.AF_INET6 if ":" in dst else socket.AF_INET
sock = socket.socket(family, socket.SOCK_DGRAM)
sock.connect((dst, port))
results = []
for size in sizes:
    payload = (head + os.urandom(size))[:size]
    ok, tries = False, 0
    while not ok and tries < 3:
        tries += 1
        try:
            sock.send(payload)
        except OSError as exc:
            results.append({"size": size, "ok": False, "tries": tries, "error": str(exc)})
            break
        deadline = time.monotonic() + 2.0
        while time.monotonic() < deadline:
            sock.settimeout(max(0.01, deadline - time.monotonic()))
            try:
                data = sock.recv(65535)
            except socket.timeout:
                break
            except OSError as exc:
                results.append({"size": size, "ok": False, "tries": tries, "error": str(exc)})
                tries = 99
                break
            if data == payload:
                ok = True
                break
    else:
        results.append({"size": size, "ok": ok, "tries": tries})
print(json.dumps(results))
"""


@dataclass(frozen=True)
class UdpExchangeResult:
    head: str
    "Hex of the 8-byte prefix of every datagram (find them in :meth:`UdpEcho.sources`)."
    results: list[dict[str, Any]]

    @property
    def all_ok(self) -> bool:
        return bool(self.results) and all(r["ok"] for r in self.results)

    @property
    def failed(self) -> list[dict[str, Any]]:
        return [r for r in self.results if not r["ok"]]


def udp_exchange(
    bed: TestBed, netns: str, dst: IPAddress | str, port: int, sizes: Sequence[int]
) -> UdpExchangeResult:
    """Send one datagram of each size (>= 8 B) to an echo server and verify each echo.

    Each is retried up to 3 times (2 s wait each); a payload starts with a random
    8-byte head shared by the whole exchange.
    """
    if any(size < 8 for size in sizes):
        raise ValueError("datagrams carry an 8-byte head: sizes must be >= 8")
    head = secrets.token_bytes(8)
    result = bed.run(
        netns,
        [
            sys.executable,
            "-c",
            _UDP_SEND,
            str(dst),
            str(port),
            head.hex(),
            ",".join(str(s) for s in sizes),
        ],
        timeout=30 + 7 * len(sizes),
    )
    return UdpExchangeResult(head.hex(), json.loads(result.stdout.decode()))


# -- packets into a TUN, routes, links ------------------------------------------------------

_INJECT = """
import socket, sys
ifname = sys.argv[1]
for hexpkt in sys.argv[2:]:
    pkt = bytes.fromhex(hexpkt)
    proto = 0x0800 if pkt[0] >> 4 == 4 else 0x86DD
    sock = socket.socket(socket.AF_PACKET, socket.SOCK_DGRAM, socket.htons(proto))
    sock.sendto(pkt, (ifname, proto))
    sock.close()
"""


def inject_packet(bed: TestBed, netns: str, ifname: str, *packets: bytes) -> None:
    """Transmit raw IP packets on ``ifname`` (AF_PACKET, no routing, no source checks).

    On a TUN device this hands the packets to the program reading the TUN, exactly
    as if the kernel had routed them there, whatever their source address.
    """
    bed.run(netns, [sys.executable, "-c", _INJECT, ifname, *(p.hex() for p in packets)])


def route_snapshot(bed: TestBed, netns: str) -> tuple[list[str], list[str]]:
    """Every IPv4 and IPv6 route of every table in ``netns``, canonical and sorted."""
    tables: list[list[str]] = []
    for version in ("-4", "-6"):
        out = bed.run(netns, ["ip", version, "-j", "route", "show", "table", "all"]).stdout
        tables.append(sorted(json.dumps(r, sort_keys=True) for r in json.loads(out or b"[]")))
    return tables[0], tables[1]


def link_exists(bed: TestBed, netns: str, ifname: str) -> bool:
    return bed.run(netns, ["ip", "link", "show", "dev", ifname], check=False).returncode == 0


def nft_table_exists(
    bed: TestBed, netns: str, family: str = NFT_TABLE[0], name: str = NFT_TABLE[1]
) -> bool:
    result = bed.run(netns, ["nft", "list", "table", family, name], check=False)
    return result.returncode == 0


def nft_masquerades(bed: TestBed, netns: str) -> bool:
    """Whether the relay's nftables table (if any) holds a masquerade rule."""
    result = bed.run(netns, ["nft", "list", "table", *NFT_TABLE], check=False)
    return result.returncode == 0 and b"masquerade" in result.stdout


_PING_SUMMARY = re.compile(r"(\d+) packets transmitted, (\d+) received")


@dataclass(frozen=True)
class PingText:
    sent: int
    received: int
    text: str
    "Everything ping printed (stdout and stderr): per-packet errors included."


def ping_text(
    bed: TestBed,
    netns: str,
    address: IPAddress | str,
    *,
    count: int = 2,
    size: int = 56,
    dont_fragment: bool = False,
    wait: float = 2.0,
) -> PingText:
    """Ping without ``-q``, keeping ping's per-packet messages (ICMP errors, local errors)."""
    argv = ["ping", "-n", "-c", str(count), "-i", "0.3", "-W", str(wait), "-s", str(size)]
    if dont_fragment:
        argv += ["-M", "do"]
    result = bed.run(netns, [*argv, str(address)], check=False, timeout=30 + count * wait)
    text = result.stdout.decode(errors="replace") + result.stderr.decode(errors="replace")
    match = _PING_SUMMARY.search(text)
    sent, received = (int(match.group(1)), int(match.group(2))) if match else (0, 0)
    return PingText(sent, received, text)


# -- the bed ---------------------------------------------------------------------------------


class TunnelBed:
    """The three-namespace bed plus ``client2``, and the tunnel's processes on it.

    Use as a context manager; everything is torn down on exit. Attributes of the
    underlying :class:`TestBed` are reachable as ``tb.bed``; the common ones are
    mirrored here (``client_ns``, ``relay_ns``, ``target_ns``, ``target_ipv4``...).
    """

    relay_command: list[str]
    client_command: list[str]

    def __init__(self, workdir: Path | None = None, *, fast_path: bool = True) -> None:
        self._workdir_arg = workdir
        #: False: every relay and client started here gets ``--no-fast-path`` (the
        #: pure-Python data path), so one test body covers both implementations.
        self.fast_path = fast_path
        self._stack = contextlib.ExitStack()
        self._processes: list[EventProcess] = []
        self._captures: list[Capture] = []
        # MASQUE_E2E_RELAY_CMD / MASQUE_E2E_CLIENT_CMD (shell words) run other programs
        # under the same contract: an installed build, a wrapper under strace...
        self.relay_command = shlex.split(os.environ.get("MASQUE_E2E_RELAY_CMD", "")) or [
            sys.executable,
            "-m",
            "relay.cli",
        ]
        self.client_command = shlex.split(os.environ.get("MASQUE_E2E_CLIENT_CMD", "")) or [
            sys.executable,
            "-m",
            "client.cli",
        ]
        self._bed: TestBed | None = None
        self.client2_ns = ""
        self.client2_link: Link | None = None
        self.relay_client2_link: Link | None = None
        self.workdir = Path()

    # -- context manager ---------------------------------------------------------------

    def __enter__(self) -> TunnelBed:
        try:
            if self._workdir_arg is None:
                self.workdir = Path(
                    self._stack.enter_context(tempfile.TemporaryDirectory(prefix="mq-tunnel-"))
                )
            else:
                self.workdir = self._workdir_arg
                self.workdir.mkdir(parents=True, exist_ok=True)
            self._bed = self._stack.enter_context(open_testbed())
            self._stack.callback(self._stop_everything)
            self._add_client2()
        except BaseException:
            self._stack.close()
            raise
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self._stack.close()

    def _stop_everything(self) -> None:
        for capture in self._captures:
            with contextlib.suppress(Exception):
                capture.stop(settle=0.0)
        # Clients first (they restore routes), then the relay (drains, removes TUN/nft).
        for proc in sorted(self._processes, key=lambda p: isinstance(p, RelayProcess)):
            with contextlib.suppress(Exception):
                proc.ensure_stopped(10.0)
        self._processes.clear()
        if self.client2_ns:
            delete_netns(self.client2_ns)

    @property
    def bed(self) -> TestBed:
        if self._bed is None:
            raise RuntimeError("TunnelBed used outside its with-block")
        return self._bed

    # -- mirrors of the bed --------------------------------------------------------------

    @property
    def client_ns(self) -> str:
        return self.bed.client_ns

    @property
    def relay_ns(self) -> str:
        return self.bed.relay_ns

    @property
    def target_ns(self) -> str:
        return self.bed.target_ns

    @property
    def namespaces(self) -> tuple[str, ...]:
        return (*self.bed.namespaces, self.client2_ns)

    @property
    def target_ipv4(self) -> ipaddress.IPv4Address:
        return self.bed.target_ipv4

    @property
    def target_ipv6(self) -> ipaddress.IPv6Address:
        return self.bed.target_ipv6

    @property
    def relay_egress_ipv4(self) -> ipaddress.IPv4Address:
        """The relay's address on the target side (what NAT rewrites sources to)."""
        return self.bed.relay_target_link.ipv4.ip

    @property
    def relay_egress_ipv6(self) -> ipaddress.IPv6Address:
        return self.bed.relay_target_link.ipv6.ip

    def target(self, family: int) -> IPAddress:
        return self.target_ipv4 if family == 4 else self.target_ipv6

    def relay_egress(self, family: int) -> IPAddress:
        return self.relay_egress_ipv4 if family == 4 else self.relay_egress_ipv6

    def run(
        self, netns: str, argv: Sequence[str], **kwargs: Any
    ) -> subprocess.CompletedProcess[bytes]:
        return self.bed.run(netns, argv, **kwargs)

    def new_dir(self, stem: str) -> Path:
        path = Path(tempfile.mkdtemp(prefix=f"{stem}-", dir=self.workdir))
        path.chmod(0o700)
        return path

    # -- client2 ---------------------------------------------------------------------------

    def _add_client2(self) -> None:
        bed = self.bed
        netns = f"{NETNS_PREFIX}-{bed.run_id}-client2"
        self.client2_ns = netns  # set first: teardown deletes it even if setup fails below
        self.client2_link = Link(
            netns,
            "veth-c2r",
            ipaddress.IPv4Interface("10.201.3.2/24"),
            ipaddress.IPv6Interface("fd00:201:3::2/64"),
        )
        self.relay_client2_link = Link(
            bed.relay_ns,
            "veth-rc2",
            ipaddress.IPv4Interface("10.201.3.1/24"),
            ipaddress.IPv6Interface("fd00:201:3::1/64"),
        )
        add_netns(netns)
        connect_links(self.client2_link, self.relay_client2_link)
        route_default_via(self.client2_link, self.relay_client2_link)
        resolve_neighbour(bed.relay_ns, self.client2_link.ipv6.ip)

    # -- endpoints ---------------------------------------------------------------------------

    def relay_endpoint(self, netns: str | None = None, family: int = 4) -> str:
        """``HOST:PORT`` of the relay as seen from ``netns`` (IPv6 in brackets)."""
        netns = netns or self.client_ns
        if netns == self.client_ns:
            link = self.bed.relay_client_link
        elif netns == self.client2_ns and self.relay_client2_link is not None:
            link = self.relay_client2_link
        else:
            raise ValueError(f"{netns} is not a client namespace of this bed")
        return f"{link.ipv4.ip}:{RELAY_PORT}" if family == 4 else f"[{link.ipv6.ip}]:{RELAY_PORT}"

    # -- processes ----------------------------------------------------------------------------

    def _track(self, proc: EventProcess) -> None:
        self._processes = [p for p in self._processes if p.alive()]
        self._processes.append(proc)

    def start_relay(
        self,
        *args: str,
        state_dir: Path | None = None,
        token: str | None = DEFAULT_TOKEN,
        tun_name: str | None = RELAY_TUN,
        metrics: bool = True,
        timeout: float = 30.0,
    ) -> RelayProcess:
        """Start ``masque-relay`` in the relay namespace and wait for its ``ready`` line.

        Always passes ``--state-dir`` (a fresh directory unless given: reuse one to
        keep certificate and tokens) and ``--listen [::]:4433``; by default also
        ``--token DEFAULT_TOKEN`` (``token=None``: let the relay generate one),
        ``--tun-name mqr0``, ``--metrics 127.0.0.1:9464`` and, unless ``--no-nat``
        is among ``args``, ``--egress veth-rt`` (the relay namespace has no default
        route). ``args`` come last.
        """
        state_dir = state_dir or self.new_dir("relay-state")
        argv = [
            *self.relay_command,
            "--state-dir",
            str(state_dir),
            "--listen",
            f"[::]:{RELAY_PORT}",
            "--log-level",
            "info",
        ]
        if token is not None:
            argv += ["--token", token]
        if tun_name is not None:
            argv += ["--tun-name", tun_name]
        metrics_address = f"127.0.0.1:{METRICS_PORT}" if metrics else None
        if metrics_address is not None:
            argv += ["--metrics", metrics_address]
        if "--no-nat" not in args and "--egress" not in args:
            argv += ["--egress", self.bed.relay_target_link.ifname]
        if not self.fast_path:
            argv.append("--no-fast-path")
        argv += args
        relay = RelayProcess(
            self.bed, argv, state_dir=state_dir, token=token, metrics_address=metrics_address
        )
        self._track(relay)
        try:
            relay.wait_started(timeout)
        except BaseException:
            relay.ensure_stopped(5.0)
            raise
        return relay

    def start_client(
        self,
        *args: str,
        relay: RelayProcess | None,
        netns: str | None = None,
        endpoint: str | None = None,
        family: int = 4,
        token: str | None = None,
        send_token: bool = True,
        pin: bool = True,
    ) -> ClientProcess:
        """Start ``masque-client`` in ``netns`` (default: the client namespace).

        Passes ``--relay`` (the relay's address on that namespace's link, IPv4 unless
        ``family=6``, or ``endpoint``), ``--token`` (``token``, else the relay's; none
        with ``send_token=False``) and ``--pin-sha256`` of the relay's certificate
        (``pin=False``: none). ``args`` come last. Does not wait: see
        :meth:`ClientProcess.wait_ready`.
        """
        netns = netns or self.client_ns
        argv = [
            *self.client_command,
            "--relay",
            endpoint or self.relay_endpoint(netns, family),
            "--log-level",
            "info",
        ]
        use_token = token if token is not None else (relay.token if relay else None)
        if send_token and use_token is not None:
            argv += ["--token", use_token]
        if pin and relay is not None:
            argv += ["--pin-sha256", relay.fingerprint]
        if not self.fast_path:
            argv.append("--no-fast-path")
        argv += args
        client = ClientProcess(self.bed, netns, argv)
        self._track(client)
        return client

    def start_udp_echo(self, port: int = 7777, netns: str | None = None) -> UdpEcho:
        """A UDP echo server in ``netns`` (default: the target namespace)."""
        echo = UdpEcho(self.bed, netns or self.target_ns, port)
        self._track(echo)
        return echo

    def capture(self, netns: str, ifname: str, bpf_filter: str = "") -> Capture:
        """tcpdump ``ifname`` in ``netns`` into a fresh pcap (enter to start)."""
        path = self.new_dir("pcap") / f"{ifname}.pcap"
        capture = Capture(self.bed, netns, ifname, bpf_filter, path)
        self._captures.append(capture)
        return capture


# What iputils ping prints for the ICMP errors the relay must send.
_PING_MTU_RE = re.compile(
    r"(?:Frag needed and DF set|Packet too big|message too long)[^\n]*?mtu\s*[=:]?\s*(\d+)",
    re.IGNORECASE,
)
_PING_PROHIBITED_RE = re.compile(
    r"Packet filtered|Administratively prohibited|Destination Host Prohibited"
    r"|Destination Net Prohibited",
    re.IGNORECASE,
)


def ping_reported_mtu(text: str) -> int | None:
    """The MTU of the first Fragmentation Needed / Packet Too Big ping reported, or None."""
    match = _PING_MTU_RE.search(text)
    return int(match.group(1)) if match else None


def ping_reported_prohibited(text: str) -> bool:
    """Whether ping reported an administratively-prohibited Destination Unreachable."""
    return _PING_PROHIBITED_RE.search(text) is not None
