"""A CONNECT-IP client on a foreign QUIC stack: interop peer for the relay's datagram path.

Everything else in the test suite speaks QUIC through aioquic, as the relay does,
so a bug shared by both ends (or a relay that only understands aioquic's packet
layout) would pass unnoticed. This client uses qh3 instead: a fork of aioquic
whose 2.x transport is its own native Rust core (packet building and parsing,
frames, loss recovery and congestion control, with AEAD and header protection
from aws-lc-rs). What it still shares with aioquic: the TLS 1.3 handshake state
machine descends from aioquic's Python code (on qh3's own crypto), and QPACK is
the same ls-qpack C library (through Rust bindings instead of pylsqpack). Every
packet, including the QUIC DATAGRAM frames (RFC 9221) that carry the HTTP
Datagrams, is built, sealed and parsed by qh3's core.

What it does, over one connection::

    QUIC + TLS handshake (certificate pinned, or not checked with --insecure)
    -> HTTP/3 with SETTINGS_H3_DATAGRAM (qh3 sends it; the relay's is awaited)
    -> extended CONNECT connect-ip (RFC 9484 §4.4), bearer token
    -> 2xx, then an ADDRESS_ASSIGN capsule (parsed with masque.capsule)
    -> per --ping target, --count ICMP echo requests from the assigned address,
       each as an HTTP Datagram: quarter stream ID, context ID 0, IP packet
    -> echo replies read from HTTP Datagrams, checked, one line each

The request headers come from masque.request and the IP/ICMP packets are built
with masque.ippacket; the QUIC, TLS and HTTP/3 layers are all qh3's.

Output (stdout, one event per line, ``word key=value ...``)::

    connected relay=10.201.1.1:4433 quic_version=0x1 cipher=AES_128_GCM_SHA256 alpn=h3
    response status=200
    assigned v4=10.100.0.2/32 v6=fd00:6d61:7371::2/128
    reply from=10.201.2.2 seq=1 ttl=63 bytes=84 rtt_ms=1.2
    icmp-error from=... type=3 code=13 about=10.201.2.2      (not counted as a reply)
    stats datagrams_sent=.. datagrams_received=.. capsule_packets=.. ignored=..
    received=3 sent=3

Exit status: 0 when every echo request got its reply over an HTTP Datagram, 1
when some did not, 2 when the connection or the request failed (``error
reason=...`` says why), 3 when the relay refused the request (``refused
status=...``).

Run it in a network namespace that reaches the relay; no TUN is needed::

    python -m tests.foreign_peer --relay 10.201.1.1:4433 --token T \\
        --pin-sha256 HEX --ping 10.201.2.2 --ping fd00:201:2::2 --count 3
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import ipaddress
import os
import ssl
import struct
import sys
import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any, cast

from qh3.asyncio.client import connect
from qh3.asyncio.protocol import QuicConnectionProtocol
from qh3.h3.connection import H3_ALPN, H3Connection, Setting
from qh3.h3.events import DatagramReceived, DataReceived, H3Event, HeadersReceived
from qh3.quic.configuration import QuicConfiguration
from qh3.quic.connection import QuicConnection
from qh3.quic.events import ConnectionTerminated, QuicEvent, StopSendingReceived, StreamReset
from qh3.quic.packet import QuicProtocolVersion
from qh3.tls import CipherSuite

from masque.capsule import AddressAssign, CapsuleParser, DatagramCapsule
from masque.datagram import CONTEXT_ID_IP_PACKET, decode_datagram, encode_datagram
from masque.errors import CapsuleError, DatagramError, PacketError
from masque.ippacket import (
    build_ipv4_header,
    build_ipv6_header,
    internet_checksum,
    parse_ip_packet,
    transport_checksum,
)
from masque.request import build_connect_ip_headers
from masque.template import UriTemplate

IPAddress = ipaddress.IPv4Address | ipaddress.IPv6Address

EXIT_OK = 0
EXIT_LOST = 1
EXIT_FAILED = 2
EXIT_REFUSED = 3

ICMP = 1
ICMPV6 = 58
ECHO_REQUEST = {4: 8, 6: 128}
ECHO_REPLY = {4: 0, 6: 129}
# ICMP errors that quote an offending packet (v4: unreachable, time exceeded,
# parameter problem; v6: every type below 128).
ICMPV4_ERRORS = frozenset({3, 11, 12})

CIPHER_SUITES = {suite.name: suite for suite in CipherSuite}
QUIC_VERSIONS = {"1": QuicProtocolVersion.VERSION_1, "2": QuicProtocolVersion.VERSION_2}


def _line(word: str, **fields: object) -> None:
    text = " ".join(f"{key}={value}" for key, value in fields.items())
    print(f"{word} {text}".rstrip(), flush=True)


class PeerError(Exception):
    """The connection or the CONNECT-IP request failed; the message is the reason."""


class Refused(PeerError):
    def __init__(self, status: int) -> None:
        super().__init__(f"status {status}")
        self.status = status


# -- ICMP echo ---------------------------------------------------------------------------


def build_echo_request(
    src: IPAddress, dst: IPAddress, ident: int, seq: int, payload: bytes
) -> bytes:
    """A complete IPv4 + ICMP or IPv6 + ICMPv6 echo request."""
    if src.version != dst.version:
        raise ValueError(f"{src} and {dst} are of different IP versions")
    message = bytearray(struct.pack("!BBHHH", ECHO_REQUEST[src.version], 0, 0, ident, seq))
    message += payload
    if isinstance(src, ipaddress.IPv4Address) and isinstance(dst, ipaddress.IPv4Address):
        struct.pack_into("!H", message, 2, internet_checksum(message))
        return build_ipv4_header(src, dst, ICMP, len(message)) + bytes(message)
    assert isinstance(src, ipaddress.IPv6Address) and isinstance(dst, ipaddress.IPv6Address)
    struct.pack_into("!H", message, 2, transport_checksum(src, dst, ICMPV6, message))
    return build_ipv6_header(src, dst, ICMPV6, len(message)) + bytes(message)


@dataclass(frozen=True)
class IcmpSeen:
    """An ICMP/ICMPv6 message that arrived in an HTTP Datagram."""

    src: IPAddress
    dst: IPAddress
    ttl: int
    icmp_type: int
    code: int
    ident: int
    seq: int
    payload: bytes
    size: int
    checksum_ok: bool
    about: IPAddress | None = None  # for errors: the destination of the quoted packet


def parse_icmp(packet: bytes | memoryview) -> IcmpSeen | None:
    """The ICMP message in ``packet``, or None for anything else."""
    header = parse_ip_packet(packet)
    if header.protocol not in (ICMP, ICMPV6) or header.is_fragment:
        return None
    message = bytes(packet[header.header_length :])
    if len(message) < 8:
        return None
    icmp_type, code, _, ident, seq = struct.unpack_from("!BBHHH", message)
    if header.version == 4:
        checksum_ok = internet_checksum(message) == 0
    else:
        checksum_ok = transport_checksum(header.src, header.dst, ICMPV6, message) == 0
    about: IPAddress | None = None
    is_error = icmp_type in ICMPV4_ERRORS if header.version == 4 else icmp_type < 128
    if is_error:
        try:
            about = parse_ip_packet(message[8:], verify_checksum=False).dst
        except PacketError:
            # A truncated quote: read the destination address where it sits.
            quote = message[8:]
            if header.version == 4 and len(quote) >= 20:
                about = ipaddress.IPv4Address(quote[16:20])
            elif header.version == 6 and len(quote) >= 40:
                about = ipaddress.IPv6Address(quote[24:40])
    return IcmpSeen(
        header.src,
        header.dst,
        header.ttl,
        icmp_type,
        code,
        ident,
        seq,
        message[8:],
        header.total_length,
        checksum_ok,
        about,
    )


# -- the HTTP/3 connection ---------------------------------------------------------------


@dataclass
class Probe:
    """One echo request in flight."""

    dst: IPAddress
    seq: int
    payload: bytes
    sent_at: float
    answered: bool = False


@dataclass
class Stats:
    datagrams_sent: int = 0
    datagrams_received: int = 0
    capsule_packets: int = 0
    ignored: int = 0
    errors: list[str] = field(default_factory=list)


class PeerProtocol(QuicConnectionProtocol):
    """qh3's asyncio protocol with an HTTP/3 connection and one CONNECT-IP request."""

    def __init__(self, quic: QuicConnection, stream_handler: Any = None) -> None:
        super().__init__(quic, stream_handler)
        loop = asyncio.get_running_loop()
        # qh3's H3Connection always sends SETTINGS_H3_DATAGRAM = 1 (RFC 9297 §2.1.1).
        self.h3 = H3Connection(quic)
        self.stream_id: int | None = None
        self.status: asyncio.Future[int] = loop.create_future()
        self.assigned: asyncio.Future[AddressAssign] = loop.create_future()
        self.ended: asyncio.Future[str] = loop.create_future()
        self.parser = CapsuleParser()
        self.changed = asyncio.Event()
        self.on_packet: Any = None  # callback(IP packet bytes), set once pinging
        self.stats = Stats()

    # qh3 calls this for every QUIC event; everything goes through the H3 layer.
    def quic_event_received(self, event: QuicEvent) -> None:
        if isinstance(event, ConnectionTerminated):
            reason = event.reason_phrase or f"error-{event.error_code:#x}"
            self._end(f"connection-closed:{reason}")
        elif (
            isinstance(event, (StreamReset, StopSendingReceived))
            and event.stream_id == self.stream_id
        ):
            self._end(f"stream-reset:{event.error_code:#x}")
        for h3_event in self.h3.handle_event(event):
            self._h3_event(h3_event)
        self.changed.set()

    def _h3_event(self, event: H3Event) -> None:
        if self.stream_id is None:
            return
        if isinstance(event, DatagramReceived):
            # qh3 names the quarter stream ID the "flow ID" (RFC 9297 §2.1).
            if event.flow_id != self.stream_id // 4:
                self.stats.ignored += 1
                return
            self.stats.datagrams_received += 1
            try:
                context_id, payload = decode_datagram(event.data)
            except DatagramError:
                self.stats.ignored += 1
                return
            if context_id != CONTEXT_ID_IP_PACKET:
                self.stats.ignored += 1  # RFC 9484 §6: unknown context, drop
            elif self.on_packet is not None:
                self.on_packet(bytes(payload))
        elif isinstance(event, HeadersReceived) and event.stream_id == self.stream_id:
            if not self.status.done():
                status = dict(event.headers).get(b":status", b"0")
                self.status.set_result(int(status) if status.isdigit() else 0)
            if event.stream_ended:
                self._end("stream-ended")
        elif isinstance(event, DataReceived) and event.stream_id == self.stream_id:
            try:
                capsules = self.parser.feed(event.data)
            except CapsuleError as error:
                self._end(f"capsule-error:{error.rule}")
                return
            for capsule in capsules:
                if isinstance(capsule, AddressAssign):
                    if not self.assigned.done():
                        self.assigned.set_result(capsule)
                elif isinstance(capsule, DatagramCapsule):
                    # The relay fell back to DATAGRAM capsules: not the path under test.
                    self.stats.capsule_packets += 1
            if event.stream_ended:
                self._end("stream-ended")

    def _end(self, reason: str) -> None:
        if not self.ended.done():
            self.ended.set_result(reason)

    @property
    def h3_datagrams_ready(self) -> bool:
        """The relay sent SETTINGS_H3_DATAGRAM = 1 and accepts DATAGRAM frames."""
        settings = self.h3.received_settings
        return (
            settings is not None
            and settings.get(Setting.H3_DATAGRAM) == 1
            and self._quic._remote_max_datagram_frame_size is not None
        )

    def send_ip_packet(self, packet: bytes) -> None:
        assert self.stream_id is not None
        self.h3.send_datagram(self.stream_id // 4, encode_datagram(CONTEXT_ID_IP_PACKET, packet))
        self.stats.datagrams_sent += 1
        self.transmit()


async def _until(protocol: PeerProtocol, future: asyncio.Future[Any], timeout: float) -> Any:
    """Wait for ``future``; fail early if the connection or the stream ends first."""
    waiting: set[asyncio.Future[Any]] = {future, protocol.ended}
    done, _ = await asyncio.wait(waiting, timeout=timeout, return_when=asyncio.FIRST_COMPLETED)
    if future in done:
        return future.result()
    if protocol.ended.done():
        raise PeerError(protocol.ended.result())
    raise PeerError("timeout")


async def _until_true(protocol: PeerProtocol, predicate: Any, timeout: float) -> bool:
    deadline = time.monotonic() + timeout
    while not predicate():
        if protocol.ended.done():
            return False
        remaining = deadline - time.monotonic()
        if remaining <= 0:
            return False
        protocol.changed.clear()
        # Every QUIC event sets ``changed`` (the end of the connection too).
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(protocol.changed.wait(), min(remaining, 0.2))
    return True


# -- the run -----------------------------------------------------------------------------


def split_endpoint(text: str) -> tuple[str, int]:
    """``HOST:PORT`` or ``[V6]:PORT`` -> (host, port)."""
    host, sep, port = text.rpartition(":")
    if not sep or not port.isdigit():
        raise argparse.ArgumentTypeError(f"{text!r} is not HOST:PORT")
    return host.strip("[]"), int(port)


def configuration(args: argparse.Namespace) -> QuicConfiguration:
    config = QuicConfiguration(
        is_client=True,
        alpn_protocols=H3_ALPN,
        # RFC 9297 §2.1.1: H3 datagrams need the max_datagram_frame_size parameter.
        max_datagram_frame_size=65536,
        idle_timeout=args.timeout + 5.0,
        server_name=args.server_name,
        supported_versions=[QUIC_VERSIONS[args.quic_version]],
    )
    if args.cipher_suite:
        config.cipher_suites = [CIPHER_SUITES[name] for name in args.cipher_suite]
    # No CA check either way; a pin is checked by qh3 inside the handshake, on the
    # SHA-256 of the certificate's DER encoding (what the relay prints as sha256=).
    config.verify_mode = ssl.CERT_NONE
    if args.pin_sha256:
        config.assert_fingerprint = args.pin_sha256
    return config


def source_address(assign: AddressAssign, version: int) -> IPAddress | None:
    """An address we may send from: the first assigned prefix of that version."""
    for entry in assign.addresses:
        prefix = entry.ip_prefix
        if prefix.version != version or entry.is_rejection:
            continue
        # A single address, or the first one after the network's own in a prefix.
        return prefix[0] if prefix.num_addresses == 1 else prefix[1]
    return None


async def run(args: argparse.Namespace) -> int:
    host, port = args.relay
    targets: list[IPAddress] = [ipaddress.ip_address(t) for t in args.ping]
    created: list[PeerProtocol] = []

    def create_protocol(quic: QuicConnection, **kwargs: Any) -> PeerProtocol:
        created.append(PeerProtocol(quic, **kwargs))
        return created[-1]

    async with contextlib.AsyncExitStack() as stack:
        try:
            protocol = await asyncio.wait_for(
                stack.enter_async_context(
                    connect(
                        host,
                        port,
                        configuration=configuration(args),
                        create_protocol=create_protocol,
                    )
                ),
                args.timeout,
            )
            peer = cast(PeerProtocol, protocol)
        except (ConnectionError, OSError, TimeoutError) as error:
            # qh3 raises a bare ConnectionError: the close reason is on the protocol.
            why = str(error) or type(error).__name__
            if created and created[-1].ended.done():
                why = created[-1].ended.result()
            _line("error", reason=f"handshake:{why}".replace(" ", "_"))
            return EXIT_FAILED
        try:
            return await _session(args, peer, host, port, targets)
        except Refused as refused:
            _line("refused", status=refused.status)
            return EXIT_REFUSED
        except PeerError as error:
            _line("error", reason=str(error).replace(" ", "_"))
            return EXIT_FAILED
    return EXIT_FAILED  # not reached: the with-block returns


async def _session(
    args: argparse.Namespace,
    peer: PeerProtocol,
    host: str,
    port: int,
    targets: Sequence[IPAddress],
) -> int:
    quic = peer._quic
    cipher = quic.get_cipher()
    tls = quic.tls
    authority_host = f"[{host}]" if ":" in host else host
    _line(
        "connected",
        relay=f"{authority_host}:{port}",
        quic_version=f"{quic._version:#x}",
        cipher=cipher.name if cipher is not None else "-",
        alpn=tls.alpn_negotiated if tls is not None else "-",
        max_datagram_frame_size=quic._remote_max_datagram_frame_size,
    )

    stream_id = quic.get_next_available_stream_id()
    peer.stream_id = stream_id
    headers = build_connect_ip_headers(
        UriTemplate.default(authority_host, port),
        authorization=f"Bearer {args.token}" if args.token else None,
    )
    peer.h3.send_headers(stream_id, headers, end_stream=False)
    peer.transmit()

    status: int = await _until(peer, peer.status, args.timeout)
    if not 200 <= status < 300:
        raise Refused(status)
    _line("response", status=status)
    assign: AddressAssign = await _until(peer, peer.assigned, args.timeout)
    sources = {version: source_address(assign, version) for version in (4, 6)}
    _line(
        "assigned",
        **{
            f"v{version}": next(
                (
                    str(a.ip_prefix)
                    for a in assign.addresses
                    if a.ip_prefix.version == version and not a.is_rejection
                ),
                "-",
            )
            for version in (4, 6)
        },
    )
    if not await _until_true(peer, lambda: peer.h3_datagrams_ready, args.timeout):
        raise PeerError(
            peer.ended.result() if peer.ended.done() else "relay-did-not-enable-h3-datagrams"
        )

    # -- echo requests --------------------------------------------------------------
    ident = os.getpid() & 0xFFFF
    probes: dict[tuple[IPAddress, int], Probe] = {}
    received = 0

    def on_packet(packet: bytes) -> None:
        nonlocal received
        try:
            seen = parse_icmp(packet)
        except PacketError:
            seen = None
        if seen is None:
            peer.stats.ignored += 1
            return
        if seen.icmp_type == ECHO_REPLY[seen.src.version] and seen.ident == ident:
            probe = probes.get((seen.src, seen.seq))
            if (
                probe is None
                or probe.answered
                or seen.dst != sources[seen.dst.version]
                or seen.payload != probe.payload
                or not seen.checksum_ok
            ):
                peer.stats.ignored += 1
                peer.stats.errors.append(f"bad-reply:{seen.src}:{seen.seq}")
                return
            probe.answered = True
            received += 1
            rtt = (time.monotonic() - probe.sent_at) * 1000
            _line(
                "reply",
                **{"from": seen.src},
                seq=seen.seq,
                ttl=seen.ttl,
                bytes=seen.size,
                rtt_ms=f"{rtt:.1f}",
                via="datagram",
            )
        elif seen.icmp_type != ECHO_REQUEST[seen.src.version]:
            _line(
                "icmp-error" if seen.about is not None else "icmp",
                **{"from": seen.src},
                type=seen.icmp_type,
                code=seen.code,
                about=seen.about or "-",
            )
        else:
            peer.stats.ignored += 1

    peer.on_packet = on_packet
    seq = 0
    for target in targets:
        src = sources[target.version]
        if src is None:
            _line("no-source", target=target, reason=f"no-IPv{target.version}-address-assigned")
            seq += args.count  # counted as sent and lost
            continue
        for _ in range(args.count):
            seq += 1
            payload = struct.pack("!d", time.time()) + os.urandom(args.size - 8)
            probes[(target, seq)] = Probe(target, seq, payload, time.monotonic())
            peer.send_ip_packet(build_echo_request(src, target, ident, seq, payload))
            await asyncio.sleep(args.interval)
    sent = seq
    await _until_true(peer, lambda: received >= len(probes), args.timeout)

    stats = peer.stats
    _line(
        "stats",
        datagrams_sent=stats.datagrams_sent,
        datagrams_received=stats.datagrams_received,
        capsule_packets=stats.capsule_packets,
        ignored=stats.ignored,
        errors=",".join(stats.errors) or "-",
        ended=peer.ended.result() if peer.ended.done() else "-",
    )
    print(f"received={received} sent={sent}", flush=True)
    return EXIT_OK if sent > 0 and received == sent else EXIT_LOST


def parse_args(argv: Sequence[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        prog="python -m tests.foreign_peer",
        description="CONNECT-IP ping over HTTP Datagrams, on the qh3 QUIC stack.",
    )
    parser.add_argument("--relay", required=True, type=split_endpoint, help="HOST:PORT")
    parser.add_argument("--token", help="bearer token (authorization: Bearer TOKEN)")
    trust = parser.add_mutually_exclusive_group(required=True)
    trust.add_argument("--pin-sha256", help="SHA-256 of the relay certificate (hex)")
    trust.add_argument("--insecure", action="store_true", help="accept any certificate")
    parser.add_argument("--server-name", help="TLS SNI (default: none)")
    parser.add_argument(
        "--ping",
        action="append",
        required=True,
        metavar="TARGET_IP",
        help="address to ping through the tunnel (repeatable)",
    )
    parser.add_argument("--count", type=int, default=3, help="echo requests per target")
    parser.add_argument("--size", type=int, default=56, help="ICMP payload bytes (>= 8)")
    parser.add_argument("--interval", type=float, default=0.05, help="seconds between requests")
    parser.add_argument("--timeout", type=float, default=10.0, help="seconds for each step")
    parser.add_argument(
        "--cipher-suite",
        action="append",
        choices=sorted(CIPHER_SUITES),
        help="offer only these TLS cipher suites (repeatable; default: qh3's list)",
    )
    parser.add_argument(
        "--quic-version", choices=sorted(QUIC_VERSIONS), default="1", help="QUIC version"
    )
    args = parser.parse_args(argv)
    if args.count < 1 or args.size < 8:
        parser.error("--count must be >= 1 and --size >= 8")
    return args


def main(argv: Sequence[str] | None = None) -> int:
    return asyncio.run(run(parse_args(argv)))


if __name__ == "__main__":
    sys.exit(main())
