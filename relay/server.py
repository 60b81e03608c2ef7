"""The relay service: HTTP/3 server, CONNECT-IP sessions, TUN, NAT, lifecycle.

Pipeline of one session::

    QUIC packet -> aioquic -> H3 event -> RelayProtocol
      HeadersReceived  -> RelayServer.accept(): validate, authenticate, allocate,
                          200 + ADDRESS_ASSIGN + ROUTE_ADVERTISEMENT
      DataReceived     -> ConnectIpSession (capsules: ADDRESS_REQUEST, DATAGRAM)
      DatagramReceived -> RelayDataPlane.from_client() -> TUN
    TUN readable -> RelayDataPlane.on_tun_readable() -> session.send_packets()

One :class:`RelayServer` owns every piece of state (sessions, pools, TUN, NAT).
"""

from __future__ import annotations

import asyncio
import functools
import ipaddress
import logging
import socket
import sys
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, TextIO

from aioquic.asyncio.protocol import QuicConnectionProtocol
from aioquic.asyncio.server import QuicServer
from aioquic.h3.connection import H3_ALPN, ErrorCode
from aioquic.h3.events import DatagramReceived, DataReceived, H3Event, HeadersReceived
from aioquic.quic.configuration import QuicConfiguration
from aioquic.quic.connection import QuicConnection
from aioquic.quic.events import (
    ConnectionTerminated,
    ProtocolNegotiated,
    QuicEvent,
    StopSendingReceived,
    StreamReset,
)

from masque.capsule import AssignedAddress, IpAddressRange, sort_ranges
from masque.errors import RequestError, VarintError
from masque.events import AddressRequested, SessionAborted
from masque.events import DatagramReceived as CapsuleDatagram
from masque.request import build_connect_ip_response_headers, validate_connect_ip_request
from masque.session import ConnectIpSession, Role, Scope
from masque.template import TargetAny, TargetHostname, TargetPrefix, UriTemplate
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
from netio.lane import LANE_STATS, DatagramLane, LaneTable
from netio.tun import TunDevice
from netio.udp import BatchedUdpEndpoint, open_udp_socket
from relay.auth import (
    Authenticator,
    ensure_default_token,
    peer_certificates,
    request_client_certificate,
)
from relay.certs import certificate_names, ensure_certificate
from relay.config import CarrierMode, RelayConfig, XdpMode
from relay.dataplane import RelayDataPlane, udp_batch_io
from relay.ipam import AddressPool, Assignment, PoolExhausted
from relay.metrics import Metrics
from relay.nat import NatManager
from relay.ratelimit import TokenBucket
from relay.sessions import Carrier, RelaySession, SessionTable
from relay.xdp_path import XdpPath

if TYPE_CHECKING:
    from _fastpath import PacketBatch

log = logging.getLogger(__name__)

IPNetwork = ipaddress.IPv4Network | ipaddress.IPv6Network

#: Sessions one QUIC connection may hold: one client cannot take the whole pool.
MAX_SESSIONS_PER_CONNECTION = 64
#: UDP payload our QUIC packets are built to: fits a 1500-byte path over IPv6.
QUIC_MAX_UDP_PAYLOAD = 1452


def _events_line(out: TextIO, word: str, **fields: object) -> None:
    """One machine-readable event line on stdout (``word key=value ...``)."""
    text = " ".join(f"{key}={value}" for key, value in fields.items())
    print(f"{word} {text}".rstrip(), file=out, flush=True)


class RelayProtocol(QuicConnectionProtocol):
    """One QUIC connection to the relay: HTTP/3 plus its CONNECT-IP streams."""

    def __init__(self, quic: QuicConnection, *, relay: RelayServer, **kwargs: Any) -> None:
        super().__init__(quic, **kwargs)
        self.relay = relay
        self.h3: ConnectIpH3Connection | None = None
        self.peer = "?"
        self.sessions: dict[int, RelaySession] = {}
        # Stream data that arrived while the request was still being accepted.
        self.pending: dict[int, list[tuple[bytes, bool]]] = {}
        # Every request stream seen: a later HEADERS frame on one is not a new request.
        self.handled: set[int] = set()
        #: The datagram lane, once installed (handshake confirmed, datagrams negotiated).
        self.lane: DatagramLane | None = None
        self._lane_session: RelaySession | None = None  # whose packets C batches directly

    def datagram_received(self, data: bytes | str, addr: Any) -> None:
        if self.peer == "?":
            self.peer = _format_addr(addr)
        try:
            # The endpoint transmits once per batch for every connection it touched.
            aioquic_internals.receive_without_transmit(self, data, addr)  # type: ignore[arg-type]
        except Exception:
            # One connection's failure must not cost the other clients their packets.
            log.exception("connection from %s: error handling a datagram", self.peer)
            self.relay.internal_errors.value += 1
        self.relay.transmit_later(self)

    def quic_event_received(self, event: QuicEvent) -> None:
        if isinstance(event, ProtocolNegotiated) and event.alpn_protocol in H3_ALPN:
            self.h3 = ConnectIpH3Connection(
                self._quic, enable_datagrams=self.relay.config.carrier.mode is CarrierMode.DATAGRAM
            )
        elif isinstance(event, ConnectionTerminated):
            self.drop_lane()
            self.pending.clear()  # requests still being accepted are abandoned
            for session in list(self.sessions.values()):
                self.relay.end_session(session, "connection-closed", send_fin=False)
            self.relay.connections.discard(self)
        elif isinstance(event, (StreamReset, StopSendingReceived)):
            # aioquic's H3 layer swallows these: the request stream is gone, and so
            # is the session on it (and anything we still meant to send there).
            self.pending.pop(event.stream_id, None)
            gone = self.sessions.get(event.stream_id)
            if gone is not None:
                self.relay.end_session(gone, "stream-reset", send_fin=False)
        if self.h3 is not None:
            for h3_event in self.h3.handle_event(event):
                self._h3_event_received(h3_event)

    def _datagram(self, stream_id: int, data: bytes | memoryview) -> None:
        session = self.sessions.get(stream_id)
        if session is None:
            # RFC 9297 §2.1: datagrams for unknown requests are dropped.
            self.relay.unknown_datagrams.value += 1
            return
        packet = session.connect_ip.receive_datagram(data)
        if packet is None:
            # RFC 9484 §6: unknown (or truncated) context IDs are dropped.
            self.relay.dataplane.dropped["unknown_context"].value += 1
        else:
            session.last_activity = time.monotonic()
            self.relay.dataplane.from_client(session, (packet,))

    def lane_datagram(self, payload: bytes) -> None:
        """An HTTP Datagram the lane received: quarter stream ID, then context and packet."""
        try:
            quarter, offset = decode_varint(payload)
        except VarintError:
            self.relay.unknown_datagrams.value += 1  # as aioquic's H3 layer would drop it
            return
        self._datagram(quarter * 4, memoryview(payload)[offset:])

    def sync_lane(self) -> None:
        """After aioquic handled packets: install the lane, or pick up what changed."""
        lanes = self.relay.lanes
        if lanes is None:
            return
        if self.lane is None:
            if self.h3 is None or not self.h3.datagrams_negotiated:
                return
            self.lane = DatagramLane.install(
                self._quic,
                send=self.relay.lane_send,
                deliver=self.lane_datagram,
                owner=self,
            )
            if self.lane is not None:
                lanes.add(self.lane)
                self.bind_lane()
        elif self.lane.refresh():
            lanes.index(self.lane)
        else:
            self.drop_lane()

    def drop_lane(self) -> None:
        if self.lane is not None:
            self.lane.unbind()
            if self.relay.lanes is not None:
                self.relay.lanes.remove(self.lane)
        self.lane = None
        self._lane_session = None

    def bind_lane(self) -> None:
        """Let the lane write the first datagram session's packets straight into a batch."""
        lane = self.lane
        if lane is None:
            return
        bound = self._lane_session
        if bound is not None and self.sessions.get(bound.stream_id) is bound:
            return
        for session in self.sessions.values():
            if session.carrier is Carrier.DATAGRAM:
                sink = functools.partial(self.relay.dataplane.from_client_batch, session)
                lane.bind(session.datagram_prefix, sink)
                self._lane_session = session
                return
        lane.unbind()
        self._lane_session = None

    def _h3_event_received(self, event: H3Event) -> None:
        if isinstance(event, DatagramReceived):
            self._datagram(event.stream_id, event.data)
        elif isinstance(event, HeadersReceived):
            if event.stream_id in self.handled:
                # Trailers (or a peer repeating itself): never a second request.
                trailer_session = self.sessions.get(event.stream_id)
                if trailer_session is not None and event.stream_ended:
                    self.relay.stream_data(trailer_session, b"", True)
                return
            self.handled.add(event.stream_id)
            if len(self.sessions) + len(self.pending) >= MAX_SESSIONS_PER_CONNECTION:
                self.relay.refuse(self, event.stream_id, 429, "too-many-sessions-on-connection")
                return
            self.pending[event.stream_id] = []
            if event.stream_ended:
                self.pending[event.stream_id].append((b"", True))
            self.relay.accept(self, event.stream_id, event.headers)
        elif isinstance(event, DataReceived):
            if event.stream_id in self.pending:
                self.pending[event.stream_id].append((event.data, event.stream_ended))
                return
            stream_session = self.sessions.get(event.stream_id)
            if stream_session is not None:
                self.relay.stream_data(stream_session, event.data, event.stream_ended)

    def respond(
        self,
        stream_id: int,
        status: int,
        *,
        extra: Sequence[tuple[bytes, bytes]] = (),
        end_stream: bool = False,
        capsule_protocol: bool = True,
    ) -> None:
        assert self.h3 is not None
        headers = build_connect_ip_response_headers(status)
        if not capsule_protocol:
            # Compat length framing: the stream carries no capsules (RFC 9297 §3.4).
            headers = [(name, value) for name, value in headers if name != b"capsule-protocol"]
        headers += list(extra)
        self.h3.send_headers(stream_id, headers, end_stream=end_stream)


def _xdp_counter(relay: RelayServer, reason: str) -> float:
    return float(relay.xdp.counters().get(reason, 0)) if relay.xdp is not None else 0.0


def _xdp_stat(relay: RelayServer, stat: str) -> float:
    return float(relay.xdp.stats[stat]) if relay.xdp is not None else 0.0


def _format_addr(addr: Any) -> str:
    host, port = addr[0], addr[1]
    return f"[{host}]:{port}" if ":" in str(host) else f"{host}:{port}"


@dataclass
class _Counters:
    sessions_total: Any = None
    refused: Any = None


@dataclass
class RelayServer:
    """Everything one relay process owns. ``await start()``, then ``await stop()``."""

    config: RelayConfig
    out: TextIO = sys.stdout
    tun_mtu: int | None = None
    metrics: Metrics = field(default_factory=Metrics)
    sessions: SessionTable = field(default_factory=SessionTable)
    connections: set[RelayProtocol] = field(default_factory=set)

    def __post_init__(self) -> None:
        cfg = self.config
        self.template = UriTemplate.parse(
            f"https://relay:{cfg.listen.port}{cfg.listen.path_template}"
        )
        self.pool: AddressPool[int] = AddressPool(
            cfg.pool.ipv4,
            cfg.pool.ipv6,
            v4_client_prefix=cfg.pool.ipv4_client_prefix,
            v6_client_prefix=cfg.pool.ipv6_client_prefix,
        )
        self.authenticator: Authenticator | None = None
        self._global_from_client = TokenBucket.from_mbit(cfg.limits.global_rate_mbit)
        self._global_to_client = TokenBucket.from_mbit(cfg.limits.global_rate_mbit)
        self.tun: TunDevice | None = None
        self.nat: NatManager | None = None
        self.lanes: LaneTable | None = None
        self.xdp: XdpPath | None = None
        self._quic_server: QuicServer | None = None
        self._tasks: set[asyncio.Task[None]] = set()
        self._stopping = False
        self._dirty: set[RelayProtocol] = set()
        self._metrics_server: asyncio.Server | None = None
        self._stopped = asyncio.Event()
        m = self.metrics
        self.sessions_total = m.counter("masque_relay_sessions", "CONNECT-IP sessions accepted.")
        self.sessions_total_child = self.sessions_total.child()
        self.refused = m.counter(
            "masque_relay_refused",
            "CONNECT-IP requests refused, by HTTP status.",
            labels=("status",),
        )
        self.internal_errors = m.counter(
            "masque_relay_internal_errors",
            "Unexpected errors while handling one connection's input (logged with a traceback).",
        ).child()
        self.unknown_datagrams = m.counter(
            "masque_relay_unknown_datagrams",
            "HTTP Datagrams for streams that are not an accepted CONNECT-IP request.",
        ).child()
        self.aborted = m.counter(
            "masque_relay_sessions_aborted",
            "Sessions aborted for a protocol violation, by rule.",
            labels=("rule",),
        )
        m.gauge(
            "masque_relay_sessions_active",
            "CONNECT-IP sessions open now.",
            function=lambda: float(len(self.sessions)),
        )

    # -- lifecycle ------------------------------------------------------------------

    async def start(self) -> None:
        cfg = self.config
        state = ensure_certificate(
            cfg.tls.cert_file, cfg.tls.key_file, certificate_names(cfg.listen.host, cfg.tls.names)
        )
        _events_line(self.out, "certificate", sha256=state.sha256, path=cfg.tls.cert_file)
        generated = ensure_default_token(cfg.auth)
        if generated is not None:
            _events_line(self.out, "token=" + generated)
        self.authenticator = Authenticator.from_config(cfg.auth)

        mtu = self.tun_mtu or cfg.tun.mtu
        self.tun = TunDevice.open(cfg.tun.name, mtu=mtu, compiled=self._compiled_tun())
        self.tun.accept_local_source()  # ICMP errors we write come from our gateway address
        gateways = [g for g in (self.pool.gateway_v4, self.pool.gateway_v6) if g is not None]
        for gateway in gateways:
            self.tun.add_address(gateway)
        pools = [p for p in (cfg.pool.ipv4, cfg.pool.ipv6) if p is not None]
        self.nat = NatManager(
            pools,
            cfg.nat.egress_interface,
            tun_interface=self.tun.name,
            ipv4_masquerade=cfg.nat.enabled,
            ipv6_masquerade=cfg.nat.enabled,
        )
        self.nat.start()
        self.dataplane = RelayDataPlane(
            self.tun,
            self.sessions,
            self.metrics,
            icmp_source_v4=self.pool.gateway_v4.ip if self.pool.gateway_v4 else None,
            icmp_source_v6=self.pool.gateway_v6.ip if self.pool.gateway_v6 else None,
        )
        loop = asyncio.get_running_loop()
        loop.add_reader(self.tun.fileno(), self.dataplane.on_tun_readable)

        configuration = QuicConfiguration(
            is_client=False,
            alpn_protocols=H3_ALPN,
            max_datagram_frame_size=65536,
            max_datagram_size=QUIC_MAX_UDP_PAYLOAD,
            idle_timeout=60.0,
            max_data=16 << 20,
            max_stream_data=8 << 20,
        )
        configuration.load_cert_chain(cfg.tls.cert_file, cfg.tls.key_file)
        wants_cert = self.authenticator.requests_client_certificate

        lane_on = cfg.dataplane.datagram_lane and self.dataplane.implementation == "compiled"
        self.lanes = LaneTable() if lane_on else None
        log.info("datagram lane: %s", "on" if lane_on else "off")
        lane_metric = self.metrics.gauge(
            "masque_relay_lane",
            "The datagram lane's packet counters, over all connections (see netio/lane.py).",
            labels=("stat",),
        )
        for stat in LANE_STATS:
            lane_metric.child(stat=stat).set_function(functools.partial(self._lane_stat, stat))
        self.metrics.gauge(
            "masque_relay_lanes_active",
            "Connections whose DATAGRAM packets the lane handles.",
            function=lambda: float(len(self.lanes) if self.lanes is not None else 0),
        )

        def create_protocol(quic: QuicConnection, **kwargs: Any) -> RelayProtocol:
            if wants_cert:
                request_client_certificate(quic)
            if lane_on:
                aioquic_internals.capture_one_rtt_secrets(quic)
            protocol = RelayProtocol(quic, relay=self, **kwargs)
            self.connections.add(protocol)
            return protocol

        sock = open_udp_socket(cfg.listen.host, cfg.listen.port)
        self._quic_server = QuicServer(configuration=configuration, create_protocol=create_protocol)
        self.udp_io = udp_batch_io(sock, fast=cfg.dataplane.fast_path)
        self.endpoint = BatchedUdpEndpoint(
            sock,
            self.udp_io,
            self._quic_server.datagram_received,
            self._transmit_dirty,
            intercept=self.lanes.intercept if self.lanes is not None else None,
        )
        self._quic_server.connection_made(self.endpoint)
        self.endpoint.start()
        log.info("UDP I/O: %s", getattr(self.udp_io, "features", "?"))
        self._start_xdp(sock, configuration.connection_id_length)
        if cfg.metrics.listen is not None:
            from relay.metrics import serve_metrics

            self._metrics_server = await serve_metrics(self.metrics, *cfg.metrics.listen)
        self._spawn_task(asyncio.create_task(self._idle_sweeper()))
        _events_line(
            self.out,
            "ready",
            listen=f"{_bracket(cfg.listen.host)}:{cfg.listen.port}",
            tun=self.tun.name,
            mtu=mtu,
        )

    def _spawn_task(self, task: asyncio.Task[None]) -> None:
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    async def stop(self) -> None:
        """Graceful drain: end every session, close connections, remove TUN and NAT state."""
        self._stopping = True  # from now on, new requests get 503
        for task in list(self._tasks):
            task.cancel()
        for session in list(self.sessions):
            self.end_session(session, "shutdown")
        for protocol in list(self.connections):
            protocol._quic.close(error_code=ErrorCode.H3_NO_ERROR, reason_phrase="relay stopping")
            protocol.transmit()
        if self.connections:
            await asyncio.sleep(0.2)  # let the FINs and CONNECTION_CLOSEs leave
        if self.xdp is not None:
            self.xdp.close()  # detach: the kernel's UDP path takes over
            self.xdp = None
        if self._quic_server is not None:
            self._quic_server.close()
        if self._metrics_server is not None:
            self._metrics_server.close()
        if self.tun is not None:
            asyncio.get_running_loop().remove_reader(self.tun.fileno())
            self.tun.close()
        if self.nat is not None:
            self.nat.stop()
        self._stopped.set()

    def _start_xdp(self, sock: socket.socket, cid_len: int) -> None:
        """The AF_XDP path, when configured and possible; the UDP socket path otherwise."""
        cfg = self.config
        if cfg.xdp.mode is XdpMode.OFF:
            return
        if self.lanes is None:
            log.warning("XDP needs the datagram lane and the fast path: using the UDP socket path")
            return
        assert self._quic_server is not None
        self.xdp = XdpPath.open(
            cfg.xdp,
            self.lanes,
            port=cfg.listen.port,
            cid_len=cid_len,
            to_aioquic=self._quic_server.datagram_received,
            end_batch=self._transmit_dirty,
            fallback_send=self.endpoint.send_many,
            mapped=sock.family == socket.AF_INET6,
        )
        if self.xdp is None:
            return
        self.xdp.start(asyncio.get_running_loop())
        xdp = self.xdp
        self.metrics.gauge(
            "masque_relay_xdp_info", "The XDP front end in use (value 1).", labels=("mode",)
        ).child(mode=xdp.mode).value = 1
        packets = self.metrics.gauge(
            "masque_relay_xdp_packets",
            "Packets the XDP program saw, by verdict reason (see bpf/include/masque_bpf.h).",
            labels=("reason",),
        )
        for reason in xdp.counters():
            packets.child(reason=reason).set_function(functools.partial(_xdp_counter, self, reason))
        path = self.metrics.gauge(
            "masque_relay_xdp_path", "Datagrams through the AF_XDP sockets.", labels=("stat",)
        )
        for stat in xdp.stats:
            path.child(stat=stat).set_function(functools.partial(_xdp_stat, self, stat))

    def lane_send(self, packets: list[bytes], addr: Any) -> None:
        """How the lanes send: the AF_XDP TX ring when attached, else the UDP socket."""
        if self.xdp is not None:
            self.xdp.send_many(packets, addr)
        else:
            self.endpoint.send_many(packets, addr)

    def request_key_updates(self) -> None:
        """Start a key update on every connection (SIGUSR1); the lanes follow."""
        for protocol in list(self.connections):
            try:
                protocol._quic.request_key_update()
            except Exception:
                log.debug("key update refused", exc_info=True)
                continue
            protocol.transmit()  # aioquic applies the new keys to its next packet
            protocol.sync_lane()
        log.info("key update requested on %d connections", len(self.connections))

    def _lane_stat(self, stat: str) -> float:
        lanes = self.lanes
        if lanes is None:
            return 0.0
        return float(lanes.retired[stat] + sum(lane.stats[stat] for lane in lanes))

    def transmit_later(self, protocol: RelayProtocol) -> None:
        """Have ``protocol`` transmit at the end of the current receive batch."""
        self._dirty.add(protocol)

    def _compiled_tun(self) -> bool:
        """Open the TUN through the compiled fast path? (Config switch, and a build with it.)"""
        return self.config.dataplane.fast_path and fastpath() is not None

    def _transmit_dirty(self) -> None:
        # The batch's client packets first: their ICMP answers join this transmit.
        if self.lanes is not None:
            # What the lane consumed, aioquic learns now: its ACKs go out below.
            for lane in self.lanes.end_batch(asyncio.get_running_loop().time()):
                self._dirty.add(lane.owner)
        self.dataplane.flush()
        dirty, self._dirty = self._dirty, set()
        for protocol in dirty:
            protocol.transmit()
            protocol.sync_lane()

    async def _idle_sweeper(self) -> None:
        timeout = self.config.limits.idle_timeout
        while True:
            await asyncio.sleep(min(1.0, timeout / 4))
            now = time.monotonic()
            for session in list(self.sessions):
                if now - session.last_activity > timeout:
                    self.end_session(session, "idle")

    # -- accepting a request -----------------------------------------------------------

    def accept(
        self, protocol: RelayProtocol, stream_id: int, headers: list[tuple[bytes, bytes]]
    ) -> None:
        """Validate, authenticate and set up a CONNECT-IP request, or refuse it."""
        if self._stopping:
            self.refuse(protocol, stream_id, 503, "stopping")
            return
        try:
            request = validate_connect_ip_request(
                headers,
                self.template,
                require_capsule_protocol=not self.config.carrier.compat_length_framing,
            )
        except RequestError as error:
            self.refuse(protocol, stream_id, error.http_status, error.rule)
            return
        assert self.authenticator is not None
        cert, chain = peer_certificates(protocol._quic)
        result = self.authenticator.authenticate(request.authorization, cert, chain)
        if not result.ok:
            extra = []
            if result.www_authenticate:
                extra.append((b"www-authenticate", result.www_authenticate.encode()))
            self.refuse(protocol, stream_id, result.status, result.rule, extra=extra)
            return
        if len(self.sessions) >= self.config.limits.max_sessions:
            self.refuse(protocol, stream_id, 503, "max-sessions")
            return
        target = request.scope.target
        if isinstance(target, TargetHostname):
            task = asyncio.create_task(
                self._accept_hostname(
                    protocol,
                    stream_id,
                    target.name,
                    request.scope.ipproto,
                    request.capsule_protocol,
                )
            )
            self._spawn_task(task)
            return
        targets = (target.network,) if isinstance(target, TargetPrefix) else None
        assert isinstance(target, (TargetPrefix, TargetAny))
        self._establish(
            protocol, stream_id, Scope(targets, request.scope.ipproto), request.capsule_protocol
        )

    async def _accept_hostname(
        self,
        protocol: RelayProtocol,
        stream_id: int,
        name: str,
        ipproto: int | None,
        capsule_protocol: bool,
    ) -> None:
        loop = asyncio.get_running_loop()
        try:
            infos = await asyncio.wait_for(loop.getaddrinfo(name, None), timeout=5.0)
        except (OSError, TimeoutError):
            self.refuse(protocol, stream_id, 502, "target-unresolvable")
            return
        prefixes = {
            ipaddress.ip_network(info[4][0])
            for info in infos
            if info[0] in (socket.AF_INET, socket.AF_INET6)
        }
        self._establish(
            protocol, stream_id, Scope(tuple(sorted(prefixes, key=str)), ipproto), capsule_protocol
        )

    def refuse(
        self,
        protocol: RelayProtocol,
        stream_id: int,
        status: int,
        rule: str,
        *,
        extra: list[tuple[bytes, bytes]] | None = None,
    ) -> None:
        self.refused.child(status=str(status)).value += 1
        protocol.pending.pop(stream_id, None)
        _events_line(self.out, "refused", status=status, peer=protocol.peer, reason=rule)
        try:
            protocol.respond(stream_id, status, extra=extra or [], end_stream=True)
        except Exception as error:  # the peer already reset or ended the stream
            log.debug("refusal on stream %d not sent: %s", stream_id, error)
        protocol.transmit()

    def _establish(
        self, protocol: RelayProtocol, stream_id: int, scope: Scope, capsule_protocol: bool
    ) -> None:
        if protocol.h3 is None or stream_id not in protocol.pending:
            return  # the connection or stream went away while we resolved
        if protocol not in self.connections:
            protocol.pending.pop(stream_id, None)
            return
        if self._stopping or len(self.sessions) >= self.config.limits.max_sessions:
            self.refuse(protocol, stream_id, 503, "stopping" if self._stopping else "max-sessions")
            return
        session_id = self.sessions.next_id()
        try:
            assignment = self.pool.allocate(session_id)
        except PoolExhausted:
            self.refuse(protocol, stream_id, 503, "pool-exhausted")
            return
        if not capsule_protocol:
            carrier = Carrier.LENGTH
        elif protocol.h3.datagrams_negotiated:
            carrier = Carrier.DATAGRAM
        else:
            carrier = Carrier.CAPSULE
        connect_ip = ConnectIpSession(Role.RELAY, scope=scope)
        if carrier is Carrier.DATAGRAM:
            max_packet = max_http_datagram_payload(protocol._quic, stream_id) - 1
        else:
            max_packet = self.tun.mtu if self.tun is not None else 1280
        max_packet = min(max_packet, self.tun.mtu if self.tun is not None else max_packet)
        session = RelaySession(
            id=session_id,
            peer=protocol.peer,
            stream_id=stream_id,
            carrier=carrier,
            connect_ip=connect_ip,
            assignment=assignment,
            send_packets=self._sender(protocol),
            send_datagrams=self._datagram_sender(protocol),
            send_from_batch=self._lane_sender(protocol) if carrier is Carrier.DATAGRAM else None,
            datagram_prefix=datagram_prefix(stream_id),
            close=lambda s, reason: self.end_session(s, reason),
            max_packet=max_packet,
            connection=protocol,
            limits_from_client=self._buckets(self._global_from_client),
            limits_to_client=self._buckets(self._global_to_client),
        )
        try:
            protocol.respond(stream_id, 200, capsule_protocol=carrier is not Carrier.LENGTH)
            # Built for every carrier: the session's packet checks (BCP 38 source,
            # routed destination) rely on what it assigned and advertised.
            assign = self._assign_capsule(session, {})
            routes = connect_ip.advertise_routes(self._routes_for(scope))
            if carrier is not Carrier.LENGTH:
                # RFC 9484 §4.7: the complete sets, right after the 2xx, even if empty.
                self._send_on_stream(protocol, session, assign)
                self._send_on_stream(protocol, session, routes)
        except Exception as error:  # the peer reset the stream under us
            log.info("request on stream %d vanished during setup: %s", stream_id, error)
            protocol.pending.pop(stream_id, None)
            self.pool.release(session_id)
            return
        self.sessions.add(session)
        protocol.sessions[stream_id] = session
        protocol.bind_lane()
        self.sessions_total_child.value += 1
        _events_line(
            self.out,
            "session-start",
            id=session_id,
            peer=protocol.peer,
            carrier=carrier.value,
            v4=assignment.v4 or "-",
            v6=assignment.v6 or "-",
        )
        log.info(
            "session %d from %s: carrier %s, mtu %d",
            session_id,
            protocol.peer,
            carrier.value,
            max_packet,
        )
        for data, ended in protocol.pending.pop(stream_id, []):
            self.stream_data(session, data, ended)
        protocol.transmit()

    def _buckets(self, shared: TokenBucket | None) -> tuple[TokenBucket, ...]:
        """A new session's buckets: its own (if limited) and the relay-wide one."""
        own = TokenBucket.from_mbit(self.config.limits.session_rate_mbit)
        return tuple(b for b in (own, shared) if b is not None)

    def _routes_for(self, scope: Scope) -> list[IpAddressRange]:
        """Operator's allowed networks, narrowed to the request's target and protocol."""
        allowed: list[IPNetwork] = list(self.config.routes.allowed)
        if scope.targets is not None:
            narrowed: list[IPNetwork] = []
            for target in scope.targets:
                for network in allowed:
                    if target.version != network.version:
                        continue
                    if target.subnet_of(network):  # type: ignore[arg-type]
                        narrowed.append(target)
                    elif network.subnet_of(target):  # type: ignore[arg-type]
                        narrowed.append(network)
            allowed = narrowed
        protocol = scope.ipproto or 0
        unique = {IpAddressRange.from_network(n, protocol) for n in allowed}
        return list(sort_ranges(unique))

    def _assign_capsule(self, session: RelaySession, answered: dict[int, int]) -> bytes:
        """ADDRESS_ASSIGN with the session's complete set; ``answered``: version -> request ID."""
        entries = [
            AssignedAddress(answered.get(prefix.version, 0), prefix)
            for prefix in session.assignment
        ]
        return session.connect_ip.assign_addresses(entries)

    # -- stream and packets ----------------------------------------------------------

    def stream_data(self, session: RelaySession, data: bytes, ended: bool) -> None:
        session.last_activity = time.monotonic()
        if session.carrier is Carrier.LENGTH:
            self._length_framed(session, data, ended)
            return
        for event in session.connect_ip.receive_capsule_data(data, end_stream=ended):
            if isinstance(event, CapsuleDatagram):
                self.dataplane.from_client(session, (event.packet,))
            elif isinstance(event, AddressRequested):
                self._address_requested(session, event)
                if session not in self.sessions:
                    return
            elif isinstance(event, SessionAborted):
                self.aborted.child(rule=event.rule).value += 1
                log.warning("session %d aborted: %s", session.id, event.reason)
                self._reset(session)
                self.end_session(session, "protocol-error", send_fin=False)
                return
        if ended:
            self.end_session(session, "client-closed")

    def _length_framed(self, session: RelaySession, data: bytes, ended: bool) -> None:
        """Compat carrier: 2-byte big-endian length, then the packet, repeated."""
        buffer = session.length_buffer
        buffer += data
        packets: list[bytes] = []
        while len(buffer) >= 2:
            length = int.from_bytes(buffer[:2], "big")
            if len(buffer) < 2 + length:
                break
            packets.append(bytes(buffer[2 : 2 + length]))
            del buffer[: 2 + length]
        if packets:
            self.dataplane.from_client(session, packets)
        if ended:
            self.end_session(session, "client-closed")

    def _address_requested(self, session: RelaySession, event: AddressRequested) -> None:
        granted_by_id: dict[int, IPNetwork] = {}
        for request in event.requests:
            granted = self.pool.request(session.id, request.ip_prefix)
            if granted is not None:
                granted_by_id[request.request_id] = granted
        session.assignment = self.pool.assignment(session.id)
        self.sessions.reindex(session)
        # RFC 9484 §4.7.2: every request is answered, with an address or a refusal.
        # A session holds one prefix per family: when several requests of one family
        # were granted in turn, the last one holds it and the earlier ones are refused.
        current = set(session.assignment)
        answered: dict[int, int] = {}
        refusals: list[AssignedAddress] = []
        for request in reversed(event.requests):
            granted = granted_by_id.get(request.request_id)
            version = request.ip_prefix.version
            if granted is not None and granted in current and version not in answered:
                answered[version] = request.request_id
            else:
                refusals.append(AssignedAddress.rejection(request.request_id, version))
        entries = [AssignedAddress(answered.get(p.version, 0), p) for p in session.assignment]
        protocol: RelayProtocol = session.connection
        try:
            self._send_on_stream(
                protocol, session, session.connect_ip.assign_addresses(entries + refusals)
            )
        except Exception as error:  # the stream is gone: so is the session
            log.info("session %d: cannot answer ADDRESS_REQUEST: %s", session.id, error)
            self.end_session(session, "stream-gone", send_fin=False)
        protocol.transmit()

    def _send_on_stream(self, protocol: RelayProtocol, session: RelaySession, data: bytes) -> None:
        assert protocol.h3 is not None
        protocol.h3.send_data(session.stream_id, data, end_stream=False)

    def _sender(self, protocol: RelayProtocol) -> Callable[[RelaySession, list[bytes]], int]:
        bound = self.config.carrier.send_queue_packets

        def send_packets(session: RelaySession, packets: list[bytes]) -> int:
            h3 = protocol.h3
            if h3 is None or session not in self.sessions:
                return 0
            if session.carrier is Carrier.LENGTH:
                frame = _length_prefixed
            else:
                frame = session.connect_ip.send_datagram_capsule
            try:
                sent = send_ip_packets(
                    h3,
                    session.stream_id,
                    packets,
                    as_datagrams=session.carrier is Carrier.DATAGRAM,
                    frame=frame,
                    queue_bound=bound,
                )
            except Exception as error:  # the stream was reset or ended under us
                log.info("session %d: cannot send: %s", session.id, error)
                self.end_session(session, "stream-gone", send_fin=False)
                return 0
            if sent:
                session.tx_packets += sent
                session.tx_bytes += sum(len(p) for p in packets[:sent])
                session.last_activity = time.monotonic()
                protocol.transmit()
            return sent

        return send_packets

    def _datagram_sender(
        self, protocol: RelayProtocol
    ) -> Callable[[RelaySession, list[bytes]], int]:
        """Sends HTTP Datagram payloads the compiled path framed in headroom."""
        bound = self.config.carrier.send_queue_packets

        def send_datagrams(session: RelaySession, payloads: list[bytes]) -> int:
            if protocol.h3 is None or session not in self.sessions:
                return 0
            sent = send_framed_datagrams(protocol._quic, payloads, queue_bound=bound)
            if sent:
                session.tx_packets += sent
                framing = len(session.datagram_prefix)
                session.tx_bytes += sum(len(p) - framing for p in payloads[:sent])
                session.last_activity = time.monotonic()
                protocol.transmit()
            return sent

        return send_datagrams

    def _lane_sender(
        self, protocol: RelayProtocol
    ) -> Callable[[RelaySession, PacketBatch, list[int]], int]:
        """Sends a session's packets straight from a TUN batch through the datagram lane."""

        def send_from_batch(session: RelaySession, batch: PacketBatch, indices: list[int]) -> int:
            lane = protocol.lane
            if lane is None or session not in self.sessions:
                return -1
            sent = lane.send(batch, indices, session.datagram_prefix)
            if sent:
                session.tx_packets += sent
                session.tx_bytes += sum(batch.length(i) for i in indices[:sent])
                session.last_activity = time.monotonic()
            return sent

        return send_from_batch

    def _reset(self, session: RelaySession) -> None:
        protocol: RelayProtocol = session.connection
        quic = protocol._quic
        try:
            quic.reset_stream(session.stream_id, ErrorCode.H3_MESSAGE_ERROR)
            quic.stop_stream(session.stream_id, ErrorCode.H3_MESSAGE_ERROR)
        except Exception:
            log.debug("reset of stream %d failed", session.stream_id, exc_info=True)
        protocol.transmit()

    def end_session(self, session: RelaySession, reason: str, *, send_fin: bool = True) -> None:
        """Release everything a session holds; idempotent."""
        if session not in self.sessions:
            return
        # Packets the session sent before it ended still go out, in order.
        self.dataplane.flush()
        self.dataplane.forget(session)
        self.sessions.remove(session)
        self.pool.release(session.id)
        protocol: RelayProtocol = session.connection
        protocol.sessions.pop(session.stream_id, None)
        protocol.bind_lane()
        if send_fin and protocol.h3 is not None:
            try:
                protocol.h3.send_data(session.stream_id, b"", end_stream=True)
                protocol.transmit()
            except Exception:
                log.debug("FIN on stream %d failed", session.stream_id, exc_info=True)
        _events_line(
            self.out,
            "session-end",
            id=session.id,
            reason=reason,
            rx_packets=session.rx_packets,
            tx_packets=session.tx_packets,
            rx_bytes=session.rx_bytes,
            tx_bytes=session.tx_bytes,
        )
        log.info(
            "session %d ended (%s) after %.1f s",
            session.id,
            reason,
            time.monotonic() - session.started,
        )

    async def wait_stopped(self) -> None:
        await self._stopped.wait()


def _length_prefixed(packet: bytes) -> bytes:
    """Compat carrier framing: 2-byte big-endian length, then the packet."""
    return len(packet).to_bytes(2, "big") + packet


def _bracket(host: str) -> str:
    return f"[{host}]" if ":" in host else host


__all__ = ["Assignment", "RelayProtocol", "RelayServer"]
