"""The client service: connect, authenticate, configure the TUN, carry packets, reconnect.

One attempt::

    QUIC + TLS handshake (certificate checked: CA, pin, or --insecure)
    -> extended CONNECT connect-ip  -> 2xx
    -> ADDRESS_ASSIGN + ROUTE_ADVERTISEMENT
    -> TUN (addresses, MTU) + routes (advertised / full / given), relay pinned
    -> packets until the connection or the stream ends
    -> TUN and routes removed; retry with exponential backoff

A 401/403 is final (exit code 3): retrying cannot fix credentials.
"""

from __future__ import annotations

import asyncio
import contextlib
import ipaddress
import logging
import socket
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any, TextIO

from aioquic.asyncio.protocol import QuicConnectionProtocol
from aioquic.h3.connection import H3_ALPN, ErrorCode
from aioquic.h3.events import DatagramReceived, DataReceived, H3Event, HeadersReceived
from aioquic.quic.configuration import QuicConfiguration
from aioquic.quic.connection import QuicConnection
from aioquic.quic.events import (
    ConnectionTerminated,
    QuicEvent,
    StopSendingReceived,
    StreamReset,
)

from client.dataplane import ClientDataPlane, udp_batch_io
from client.routes import RouteManager
from client.tls import TlsPolicy
from masque.capsule import IpAddressRange
from masque.errors import VarintError
from masque.events import AddressesAssigned, RoutesAdvertised, SessionAborted
from masque.events import DatagramReceived as CapsuleDatagram
from masque.request import build_connect_ip_headers
from masque.session import ConnectIpSession, Role
from masque.template import TARGET_ANY, TargetScope, UriTemplate
from masque.varint import decode_varint
from netio import aioquic_internals
from netio.compiled import fastpath
from netio.h3 import (
    ConnectIpH3Connection,
    datagram_prefix,
    max_http_datagram_payload,
    send_framed_datagrams,
    send_ip_packets,
)
from netio.lane import DatagramLane, LaneTable
from netio.tun import TunDevice
from netio.udp import BatchedUdpEndpoint, as_socket_address, open_udp_socket

if TYPE_CHECKING:
    from _fastpath import PacketBatch

log = logging.getLogger(__name__)

IPNetwork = ipaddress.IPv4Network | ipaddress.IPv6Network

QUIC_MAX_UDP_PAYLOAD = 1452
#: Our QUIC idle timeout and keep-alive: a dead relay is noticed within seconds.
IDLE_TIMEOUT = 10.0
KEEPALIVE_INTERVAL = 3.0
#: Cap on the tunnel MTU: the relay's default TUN MTU.
DEFAULT_MAX_MTU = 1400


class Refused(Exception):
    """The relay answered the CONNECT-IP request with a non-2xx status."""

    def __init__(self, status: int) -> None:
        super().__init__(f"relay refused the request with status {status}")
        self.status = status


class Disconnected(Exception):
    """The connection or the CONNECT-IP stream ended."""


@dataclass
class ClientOptions:
    """What ``masque-client`` was asked to do (see client/cli.py)."""

    relay_host: str
    relay_port: int
    tls: TlsPolicy
    token: str | None = None
    client_cert: Path | None = None  # mTLS: sent when the relay asks for one
    client_key: Path | None = None
    server_name: str | None = None
    template: str | None = None
    target: TargetScope = TARGET_ANY
    ipproto: int | None = None
    datagrams: bool = True
    routes: str = "advertised"  # advertised | full | comma-separated CIDRs
    tun_name: str = "mqtun0"
    mtu: int = DEFAULT_MAX_MTU
    reconnect_max: float = 30.0
    send_queue_packets: int = 1024
    fast_path: bool = True  # the compiled data path (false: pure Python)
    datagram_lane: bool = True  # DATAGRAM packets handled in C (needs fast_path)


def _line(out: TextIO, word: str, **fields: object) -> None:
    text = " ".join(f"{key}={value}" for key, value in fields.items())
    print(f"{word} {text}".rstrip(), file=out, flush=True)


class ClientProtocol(QuicConnectionProtocol):
    """The QUIC connection to the relay, with HTTP/3 on top."""

    def __init__(self, quic: QuicConnection, *, datagrams: bool, **kwargs: Any) -> None:
        super().__init__(quic, **kwargs)
        self.h3 = ConnectIpH3Connection(quic, enable_datagrams=datagrams)
        self.handler: Any = None  # the _Attempt in charge, once the request is sent
        #: The datagram lane's table (None: lane off) and this connection's lane.
        self.lanes: LaneTable | None = None
        self.lane: DatagramLane | None = None
        self.endpoint: BatchedUdpEndpoint | None = None
        self.closed = asyncio.Event()
        self.close_reason = ""

    def datagram_received(self, data: bytes | str, addr: Any) -> None:
        # The endpoint calls transmit() once at the end of each receive batch.
        aioquic_internals.receive_without_transmit(self, data, addr)  # type: ignore[arg-type]

    def end_of_batch(self) -> None:
        """The endpoint's receive batch is over: write its packets, then transmit once."""
        if self.lanes is not None:
            self.lanes.end_batch(self._loop.time())  # aioquic learns what C consumed
        dataplane = self.handler.dataplane if self.handler is not None else None
        if dataplane is not None:
            dataplane.flush()
        self.transmit()
        self.sync_lane()

    def sync_lane(self) -> None:
        """Install the lane once the session carries datagrams; follow aioquic's changes."""
        if self.lanes is None or self.endpoint is None:
            return
        handler = self.handler
        if self.lane is None:
            if handler is None or handler.dataplane is None or handler.carrier != "datagram":
                return
            self.lane = DatagramLane.install(
                self._quic, send=self.endpoint.send_many, deliver=handler.lane_datagram, owner=self
            )
            if self.lane is not None:
                self.lanes.add(self.lane)
                # Our session's packets go from C straight into a batch for the TUN.
                prefix = datagram_prefix(handler.stream_id)
                self.lane.bind(prefix, handler.dataplane.from_relay_batch)
        elif self.lane.refresh():
            self.lanes.index(self.lane)
        else:
            self.drop_lane()

    def drop_lane(self) -> None:
        if self.lane is not None:
            self.lane.unbind()
            if self.lanes is not None:
                self.lanes.remove(self.lane)
        self.lane = None

    def quic_event_received(self, event: QuicEvent) -> None:
        if isinstance(event, ConnectionTerminated):
            self.drop_lane()
            self.close_reason = event.reason_phrase or f"error-{event.error_code}"
            self.closed.set()
        elif (
            isinstance(event, (StreamReset, StopSendingReceived))
            and self.handler is not None
            and event.stream_id == self.handler.stream_id
        ):
            # aioquic's H3 layer swallows these: our request stream is gone.
            self.handler.stream_gone("stream-reset")
        for h3_event in self.h3.handle_event(event):
            if self.handler is not None:
                self.handler.h3_event(h3_event)


@dataclass
class _Attempt:
    """One connection's CONNECT-IP request and what it set up."""

    protocol: ClientProtocol
    options: ClientOptions
    stream_id: int
    session: ConnectIpSession = field(default_factory=lambda: ConnectIpSession(Role.CLIENT))
    status: asyncio.Future[int] = field(
        default_factory=lambda: asyncio.get_running_loop().create_future()
    )
    assigned: asyncio.Event = field(default_factory=asyncio.Event)
    routed: asyncio.Event = field(default_factory=asyncio.Event)
    ended: asyncio.Event = field(default_factory=asyncio.Event)
    end_reason: str = ""
    dataplane: ClientDataPlane | None = None
    stream_dead: bool = False
    early_packets: list[bytes] = field(default_factory=list)

    def h3_event(self, event: H3Event) -> None:
        if isinstance(event, DatagramReceived):
            if event.stream_id != self.stream_id:
                return
            packet = self.session.receive_datagram(event.data)
            if packet is not None:
                self._deliver(packet)
        elif isinstance(event, HeadersReceived) and event.stream_id == self.stream_id:
            if not self.status.done():
                status = dict(event.headers).get(b":status", b"0")
                self.status.set_result(int(status) if status.isdigit() else 0)
            if event.stream_ended:
                self._end("stream-ended")
        elif isinstance(event, DataReceived) and event.stream_id == self.stream_id:
            for capsule_event in self.session.receive_capsule_data(
                event.data, end_stream=event.stream_ended
            ):
                if isinstance(capsule_event, AddressesAssigned):
                    self.assigned.set()
                elif isinstance(capsule_event, RoutesAdvertised):
                    self.routed.set()
                elif isinstance(capsule_event, CapsuleDatagram):
                    self._deliver(capsule_event.packet)
                elif isinstance(capsule_event, SessionAborted):
                    log.warning("relay broke the protocol: %s", capsule_event.reason)
                    self._end(f"protocol-error:{capsule_event.rule}")
            if event.stream_ended:
                self._end("stream-ended")

    def _deliver(self, packet: bytes | memoryview) -> None:
        if self.dataplane is not None:
            self.dataplane.from_relay((packet,))
        elif len(self.early_packets) < 64:
            self.early_packets.append(bytes(packet))

    def stream_gone(self, reason: str) -> None:
        """The relay reset or stopped our stream: nothing more can be sent on it."""
        self.stream_dead = True
        self._end(reason)

    def _end(self, reason: str) -> None:
        if not self.ended.is_set():
            self.end_reason = reason
            self.ended.set()

    @property
    def carrier(self) -> str:
        use_datagrams = self.options.datagrams and self.protocol.h3.datagrams_negotiated
        return "datagram" if use_datagrams else "capsule"

    def lane_datagram(self, payload: bytes) -> None:
        """An HTTP Datagram the lane received (quarter stream ID first)."""
        try:
            quarter, offset = decode_varint(payload)
        except VarintError:
            return
        if quarter * 4 != self.stream_id:
            return  # RFC 9297 §2.1: not our request's datagram
        packet = self.session.receive_datagram(memoryview(payload)[offset:])
        if packet is not None:
            self._deliver(packet)

    def send_from_batch(self, batch: PacketBatch, indices: list[int]) -> int:
        """Packets of a TUN batch through the lane; -1 when there is no lane (yet)."""
        lane = self.protocol.lane
        if lane is None or self.ended.is_set():
            return -1
        return lane.send(batch, indices, datagram_prefix(self.stream_id))

    def send_datagrams(self, payloads: list[bytes]) -> int:
        """Send HTTP Datagram payloads framed with :attr:`datagram_prefix`; one transmit."""
        if self.ended.is_set():
            return 0
        sent = send_framed_datagrams(
            self.protocol._quic, payloads, queue_bound=self.options.send_queue_packets
        )
        if sent:
            self.protocol.transmit()
        return sent

    def send_packets(self, packets: list[bytes]) -> int:
        """Send a batch to the relay on this session's carrier; one transmit per batch."""
        if self.ended.is_set():
            return 0  # the session is over; the tunnel is being torn down
        try:
            sent = send_ip_packets(
                self.protocol.h3,
                self.stream_id,
                packets,
                as_datagrams=self.carrier == "datagram",
                frame=self.session.send_datagram_capsule,
                queue_bound=self.options.send_queue_packets,
            )
        except Exception as error:  # the stream went away under us
            log.info("cannot send on the tunnel: %s", error)
            self.stream_gone("stream-gone")
            return 0
        if sent:
            self.protocol.transmit()
        return sent


class ClientTunnel:
    """Keeps a tunnel to the relay up until cancelled; see the module docstring."""

    def __init__(self, options: ClientOptions, out: TextIO = sys.stdout) -> None:
        self.options = options
        self.out = out
        #: The connection of the current attempt, while there is one.
        self.protocol: ClientProtocol | None = None

    def request_key_update(self) -> None:
        """Rotate the current connection's 1-RTT keys; the lane follows."""
        protocol = self.protocol
        if protocol is None:
            return
        protocol._quic.request_key_update()
        protocol.transmit()  # aioquic applies the new keys to its next packet
        protocol.sync_lane()
        _line(self.out, "key-update")

    def rebind(self) -> None:
        """Send from a new UDP port from now on (the relay sees a NAT rebinding)."""
        protocol = self.protocol
        if protocol is None or protocol.endpoint is None:
            return
        sock = open_udp_socket("::", 0)
        protocol.endpoint.rebind(sock, udp_batch_io(sock, fast=self.options.fast_path))
        protocol._quic.send_ping(0)  # let the relay see the new address at once
        protocol.transmit()
        _line(self.out, "rebound", port=sock.getsockname()[1])

    async def run(self) -> int:
        """Connect and reconnect until cancelled; return the exit code on a final refusal."""
        backoff = 0.5
        while True:
            started = time.monotonic()
            try:
                reason = await self._attempt()
            except Refused as refused:
                _line(self.out, "refused", status=refused.status)
                if refused.status in (401, 403):
                    return 3
                reason = f"refused-{refused.status}"
            except (ConnectionError, OSError, TimeoutError) as error:
                reason = type(error).__name__
                log.warning("connection to the relay failed: %s", error)
            if time.monotonic() - started > 30:
                backoff = 0.5  # the last session was healthy: start over
            _line(self.out, "disconnected", reason=reason or "unknown", retry_in=f"{backoff:g}")
            await asyncio.sleep(backoff)
            backoff = min(backoff * 2, self.options.reconnect_max)

    def _configuration(self) -> QuicConfiguration:
        opts = self.options
        configuration = QuicConfiguration(
            is_client=True,
            alpn_protocols=H3_ALPN,
            max_datagram_size=QUIC_MAX_UDP_PAYLOAD,
            idle_timeout=IDLE_TIMEOUT,
            server_name=opts.server_name or opts.relay_host,
            max_data=16 << 20,
            max_stream_data=8 << 20,
        )
        if opts.datagrams:
            configuration.max_datagram_frame_size = 65536
        opts.tls.apply(configuration)
        if opts.client_cert is not None:
            configuration.load_cert_chain(opts.client_cert, opts.client_key)
        return configuration

    async def _attempt(self) -> str:
        opts = self.options
        loop = asyncio.get_running_loop()
        infos = await loop.getaddrinfo(opts.relay_host, opts.relay_port, type=socket.SOCK_DGRAM)
        async with contextlib.AsyncExitStack() as stack:
            sock = open_udp_socket("::", 0)
            quic = QuicConnection(configuration=self._configuration())
            protocol = ClientProtocol(quic, datagrams=opts.datagrams)
            if opts.fast_path and opts.datagram_lane and opts.datagrams and fastpath() is not None:
                aioquic_internals.capture_one_rtt_secrets(quic)
                protocol.lanes = LaneTable()
            endpoint = BatchedUdpEndpoint(
                sock,
                udp_batch_io(sock, fast=opts.fast_path),
                protocol.datagram_received,
                protocol.end_of_batch,
                intercept=protocol.lanes.intercept if protocol.lanes is not None else None,
            )
            protocol.endpoint = endpoint
            self.protocol = protocol
            stack.callback(setattr, self, "protocol", None)
            if protocol.lanes is not None:
                stack.callback(lambda: _line(self.out, "lane-stats", **_lane_stats(protocol)))
            stack.callback(endpoint.close)
            protocol.connection_made(endpoint)
            endpoint.start()
            stack.push_async_callback(_close_quietly, protocol)
            protocol.connect(as_socket_address(sock, infos[0][4][0], opts.relay_port))
            await asyncio.wait_for(protocol.wait_connected(), timeout=IDLE_TIMEOUT)
            opts.tls.check_peer(protocol._quic)
            return await self._session(protocol, stack)
        return "closed"

    async def _session(self, protocol: ClientProtocol, stack: contextlib.AsyncExitStack) -> str:
        opts = self.options
        quic = protocol._quic
        template = UriTemplate.parse(
            opts.template
            or UriTemplate.default(_authority_host(opts.relay_host), opts.relay_port).text
        )
        stream_id = quic.get_next_available_stream_id()
        attempt = _Attempt(protocol, opts, stream_id)
        protocol.handler = attempt
        headers = build_connect_ip_headers(
            template,
            opts.target,
            opts.ipproto,
            authorization=f"Bearer {opts.token}" if opts.token else None,
        )
        protocol.h3.send_headers(stream_id, headers, end_stream=False)
        protocol.transmit()

        status = await _until(attempt.status, protocol, 10.0)
        if not 200 <= status < 300:
            raise Refused(status)
        _line(
            self.out,
            "connected",
            relay=f"{_authority_host(opts.relay_host)}:{opts.relay_port}",
            carrier=attempt.carrier,
        )
        await _until(asyncio.ensure_future(_both(attempt.assigned, attempt.routed)), protocol, 10.0)

        # TUN + routes, removed whatever happens next.
        mtu = opts.mtu
        if attempt.carrier == "datagram":
            mtu = min(mtu, max_http_datagram_payload(quic, stream_id) - 1)
        if any(a.ip_prefix.version == 6 for a in attempt.session.local_addresses):
            mtu = max(mtu, 1280)  # RFC 9484 §7.2: an IPv6 tunnel offers at least 1280
        compiled = opts.fast_path and fastpath() is not None
        tun = TunDevice.open(opts.tun_name, mtu=mtu, compiled=compiled)
        stack.callback(tun.close)
        if tun.compiled is not None:
            # At teardown (before the close above): what the TUN did, offloads included.
            stack.callback(lambda: _line(self.out, "tun-stats", **_tun_stats(tun)))
        tun.accept_local_source()  # our ICMP answers to local applications
        for assigned in attempt.session.local_addresses:
            tun.add_address(ipaddress.ip_interface(str(assigned.ip_prefix)))
        relay_ips = await _relay_addresses(opts.relay_host, opts.relay_port)
        routes = RouteManager(tun.name, relay_addresses=relay_ips)
        stack.callback(routes.restore)
        installed = self._install_routes(routes, attempt.session.peer_routes)

        dataplane = ClientDataPlane(
            tun,
            attempt.session,
            attempt.send_packets,
            max_packet=mtu,
            icmp_sources=[a.ip_prefix.network_address for a in attempt.session.local_addresses],
            send_datagrams=attempt.send_datagrams if attempt.carrier == "datagram" else None,
            send_from_batch=attempt.send_from_batch if attempt.carrier == "datagram" else None,
            datagram_prefix=datagram_prefix(stream_id),
        )
        attempt.dataplane = dataplane
        dataplane.from_relay(attempt.early_packets)
        attempt.early_packets.clear()
        loop = asyncio.get_running_loop()
        loop.add_reader(tun.fileno(), dataplane.on_tun_readable)
        stack.callback(loop.remove_reader, tun.fileno())
        keepalive = asyncio.create_task(_keepalive(protocol))
        stack.callback(keepalive.cancel)

        v4 = [a.ip_prefix for a in attempt.session.local_addresses if a.ip_prefix.version == 4]
        v6 = [a.ip_prefix for a in attempt.session.local_addresses if a.ip_prefix.version == 6]
        _line(
            self.out,
            "ready",
            tun=tun.name,
            mtu=mtu,
            v4=v4[0] if v4 else "-",
            v6=v6[0] if v6 else "-",
            routes=installed,
            dataplane=dataplane.implementation,
            tun_io=tun.mode,
        )

        ended = asyncio.ensure_future(attempt.ended.wait())
        closed = asyncio.ensure_future(protocol.closed.wait())
        try:
            await asyncio.wait({ended, closed}, return_when=asyncio.FIRST_COMPLETED)
        finally:
            ended.cancel()
            closed.cancel()
            if not protocol.closed.is_set():
                quic.close(error_code=ErrorCode.H3_NO_ERROR, reason_phrase="client leaving")
                protocol.transmit()
        return attempt.end_reason or protocol.close_reason or "closed"

    def _install_routes(self, routes: RouteManager, ranges: tuple[IpAddressRange, ...]) -> int:
        mode = self.options.routes
        if mode == "full":
            routes.full_tunnel()
        elif mode == "advertised":
            prefixes = _ranges_to_prefixes(ranges)
            whole = {p.version for p in prefixes if p.prefixlen == 0}
            if whole:
                routes.full_tunnel(ipv4=4 in whole, ipv6=6 in whole)
            routes.add_routes([p for p in prefixes if p.prefixlen != 0])
        else:
            routes.add_routes([ipaddress.ip_network(p.strip()) for p in mode.split(",")])
        return len(routes.routes)


def _lane_stats(protocol: ClientProtocol) -> dict[str, object]:
    """The datagram lane's counters over the connection's life (live lane included)."""
    lanes = protocol.lanes
    if lanes is None:
        return {}
    totals = dict(lanes.retired)
    for lane in lanes:
        for stat, value in lane.stats.items():
            totals[stat] += value
    return dict(totals)


def _tun_stats(tun: TunDevice) -> dict[str, object]:
    compiled = tun.compiled
    return dict(compiled.stats) if compiled is not None and not compiled.closed else {}


def _ranges_to_prefixes(ranges: tuple[IpAddressRange, ...]) -> list[IPNetwork]:
    """The prefixes covering the advertised ranges (protocol restrictions are the relay's)."""
    prefixes: set[IPNetwork] = set()
    for item in ranges:
        prefixes.update(ipaddress.summarize_address_range(item.start, item.end))
    return sorted(prefixes, key=lambda p: (p.version, int(p.network_address), p.prefixlen))


async def _both(first: asyncio.Event, second: asyncio.Event) -> None:
    await first.wait()
    await second.wait()


async def _until(future: asyncio.Future[Any], protocol: ClientProtocol, timeout: float) -> Any:
    """Await ``future`` unless the connection closes or ``timeout`` passes first."""
    closed = asyncio.ensure_future(protocol.closed.wait())
    try:
        done, _ = await asyncio.wait(
            {future, closed}, timeout=timeout, return_when=asyncio.FIRST_COMPLETED
        )
    finally:
        closed.cancel()
    if future in done:
        return future.result()
    future.cancel()
    if protocol.closed.is_set():
        raise ConnectionError(f"connection closed: {protocol.close_reason}")
    raise TimeoutError("the relay did not answer in time")


async def _close_quietly(protocol: ClientProtocol) -> None:
    """Close the QUIC connection and give the CONNECTION_CLOSE a moment to leave."""
    protocol.close()
    with contextlib.suppress(TimeoutError):
        await asyncio.wait_for(protocol.wait_closed(), timeout=1.0)


async def _keepalive(protocol: ClientProtocol) -> None:
    """PING now and then: keeps NAT bindings and lets a dead relay be noticed quickly."""
    uid = 0
    while True:
        await asyncio.sleep(KEEPALIVE_INTERVAL)
        uid += 1
        protocol._quic.send_ping(uid)
        protocol.transmit()


async def _relay_addresses(
    host: str, port: int
) -> list[ipaddress.IPv4Address | ipaddress.IPv6Address]:
    try:
        return [ipaddress.ip_address(host)]
    except ValueError:
        pass
    infos = await asyncio.get_running_loop().getaddrinfo(host, port)
    return sorted({ipaddress.ip_address(info[4][0]) for info in infos}, key=str)


def _authority_host(host: str) -> str:
    return f"[{host}]" if ":" in host else host
