"""The relay's live CONNECT-IP sessions and the address -> session lookup.

One :class:`SessionTable` per relay process owns every session; packets read
from the TUN are routed by destination address through it: one at a time in
Python (:meth:`SessionTable.lookup`), or a whole batch at once through the
compiled longest-prefix-match table (:meth:`SessionTable.lookup_batch`).
"""

from __future__ import annotations

import enum
import ipaddress
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

from masque.session import ConnectIpSession
from netio.compiled import fastpath
from relay.ipam import Assignment
from relay.ratelimit import TokenBucket

if TYPE_CHECKING:
    from _fastpath import PacketBatch

IPAddress = ipaddress.IPv4Address | ipaddress.IPv6Address
IPNetwork = ipaddress.IPv4Network | ipaddress.IPv6Network


class Carrier(enum.StrEnum):
    """How IP packets travel on a session (DESIGN §1, in the order clients try them)."""

    DATAGRAM = "datagram"  # HTTP/3 Datagrams, context ID 0 (RFC 9297 / RFC 9484 §6)
    CAPSULE = "capsule"  # DATAGRAM capsules on the CONNECT stream (RFC 9297 §3.5)
    LENGTH = "length"  # compat: 2-byte big-endian length-prefixed packets on the stream


@dataclass(eq=False)
class RelaySession:
    """One accepted CONNECT-IP request stream."""

    id: int
    peer: str
    stream_id: int
    carrier: Carrier
    connect_ip: ConnectIpSession
    assignment: Assignment
    #: Sends a batch of IP packets to the client on this session; returns how many went.
    send_packets: Callable[[RelaySession, list[bytes]], int]
    #: Ends the session from the relay's side (stream FIN, resources released).
    close: Callable[[RelaySession, str], None]
    #: The QUIC connection (RelayProtocol) the session's stream belongs to.
    connection: Any = None
    #: Compat carrier only: bytes of a length-prefixed packet not complete yet.
    length_buffer: bytearray = field(default_factory=bytearray)
    #: Bandwidth buckets charged for packets from / to the client (session's, global).
    limits_from_client: tuple[TokenBucket, ...] = ()
    limits_to_client: tuple[TokenBucket, ...] = ()
    #: Keys of this session in the table's indexes (kept so removal is cheap).
    indexed_hosts: list[IPAddress] = field(default_factory=list)
    indexed_prefixes: bool = False
    indexed_networks: list[IPNetwork] = field(default_factory=list)
    #: Datagram carrier: HTTP Datagram payloads already framed with ``datagram_prefix``.
    send_datagrams: Callable[[RelaySession, list[bytes]], int] | None = None
    #: Quarter stream ID and context ID 0: the framing in front of each packet.
    datagram_prefix: bytes = b""
    #: Datagram carrier through the lane: packets ``indices`` of a batch, protected in
    #: C; how many went, or -1 when the connection has no lane (use ``send_datagrams``).
    send_from_batch: Callable[[RelaySession, PacketBatch, list[int]], int] | None = None
    #: Largest IP packet that fits one unit of this session's carrier (tunnel MTU).
    max_packet: int = 1280
    started: float = field(default_factory=time.monotonic)
    last_activity: float = field(default_factory=time.monotonic)
    rx_packets: int = 0  # from the client
    rx_bytes: int = 0
    tx_packets: int = 0  # to the client
    tx_bytes: int = 0


class SessionTable:
    """Every live session, by id and by each address assigned to it."""

    def __init__(self) -> None:
        self._by_id: dict[int, RelaySession] = {}
        # Host assignments (/32, /128) hit this dict; wider prefixes are rare and
        # are matched longest-first below.
        self._by_host: dict[IPAddress, RelaySession] = {}
        self._by_prefix: list[
            tuple[ipaddress.IPv4Network | ipaddress.IPv6Network, RelaySession]
        ] = []
        self._next_id = 1
        # The compiled mirror of both indexes, for the batch path (None: no extension).
        module = fastpath()
        self._prefix_table = module.PrefixTable() if module is not None else None

    def next_id(self) -> int:
        value = self._next_id
        self._next_id += 1
        return value

    def __len__(self) -> int:
        return len(self._by_id)

    def __iter__(self) -> Iterator[RelaySession]:
        return iter(list(self._by_id.values()))

    def get(self, session_id: int) -> RelaySession | None:
        return self._by_id.get(session_id)

    def __contains__(self, session: object) -> bool:
        return isinstance(session, RelaySession) and self._by_id.get(session.id) is session

    def add(self, session: RelaySession) -> None:
        self._by_id[session.id] = session
        self._index(session)

    def reindex(self, session: RelaySession) -> None:
        """Refresh the address index after the session's assignment changed."""
        self._unindex(session)
        self._index(session)

    def remove(self, session: RelaySession) -> None:
        if self._by_id.pop(session.id, None) is not None:
            self._unindex(session)

    def lookup(self, address: IPAddress) -> RelaySession | None:
        """The session whose assigned prefix contains ``address``."""
        session = self._by_host.get(address)
        if session is not None or not self._by_prefix:
            return session
        for network, candidate in self._by_prefix:
            if address.version == network.version and address in network:
                return candidate
        return None

    def lookup_batch(self, batch: PacketBatch) -> list[int]:
        """Session id for each packet's destination in ``batch`` (-1: none), in C."""
        assert self._prefix_table is not None, "lookup_batch needs the compiled fast path"
        sids: list[int] = self._prefix_table.lookup_batch(batch)
        return sids

    def _index(self, session: RelaySession) -> None:
        if self._prefix_table is not None:
            for prefix in session.assignment:
                self._prefix_table.add(prefix, session.id)
                session.indexed_networks.append(prefix)
        for prefix in session.assignment:
            if prefix.prefixlen == prefix.max_prefixlen:
                self._by_host[prefix.network_address] = session
                session.indexed_hosts.append(prefix.network_address)
            else:
                self._by_prefix.append((prefix, session))
                session.indexed_prefixes = True
        if session.indexed_prefixes:
            self._by_prefix.sort(key=lambda item: -item[0].prefixlen)

    def _unindex(self, session: RelaySession) -> None:
        # Only this session's own keys: ending a session costs O(its addresses).
        if self._prefix_table is not None:
            for network in session.indexed_networks:
                self._prefix_table.remove(network)
            session.indexed_networks.clear()
        for address in session.indexed_hosts:
            if self._by_host.get(address) is session:
                del self._by_host[address]
        session.indexed_hosts.clear()
        if session.indexed_prefixes:
            self._by_prefix = [(n, s) for n, s in self._by_prefix if s is not session]
            session.indexed_prefixes = False
