"""Protocol-level end-to-end tests of the real relay process.

The relay (``python -m relay.cli``) runs in the test bed's relay namespace, as an
operator would start it; a scripted HTTP/3 client (:mod:`tests.h3_probe`) in the
client namespace sends raw CONNECT-IP requests, capsules and HTTP Datagrams and
reports what came back. Each test checks what a user of the relay would notice:
the response, the capsules, packets that do or do not come back, the relay's
event lines (``session-start``, ``refused``, ``session-end``) and its Prometheus
metrics, read from inside the relay namespace.

Only one relay runs at a time (they share the UDP port, the TUN name and the
``inet masque_relay`` nftables table): :class:`RelayKeeper` keeps the relay with
the default configuration for the tests that can share it and restarts it with
another configuration when a test needs one.
"""

from __future__ import annotations

import ipaddress
import os
import re
import shutil
import signal
import sys
import tempfile
import threading
import time
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path

import pytest

from masque.capsule import (
    AddressAssign,
    AddressRequest,
    AssignedAddress,
    CapsuleType,
    IpAddressRange,
    RequestedAddress,
    RouteAdvertisement,
    encode_capsule,
    encode_raw_capsule,
)
from masque.request import build_connect_ip_headers
from masque.template import UriTemplate
from relay.ipam import usable_blocks
from tests.h3_probe import Probe, ProbeConnection, ProbeStream, StreamReport
from tests.netbed import TestBed, open_testbed

pytestmark = pytest.mark.netns

REPO = Path(__file__).resolve().parent.parent
PORT = 4433
METRICS = ("127.0.0.1", 9464)
TOKEN = "relay-probe-token-01"  # 20 characters of [A-Za-z0-9-]
DEFAULT_POOL_V4 = ipaddress.IPv4Network("10.100.0.0/24")
DEFAULT_POOL_V6 = ipaddress.IPv6Network("fd00:6d61:7371::/64")
TUN = "masque0"
NFT_TABLE = ("inet", "masque_relay")
H3_NO_ERROR = 0x100
H3_MESSAGE_ERROR = 0x10E

Headers = list[tuple[bytes, bytes]]
IPNetwork = ipaddress.IPv4Network | ipaddress.IPv6Network
Labels = frozenset[tuple[str, str]]


# -- the relay process ------------------------------------------------------------------


@dataclass(frozen=True)
class Event:
    """One stdout line of the relay: ``word key=value ...``."""

    index: int
    word: str
    fields: dict[str, str]


def _parse_event(index: int, line: str) -> Event:
    parts = line.split()
    word = parts[0] if parts else ""
    fields = dict(p.split("=", 1) for p in parts[1:] if "=" in p)
    return Event(index, word, fields)


class RelayProcess:
    """``masque-relay`` in the relay namespace; stdout events collected by a thread."""

    def __init__(self, bed: TestBed, state_dir: Path, args: Sequence[str]) -> None:
        self.bed = bed
        env = dict(os.environ, PYTHONUNBUFFERED="1", PYTHONPATH=str(REPO))
        argv = [
            sys.executable,
            "-m",
            "relay.cli",
            "--state-dir",
            str(state_dir),
            "--listen",
            f"[::]:{PORT}",
            "--token",
            TOKEN,
            "--no-nat",
            "--metrics",
            f"{METRICS[0]}:{METRICS[1]}",
            *args,
        ]
        self.proc = bed.spawn(bed.relay_ns, argv, env=env)
        self.events: list[Event] = []
        self.stderr: list[str] = []
        self._changed = threading.Condition()
        self._threads = [
            threading.Thread(target=self._read_stdout, daemon=True),
            threading.Thread(target=self._read_stderr, daemon=True),
        ]
        for thread in self._threads:
            thread.start()
        ready = self.wait_for("ready", timeout=20.0)
        assert ready.fields["listen"] == f"[::]:{PORT}"
        self.pin = self.wait_for("certificate").fields["sha256"]

    def _read_stdout(self) -> None:
        assert self.proc.stdout is not None
        for raw in self.proc.stdout:
            with self._changed:
                self.events.append(_parse_event(len(self.events), raw.decode(errors="replace")))
                self._changed.notify_all()
        with self._changed:
            self._changed.notify_all()

    def _read_stderr(self) -> None:
        assert self.proc.stderr is not None
        for raw in self.proc.stderr:
            self.stderr.append(raw.decode(errors="replace"))

    @property
    def running(self) -> bool:
        return self.proc.poll() is None

    def mark(self) -> int:
        """Position after the events seen so far (for ``since=``)."""
        with self._changed:
            return len(self.events)

    def find(self, word: str, since: int = 0, **fields: str) -> list[Event]:
        with self._changed:
            return [
                e
                for e in self.events[since:]
                if e.word == word and all(e.fields.get(k) == v for k, v in fields.items())
            ]

    def wait_for(self, word: str, *, since: int = 0, timeout: float = 5.0, **fields: str) -> Event:
        """The first ``word`` event at or after ``since`` whose fields match."""
        deadline = time.monotonic() + timeout
        with self._changed:
            while True:
                found = self.find(word, since, **fields)
                if found:
                    return found[0]
                left = deadline - time.monotonic()
                if left <= 0 or (self.proc.poll() is not None and not self._threads[0].is_alive()):
                    raise AssertionError(
                        f"relay printed no {word} {fields} within {timeout} s\n{self.describe()}"
                    )
                self._changed.wait(min(left, 0.2))

    def describe(self) -> str:
        lines = [
            " ".join([e.word, *(f"{k}={v}" for k, v in e.fields.items())]) for e in self.events
        ]
        return (
            f"relay exit code: {self.proc.poll()}\nstdout:\n  "
            + "\n  ".join(lines)
            + "\nstderr (tail):\n"
            + "".join(self.stderr[-30:])
        )

    def metrics(self) -> dict[tuple[str, Labels], float]:
        """The relay's Prometheus samples, scraped from inside the relay namespace."""
        result = self.bed.run(
            self.bed.relay_ns, [sys.executable, "-c", _SCRAPE, *map(str, METRICS)]
        )
        return parse_prometheus(result.stdout.decode())

    def wait_metric(self, name: str, value: float, timeout: float = 3.0, **labels: str) -> None:
        deadline = time.monotonic() + timeout
        while True:
            seen = sample(self.metrics(), name, **labels)
            if seen == value:
                return
            if time.monotonic() > deadline:
                raise AssertionError(f"{name}{labels} is {seen}, expected {value}")
            time.sleep(0.05)

    def stop(self, sig: signal.Signals = signal.SIGTERM, timeout: float = 10.0) -> int:
        """Signal the relay (its pid is the Python process: ``ip netns exec`` execs)."""
        if self.proc.poll() is None:
            self.proc.send_signal(sig)
        code = self.proc.wait(timeout=timeout)
        for thread in self._threads:
            thread.join(timeout=5.0)
        return code


# http.client ignores proxy settings: nothing in the environment can redirect the scrape.
_SCRAPE = """
import http.client, sys
conn = http.client.HTTPConnection(sys.argv[1], int(sys.argv[2]), timeout=5)
conn.request("GET", "/metrics")
sys.stdout.write(conn.getresponse().read().decode())
"""
_SAMPLE = re.compile(r"^([a-zA-Z_:][a-zA-Z0-9_:]*)(?:\{(.*)\})?\s+(\S+)$")
_LABEL = re.compile(r'([a-zA-Z_][a-zA-Z0-9_]*)="((?:[^"\\]|\\.)*)"')


def parse_prometheus(text: str) -> dict[tuple[str, Labels], float]:
    samples: dict[tuple[str, Labels], float] = {}
    for line in text.splitlines():
        match = _SAMPLE.match(line)
        if line.startswith("#") or match is None:
            continue
        labels = frozenset(_LABEL.findall(match.group(2) or ""))
        samples[(match.group(1), labels)] = float(match.group(3))
    return samples


def sample(samples: dict[tuple[str, Labels], float], name: str, **labels: str) -> float:
    """A sample's value; 0 for a labelled child that was never created."""
    return samples.get((name, frozenset(labels.items())), 0.0)


class RelayKeeper:
    """At most one relay at a time; reuses the running one when the configuration matches."""

    def __init__(self, bed: TestBed, workdir: Path) -> None:
        self.bed = bed
        self.workdir = workdir
        self.current: tuple[str, RelayProcess] | None = None

    def get(self, key: str = "default", args: Sequence[str] = ()) -> RelayProcess:
        if self.current is not None:
            current_key, relay = self.current
            if current_key == key and relay.running:
                return relay
            assert current_key != key, f"the {key} relay died:\n{relay.describe()}"
            self.stop()
        relay = RelayProcess(self.bed, self.workdir / "state", args)
        self.current = (key, relay)
        return relay

    def stop(self) -> None:
        if self.current is not None:
            _, relay = self.current
            self.current = None
            relay.stop()


# -- fixtures ---------------------------------------------------------------------------


@pytest.fixture(scope="module")
def bed() -> Iterator[TestBed]:
    with open_testbed() as test_bed:
        yield test_bed


@pytest.fixture(scope="module")
def workdir() -> Iterator[Path]:
    # Short: the probe's Unix socket path must fit sun_path (108 bytes).
    path = Path(tempfile.mkdtemp(prefix="mqproto-"))
    yield path
    shutil.rmtree(path, ignore_errors=True)


@pytest.fixture(scope="module")
def relays(bed: TestBed, workdir: Path) -> Iterator[RelayKeeper]:
    keeper = RelayKeeper(bed, workdir)
    try:
        yield keeper
    finally:
        keeper.stop()


@pytest.fixture
def relay(relays: RelayKeeper) -> RelayProcess:
    """The relay with the default configuration (shared by the tests that use it)."""
    return relays.get()


@pytest.fixture
def probe(bed: TestBed, workdir: Path) -> Iterator[Probe]:
    with Probe.start(bed.client_ns, workdir) as running:
        yield running


# -- helpers ----------------------------------------------------------------------------


def connect(probe: Probe, bed: TestBed, relay: RelayProcess) -> ProbeConnection:
    return probe.connect(str(bed.relay_ipv4), PORT, pin=relay.pin)


def request_headers(
    bed: TestBed,
    *,
    target: str = "*",
    ipproto: int | None = None,
    token: str | None = TOKEN,
) -> Headers:
    """The request masque-client would send (capsule-protocol: ?1, Bearer token)."""
    template = UriTemplate.default(str(bed.relay_ipv4), PORT)
    return build_connect_ip_headers(
        template,
        target,
        ipproto,
        authorization=f"Bearer {token}" if token is not None else None,
    )


def without(headers: Headers, name: bytes) -> Headers:
    return [(k, v) for k, v in headers if k != name]


def replaced(headers: Headers, name: bytes, value: bytes) -> Headers:
    return [(k, value if k == name else v) for k, v in headers]


def open_session(conn: ProbeConnection, bed: TestBed) -> tuple[ProbeStream, StreamReport]:
    """An accepted session: 200, then its first two capsules."""
    stream = conn.open(request_headers(bed))
    report = stream.wait(status=True, capsules=2)
    assert report.status == 200, report
    return stream, report


def assigned(report: StreamReport, version: int) -> IPNetwork:
    """The single prefix of ``version`` in the first ADDRESS_ASSIGN."""
    assigns = [c for c in report.capsules if isinstance(c, AddressAssign)]
    prefixes = [a.ip_prefix for a in assigns[0].addresses if a.ip_version == version]
    assert len(prefixes) == 1, assigns[0]
    return prefixes[0]


def assigned_v4(report: StreamReport) -> ipaddress.IPv4Network:
    prefix = assigned(report, 4)
    assert isinstance(prefix, ipaddress.IPv4Network)
    return prefix


def echo_request(src: object, dst: object, seq: int, ident: int = 0x4D51) -> bytes:
    from scapy.layers.inet import ICMP, IP

    return bytes(IP(src=str(src), dst=str(dst), ttl=64) / ICMP(id=ident, seq=seq) / b"probe")


def echo_reply_of(packet: bytes) -> tuple[str, str, int, int, int]:
    """(src, dst, ICMP type, id, seq) of an IPv4 ICMP packet."""
    from scapy.layers.inet import ICMP, IP

    ip = IP(packet)
    icmp = ip[ICMP]
    return ip.src, ip.dst, int(icmp.type), int(icmp.id), int(icmp.seq)


def netns_has(bed: TestBed, argv: Sequence[str]) -> bool:
    return bed.run(bed.relay_ns, argv, check=False).returncode == 0


# -- 1. ADDRESS_REQUEST ------------------------------------------------------------------


def test_address_request_gets_the_requested_address_or_the_all_zero_refusal(
    bed: TestBed, relay: RelayProcess, probe: Probe
) -> None:
    mark = relay.mark()
    relay.wait_metric("masque_relay_sessions_active", 0)
    before = relay.metrics()
    conn = connect(probe, bed, relay)
    stream, report = open_session(conn, bed)
    start = relay.wait_for("session-start", since=mark)
    initial = assigned(report, 4)
    assert start.fields["v4"] == str(initial)
    assert start.fields["v6"] == str(assigned(report, 6))
    relay.wait_metric("masque_relay_sessions_active", 1)

    # A specific free address of the pool: granted, with the request's ID, and it
    # replaces the previous IPv4 address in the complete set (RFC 9484 §4.7.1).
    wanted = ipaddress.IPv4Network("10.100.0.77/32")
    assert wanted != initial
    stream.send(encode_capsule(AddressRequest((RequestedAddress(7, wanted),))))
    report = stream.wait(capsules=3)
    answer = report.capsules[2]
    assert isinstance(answer, AddressAssign)
    v4 = [a for a in answer.addresses if a.ip_version == 4]
    v6 = [a for a in answer.addresses if a.ip_version == 6]
    assert v4 == [AssignedAddress(7, wanted)]
    assert [a.ip_prefix for a in v6] == [assigned(report, 6)]  # IPv6 unchanged, ID 0

    # The relay forwards for the new address and routes the replies back to it.
    stream.datagram(b"\x00" + echo_request(wanted.network_address, bed.target_ipv4, seq=1))
    report = stream.wait(datagrams=1)
    assert report.datagrams[0][:1] == b"\x00"
    assert echo_reply_of(report.datagrams[0][1:]) == (
        str(bed.target_ipv4),
        str(wanted.network_address),
        0,
        0x4D51,
        1,
    )

    # An address outside the pool: the all-zero, full-length refusal with that ID;
    # the session keeps the address it has.
    outside = ipaddress.IPv4Network("192.0.2.7/32")
    stream.send(encode_capsule(AddressRequest((RequestedAddress(8, outside),))))
    report = stream.wait(capsules=4)
    refusal = report.capsules[3]
    assert isinstance(refusal, AddressAssign)
    assert AssignedAddress(8, ipaddress.IPv4Network("0.0.0.0/32")) in refusal.addresses
    assert [a.ip_prefix for a in refusal.addresses if not a.is_rejection] == [
        wanted,
        *(a.ip_prefix for a in v6),
    ]
    assert report.capsule_types == [1, 3, 1, 1]

    after = relay.metrics()
    assert sample(after, "masque_relay_sessions_total") == (
        sample(before, "masque_relay_sessions_total") + 1
    )
    assert sample(after, "masque_relay_sessions_active") == 1

    # The client ends its side: the relay finishes the stream and frees the session.
    stream.send(b"", end_stream=True)
    report = stream.wait(ended=True)
    assert report.fin and report.reset_code is None
    relay.wait_for("session-end", since=mark, id=start.fields["id"], reason="client-closed")
    relay.wait_metric("masque_relay_sessions_active", 0)


# -- 2. initial capsules ------------------------------------------------------------------


def test_initial_capsules_are_address_assign_then_route_advertisement(
    bed: TestBed, relay: RelayProcess, probe: Probe
) -> None:
    conn = connect(probe, bed, relay)
    stream, _ = open_session(conn, bed)
    # Nothing else follows on its own.
    report = stream.wait(capsules=3, timeout=0.5, must=False)
    assert report.header(b"capsule-protocol") == b"?1"
    assert report.capsule_types == [CapsuleType.ADDRESS_ASSIGN, CapsuleType.ROUTE_ADVERTISEMENT]
    assert report.capsule_error is None and not report.ended
    assign, routes = report.capsules
    assert isinstance(assign, AddressAssign) and isinstance(routes, RouteAdvertisement)
    assert [a.request_id for a in assign.addresses] == [0, 0]
    v4, v6 = (a.ip_prefix for a in assign.addresses)
    assert v4.version == 4 and v4.prefixlen == 32 and v4.subnet_of(DEFAULT_POOL_V4)
    assert v6.version == 6 and v6.prefixlen == 128 and v6.subnet_of(DEFAULT_POOL_V6)
    # Never the relay's own (gateway) address or the pool's network address.
    assert v4.network_address not in (DEFAULT_POOL_V4[0], DEFAULT_POOL_V4[1])
    assert routes.ranges == (
        IpAddressRange(ipaddress.IPv4Address(0), ipaddress.IPv4Address(2**32 - 1), 0),
        IpAddressRange(ipaddress.IPv6Address(0), ipaddress.IPv6Address(2**128 - 1), 0),
    )

    # A scoped request: the advertisement is narrowed to the target and protocol.
    scoped = conn.open(request_headers(bed, target="10.201.2.0/24", ipproto=17))
    report = scoped.wait(status=True, capsules=2)
    report = scoped.wait(capsules=3, timeout=0.3, must=False)
    assert report.status == 200
    assert report.capsule_types == [CapsuleType.ADDRESS_ASSIGN, CapsuleType.ROUTE_ADVERTISEMENT]
    routes = report.capsules[1]
    assert isinstance(routes, RouteAdvertisement)
    assert routes.ranges == (
        IpAddressRange(
            ipaddress.IPv4Address("10.201.2.0"), ipaddress.IPv4Address("10.201.2.255"), 17
        ),
    )


# -- 3. refusals ------------------------------------------------------------------------


@dataclass(frozen=True)
class Refusal:
    status: int
    reason: str
    www_authenticate: bytes | None = None


REFUSALS = {
    "wrong-path": Refusal(404, "no-template-match"),
    "missing-protocol": Refusal(400, "missing-protocol"),
    "wrong-protocol": Refusal(501, "unsupported-protocol"),
    "missing-token": Refusal(401, "missing-credentials", b'Bearer realm="masque-relay"'),
    "wrong-token": Refusal(
        401, "invalid-token", b'Bearer realm="masque-relay", error="invalid_token"'
    ),
}


def refused_headers(bed: TestBed, case: str) -> Headers:
    headers = request_headers(bed)
    if case == "wrong-path":
        return replaced(headers, b":path", b"/.well-known/masque/udp/10.201.2.2/53/")
    if case == "missing-protocol":
        return without(headers, b":protocol")
    if case == "wrong-protocol":
        return replaced(headers, b":protocol", b"connect-udp")
    if case == "missing-token":
        return request_headers(bed, token=None)
    if case == "wrong-token":
        return request_headers(bed, token="not-the-relay-token-42")
    raise AssertionError(case)


@pytest.mark.parametrize("case", sorted(REFUSALS))
def test_refused_requests_get_their_status_and_are_counted(
    bed: TestBed, relay: RelayProcess, probe: Probe, case: str
) -> None:
    expected = REFUSALS[case]
    mark = relay.mark()
    relay.wait_metric("masque_relay_sessions_active", 0)
    before = relay.metrics()
    conn = connect(probe, bed, relay)
    stream = conn.open(refused_headers(bed, case))
    report = stream.wait(status=True, ended=True)

    assert report.status == expected.status
    assert report.fin and report.data == b""
    # capsule-protocol only on a 2xx (RFC 9297 §3.4).
    assert report.header(b"capsule-protocol") is None
    assert report.header(b"www-authenticate") == expected.www_authenticate
    event = relay.wait_for("refused", since=mark)
    assert event.fields["status"] == str(expected.status)
    assert event.fields["reason"] == expected.reason
    assert not relay.find("session-start", since=mark)

    after = relay.metrics()
    status = str(expected.status)
    refused = "masque_relay_refused_total"
    assert sample(after, refused, status=status) == sample(before, refused, status=status) + 1
    assert sample(after, "masque_relay_sessions_total") == sample(
        before, "masque_relay_sessions_total"
    )
    assert sample(after, "masque_relay_sessions_active") == 0
    # The connection survives a refused request.
    assert not conn.report().closed


# -- 5. stray datagrams and a malformed capsule --------------------------------------------


def test_datagrams_for_unknown_streams_or_contexts_are_dropped(
    bed: TestBed, relay: RelayProcess, probe: Probe
) -> None:
    mark = relay.mark()
    conn = connect(probe, bed, relay)
    stream, report = open_session(conn, bed)
    src = assigned_v4(report).network_address
    refused = conn.open(request_headers(bed, token=None))
    assert refused.wait(status=True, ended=True).status == 401
    before = relay.metrics()

    never_opened = conn.stream(4 * 60)
    never_opened.datagram(b"\x00" + echo_request(src, bed.target_ipv4, seq=1))
    refused.datagram(b"\x00" + echo_request(src, bed.target_ipv4, seq=2))
    stream.datagram(b"\x01" + echo_request(src, bed.target_ipv4, seq=3))  # context ID 1
    stream.datagram(b"\x00" + echo_request(src, bed.target_ipv4, seq=4))  # the control

    report = stream.wait(datagrams=1)
    report = stream.wait(datagrams=2, timeout=0.5, must=False)
    # Only the control's echo came back: the other three never reached the target.
    assert [echo_reply_of(d[1:])[2:] for d in report.datagrams] == [(0, 0x4D51, 4)]
    after = relay.metrics()
    unknown = "masque_relay_unknown_datagrams_total"
    assert sample(after, unknown) == sample(before, unknown) + 2
    forwarded = "masque_relay_packets_total"
    assert sample(after, forwarded, direction="from_client") == (
        sample(before, forwarded, direction="from_client") + 1
    )
    # None of it harmed the session or the connection.
    assert not report.ended and not conn.report().closed
    assert not relay.find("session-end", since=mark)


def test_malformed_capsule_aborts_the_session(
    bed: TestBed, relay: RelayProcess, probe: Probe
) -> None:
    mark = relay.mark()
    conn = connect(probe, bed, relay)
    stream, _ = open_session(conn, bed)
    start = relay.wait_for("session-start", since=mark)
    before = relay.metrics()

    # ROUTE_ADVERTISEMENT with start 10.0.0.9 > end 10.0.0.1 (RFC 9484 §4.7.3: MUST abort).
    value = bytes([4]) + bytes([10, 0, 0, 9]) + bytes([10, 0, 0, 1]) + bytes([0])
    stream.send(encode_raw_capsule(CapsuleType.ROUTE_ADVERTISEMENT, value))
    report = stream.wait(ended=True)
    assert report.reset_code == H3_MESSAGE_ERROR and not report.fin
    relay.wait_for("session-end", since=mark, id=start.fields["id"], reason="protocol-error")
    after = relay.metrics()
    aborted = "masque_relay_sessions_aborted_total"
    rule = "range-start-after-end"
    assert sample(after, aborted, rule=rule) == sample(before, aborted, rule=rule) + 1
    relay.wait_metric("masque_relay_sessions_active", 0)

    # Only that stream was aborted: the connection takes a new request.
    assert not conn.report().closed
    _, report = open_session(conn, bed)
    assert report.capsule_types == [CapsuleType.ADDRESS_ASSIGN, CapsuleType.ROUTE_ADVERTISEMENT]


def test_client_reset_ends_the_session_and_frees_its_address(
    bed: TestBed, relay: RelayProcess, probe: Probe
) -> None:
    """RESET_STREAM/STOP_SENDING (which aioquic's H3 layer swallows) end the session."""
    mark = relay.mark()
    conn = connect(probe, bed, relay)
    stream, _ = open_session(conn, bed)
    start = relay.wait_for("session-start", since=mark)
    stream.reset()
    relay.wait_for("session-end", since=mark, id=start.fields["id"], reason="stream-reset")
    relay.wait_metric("masque_relay_sessions_active", 0)
    # The relay keeps serving the same connection.
    assert not conn.report().closed
    _, again = open_session(conn, bed)
    assert again.status == 200
    assert sample(relay.metrics(), "masque_relay_internal_errors_total") == 0.0


def test_headers_after_a_refusal_or_on_a_session_are_not_new_requests(
    bed: TestBed, relay: RelayProcess, probe: Probe
) -> None:
    """A second HEADERS frame on a stream is never a second request (nor an error)."""
    mark = relay.mark()
    before = relay.metrics()
    conn = connect(probe, bed, relay)
    refused = conn.open(request_headers(bed, token=None))
    assert refused.wait(status=True, ended=True).status == 401
    # Trailers on the refused stream (a request's pseudo-headers there would be
    # malformed, and aioquic closes the connection for that by itself).
    refused.headers([(b"authorization", f"Bearer {TOKEN}".encode())])
    stream, _ = open_session(conn, bed)
    start = relay.wait_for("session-start", since=mark)
    stream.headers([(b"x-trailer", b"1")], end_stream=True)  # trailers end the session
    relay.wait_for("session-end", since=mark, id=start.fields["id"], reason="client-closed")
    after = relay.metrics()
    assert sample(after, "masque_relay_sessions_total") == (
        sample(before, "masque_relay_sessions_total") + 1
    )
    assert len(relay.find("refused", since=mark)) == 1
    assert sample(after, "masque_relay_internal_errors_total") == 0.0
    assert not conn.report().closed


# -- 4. pool exhaustion ---------------------------------------------------------------------


def test_pool_exhaustion_refuses_with_503_and_a_freed_address_is_reused(
    bed: TestBed, relays: RelayKeeper, probe: Probe
) -> None:
    # A /30 leaves a single client address once the network, the relay's own
    # address and the broadcast are reserved; a /29 leaves five.
    pool = ipaddress.IPv4Network("10.100.0.0/29")
    capacity = usable_blocks(pool, 32)
    assert capacity == 5
    relay = relays.get("pool-29", ["--pool-v4", str(pool), "--pool-v6", "off"])
    mark = relay.mark()
    conn = connect(probe, bed, relay)
    streams: list[ProbeStream] = []
    addresses: list[ipaddress.IPv4Network] = []
    for _ in range(capacity):
        stream, report = open_session(conn, bed)
        assign = report.capsules[0]
        assert isinstance(assign, AddressAssign)
        assert [a.ip_version for a in assign.addresses] == [4]  # no IPv6 pool
        streams.append(stream)
        addresses.append(assigned_v4(report))
    hosts = [ipaddress.IPv4Network(f"{h}/32") for h in pool.hosts()]
    assert sorted(addresses) == hosts[1:]  # all but the relay's 10.100.0.1
    relay.wait_metric("masque_relay_sessions_active", capacity)

    # One more (on another connection, as another client would): 503.
    other = connect(probe, bed, relay)
    extra = other.open(request_headers(bed)).wait(status=True, ended=True)
    assert extra.status == 503 and extra.header(b"capsule-protocol") is None
    relay.wait_for("refused", since=mark, status="503", reason="pool-exhausted")
    assert sample(relay.metrics(), "masque_relay_refused_total", status="503") == 1

    # Ending one session frees its address for the next client.
    freed = addresses[2]
    streams[2].send(b"", end_stream=True)
    assert streams[2].wait(ended=True).fin
    relay.wait_metric("masque_relay_sessions_active", capacity - 1)
    _, report = open_session(other, bed)
    assert assigned_v4(report) == freed
    relay.wait_metric("masque_relay_sessions_active", capacity)


# -- 6. compat length framing ---------------------------------------------------------------


def test_compat_length_framing_carries_an_echo(
    bed: TestBed, relays: RelayKeeper, probe: Probe, workdir: Path
) -> None:
    config = workdir / "compat.toml"
    config.write_text("[carrier]\ncompat_length_framing = true\n")
    relay = relays.get("compat", ["-c", str(config)])
    mark = relay.mark()
    conn = connect(probe, bed, relay)
    stream = conn.open(without(request_headers(bed), b"capsule-protocol"), capsules=False)
    report = stream.wait(status=True)
    assert report.status == 200
    # The stream will not carry capsules, so the response must not claim it does.
    assert report.header(b"capsule-protocol") is None
    start = relay.wait_for("session-start", since=mark)
    assert start.fields["carrier"] == "length"
    src = ipaddress.IPv4Network(start.fields["v4"]).network_address

    packet = echo_request(src, bed.target_ipv4, seq=9)
    framed = len(packet).to_bytes(2, "big") + packet
    stream.send(framed[:5])  # split mid-packet: the relay must reassemble
    stream.send(framed[5:])
    report = stream.wait(data_bytes=2 + len(packet))
    # Nothing but the length-prefixed reply on the stream (no capsules).
    length = int.from_bytes(report.data[:2], "big")
    assert len(report.data) == 2 + length == len(framed)
    assert echo_reply_of(report.data[2:]) == (str(bed.target_ipv4), str(src), 0, 0x4D51, 9)


# -- 7. idle timeout --------------------------------------------------------------------------


def test_idle_session_ends_with_fin(bed: TestBed, relays: RelayKeeper, probe: Probe) -> None:
    relay = relays.get("idle-2", ["--idle-timeout", "2"])
    mark = relay.mark()
    conn = connect(probe, bed, relay)
    idle, _ = open_session(conn, bed)
    idle_start = relay.wait_for("session-start", since=mark)
    busy, report = open_session(conn, bed)
    busy_start = relay.wait_for("session-start", since=idle_start.index + 1)
    src = assigned_v4(report).network_address

    # The busy session sends a packet every half second; the idle one nothing.
    for seq in range(7):
        busy.datagram(b"\x00" + echo_request(src, bed.target_ipv4, seq=seq))
        time.sleep(0.5)
    report = idle.wait(ended=True, timeout=3.0)
    assert report.fin and report.reset_code is None
    assert report.ended_at is not None and report.response_at is not None
    assert 1.8 <= report.ended_at - report.response_at <= 3.5
    relay.wait_for("session-end", since=mark, id=idle_start.fields["id"], reason="idle")
    assert not busy.report().ended
    assert not relay.find("session-end", since=mark, id=busy_start.fields["id"])
    assert not conn.report().closed


# -- 8. SIGTERM drain ---------------------------------------------------------------------------


def test_sigterm_drains_sessions_and_removes_tun_and_nft_table(
    bed: TestBed, relays: RelayKeeper, probe: Probe
) -> None:
    relay = relays.get("drain")
    mark = relay.mark()
    conn = connect(probe, bed, relay)
    stream, _ = open_session(conn, bed)
    start = relay.wait_for("session-start", since=mark)
    assert netns_has(bed, ["ip", "link", "show", TUN])
    assert netns_has(bed, ["nft", "list", "table", *NFT_TABLE])

    relays.current = None  # this test owns the relay's end
    assert relay.stop(signal.SIGTERM) == 0, relay.describe()

    report = stream.wait(ended=True, timeout=2.0)
    assert report.fin and report.reset_code is None
    closed = conn.wait_closed(timeout=2.0)
    assert closed.error_code == H3_NO_ERROR, closed
    assert relay.find("session-end", since=mark, id=start.fields["id"], reason="shutdown")
    assert not netns_has(bed, ["ip", "link", "show", TUN])
    assert not netns_has(bed, ["nft", "list", "table", *NFT_TABLE])
