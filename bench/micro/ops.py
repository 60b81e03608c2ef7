"""The batch operations benchmarked: one C and one pure-Python way of doing each.

An :class:`Operation` processes one batch of :data:`~bench.micro.corpus.PACKETS`
packets per call of :meth:`~Operation.run_c` / :meth:`~Operation.run_python`.
Inputs are built once, outside the timing, in the shape each implementation
takes them (a filled ``PacketBatch`` for C, a list of ``bytes`` for Python).
Operations whose round changes state (TTLs decremented or packets protected in
place, datagrams queued in a socket or TUN, a TCP connection's sequence space)
are ``stateful``: an untimed ``prepare_*`` restores the starting point before
every round. ``outcome_*`` turn a round's result
into something comparable, so C and Python can be checked for equal results
(tests/test_bench_micro.py) on exactly the inputs that are timed.
"""

from __future__ import annotations

import contextlib
import os
import select
import socket
import struct
from collections.abc import Callable
from ipaddress import IPv4Address, IPv4Interface, IPv6Address
from types import TracebackType
from typing import ClassVar, Literal, Self

from aioquic.quic.crypto import CryptoContext, CryptoPair, derive_key_iv_hp
from aioquic.quic.packet import QuicProtocolVersion
from aioquic.tls import CipherSuite

import _fastpath
from bench.micro import corpus
from bench.micro.corpus import PACKETS
from masque import ippacket
from masque.errors import PacketError
from netio.h3 import datagram_prefix
from netio.netlink import Netlink
from netio.sysctl import write_sysctl
from netio.tun import TunDevice

Impl = Literal["c", "python"]
IMPLS: tuple[Impl, ...] = ("c", "python")

_RCVBUF = 8 << 20  # holds many batches of 1280-byte datagrams
_SO_RCVBUFFORCE = 33  # <asm-generic/socket.h>; not in the socket module


class Operation:
    """One batch operation; a context manager (I/O operations own sockets or TUNs)."""

    #: The benchmark group and table row.
    name: ClassVar[str]
    #: What is measured, for the report.
    description: ClassVar[str]
    #: A round changes state: ``prepare_*`` runs (untimed) before every round.
    stateful: ClassVar[bool] = False

    def run_c(self) -> object:
        raise NotImplementedError

    def run_python(self) -> object:
        raise NotImplementedError

    def prepare_c(self) -> None:
        """Restore the starting point of a round (untimed)."""

    def prepare_python(self) -> None:
        """Restore the starting point of a round (untimed)."""

    def outcome_c(self, result: object) -> object:
        """What one C round did, comparable with :meth:`outcome_python`."""
        return result

    def outcome_python(self, result: object) -> object:
        """What one Python round did, comparable with :meth:`outcome_c`."""
        return result

    def close(self) -> None:
        """Release what the operation owns."""

    def functions(self, impl: Impl) -> tuple[Callable[[], object], Callable[[], None]]:
        """(run, prepare) of ``impl``."""
        if impl == "c":
            return self.run_c, self.prepare_c
        return self.run_python, self.prepare_python

    def once(self, impl: Impl) -> object:
        """Prepare, run one round and return its outcome."""
        run, prepare = self.functions(impl)
        prepare()
        result = run()
        return self.outcome_c(result) if impl == "c" else self.outcome_python(result)

    def __enter__(self) -> Self:
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.close()


def _batch(packets: list[bytes]) -> _fastpath.PacketBatch:
    batch = _fastpath.PacketBatch(slots=len(packets), slot_size=2048)
    for packet in packets:
        batch.append(packet)
    return batch


def _batch_contents(batch: _fastpath.PacketBatch) -> list[bytes]:
    return [bytes(batch.view(i)) for i in range(batch.count)]


# -- per-packet work ------------------------------------------------------------------


class Parse(Operation):
    name = "parse"
    description = "IP header parse + validation (IPv4 header checksum verified)"

    def __init__(self) -> None:
        self.packets = corpus.from_client()

    def run_c(self) -> object:
        parse = _fastpath.parse_ip_header
        return [parse(p) for p in self.packets]

    def run_python(self) -> object:
        parse = ippacket.parse_ip_packet
        return [parse(p) for p in self.packets]

    def outcome_python(self, result: object) -> object:
        assert isinstance(result, list)
        return [
            (
                h.version,
                h.protocol,
                h.ttl,
                h.header_length,
                h.total_length,
                h.fragment_offset,
                h.more_fragments,
            )
            for h in result
        ]


class LinkScoped(Operation):
    name = "is_link_scoped"
    description = "source or destination link-scoped? (C: packed bytes, Python: address objects)"

    def __init__(self) -> None:
        self.packed = corpus.address_pairs()
        self.addresses = [
            (_address(src), _address(dst)) for src, dst in self.packed
        ]  # what parse_ip_packet hands the Python check

    def run_c(self) -> object:
        scoped = _fastpath.is_link_scoped
        return [scoped(s) or scoped(d) for s, d in self.packed]

    def run_python(self) -> object:
        scoped = ippacket.is_link_scoped
        return [scoped(s) or scoped(d) for s, d in self.addresses]


def _address(packed: bytes) -> IPv4Address | IPv6Address:
    return IPv4Address(packed) if len(packed) == 4 else IPv6Address(packed)


class Checksum(Operation):
    name = "checksum"
    description = "RFC 1071 checksum of each TCP/UDP segment + pseudo-header (verify)"

    def __init__(self) -> None:
        self.items: list[tuple[bytes, int]] = []
        for packet in corpus.from_client():
            if packet[0] >> 4 == 4:
                l4, addresses = 20, packet[12:20]
            else:
                l4, addresses = 40, packet[8:40]
            segment = packet[l4:]
            proto = packet[9] if l4 == 20 else packet[6]
            pseudo = ippacket.checksum_partial(addresses + struct.pack("!HH", proto, len(segment)))
            self.items.append((segment, pseudo))

    def run_c(self) -> object:
        checksum = _fastpath.internet_checksum
        return [checksum(segment, pseudo) for segment, pseudo in self.items]

    def run_python(self) -> object:
        checksum = ippacket.internet_checksum
        return [checksum(segment, pseudo) for segment, pseudo in self.items]


class DecrementTtl(Operation):
    name = "decrement_ttl"
    description = "TTL / Hop Limit decrement in place, IPv4 checksum updated (RFC 1624)"
    stateful = True

    def __init__(self) -> None:
        self.packets = corpus.from_client()
        self.batch = _batch(self.packets)
        self.buffers = [bytearray(p) for p in self.packets]

    def prepare_c(self) -> None:
        for i, packet in enumerate(self.packets):
            self.batch.set(i, packet)

    def prepare_python(self) -> None:
        for buffer, packet in zip(self.buffers, self.packets, strict=True):
            buffer[:] = packet

    def run_c(self) -> object:
        return _fastpath.decrement_ttl_batch(self.batch)

    def run_python(self) -> object:
        decrement = ippacket.decrement_ttl
        ttls = []
        for buffer in self.buffers:
            try:
                ttls.append(decrement(buffer))
            except PacketError:
                ttls.append(0)
        return ttls

    def outcome_c(self, result: object) -> object:
        assert isinstance(result, bytearray)
        return list(result), _batch_contents(self.batch)

    def outcome_python(self, result: object) -> object:
        return result, [bytes(b) for b in self.buffers]


class CheckIncoming(Operation):
    name = "check_incoming"
    description = "RFC 9484 checks of client packets (parse, scope, source, routes): verdicts"
    outgoing = False

    def __init__(self) -> None:
        self.session = corpus.relay_session()
        self.packets = corpus.to_client() if self.outgoing else corpus.from_client()
        self.batch = _batch(self.packets)
        self.policy = _fastpath.PacketPolicy(self.session, outgoing=self.outgoing)

    def run_c(self) -> object:
        return _fastpath.check_incoming_batch(self.batch, self.policy)

    def run_python(self) -> object:
        check = self.session.check_outgoing if self.outgoing else self.session.check_incoming
        return [check(p) for p in self.packets]

    def outcome_c(self, result: object) -> object:
        assert isinstance(result, bytearray)
        return list(result)

    def outcome_python(self, result: object) -> object:
        assert isinstance(result, list)
        return [int(v) for v in result]


class CheckOutgoing(CheckIncoming):
    name = "check_outgoing"
    description = "the same checks on packets from the TUN to the client: verdicts"
    outgoing = True


class Lookup(Operation):
    name = "lookup"
    description = (
        f"destination -> session id among {corpus.SESSIONS} sessions "
        "(C: LPM trie; Python: dict of hosts)"
    )

    def __init__(self) -> None:
        self.table = corpus.session_table()
        self.packets = corpus.to_sessions()
        self.batch = _batch(self.packets)

    def run_c(self) -> object:
        return self.table.lookup_batch(self.batch)

    def run_python(self) -> object:
        lookup = self.table.lookup
        destination = corpus.destination
        ids = []
        for packet in self.packets:
            address = destination(packet)
            session = lookup(address) if address is not None else None
            ids.append(session.id if session is not None else -1)
        return ids


class VnetSplit(Operation):
    name = "vnet_split"
    description = "TSO split of 2 TCP super-segments (v4, v6) into 64 packets of 1280 bytes"

    def __init__(self) -> None:
        self.frames = corpus.tso_frames()

    def run_c(self) -> object:
        split = _fastpath.vnet_split
        return [p for frame in self.frames for p in split(frame)]

    def run_python(self) -> object:
        split = corpus.python_vnet_split
        return [p for frame in self.frames for p in split(frame)]


class CheckRouted(Operation):
    name = "check_routed"
    description = (
        "check_incoming on a batch of 2 sessions' packets, interleaved, each against "
        "its own session (C: session ids + policies; Python: session picked per packet)"
    )

    def __init__(self) -> None:
        self.sessions, self.routed = corpus.routed()
        self.sids = [sid for sid, _ in self.routed]
        self.batch = _batch([packet for _, packet in self.routed])
        self.policies = {sid: _fastpath.PacketPolicy(s) for sid, s in self.sessions.items()}

    def run_c(self) -> object:
        return _fastpath.check_routed_batch(self.batch, self.sids, self.policies)

    def run_python(self) -> object:
        sessions = self.sessions
        return [sessions[sid].check_incoming(packet) for sid, packet in self.routed]

    def outcome_c(self, result: object) -> object:
        assert isinstance(result, bytearray)
        return list(result)

    def outcome_python(self, result: object) -> object:
        assert isinstance(result, list)
        return [int(v) for v in result]


#: The CONNECT-IP request stream of the framing and QUIC benchmarks.
_STREAM_ID = 4


class FrameDatagrams(Operation):
    name = "frame_datagrams"
    description = (
        "HTTP Datagram framing (quarter stream ID, context ID) of each packet "
        "(C: written into the headroom, one copy; Python: prefix + packet, bytes)"
    )

    def __init__(self) -> None:
        self.packets = corpus.to_client()
        self.batch = _batch(self.packets)
        self.indices = list(range(PACKETS))
        self.prefix = datagram_prefix(_STREAM_ID)

    def run_c(self) -> object:
        return _fastpath.frame_datagrams(self.batch, self.indices, self.prefix)

    def run_python(self) -> object:
        prefix = self.prefix
        return [prefix + packet for packet in self.packets]


# -- QUIC datagram lane ------------------------------------------------------------------

_QUIC_SUITE = CipherSuite.AES_128_GCM_SHA256
_QUIC_VERSION = QuicProtocolVersion.VERSION_1
_QUIC_SECRET = bytes((131 + 7 * i) & 0xFF for i in range(32))  # a 1-RTT traffic secret
_QUIC_DCID = bytes.fromhex("0011223344556677")
_QUIC_FIRST_PN = 1000
#: Packet numbers 1000..1063 after 700 was acknowledged take 2 bytes (RFC 9000
#: A.2), the size aioquic always sends.
_QUIC_LARGEST_ACKED = 700
_QUIC_PN_LEN = 2
_DATAGRAM_FRAME = 0x30  # DATAGRAM without a length: to the end of the packet


def _quic_keys() -> _fastpath.QuicKeys:
    """The lane's keys: aioquic's derive_key_iv_hp of the secret, as netio.lane installs them."""
    key, iv, hp = derive_key_iv_hp(
        cipher_suite=_QUIC_SUITE, secret=_QUIC_SECRET, version=_QUIC_VERSION
    )
    return _fastpath.QuicKeys(int(_QUIC_SUITE), key, iv, hp)


def _crypto_pair() -> CryptoPair:
    """aioquic's packet protection with the same secret both ways."""
    pair = CryptoPair()
    for context in (pair.send, pair.recv):
        context.setup(cipher_suite=_QUIC_SUITE, secret=_QUIC_SECRET, version=_QUIC_VERSION)
    return pair


def _aioquic_protect(send: CryptoContext, frame: bytes, packets: list[bytes]) -> list[bytes]:
    """One 1-RTT short-header packet per IP packet (``frame`` + packet), by aioquic."""
    encrypt = send.encrypt_packet
    head = bytes([0x40 | (_QUIC_PN_LEN - 1)]) + _QUIC_DCID  # fixed bit, key phase 0
    out = []
    pn = _QUIC_FIRST_PN
    for packet in packets:
        out.append(encrypt(head + (pn & 0xFFFF).to_bytes(2, "big"), frame + packet, pn))
        pn += 1
    return out


class QuicProtect(Operation):
    name = "quic_protect"
    description = (
        "64 IP packets as DATAGRAM frames in 1-RTT packets of 1310 bytes, AES-128-GCM "
        "(C: quic_protect_batch in place; Python: aioquic CryptoContext.encrypt_packet)"
    )
    stateful = True  # C protects the batch in place

    def __init__(self) -> None:
        self.packets = corpus.to_client()
        self.prefix = datagram_prefix(_STREAM_ID)
        self.frame = bytes([_DATAGRAM_FRAME]) + self.prefix
        self.keys = _quic_keys()
        self.send = _crypto_pair().send
        self.batch = _batch(self.packets)
        pn_len = _fastpath.quic_pn_length(_QUIC_FIRST_PN + PACKETS - 1, _QUIC_LARGEST_ACKED)
        assert pn_len == _fastpath.quic_pn_length(_QUIC_FIRST_PN, _QUIC_LARGEST_ACKED) == 2

    def prepare_c(self) -> None:
        for i, packet in enumerate(self.packets):
            self.batch.set(i, packet)

    def run_c(self) -> object:
        return _fastpath.quic_protect_batch(
            self.keys,
            self.batch,
            _QUIC_DCID,
            _QUIC_FIRST_PN,
            _QUIC_LARGEST_ACKED,
            datagram=True,
            payload_prefix=self.prefix,
        )

    def run_python(self) -> object:
        return _aioquic_protect(self.send, self.frame, self.packets)

    def outcome_c(self, result: object) -> object:
        return result, _batch_contents(self.batch)

    def outcome_python(self, result: object) -> object:
        assert isinstance(result, list)
        return len(result), result


class QuicLaneReceive(Operation):
    name = "quic_lane_receive"
    description = (
        "64 such 1-RTT packets received: C quic_lane_receive per packet (header and "
        "AEAD unprotected, frames walked, the session's packets into a PacketBatch); "
        "Python: aioquic CryptoContext.decrypt_packet only (no frame parsing)"
    )
    stateful = True  # C appends to the output batch

    def __init__(self) -> None:
        self.prefix = datagram_prefix(_STREAM_ID)
        self.frame = bytes([_DATAGRAM_FRAME]) + self.prefix
        pair = _crypto_pair()
        self.recv = pair.recv
        self.datagrams = _aioquic_protect(pair.send, self.frame, corpus.from_client())
        self.keys = _quic_keys()
        self.out = _fastpath.PacketBatch(slots=PACKETS, slot_size=2048)

    def prepare_c(self) -> None:
        self.out.clear()

    def run_c(self) -> object:
        receive, keys, out, prefix = _fastpath.quic_lane_receive, self.keys, self.out, self.prefix
        largest = _QUIC_FIRST_PN - 1
        return [
            receive(keys, d, len(_QUIC_DCID), largest, None, out, prefix) for d in self.datagrams
        ]

    def run_python(self) -> object:
        decrypt = self.recv.decrypt_packet
        offset, expected = 1 + len(_QUIC_DCID), _QUIC_FIRST_PN
        return [decrypt(d, offset, expected) for d in self.datagrams]

    def outcome_c(self, result: object) -> object:
        """(packet number, IP packet) per datagram."""
        assert isinstance(result, list) and self.out.count == len(result)
        received = []
        for i, got in enumerate(result):
            assert got is not None, f"packet {i} is not the lane's"
            pn, _eliciting, ack, others = got
            assert ack is None and others == [], got
            received.append((pn, bytes(self.out.view(i))))
        return received

    def outcome_python(self, result: object) -> object:
        assert isinstance(result, list)
        received = []
        for _header, payload, pn, key_update in result:
            assert payload.startswith(self.frame) and not key_update
            received.append((pn, payload[len(self.frame) :]))
        return received


# -- I/O -----------------------------------------------------------------------------------


def _udp_socket(*, rcvbuf: bool = False) -> socket.socket:
    sock = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    if rcvbuf:
        try:
            sock.setsockopt(socket.SOL_SOCKET, _SO_RCVBUFFORCE, _RCVBUF)
        except PermissionError:  # not root: as much as net.core.rmem_max allows
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, _RCVBUF)
    sock.bind(("127.0.0.1", 0))
    sock.setblocking(False)
    return sock


def _recv_python(sock: socket.socket, count: int) -> list[tuple[bytes, object]]:
    """``count`` datagrams with recvfrom, as the Python relay's read loop does."""
    got: list[tuple[bytes, object]] = []
    while len(got) < count:
        try:
            got.append(sock.recvfrom(2048))
        except BlockingIOError:
            if not select.select([sock], [], [], 2.0)[0]:
                raise TimeoutError(f"{len(got)} of {count} datagrams arrived") from None
    return got


def _recv_c(sock: _fastpath.UdpSocket, count: int) -> list[tuple[bytes, tuple[str, int], int]]:
    got: list[tuple[bytes, tuple[str, int], int]] = []
    while len(got) < count:
        batch = sock.recv_batch(count - len(got), timeout=2.0)
        if not batch:
            raise TimeoutError(f"{len(got)} of {count} datagrams arrived")
        got.extend(batch)
    return got


def _drain(sock: socket.socket) -> list[bytes]:
    out = []
    while True:
        try:
            out.append(sock.recv(65536))
        except BlockingIOError:
            return out


class UdpSend(Operation):
    name = "udp_send"
    description = "64 datagrams of 1280 bytes to one loopback peer (C: sendmmsg + UDP GSO)"
    stateful = True

    def __init__(self) -> None:
        self.payloads = corpus.from_client()
        self.sink = _udp_socket(rcvbuf=True)
        self.sink_c = _fastpath.UdpSocket(self.sink.fileno(), gro=True)  # reads for outcome
        self.peer = self.sink.getsockname()
        self.tx_python = _udp_socket()
        self.tx_python.setblocking(True)
        self.tx_c_socket = _udp_socket()
        self.tx_c = _fastpath.UdpSocket(self.tx_c_socket.fileno(), gso=True)
        self.datagrams = [(p, self.peer) for p in self.payloads]

    def prepare_c(self) -> None:
        _drain(self.sink)

    prepare_python = prepare_c

    def run_c(self) -> object:
        return self.tx_c.send_batch(self.datagrams)

    def run_python(self) -> object:
        sendto, peer = self.tx_python.sendto, self.peer
        for payload in self.payloads:
            sendto(payload, peer)
        return len(self.payloads)

    def outcome_c(self, result: object) -> object:
        return result, [d[0] for d in _recv_c(self.sink_c, PACKETS)]

    outcome_python = outcome_c

    def close(self) -> None:
        self.sink_c.close()
        self.tx_c.close()
        for sock in (self.sink, self.tx_python, self.tx_c_socket):
            sock.close()


class UdpRecv(Operation):
    name = "udp_recv"
    description = "64 datagrams of 1280 bytes from loopback (C: recvmmsg + UDP GRO)"
    stateful = True

    def __init__(self) -> None:
        self.payloads = corpus.from_client()
        self.tx_socket = _udp_socket()
        self.tx = _fastpath.UdpSocket(self.tx_socket.fileno(), gso=True)
        self.rx_python = _udp_socket(rcvbuf=True)
        self.rx_c_socket = _udp_socket(rcvbuf=True)
        self.rx_c = _fastpath.UdpSocket(self.rx_c_socket.fileno(), gro=True)
        self.to_python = [(p, self.rx_python.getsockname()) for p in self.payloads]
        self.to_c = [(p, self.rx_c_socket.getsockname()) for p in self.payloads]

    def _fill(self, sink: socket.socket, datagrams: list[tuple[bytes, tuple[str, int]]]) -> None:
        _drain(sink)
        sent = self.tx.send_batch(datagrams)
        assert sent == len(datagrams), f"sent {sent} of {len(datagrams)}"

    def prepare_c(self) -> None:
        self._fill(self.rx_c_socket, self.to_c)

    def prepare_python(self) -> None:
        self._fill(self.rx_python, self.to_python)

    def run_c(self) -> object:
        return _recv_c(self.rx_c, PACKETS)

    def run_python(self) -> object:
        return _recv_python(self.rx_python, PACKETS)

    def outcome_c(self, result: object) -> object:
        assert isinstance(result, list)
        return [d[0] for d in result]

    outcome_python = outcome_c

    def close(self) -> None:
        self.rx_c.close()
        self.tx.close()
        for sock in (self.tx_socket, self.rx_python, self.rx_c_socket):
            sock.close()


# -- TUN ----------------------------------------------------------------------------------

_TUN_MTU = 1500


class _TunEnd:
    """A TUN device with 10.x/30-style point-to-point addressing, IPv4 only.

    ``local`` is the device's address, ``peer`` the other address of the /30,
    routed through the device. IPv6 is switched off on it so the kernel's
    own chatter (MLD, router solicitations) does not land in the read queue.
    """

    def __init__(self, name: str, subnet: int, *, compiled: bool) -> None:
        base = int(IPv4Address("198.18.0.0")) + subnet * 4  # RFC 2544 benchmarking range
        self.local, self.peer = IPv4Address(base + 1), IPv4Address(base + 2)
        self.device = TunDevice.open(name, mtu=_TUN_MTU, up=False, compiled=compiled)
        try:
            with contextlib.suppress(FileNotFoundError):  # no IPv6 on this host
                write_sysctl(f"net/ipv6/conf/{self.device.name}/disable_ipv6", 1)
            self.device.add_address(IPv4Interface(f"{self.local}/30"))
            with Netlink() as nl:
                nl.set_link(self.device.index, up=True)
        except BaseException:
            self.device.close()
            raise

    def read_all(self) -> list[bytes]:
        out: list[bytes] = []
        while batch := self.device.read_batch(64):
            out.extend(batch)
        return out

    def close(self) -> None:
        self.device.close()


def _tun_pair() -> tuple[_TunEnd, _TunEnd]:
    """A plain (Python I/O) and a compiled (vnet_hdr) TUN with per-process names/subnets."""
    pid = os.getpid()
    subnet = (pid % 8000) * 2
    python_end = _TunEnd(f"mqbp{pid}", subnet, compiled=False)
    try:
        c_end = _TunEnd(f"mqbc{pid}", subnet + 1, compiled=True)
    except BaseException:
        python_end.close()
        raise
    return python_end, c_end


class _TunOperation(Operation):
    python_end: _TunEnd
    c_end: _TunEnd

    def _ends(self) -> tuple[tuple[Impl, _TunEnd], ...]:
        return (("python", self.python_end), ("c", self.c_end))


def _udp_payloads(packets: list[bytes]) -> list[bytes]:
    out = []
    for packet in packets:
        header = ippacket.parse_ip_packet(packet)
        assert header.protocol == corpus.UDP, header
        out.append(packet[header.header_length + 8 :])
    return out


class TunWrite(_TunOperation):
    name = "tun_write"
    description = "64 IPv4/UDP packets of 1280 bytes into a TUN, delivered to a local socket"
    stateful = True

    def __init__(self) -> None:
        self.python_end, self.c_end = _tun_pair()
        try:
            self.sinks: dict[Impl, socket.socket] = {}
            self.packets: dict[Impl, list[bytes]] = {}
            for impl, end in self._ends():
                sink = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
                self.sinks[impl] = sink
                sink.setsockopt(socket.SOL_SOCKET, _SO_RCVBUFFORCE, _RCVBUF)
                sink.bind((str(end.local), 0))
                sink.setblocking(False)
                port = sink.getsockname()[1]
                self.packets[impl] = [
                    corpus.ip_packet(end.peer, end.local, corpus.UDP, i, sport=5000, dport=port)
                    for i in range(PACKETS)
                ]
        except BaseException:
            self.close()
            raise
        compiled = self.c_end.device.compiled
        assert compiled is not None
        self.tun_c = compiled

    def prepare_c(self) -> None:
        _drain(self.sinks["c"])

    def prepare_python(self) -> None:
        _drain(self.sinks["python"])

    def run_c(self) -> object:
        return self.tun_c.write_packets(self.packets["c"])

    def run_python(self) -> object:
        return self.python_end.device.write_batch(self.packets["python"])

    def _outcome(self, impl: Impl, result: object) -> object:
        return result, [d for d, _ in _recv_python(self.sinks[impl], PACKETS)]

    def outcome_c(self, result: object) -> object:
        return self._outcome("c", result)

    def outcome_python(self, result: object) -> object:
        return self._outcome("python", result)

    def close(self) -> None:
        for sink in getattr(self, "sinks", {}).values():
            sink.close()
        self.c_end.close()
        self.python_end.close()


class TunRead(_TunOperation):
    name = "tun_read"
    description = "64 IPv4/UDP packets of 1280 bytes routed into a TUN, read from it"
    stateful = True

    def __init__(self) -> None:
        self.python_end, self.c_end = _tun_pair()
        # Unbound address: the route through each TUN picks the source.
        self.tx_socket = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
        self.tx_socket.bind(("0.0.0.0", 0))
        # One packet per datagram into the TUN (no UDP GSO): the per-packet path.
        self.tx = _fastpath.UdpSocket(self.tx_socket.fileno(), gso=False)
        payloads = [corpus.payload(i, corpus.PACKET_SIZE - 28) for i in range(PACKETS)]
        self.datagrams: dict[Impl, list[tuple[bytes, tuple[str, int]]]] = {
            impl: [(p, (str(end.peer), 9)) for p in payloads] for impl, end in self._ends()
        }
        compiled = self.c_end.device.compiled
        assert compiled is not None
        self.tun_c = compiled

    def _fill(self, impl: Impl, end: _TunEnd) -> None:
        end.read_all()
        sent = self.tx.send_batch(self.datagrams[impl])
        assert sent == PACKETS, f"sent {sent} of {PACKETS}"

    def prepare_c(self) -> None:
        self._fill("c", self.c_end)

    def prepare_python(self) -> None:
        self._fill("python", self.python_end)

    def run_c(self) -> object:
        read = self.tun_c.read_packets
        got = read(PACKETS, _TUN_MTU)
        while len(got) < PACKETS:
            more = read(PACKETS - len(got), _TUN_MTU)
            if not more:
                raise TimeoutError(f"{len(got)} of {PACKETS} packets in the TUN")
            got += more
        return got

    def run_python(self) -> object:
        read = self.python_end.device.read_batch
        got = read(PACKETS)
        while len(got) < PACKETS:
            more = read(PACKETS - len(got))
            if not more:
                raise TimeoutError(f"{len(got)} of {PACKETS} packets in the TUN")
            got += more
        return got

    def outcome_c(self, result: object) -> object:
        assert isinstance(result, list)
        return _udp_payloads(result)

    outcome_python = outcome_c

    def close(self) -> None:
        self.tx.close()
        self.tx_socket.close()
        self.c_end.close()
        self.python_end.close()


class TunReadBatch(TunRead):
    name = "tun_read_batch"
    description = (
        "tun_read's packets, read into a PacketBatch (C: Tun.read_batch, no Python "
        "object per packet; Python: the same os.readv loop)"
    )

    def __init__(self) -> None:
        super().__init__()
        self.batch = _fastpath.PacketBatch(slots=PACKETS, slot_size=2048)

    def prepare_c(self) -> None:
        self.batch.clear()
        super().prepare_c()

    def run_c(self) -> object:
        read, batch = self.tun_c.read_batch, self.batch
        while batch.count < PACKETS:
            if not read(batch, 0, _TUN_MTU):
                raise TimeoutError(f"{batch.count} of {PACKETS} packets in the TUN")
        return batch.count

    def outcome_c(self, result: object) -> object:
        assert result == PACKETS
        return _udp_payloads(_batch_contents(self.batch))


# TCP_REPAIR (linux/tcp.h; not in the socket module): a connected socket without a
# handshake, its sequence numbers and receive window set by hand (CAP_NET_ADMIN).
_TCP_REPAIR, _TCP_REPAIR_QUEUE, _TCP_QUEUE_SEQ, _TCP_REPAIR_WINDOW = 19, 20, 21, 29
_TCP_RECV_QUEUE, _TCP_SEND_QUEUE = 1, 2
_FLOW_SEQ, _FLOW_ACK = 1_000_000, 1  # the peer's next sequence number; ours
_FLOW_PORTS = (5000, 7000)  # the peer's (behind the TUN), the local socket's
_FLOW_WINDOW = 1 << 20  # receive window: the whole round fits
_MSS = corpus.PACKET_SIZE - 40


def _repaired_connection(local: IPv4Address, peer: IPv4Address) -> socket.socket:
    """A local TCP socket established with ``peer`` (behind a TUN), expecting _FLOW_SEQ.

    Made in repair mode: no packet is exchanged, the same 4-tuple and sequence
    numbers serve every round, and the window takes a whole round's segments.
    """
    sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    try:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        sock.setsockopt(socket.SOL_SOCKET, _SO_RCVBUFFORCE, _RCVBUF)
        sock.setsockopt(socket.IPPROTO_TCP, _TCP_REPAIR, 1)
        sock.setsockopt(socket.IPPROTO_TCP, _TCP_REPAIR_QUEUE, _TCP_RECV_QUEUE)
        sock.setsockopt(socket.IPPROTO_TCP, _TCP_QUEUE_SEQ, _FLOW_SEQ)
        sock.setsockopt(socket.IPPROTO_TCP, _TCP_REPAIR_QUEUE, _TCP_SEND_QUEUE)
        sock.setsockopt(socket.IPPROTO_TCP, _TCP_QUEUE_SEQ, _FLOW_ACK)
        sock.bind((str(local), _FLOW_PORTS[1]))
        sock.connect((str(peer), _FLOW_PORTS[0]))
        # snd_wl1, snd_wnd, max_window, rcv_wnd, rcv_wup
        window = struct.pack("=5I", _FLOW_SEQ, 65535, 65535, _FLOW_WINDOW, _FLOW_SEQ)
        sock.setsockopt(socket.IPPROTO_TCP, _TCP_REPAIR_WINDOW, window)
        sock.setsockopt(socket.IPPROTO_TCP, _TCP_REPAIR, 0)
    except BaseException:
        _drop_connection(sock)
        raise
    return sock


def _drop_connection(sock: socket.socket) -> None:
    """Close without a FIN or RST (and without TIME_WAIT): back into repair mode first."""
    with contextlib.suppress(OSError):
        sock.setsockopt(socket.IPPROTO_TCP, _TCP_REPAIR, 1)
    sock.close()


def _recv_stream(sock: socket.socket, size: int) -> bytes:
    sock.settimeout(2.0)
    data = bytearray()
    while len(data) < size:
        chunk = sock.recv(size - len(data))
        if not chunk:
            raise ConnectionError(f"{len(data)} of {size} bytes before the end")
        data += chunk
    return bytes(data)


class TunWriteGro(_TunOperation):
    name = "tun_write_gro"
    description = (
        "64 consecutive TCP segments of 1280 bytes of one flow into a TUN, delivered to "
        "a local TCP socket (C: Tun.write_batch, coalesced into 2 GSO frames; "
        "Python: one os.write each)"
    )
    stateful = True

    def __init__(self) -> None:
        self.connections: dict[Impl, socket.socket] = {}
        self.python_end, self.c_end = _tun_pair()
        try:
            peer_port, local_port = _FLOW_PORTS
            self.packets: dict[Impl, list[bytes]] = {
                impl: corpus.tcp_flow(
                    end.peer, end.local, peer_port, local_port, _FLOW_SEQ, _FLOW_ACK
                )
                for impl, end in self._ends()
            }
            self.batch = _batch(self.packets["c"])
            compiled = self.c_end.device.compiled
            assert compiled is not None
            self.tun_c = compiled
        except BaseException:
            self.close()
            raise

    def _connect(self, impl: Impl, end: _TunEnd) -> None:
        """A fresh connection expecting the flow's first segment; the TUN drained."""
        old = self.connections.pop(impl, None)
        if old is not None:
            _drop_connection(old)
        end.read_all()  # the last round's ACKs
        self.connections[impl] = _repaired_connection(end.local, end.peer)

    def prepare_c(self) -> None:
        self._connect("c", self.c_end)

    def prepare_python(self) -> None:
        self._connect("python", self.python_end)

    def run_c(self) -> object:
        return self.tun_c.write_batch(self.batch)

    def run_python(self) -> object:
        return self.python_end.device.write_batch(self.packets["python"])

    def _outcome(self, impl: Impl, result: object) -> object:
        """(packets written, the 64 payloads as the socket received the stream)."""
        stream = _recv_stream(self.connections[impl], PACKETS * _MSS)
        return result, [stream[i * _MSS : (i + 1) * _MSS] for i in range(PACKETS)]

    def outcome_c(self, result: object) -> object:
        stats = self.tun_c.stats
        assert stats["write_errors"] == 0 and stats["gro_frames"] > 0, stats
        return self._outcome("c", result)

    def outcome_python(self, result: object) -> object:
        assert self.python_end.device.write_drops == 0
        return self._outcome("python", result)

    def close(self) -> None:
        for sock in self.connections.values():
            _drop_connection(sock)
        self.connections.clear()
        for end in (getattr(self, "c_end", None), getattr(self, "python_end", None)):
            if end is not None:
                end.close()


#: Every operation, in table order.
OPERATIONS: dict[str, type[Operation]] = {
    op.name: op
    for op in (
        Parse,
        LinkScoped,
        Checksum,
        DecrementTtl,
        CheckIncoming,
        CheckOutgoing,
        CheckRouted,
        Lookup,
        VnetSplit,
        FrameDatagrams,
        QuicProtect,
        QuicLaneReceive,
        UdpSend,
        UdpRecv,
        TunWrite,
        TunWriteGro,
        TunRead,
        TunReadBatch,
    )
}
