"""One CONNECT-IP request, either end: capsules in, events and capsules out (sans-I/O).

:class:`ConnectIpSession` owns everything RFC 9484 attaches to one request
stream, for the client and for the relay alike:

- it parses the stream's capsules (:meth:`~ConnectIpSession.receive_capsule_data`)
  and returns :mod:`masque.events`; any protocol violation yields
  :class:`~masque.events.SessionAborted` and the session ignores further input;
- it keeps the address and route state of both directions. RFC 9484 §4.7 lets
  *both* endpoints send every capsule type, so there is no role restriction on
  what may be received: each ADDRESS_ASSIGN or ROUTE_ADVERTISEMENT replaces the
  previous set (§4.7.1, §4.7.3) and an empty one withdraws everything;
- it produces the capsules this endpoint sends (:meth:`~ConnectIpSession.assign_addresses`,
  :meth:`~ConnectIpSession.request_addresses`, :meth:`~ConnectIpSession.advertise_routes`,
  :meth:`~ConnectIpSession.send_datagram_capsule`) and remembers what they said;
- it decides whether an IP packet may cross the tunnel
  (:meth:`~ConnectIpSession.check_outgoing`, :meth:`~ConnectIpSession.check_incoming`).

Packet policy, for a packet sent by endpoint S to endpoint R on this session:

- **source**: an address R assigned to S (S originates it), or inside a range S
  advertised to R for the packet's protocol (S forwards it from a network
  behind it, as in the site-to-site example of RFC 9484 §8.2). This is the
  source-address validation RFC 9484 §11 makes mandatory (BCP 38). One
  exception, from §7.2.1: ICMP sent by the *relay* may come from anywhere
  ("ICMP messages can originate from a source address different from that of
  the IP proxying peer and also from outside the target").
- **destination**: inside a range R advertised to S for the packet's protocol,
  or an address S assigned to R (the packet is for R itself).
- **protocol**: ICMP (IPv4 protocol 1, ICMPv6 58) is always allowed, whatever
  the route or the request's ``ipproto`` says (§4.6, §4.7.3). The protocol is
  the one found after walking IPv6 extension headers (§4.8; done by
  :func:`masque.ippacket.parse_ip_packet`).
- **scope**: the request's ``target`` prefixes constrain the far-side address
  (the destination of packets towards the relay, the source of packets towards
  the client, ICMP towards the client exempt per §7.2.1) and ``ipproto`` the
  protocol.
- **link-local** and other link-scoped addresses are never forwarded (§7.2).

Role therefore only matters for which way "towards the relay" is. Nothing is
known until the peer has spoken: packets are dropped until addresses and
routes exist (§7.1: "receiving addresses and routes is required in order to
know that a packet can be sent through the tunnel").
"""

from __future__ import annotations

import bisect
import enum
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from types import MappingProxyType

from masque.capsule import (
    DEFAULT_MAX_CAPSULE_SIZE,
    AddressAssign,
    AddressRequest,
    AssignedAddress,
    CapsuleParser,
    CapsuleType,
    DatagramCapsule,
    IPAddress,
    IpAddressRange,
    IPNetwork,
    ParsedCapsule,
    RequestedAddress,
    RouteAdvertisement,
    encode_capsule,
)
from masque.datagram import CONTEXT_ID_IP_PACKET, decode_datagram, encode_datagram
from masque.errors import CapsuleError, DatagramError, MasqueError, PacketError
from masque.events import (
    AddressesAssigned,
    AddressRequested,
    DatagramReceived,
    Event,
    RoutesAdvertised,
    SessionAborted,
)
from masque.ippacket import IPHeader, is_link_scoped, parse_ip_packet

__all__ = [
    "DEFAULT_MAX_ADDRESS_REQUESTS",
    "ConnectIpSession",
    "Role",
    "Scope",
    "SessionRule",
    "Verdict",
]

# Internet Protocol Numbers of ICMP per IP version (IANA; RFC 792, RFC 4443).
_ICMP_BY_VERSION = {4: 1, 6: 58}

#: Default limit on distinct Request IDs a peer may use over a session's life.
#: Every ID must be remembered to detect reuse (§4.7.2), so it is bounded.
DEFAULT_MAX_ADDRESS_REQUESTS = 1024


class Role(enum.Enum):
    """Which end of the CONNECT-IP request this session is."""

    CLIENT = "client"  # sent the extended CONNECT (RFC 9484 §4)
    RELAY = "relay"  # the IP proxy that answered it


class SessionRule(enum.StrEnum):
    """``rule`` values of violations only visible across capsules (RFC 9484 §4.7)."""

    # §4.7.1: a non-zero Request ID "SHALL contain the value of the
    # corresponding field in the request. Otherwise, this field SHALL be zero."
    # A non-zero ID we never sent answers nothing.
    ASSIGN_UNKNOWN_REQUEST_ID = "assign-unknown-request-id"
    # §4.7.2: "Request IDs MUST NOT be reused by an endpoint".
    REQUEST_ID_REUSED = "request-id-reused"
    # Local limit: the peer used more distinct Request IDs than we remember.
    TOO_MANY_ADDRESS_REQUESTS = "too-many-address-requests"
    # The owner aborted the session itself (e.g. tunnel MTU below 1280, §7.2).
    LOCAL_ABORT = "local-abort"


class Verdict(enum.IntEnum):
    """What to do with one IP packet. Each drop hints at the ICMP error to send (§7.2.1)."""

    ACCEPT = 0
    #: Not a valid IPv4/IPv6 packet (see the PacketError rule); drop silently.
    DROP_MALFORMED = 1
    #: Link-local or link-scoped source or destination: never forwarded (§7.2).
    #: The endpoint may still answer it itself (e.g. the ff02::1 echo probe of §7.2).
    DROP_LINK_LOCAL = 2
    #: Source neither assigned to the sender nor inside a range it advertised
    #: (BCP 38, §11). ICMP: Destination Unreachable code 5 (v6) / 13 (v4).
    DROP_SRC_NOT_ASSIGNED = 3
    #: Destination outside the receiver's routes. ICMP: Destination Unreachable
    #: code 0 "no route" or 1 "administratively prohibited" (v6).
    DROP_DST_NOT_IN_SCOPE = 4
    #: Address routed, but not for this protocol, or outside the request's
    #: ``ipproto``. ICMP: administratively prohibited.
    DROP_PROTO_NOT_IN_SCOPE = 5
    #: The far-side source of a packet towards the client is outside the
    #: request's ``target`` scope.
    DROP_SRC_NOT_IN_SCOPE = 6
    #: The session was aborted; nothing crosses it any more.
    DROP_SESSION_CLOSED = 7


@dataclass(frozen=True, slots=True)
class Scope:
    """The scope of a CONNECT-IP request (RFC 9484 §4.6), resolved to prefixes.

    A hostname ``target`` is resolved by the relay before building this.
    """

    #: Allowed far-side prefixes; None means any ("*").
    targets: tuple[IPNetwork, ...] | None = None
    #: Allowed upper-layer protocol; None means any ("*"). ICMP is always allowed.
    ipproto: int | None = None

    def __post_init__(self) -> None:
        if self.ipproto is not None and not 0 <= self.ipproto <= 255:
            raise ValueError(f"ipproto must be 0..255 or None, not {self.ipproto}")


# ---------------------------------------------------------------------------
# Lookup structures, rebuilt when a set changes (rare) and read per packet


class _IntervalSet:
    """Sorted, merged, inclusive integer intervals with O(log n) membership."""

    __slots__ = ("_ends", "_starts")

    def __init__(self, intervals: Iterable[tuple[int, int]]) -> None:
        starts: list[int] = []
        ends: list[int] = []
        for start, end in sorted(intervals):
            if ends and start <= ends[-1] + 1:
                ends[-1] = max(ends[-1], end)
            else:
                starts.append(start)
                ends.append(end)
        self._starts = starts
        self._ends = ends

    def __contains__(self, value: int) -> bool:
        index = bisect.bisect_right(self._starts, value) - 1
        return index >= 0 and self._ends[index] >= value


class _AddressSet:
    """Union of prefixes of both IP versions."""

    __slots__ = ("_by_version",)

    def __init__(self, prefixes: Iterable[IPNetwork]) -> None:
        per_version: dict[int, list[tuple[int, int]]] = {4: [], 6: []}
        for prefix in prefixes:
            per_version[prefix.version].append(
                (int(prefix.network_address), int(prefix.broadcast_address))
            )
        self._by_version = {v: _IntervalSet(i) for v, i in per_version.items()}

    def contains(self, address: IPAddress) -> bool:
        return int(address) in self._by_version[address.version]


class _Match(enum.Enum):
    YES = enum.auto()
    WRONG_PROTOCOL = enum.auto()  # address covered, but only for other protocols
    NO = enum.auto()


class _RouteTable:
    """Advertised ranges indexed by (IP version, IP protocol)."""

    __slots__ = ("_by_key", "_covered")

    def __init__(self, ranges: Iterable[IpAddressRange]) -> None:
        by_key: dict[tuple[int, int], list[tuple[int, int]]] = {}
        covered: dict[int, list[tuple[int, int]]] = {4: [], 6: []}
        for entry in ranges:
            interval = (int(entry.start), int(entry.end))
            by_key.setdefault((entry.ip_version, entry.ip_protocol), []).append(interval)
            covered[entry.ip_version].append(interval)
        self._by_key = {k: _IntervalSet(v) for k, v in by_key.items()}
        self._covered = {v: _IntervalSet(i) for v, i in covered.items()}

    def match(self, address: IPAddress, protocol: int, icmp: bool) -> _Match:
        version = address.version
        value = int(address)
        for key in ((version, 0), (version, protocol)):
            table = self._by_key.get(key)
            if table is not None and value in table:
                return _Match.YES
        if value not in self._covered[version]:
            return _Match.NO
        # ICMP is allowed on every range whatever its protocol (§4.7.3).
        return _Match.YES if icmp else _Match.WRONG_PROTOCOL


_EMPTY_ADDRESSES = _AddressSet(())
_EMPTY_ROUTES = _RouteTable(())


class _State(enum.Enum):
    OPEN = enum.auto()
    ENDED = enum.auto()  # the peer finished its side of the stream cleanly
    ABORTED = enum.auto()


# ---------------------------------------------------------------------------


class ConnectIpSession:
    """State of one CONNECT-IP request stream at one endpoint (client or relay).

    Feed the request stream's DATA bytes to :meth:`receive_capsule_data`; send
    the bytes returned by the ``assign_addresses`` / ``request_addresses`` /
    ``advertise_routes`` / ``send_datagram_capsule`` methods on the same
    stream; ask :meth:`check_outgoing` / :meth:`check_incoming` about packets.
    No I/O happens here.
    """

    def __init__(
        self,
        role: Role,
        *,
        scope: Scope | None = None,
        max_capsule_size: int = DEFAULT_MAX_CAPSULE_SIZE,
        max_address_requests: int = DEFAULT_MAX_ADDRESS_REQUESTS,
    ) -> None:
        """Create the session for a request stream.

        ``scope`` is the request's target/ipproto scope (None: unscoped).
        ``max_capsule_size`` bounds the capsules we buffer (see
        :class:`~masque.capsule.CapsuleParser`); ``max_address_requests``
        bounds the distinct Request IDs the peer may use.
        """
        if not isinstance(role, Role):
            raise TypeError(f"role must be a Role, not {role!r}")
        self._role = role
        self._scope = scope if scope is not None else Scope()
        self._scope_targets = (
            _AddressSet(self._scope.targets) if self._scope.targets is not None else None
        )
        self._parser = CapsuleParser(max_capsule_size)
        self._max_address_requests = max_address_requests
        self._state = _State.OPEN
        self._abort_event: SessionAborted | None = None
        #: Bumped whenever anything the packet checks read changes (addresses,
        #: routes, state): compiled snapshots of the policy compare it to know
        #: when to rebuild.
        self.policy_revision = 0

        # Addresses the peer assigned to us / we assigned to the peer (refusals left out).
        self._local_addresses: tuple[AssignedAddress, ...] = ()
        self._peer_addresses: tuple[AssignedAddress, ...] = ()
        self._local_address_set = _EMPTY_ADDRESSES
        self._peer_address_set = _EMPTY_ADDRESSES
        # Ranges the peer advertised to us / we advertised to the peer.
        self._peer_routes: tuple[IpAddressRange, ...] = ()
        self._local_routes: tuple[IpAddressRange, ...] = ()
        self._peer_route_table = _EMPTY_ROUTES
        self._local_route_table = _EMPTY_ROUTES

        # Our ADDRESS_REQUESTs: every ID ever sent, and those still unanswered.
        self._next_request_id = 1
        self._sent_request_ids: set[int] = set()
        self._pending_requests: dict[int, RequestedAddress] = {}
        # The peer's ADDRESS_REQUESTs: every ID it used, and those we have not answered.
        self._peer_request_ids: set[int] = set()
        self._unanswered_peer_requests: dict[int, RequestedAddress] = {}

        #: Capsules of unknown type skipped (RFC 9297 §3.2).
        self.skipped_capsules = 0
        #: DATAGRAM capsules discarded for exceeding ``max_capsule_size`` (RFC 9297 §3.5).
        self.oversized_datagrams = 0
        #: Datagrams dropped for a Context ID other than 0 (RFC 9484 §6).
        self.unknown_context_datagrams = 0
        #: QUIC datagrams dropped because their Context ID was truncated.
        self.malformed_datagrams = 0

    # -- read-only state ------------------------------------------------------

    @property
    def role(self) -> Role:
        """CLIENT or RELAY."""
        return self._role

    @property
    def scope(self) -> Scope:
        """The request scope this session enforces."""
        return self._scope

    @property
    def is_aborted(self) -> bool:
        """True once a protocol violation (or :meth:`abort`) ended the session."""
        return self._state is _State.ABORTED

    @property
    def peer_ended(self) -> bool:
        """True once the peer finished the stream cleanly."""
        return self._state is _State.ENDED

    @property
    def abort_event(self) -> SessionAborted | None:
        """The event that aborted the session, if any."""
        return self._abort_event

    @property
    def local_addresses(self) -> tuple[AssignedAddress, ...]:
        """Prefixes the peer assigned to us: our allowed source addresses."""
        return self._local_addresses

    @property
    def peer_addresses(self) -> tuple[AssignedAddress, ...]:
        """Prefixes we assigned to the peer: its allowed source addresses."""
        return self._peer_addresses

    @property
    def peer_routes(self) -> tuple[IpAddressRange, ...]:
        """Ranges the peer routes for us: where we may send."""
        return self._peer_routes

    @property
    def local_routes(self) -> tuple[IpAddressRange, ...]:
        """Ranges we advertised: where the peer may send."""
        return self._local_routes

    @property
    def pending_requests(self) -> Mapping[int, RequestedAddress]:
        """Our ADDRESS_REQUEST entries not answered yet, by Request ID."""
        return MappingProxyType(self._pending_requests)

    @property
    def unanswered_peer_requests(self) -> Mapping[int, RequestedAddress]:
        """The peer's ADDRESS_REQUEST entries we have not answered yet (§4.7.2 SHALL)."""
        return MappingProxyType(self._unanswered_peer_requests)

    # -- input -------------------------------------------------------------------

    def receive_capsule_data(
        self, data: bytes | bytearray | memoryview, end_stream: bool = False
    ) -> list[Event]:
        """Consume DATA bytes of the request stream; return what the peer did.

        ``end_stream`` marks a clean end of the peer's side (QUIC FIN); a
        capsule cut short there aborts the session (RFC 9297 §3.3). On any
        violation the last event is :class:`~masque.events.SessionAborted`
        and the session ignores all later input.
        """
        if self._state is not _State.OPEN:
            return []
        events: list[Event] = []
        try:
            capsules = self._parser.feed(data)
        except CapsuleError as error:
            return [self._abort(error)]
        for capsule in capsules:
            try:
                event = self._handle(capsule)
            except MasqueError as error:
                events.append(self._abort(error))
                return events
            if event is not None:
                events.append(event)
        # Capsules before a malformed one were handled above; now the error.
        pending = self._parser.error
        if pending is not None:
            events.append(self._abort(pending))
            return events
        if end_stream:
            try:
                self._parser.end_of_stream()
            except CapsuleError as error:
                events.append(self._abort(error))
                return events
            self._state = _State.ENDED
        self.policy_revision += 1
        return events

    def receive_datagram(self, payload: bytes | bytearray | memoryview) -> memoryview | None:
        """Unwrap an HTTP Datagram payload that arrived in a QUIC DATAGRAM frame.

        Returns the IP packet (Context ID 0) as a view, or None when the
        datagram must be dropped silently: unknown Context ID (RFC 9484 §6),
        truncated Context ID, or the session is aborted. Dropping is counted.
        """
        if self._state is _State.ABORTED:
            return None
        try:
            context_id, packet = decode_datagram(payload)
        except DatagramError:
            self.malformed_datagrams += 1
            return None
        if context_id != CONTEXT_ID_IP_PACKET:
            self.unknown_context_datagrams += 1
            return None
        return packet

    def abort(self, reason: str, rule: str = SessionRule.LOCAL_ABORT) -> SessionAborted:
        """Abort the session from our side; returns the event for symmetry with peer aborts."""
        return self._abort(CapsuleError(reason, rule=rule))

    def _abort(self, error: MasqueError) -> SessionAborted:
        event = SessionAborted(reason=str(error), rule=error.rule)
        self._state = _State.ABORTED
        self._abort_event = event
        self.policy_revision += 1
        return event

    def _handle(self, capsule: ParsedCapsule) -> Event | None:
        if isinstance(capsule, DatagramCapsule):
            return self._on_datagram_capsule(capsule)
        if isinstance(capsule, AddressAssign):
            return self._on_address_assign(capsule)
        if isinstance(capsule, AddressRequest):
            return self._on_address_request(capsule)
        if isinstance(capsule, RouteAdvertisement):
            return self._on_route_advertisement(capsule)
        if capsule.capsule_type == CapsuleType.DATAGRAM:
            self.oversized_datagrams += 1
        else:
            self.skipped_capsules += 1
        return None

    def _on_datagram_capsule(self, capsule: DatagramCapsule) -> DatagramReceived | None:
        # The capsule's value must hold the Context ID field: a DATAGRAM capsule
        # too short for it "terminates before the end of the identified fields"
        # (RFC 9297 §3.3), so DatagramError aborts like any capsule error.
        context_id, packet = decode_datagram(capsule.payload)
        if context_id != CONTEXT_ID_IP_PACKET:
            self.unknown_context_datagrams += 1
            return None
        return DatagramReceived(bytes(packet))

    def _on_address_assign(self, capsule: AddressAssign) -> AddressesAssigned:
        for entry in capsule.addresses:
            if entry.request_id and entry.request_id not in self._sent_request_ids:
                raise CapsuleError(
                    f"ADDRESS_ASSIGN carries Request ID {entry.request_id}, which this "
                    "endpoint never sent (RFC 9484 §4.7.1: the ID SHALL be that of a "
                    "request, or zero)",
                    rule=SessionRule.ASSIGN_UNKNOWN_REQUEST_ID,
                )
        # IDs of requests answered earlier may repeat: each capsule is the full set.
        answered: list[AssignedAddress] = []
        refused: list[int] = []
        usable: list[AssignedAddress] = []
        for entry in capsule.addresses:
            request_id = entry.request_id
            if entry.is_rejection:
                if self._pending_requests.pop(request_id, None) is not None:
                    refused.append(request_id)
                continue
            usable.append(entry)
            if self._pending_requests.pop(request_id, None) is not None:
                answered.append(entry)
        self._local_addresses = tuple(usable)
        self._local_address_set = _AddressSet(a.ip_prefix for a in usable)
        self.policy_revision += 1
        return AddressesAssigned(self._local_addresses, tuple(answered), tuple(refused))

    def _on_address_request(self, capsule: AddressRequest) -> AddressRequested:
        for entry in capsule.requests:
            if entry.request_id in self._peer_request_ids:
                raise CapsuleError(
                    f"ADDRESS_REQUEST reuses Request ID {entry.request_id} "
                    "(RFC 9484 §4.7.2: Request IDs MUST NOT be reused)",
                    rule=SessionRule.REQUEST_ID_REUSED,
                )
        if len(self._peer_request_ids) + len(capsule.requests) > self._max_address_requests:
            raise CapsuleError(
                f"peer used more than {self._max_address_requests} address Request IDs",
                rule=SessionRule.TOO_MANY_ADDRESS_REQUESTS,
            )
        for entry in capsule.requests:
            self._peer_request_ids.add(entry.request_id)
            self._unanswered_peer_requests[entry.request_id] = entry
        return AddressRequested(capsule.requests)

    def _on_route_advertisement(self, capsule: RouteAdvertisement) -> RoutesAdvertised:
        self._peer_routes = capsule.ranges
        self._peer_route_table = _RouteTable(capsule.ranges)
        self.policy_revision += 1
        return RoutesAdvertised(capsule.ranges)

    # -- output -------------------------------------------------------------------

    def _check_can_send(self) -> None:
        if self._state is _State.ABORTED:
            raise RuntimeError("the CONNECT-IP session was aborted; nothing more may be sent")

    def assign_addresses(self, addresses: Iterable[AssignedAddress]) -> bytes:
        """Return an ADDRESS_ASSIGN capsule carrying the peer's complete address set.

        It replaces everything assigned before (§4.7.1); pass nothing to
        withdraw all. Answer each of the peer's requests with an entry of the
        same Request ID (an address, or :meth:`AssignedAddress.rejection`); use
        Request ID 0 for unsolicited entries. Raises ``ValueError`` for a
        non-zero Request ID the peer never sent, or any encoding rule.
        """
        self._check_can_send()
        entries = tuple(addresses)
        for entry in entries:
            if entry.request_id and entry.request_id not in self._peer_request_ids:
                raise ValueError(
                    f"Request ID {entry.request_id} was never requested by the peer; "
                    "unsolicited assignments use Request ID 0 (RFC 9484 §4.7.1)"
                )
        wire = encode_capsule(AddressAssign(entries))
        usable = tuple(e for e in entries if not e.is_rejection)
        self._peer_addresses = usable
        self._peer_address_set = _AddressSet(e.ip_prefix for e in usable)
        self.policy_revision += 1
        for entry in entries:
            self._unanswered_peer_requests.pop(entry.request_id, None)
        return wire

    def request_addresses(self, prefixes: Iterable[IPNetwork]) -> bytes:
        """Return an ADDRESS_REQUEST capsule asking for each of ``prefixes``.

        Request IDs are allocated here (1, 2, 3... never reused) and appear in
        :attr:`pending_requests` until an ADDRESS_ASSIGN answers them. Use an
        all-zero prefix such as ``0.0.0.0/32`` or ``::/64`` for "any address".
        Raises ``ValueError`` when ``prefixes`` is empty (§4.7.2).
        """
        self._check_can_send()
        requests = []
        next_id = self._next_request_id
        for prefix in prefixes:
            requests.append(RequestedAddress(next_id, prefix))
            next_id += 1
        wire = encode_capsule(AddressRequest(tuple(requests)))
        self._next_request_id = next_id
        for request in requests:
            self._sent_request_ids.add(request.request_id)
            self._pending_requests[request.request_id] = request
        return wire

    def advertise_routes(self, ranges: Iterable[IpAddressRange]) -> bytes:
        """Return a ROUTE_ADVERTISEMENT capsule with the complete set of ranges we route.

        It supersedes every earlier advertisement (§4.7.3); pass nothing to
        withdraw all. Ranges must already be in RFC order (see
        :func:`masque.capsule.sort_ranges`); ``ValueError`` otherwise.
        """
        self._check_can_send()
        entries = tuple(ranges)
        wire = encode_capsule(RouteAdvertisement(entries))
        self._local_routes = entries
        self._local_route_table = _RouteTable(entries)
        self.policy_revision += 1
        return wire

    def send_datagram_capsule(self, packet: bytes | bytearray | memoryview) -> bytes:
        """Return a DATAGRAM capsule (Context ID 0) carrying ``packet`` on the stream.

        This is the stream carrier; it does not check the packet (use
        :meth:`check_outgoing` first). RFC 9484 §10.1: do not use it for a
        packet that was too big for a QUIC DATAGRAM frame.
        """
        self._check_can_send()
        return encode_capsule(DatagramCapsule(encode_datagram(CONTEXT_ID_IP_PACKET, packet)))

    # -- packet policy -----------------------------------------------------------

    def check_outgoing(self, packet: bytes | bytearray | memoryview) -> Verdict:
        """May this endpoint send ``packet`` to the peer on this session?

        The source must be one of our assigned addresses (or inside a range we
        advertised, when forwarding), the destination inside the peer's routes
        for the packet's protocol (or an address we assigned to the peer).
        """
        return self._check(
            packet,
            src_addresses=self._local_address_set,
            src_routes=self._local_route_table,
            dst_routes=self._peer_route_table,
            dst_addresses=self._peer_address_set,
            towards_client=self._role is Role.RELAY,
        )

    def check_incoming(self, packet: bytes | bytearray | memoryview) -> Verdict:
        """May ``packet``, received from the peer, be forwarded?

        The source must be an address we assigned to the peer or inside a
        range the peer advertised (BCP 38, RFC 9484 §11); the destination
        inside our advertised routes for its protocol, or one of our own
        assigned addresses; and within the request scope.
        """
        return self._check(
            packet,
            src_addresses=self._peer_address_set,
            src_routes=self._peer_route_table,
            dst_routes=self._local_route_table,
            dst_addresses=self._local_address_set,
            towards_client=self._role is Role.CLIENT,
        )

    def _check(
        self,
        packet: bytes | bytearray | memoryview,
        *,
        src_addresses: _AddressSet,
        src_routes: _RouteTable,
        dst_routes: _RouteTable,
        dst_addresses: _AddressSet,
        towards_client: bool,
    ) -> Verdict:
        if self._state is _State.ABORTED:
            return Verdict.DROP_SESSION_CLOSED
        try:
            header: IPHeader = parse_ip_packet(packet)
        except PacketError:
            return Verdict.DROP_MALFORMED
        src, dst = header.src, header.dst
        if is_link_scoped(src) or is_link_scoped(dst):
            return Verdict.DROP_LINK_LOCAL
        protocol = header.protocol
        icmp = protocol == _ICMP_BY_VERSION[header.version]

        # Source (BCP 38). ICMP sent by the relay may come from any router (§7.2.1).
        if not (icmp and towards_client) and not src_addresses.contains(src):
            match = src_routes.match(src, protocol, icmp)
            if match is _Match.WRONG_PROTOCOL:
                return Verdict.DROP_PROTO_NOT_IN_SCOPE
            if match is _Match.NO:
                return Verdict.DROP_SRC_NOT_ASSIGNED

        # Destination: routed by the receiver, or the receiver itself.
        if not dst_addresses.contains(dst):
            match = dst_routes.match(dst, protocol, icmp)
            if match is _Match.WRONG_PROTOCOL:
                return Verdict.DROP_PROTO_NOT_IN_SCOPE
            if match is _Match.NO:
                return Verdict.DROP_DST_NOT_IN_SCOPE

        # Request scope (§4.6): ipproto, then target on the far side.
        if self._scope.ipproto is not None and not icmp and protocol != self._scope.ipproto:
            return Verdict.DROP_PROTO_NOT_IN_SCOPE
        targets = self._scope_targets
        if targets is not None:
            if towards_client:
                if not icmp and not targets.contains(src):
                    return Verdict.DROP_SRC_NOT_IN_SCOPE
            elif not targets.contains(dst):
                return Verdict.DROP_DST_NOT_IN_SCOPE
        return Verdict.ACCEPT
