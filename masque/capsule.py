"""Capsule Protocol framing (RFC 9297 §3) and the CONNECT-IP capsules (RFC 9484 §4.7).

A CONNECT-IP request stream carries a sequence of capsules::

    Capsule {
      Capsule Type (i),
      Capsule Length (i),
      Capsule Value (..),
    }

This module has three parts:

- typed capsules (frozen dataclasses) with a parser and an encoder for each:
  :class:`DatagramCapsule`, :class:`AddressAssign`, :class:`AddressRequest`,
  :class:`RouteAdvertisement`; :func:`parse_capsule_value` and
  :func:`encode_capsule` dispatch on the type;
- :class:`CapsuleParser`, an incremental parser that accepts stream bytes split
  anywhere and never buffers more than one bounded capsule;
- :class:`Rule`, the stable identifiers carried by every :class:`CapsuleError`,
  one per requirement of the RFCs, so metrics and tests can tell them apart.

Parsing enforces every RFC 9484 §4.7 requirement that a receiver can check on
one capsule alone; rules that need history (request IDs reused across capsules,
ADDRESS_ASSIGN answering a request never sent) live in :mod:`masque.session`.
Encoders run the same checks and raise ``ValueError`` (``TypeError`` for a wrong
type), because there the mistake is ours, not the peer's.
"""

from __future__ import annotations

import bisect
import enum
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from ipaddress import IPv4Address, IPv4Network, IPv6Address, IPv6Network
from typing import TypeAlias

from masque.errors import CapsuleError
from masque.varint import VARINT_MAX, encode_varint, try_decode_varint

__all__ = [
    "DEFAULT_MAX_CAPSULE_SIZE",
    "AddressAssign",
    "AddressRequest",
    "AssignedAddress",
    "Capsule",
    "CapsuleParser",
    "CapsuleType",
    "DatagramCapsule",
    "IPAddress",
    "IPNetwork",
    "IpAddressRange",
    "ParsedCapsule",
    "RequestedAddress",
    "RouteAdvertisement",
    "Rule",
    "SkippedCapsule",
    "encode_capsule",
    "encode_capsule_header",
    "encode_raw_capsule",
    "parse_capsule_value",
    "sort_ranges",
    "validate_address_request",
    "validate_route_ranges",
]

IPAddress: TypeAlias = IPv4Address | IPv6Address
IPNetwork: TypeAlias = IPv4Network | IPv6Network


class CapsuleType(enum.IntEnum):
    """Capsule types this endpoint understands (IANA "HTTP Capsule Types")."""

    DATAGRAM = 0x00  # RFC 9297 §3.5
    ADDRESS_ASSIGN = 0x01  # RFC 9484 §4.7.1
    ADDRESS_REQUEST = 0x02  # RFC 9484 §4.7.2
    ROUTE_ADVERTISEMENT = 0x03  # RFC 9484 §4.7.3


class Rule(enum.StrEnum):
    """The ``rule`` of each :class:`CapsuleError`: one value per RFC requirement."""

    # RFC 9297 §3.3: the stream ended cleanly in the middle of a capsule.
    CAPSULE_TRUNCATED = "capsule-truncated"
    # Local limit (RFC 9297 §3.2 warns against buffering whole capsules): a
    # capsule we must parse announced a value larger than we agree to hold.
    CAPSULE_TOO_LARGE = "capsule-too-large"
    # RFC 9297 §3.3: the value "terminates before the end of the identified
    # fields" (for list capsules this is also how trailing bytes show up: a
    # partial entry).
    FIELD_TRUNCATED = "field-truncated"
    # RFC 9484 §4.7.1-3, IP Version: "It MUST be either 4 or 6."
    IP_VERSION = "ip-version"
    # RFC 9484 §4.7.1-2, IP Prefix Length: "MUST be less than or equal to the
    # length of the IP Address field in bits."
    PREFIX_LENGTH = "prefix-length"
    # RFC 9484 §4.7.1-2: "the lower bits of the IP Address field that are not
    # covered by the prefix length MUST all be set to 0."
    PREFIX_HOST_BITS = "prefix-host-bits"
    # RFC 9484 §4.7.2, Request ID: "MUST NOT be zero."
    REQUEST_ID_ZERO = "request-id-zero"
    # RFC 9484 §4.7.2, Request ID: "Each request from a given endpoint carries a
    # different identifier" -- checked here within one capsule.
    REQUEST_ID_DUPLICATE = "request-id-duplicate"
    # RFC 9484 §4.7.2: "If an endpoint receives an ADDRESS_REQUEST capsule that
    # contains zero Requested Addresses, it MUST abort".
    ADDRESS_REQUEST_EMPTY = "address-request-empty"
    # RFC 9484 §4.7.3: "The Start IP Address MUST be less than or equal to the
    # End IP Address."
    RANGE_START_AFTER_END = "range-start-after-end"
    # Start and End of one range are of different IP versions. The wire format
    # has one IP Version field for both, so only the encoder can hit this.
    RANGE_VERSION_MISMATCH = "range-version-mismatch"
    # RFC 9484 §4.7.3: "The IP Version of A MUST be less than or equal to the
    # IP Version of B."
    RANGE_VERSION_ORDER = "range-version-order"
    # RFC 9484 §4.7.3: "If the IP Version of A and B are equal, the IP Protocol
    # of A MUST be less than or equal to the IP Protocol of B."
    RANGE_PROTOCOL_ORDER = "range-protocol-order"
    # RFC 9484 §4.7.3: "If the IP Version and IP Protocol of A and B are both
    # equal, the End IP Address of A MUST be strictly less than the Start IP
    # Address of B" -- broken because B starts before A (unsorted) ...
    RANGE_START_ORDER = "range-start-order"
    # ... or because B starts inside A (overlap).
    RANGE_OVERLAP = "range-overlap"
    # RFC 9484 §4.7.3: a protocol-0 ("all protocols") range overlapping a range
    # of the same IP version with a non-zero protocol. Validation is OPTIONAL,
    # "but if an endpoint detects the violation, it MUST abort"; we detect it.
    RANGE_OVERLAP_ANY_PROTOCOL = "range-overlap-any-protocol"


#: Default bound on the Capsule Length of a capsule we parse. It fits the
#: largest IPv6 packet without a jumbogram (40 + 65535 bytes) plus an 8-byte
#: Context ID, and thousands of ADDRESS_ASSIGN / ROUTE_ADVERTISEMENT entries.
DEFAULT_MAX_CAPSULE_SIZE = 66 * 1024

# Sizes of the IP Address field per IP Version (RFC 9484 §4.7.1-3).
_ADDRESS_BYTES = {4: 4, 6: 16}
_ADDRESS_BITS = {4: 32, 6: 128}
# Longest capsule header: two 8-byte varints.
_MAX_HEADER = 16


# ---------------------------------------------------------------------------
# Typed capsules


@dataclass(frozen=True, slots=True)
class AssignedAddress:
    """One Assigned Address of an ADDRESS_ASSIGN capsule (RFC 9484 §4.7.1)."""

    #: The Request ID of the ADDRESS_REQUEST entry this answers, or 0 when the
    #: assignment is unsolicited.
    request_id: int
    #: The assigned prefix; a /32 or /128 is a single address. ``0.0.0.0/32``
    #: and ``::/128`` with a non-zero ``request_id`` mean "request refused".
    ip_prefix: IPNetwork

    @property
    def ip_version(self) -> int:
        """4 or 6."""
        return self.ip_prefix.version

    @property
    def is_rejection(self) -> bool:
        """True for the all-zero, full-length prefix that refuses a request (§4.7.2)."""
        prefix = self.ip_prefix
        return int(prefix.network_address) == 0 and prefix.prefixlen == prefix.max_prefixlen

    @classmethod
    def rejection(cls, request_id: int, ip_version: int) -> AssignedAddress:
        """Build the entry that refuses request ``request_id`` (RFC 9484 §4.7.2)."""
        prefix: IPNetwork
        if ip_version == 4:
            prefix = IPv4Network("0.0.0.0/32")
        elif ip_version == 6:
            prefix = IPv6Network("::/128")
        else:
            raise ValueError(f"IP version must be 4 or 6, not {ip_version}")
        return cls(request_id, prefix)


@dataclass(frozen=True, slots=True)
class RequestedAddress:
    """One Requested Address of an ADDRESS_REQUEST capsule (RFC 9484 §4.7.2)."""

    #: Non-zero identifier, never reused by the sending endpoint.
    request_id: int
    #: The preferred prefix. An all-zero address (``0.0.0.0/32``, ``::/64``...)
    #: asks for any address of that family with that prefix length.
    ip_prefix: IPNetwork

    @property
    def ip_version(self) -> int:
        """4 or 6."""
        return self.ip_prefix.version


@dataclass(frozen=True, slots=True)
class IpAddressRange:
    """One IP Address Range of a ROUTE_ADVERTISEMENT capsule (RFC 9484 §4.7.3)."""

    #: First address of the range (inclusive).
    start: IPAddress
    #: Last address of the range (inclusive); same IP version as ``start``.
    end: IPAddress
    #: IP protocol number the range is open to; 0 means every protocol. ICMP
    #: is allowed whatever this says (RFC 9484 §4.7.3).
    ip_protocol: int = 0

    @property
    def ip_version(self) -> int:
        """4 or 6."""
        return self.start.version

    def contains(self, address: IPAddress) -> bool:
        """True if ``address`` (of the same version) lies in ``[start, end]``."""
        if address.version != self.start.version:
            return False
        return int(self.start) <= int(address) <= int(self.end)

    @classmethod
    def from_network(cls, network: IPNetwork, ip_protocol: int = 0) -> IpAddressRange:
        """The range covering exactly ``network``."""
        return cls(network.network_address, network.broadcast_address, ip_protocol)


@dataclass(frozen=True, slots=True)
class DatagramCapsule:
    """DATAGRAM capsule (RFC 9297 §3.5): an HTTP Datagram carried on the stream."""

    #: The HTTP Datagram Payload; for CONNECT-IP a Context ID varint followed by
    #: the payload (see :mod:`masque.datagram`). May be empty.
    payload: bytes


@dataclass(frozen=True, slots=True)
class AddressAssign:
    """ADDRESS_ASSIGN capsule (RFC 9484 §4.7.1).

    Carries the *complete* set of prefixes the receiver may use as source
    addresses; it replaces every earlier ADDRESS_ASSIGN, and an empty one
    withdraws them all.
    """

    #: Zero or more assigned addresses (and refusals of requests).
    addresses: tuple[AssignedAddress, ...] = ()


@dataclass(frozen=True, slots=True)
class AddressRequest:
    """ADDRESS_REQUEST capsule (RFC 9484 §4.7.2): one or more address requests."""

    #: One or more requests with distinct, non-zero Request IDs.
    requests: tuple[RequestedAddress, ...]


@dataclass(frozen=True, slots=True)
class RouteAdvertisement:
    """ROUTE_ADVERTISEMENT capsule (RFC 9484 §4.7.3).

    Carries the *complete* set of ranges the sender will route; it supersedes
    every earlier advertisement, and an empty one withdraws them all. Ranges
    are sorted by (IP version, IP protocol, start) and do not overlap.
    """

    #: Zero or more ranges, in the order the RFC requires.
    ranges: tuple[IpAddressRange, ...] = ()


@dataclass(frozen=True, slots=True)
class SkippedCapsule:
    """A capsule the parser stepped over without buffering its value.

    Either its type is unknown -- RFC 9297 §3.2: endpoints "MUST silently drop
    that Capsule and skip over it" -- or it is a DATAGRAM capsule longer than
    the parser's limit, which RFC 9297 §3.5 says to "discard ... without
    buffering its contents". Reported so that callers can count them.
    """

    #: The Capsule Type as received.
    capsule_type: int
    #: The Capsule Length as received (bytes skipped).
    length: int


#: Capsules that can be encoded and that the parser returns when it understood them.
Capsule: TypeAlias = DatagramCapsule | AddressAssign | AddressRequest | RouteAdvertisement
#: Everything :meth:`CapsuleParser.feed` can return.
ParsedCapsule: TypeAlias = Capsule | SkippedCapsule


# ---------------------------------------------------------------------------
# Shared validation (used by parsers on peer input and by encoders on ours)


def _prefix_error(kind: str, index: int, message: str, rule: Rule) -> CapsuleError:
    return CapsuleError(f"{kind} entry {index}: {message}", rule=rule)


def _check_prefix(kind: str, index: int, version: int, address: int, prefix_len: int) -> None:
    bits = _ADDRESS_BITS[version]
    if prefix_len > bits:
        raise _prefix_error(
            kind,
            index,
            f"IP Prefix Length {prefix_len} exceeds {bits} bits of an IPv{version} address "
            "(RFC 9484 §4.7: MUST be <= the length of the IP Address field)",
            Rule.PREFIX_LENGTH,
        )
    host_mask = (1 << (bits - prefix_len)) - 1
    if address & host_mask:
        raise _prefix_error(
            kind,
            index,
            f"IP Address has bits set beyond its /{prefix_len} prefix "
            "(RFC 9484 §4.7: lower bits not covered by the prefix MUST be 0)",
            Rule.PREFIX_HOST_BITS,
        )


def validate_address_request(requests: Sequence[RequestedAddress]) -> None:
    """Check the RFC 9484 §4.7.2 rules that span a whole ADDRESS_REQUEST.

    Raises :class:`CapsuleError` with :attr:`Rule.ADDRESS_REQUEST_EMPTY`,
    :attr:`Rule.REQUEST_ID_ZERO` or :attr:`Rule.REQUEST_ID_DUPLICATE`.
    """
    if not requests:
        raise CapsuleError(
            "ADDRESS_REQUEST contains zero Requested Addresses "
            "(RFC 9484 §4.7.2: the receiver MUST abort the stream)",
            rule=Rule.ADDRESS_REQUEST_EMPTY,
        )
    seen: set[int] = set()
    for index, request in enumerate(requests):
        if request.request_id == 0:
            raise _prefix_error(
                "ADDRESS_REQUEST",
                index,
                "Request ID is zero (RFC 9484 §4.7.2: Request IDs MUST NOT be zero)",
                Rule.REQUEST_ID_ZERO,
            )
        if request.request_id in seen:
            raise _prefix_error(
                "ADDRESS_REQUEST",
                index,
                f"Request ID {request.request_id} appears twice "
                "(RFC 9484 §4.7.2: each request carries a different identifier)",
                Rule.REQUEST_ID_DUPLICATE,
            )
        seen.add(request.request_id)


def validate_route_ranges(ranges: Sequence[IpAddressRange]) -> None:
    """Check every RFC 9484 §4.7.3 rule on the ranges of one ROUTE_ADVERTISEMENT.

    Raises :class:`CapsuleError` with one of the ``Rule.RANGE_*`` values. Only
    neighbours need comparing: the order rules are transitive.
    """
    # Protocol-0 ranges per IP version, for the cross-protocol overlap check.
    any_starts: dict[int, list[int]] = {4: [], 6: []}
    any_ends: dict[int, list[int]] = {4: [], 6: []}
    previous: IpAddressRange | None = None
    for index, current in enumerate(ranges):
        if current.start.version != current.end.version:
            raise _prefix_error(
                "ROUTE_ADVERTISEMENT",
                index,
                f"Start {current.start} and End {current.end} are of different IP versions",
                Rule.RANGE_VERSION_MISMATCH,
            )
        start, end = int(current.start), int(current.end)
        if start > end:
            raise _prefix_error(
                "ROUTE_ADVERTISEMENT",
                index,
                f"Start IP Address {current.start} is after End IP Address {current.end} "
                "(RFC 9484 §4.7.3: Start MUST be <= End)",
                Rule.RANGE_START_AFTER_END,
            )
        if previous is not None:
            _check_range_pair(index, previous, current)
        if current.ip_protocol == 0:
            any_starts[current.ip_version].append(start)
            any_ends[current.ip_version].append(end)
        previous = current
    # Protocol 0 sorts first within a version, so the "all protocols" ranges
    # are complete and sorted now; check every other range against them.
    for index, current in enumerate(ranges):
        if current.ip_protocol == 0:
            continue
        starts = any_starts[current.ip_version]
        candidate = bisect.bisect_right(starts, int(current.end)) - 1
        if candidate >= 0 and any_ends[current.ip_version][candidate] >= int(current.start):
            raise _prefix_error(
                "ROUTE_ADVERTISEMENT",
                index,
                f"range {current.start}-{current.end} for IP protocol {current.ip_protocol} "
                "overlaps a range for all protocols (RFC 9484 §4.7.3: endpoints MUST NOT "
                "send such overlaps and MUST abort when they detect one)",
                Rule.RANGE_OVERLAP_ANY_PROTOCOL,
            )


def _check_range_pair(index: int, a: IpAddressRange, b: IpAddressRange) -> None:
    where = f"ranges {index - 1} and {index}"
    if a.ip_version > b.ip_version:
        raise CapsuleError(
            f"ROUTE_ADVERTISEMENT {where}: IPv{a.ip_version} precedes IPv{b.ip_version} "
            "(RFC 9484 §4.7.3: IP Version of A MUST be <= IP Version of B)",
            rule=Rule.RANGE_VERSION_ORDER,
        )
    if a.ip_version != b.ip_version:
        return
    if a.ip_protocol > b.ip_protocol:
        raise CapsuleError(
            f"ROUTE_ADVERTISEMENT {where}: IP protocol {a.ip_protocol} precedes "
            f"{b.ip_protocol} (RFC 9484 §4.7.3: IP Protocol of A MUST be <= that of B)",
            rule=Rule.RANGE_PROTOCOL_ORDER,
        )
    if a.ip_protocol != b.ip_protocol:
        return
    if int(b.start) < int(a.start):
        raise CapsuleError(
            f"ROUTE_ADVERTISEMENT {where}: range starting {b.start} follows one starting "
            f"{a.start} (RFC 9484 §4.7.3: ranges MUST be sorted by start address)",
            rule=Rule.RANGE_START_ORDER,
        )
    if int(a.end) >= int(b.start):
        raise CapsuleError(
            f"ROUTE_ADVERTISEMENT {where}: {a.start}-{a.end} overlaps {b.start}-{b.end} for "
            f"IP protocol {a.ip_protocol} (RFC 9484 §4.7.3: End of A MUST be < Start of B)",
            rule=Rule.RANGE_OVERLAP,
        )


def sort_ranges(ranges: Iterable[IpAddressRange]) -> tuple[IpAddressRange, ...]:
    """Return ``ranges`` in the order RFC 9484 §4.7.3 requires (it does not merge)."""
    return tuple(sorted(ranges, key=lambda r: (r.ip_version, r.ip_protocol, int(r.start))))


# ---------------------------------------------------------------------------
# Parsing one capsule value


class _Reader:
    """Bounds-checked cursor over one capsule value; every short read is a CapsuleError."""

    __slots__ = ("buf", "kind", "pos")

    def __init__(self, buf: memoryview, kind: str) -> None:
        self.buf = buf
        self.kind = kind
        self.pos = 0

    def remaining(self) -> int:
        return len(self.buf) - self.pos

    def _truncated(self, index: int, field: str) -> CapsuleError:
        return CapsuleError(
            f"{self.kind} entry {index}: value ends inside the {field} field "
            "(RFC 9297 §3.3: a capsule that terminates before its fields is malformed)",
            rule=Rule.FIELD_TRUNCATED,
        )

    def varint(self, index: int, field: str) -> int:
        decoded = try_decode_varint(self.buf, self.pos)
        if decoded is None:
            raise self._truncated(index, field)
        value, self.pos = decoded
        return value

    def u8(self, index: int, field: str) -> int:
        if self.pos >= len(self.buf):
            raise self._truncated(index, field)
        value = self.buf[self.pos]
        self.pos += 1
        return value

    def ip_version(self, index: int) -> int:
        version = self.u8(index, "IP Version")
        if version not in _ADDRESS_BYTES:
            raise CapsuleError(
                f"{self.kind} entry {index}: IP Version {version} is neither 4 nor 6 "
                "(RFC 9484 §4.7: it MUST be either 4 or 6)",
                rule=Rule.IP_VERSION,
            )
        return version

    def address(self, index: int, version: int, field: str) -> int:
        size = _ADDRESS_BYTES[version]
        end = self.pos + size
        if end > len(self.buf):
            raise self._truncated(index, field)
        value = int.from_bytes(self.buf[self.pos : end], "big")
        self.pos = end
        return value


def _make_address(version: int, value: int) -> IPAddress:
    return IPv4Address(value) if version == 4 else IPv6Address(value)


def _make_network(version: int, address: int, prefix_len: int) -> IPNetwork:
    if version == 4:
        return IPv4Network((address, prefix_len))
    return IPv6Network((address, prefix_len))


def _parse_prefix_entry(reader: _Reader, index: int) -> tuple[int, IPNetwork]:
    """Parse ``Request ID, IP Version, IP Address, IP Prefix Length`` (§4.7.1-2)."""
    request_id = reader.varint(index, "Request ID")
    version = reader.ip_version(index)
    address = reader.address(index, version, "IP Address")
    prefix_len = reader.u8(index, "IP Prefix Length")
    _check_prefix(reader.kind, index, version, address, prefix_len)
    return request_id, _make_network(version, address, prefix_len)


def _parse_address_assign(value: memoryview) -> AddressAssign:
    reader = _Reader(value, "ADDRESS_ASSIGN")
    entries: list[AssignedAddress] = []
    while reader.remaining():
        request_id, prefix = _parse_prefix_entry(reader, len(entries))
        entries.append(AssignedAddress(request_id, prefix))
    return AddressAssign(tuple(entries))


def _parse_address_request(value: memoryview) -> AddressRequest:
    reader = _Reader(value, "ADDRESS_REQUEST")
    entries: list[RequestedAddress] = []
    while reader.remaining():
        request_id, prefix = _parse_prefix_entry(reader, len(entries))
        entries.append(RequestedAddress(request_id, prefix))
    validate_address_request(entries)
    return AddressRequest(tuple(entries))


def _parse_route_advertisement(value: memoryview) -> RouteAdvertisement:
    reader = _Reader(value, "ROUTE_ADVERTISEMENT")
    entries: list[IpAddressRange] = []
    while reader.remaining():
        index = len(entries)
        version = reader.ip_version(index)
        start = reader.address(index, version, "Start IP Address")
        end = reader.address(index, version, "End IP Address")
        protocol = reader.u8(index, "IP Protocol")
        entries.append(
            IpAddressRange(_make_address(version, start), _make_address(version, end), protocol)
        )
    validate_route_ranges(entries)
    return RouteAdvertisement(tuple(entries))


def parse_capsule_value(
    capsule_type: int, value: bytes | bytearray | memoryview
) -> Capsule | SkippedCapsule:
    """Parse the Capsule Value of a capsule of type ``capsule_type``.

    ``value`` must be exactly the Capsule Value (the framing gives its length);
    every byte must belong to a field. Unknown types come back as
    :class:`SkippedCapsule`. Raises :class:`CapsuleError` naming the broken
    :class:`Rule`.
    """
    view = memoryview(value)
    if capsule_type == CapsuleType.DATAGRAM:
        return DatagramCapsule(bytes(view))
    if capsule_type == CapsuleType.ADDRESS_ASSIGN:
        return _parse_address_assign(view)
    if capsule_type == CapsuleType.ADDRESS_REQUEST:
        return _parse_address_request(view)
    if capsule_type == CapsuleType.ROUTE_ADVERTISEMENT:
        return _parse_route_advertisement(view)
    return SkippedCapsule(capsule_type, len(view))


# ---------------------------------------------------------------------------
# Encoding


def encode_capsule_header(capsule_type: int, length: int) -> bytes:
    """Return ``Capsule Type (i) ‖ Capsule Length (i)``.

    Lets callers write a capsule's value in place behind its header.
    """
    return encode_varint(capsule_type) + encode_varint(length)


def encode_raw_capsule(capsule_type: int, value: bytes | bytearray | memoryview) -> bytes:
    """Frame an arbitrary value, e.g. a reserved 0x29*N+0x17 type to exercise peers."""
    return encode_capsule_header(capsule_type, len(value)) + bytes(value)


def _as_value_error(error: CapsuleError) -> ValueError:
    return ValueError(f"{error} [rule {error.rule}]")


def _check_request_id(request_id: int) -> None:
    if not isinstance(request_id, int) or not 0 <= request_id <= VARINT_MAX:
        raise ValueError(f"Request ID must be an int in 0..2**62-1, not {request_id!r}")


def _check_network(prefix: object) -> None:
    if not isinstance(prefix, IPv4Network | IPv6Network):
        raise TypeError(f"expected IPv4Network or IPv6Network, not {type(prefix).__name__}")


def _encode_prefix_entry(request_id: int, prefix: IPNetwork) -> bytes:
    _check_request_id(request_id)
    _check_network(prefix)
    return (
        encode_varint(request_id)
        + bytes((prefix.version,))
        + prefix.network_address.packed
        + bytes((prefix.prefixlen,))
    )


def _encode_range(entry: IpAddressRange) -> bytes:
    for address in (entry.start, entry.end):
        if not isinstance(address, IPv4Address | IPv6Address):
            raise TypeError(f"expected IPv4Address or IPv6Address, not {type(address).__name__}")
    if not isinstance(entry.ip_protocol, int) or not 0 <= entry.ip_protocol <= 255:
        raise ValueError(f"IP protocol must be 0..255, not {entry.ip_protocol!r}")
    return (
        bytes((entry.ip_version,))
        + entry.start.packed
        + entry.end.packed
        + bytes((entry.ip_protocol,))
    )


def _encode_value(capsule: Capsule) -> tuple[CapsuleType, bytes]:
    if isinstance(capsule, DatagramCapsule):
        return CapsuleType.DATAGRAM, bytes(capsule.payload)
    if isinstance(capsule, AddressAssign):
        value = b"".join(_encode_prefix_entry(a.request_id, a.ip_prefix) for a in capsule.addresses)
        return CapsuleType.ADDRESS_ASSIGN, value
    if isinstance(capsule, AddressRequest):
        try:
            validate_address_request(capsule.requests)
        except CapsuleError as error:
            raise _as_value_error(error) from error
        value = b"".join(_encode_prefix_entry(r.request_id, r.ip_prefix) for r in capsule.requests)
        return CapsuleType.ADDRESS_REQUEST, value
    if isinstance(capsule, RouteAdvertisement):
        value = b"".join(_encode_range(r) for r in capsule.ranges)
        try:
            validate_route_ranges(capsule.ranges)
        except CapsuleError as error:
            raise _as_value_error(error) from error
        return CapsuleType.ROUTE_ADVERTISEMENT, value
    raise TypeError(f"cannot encode {type(capsule).__name__}; use encode_raw_capsule()")


def encode_capsule(capsule: Capsule) -> bytes:
    """Return the wire form (type, length, value) of ``capsule``.

    Applies the same RFC 9484 §4.7 rules as the parser and raises
    ``ValueError`` (``TypeError`` for wrong field types) instead of emitting a
    capsule the peer would have to abort on.
    """
    capsule_type, value = _encode_value(capsule)
    return encode_capsule_header(capsule_type, len(value)) + value


# ---------------------------------------------------------------------------
# Incremental stream parser


class _State(enum.Enum):
    HEADER = enum.auto()  # collecting Capsule Type and Capsule Length
    VALUE = enum.auto()  # collecting a value we will parse
    SKIP = enum.auto()  # stepping over a value we will not parse


class CapsuleParser:
    """Incremental parser for the capsule sequence of one request stream.

    Feed it stream bytes as they arrive, split anywhere; it returns each capsule
    once complete. Memory stays bounded: at most one capsule value of up to
    :attr:`max_capsule_size` bytes is buffered, and skipped capsules (unknown
    types, oversized DATAGRAM capsules) are never buffered at all.

    Errors: a malformed capsule makes the parser fail permanently with a
    :class:`CapsuleError`. Capsules that were complete before the bad one are
    still returned: if a :meth:`feed` call completed some capsules before
    hitting the error, it returns them and the error is raised by the next
    call (:attr:`error` shows it at once). The sequence of capsules a caller
    sees, then the error, is therefore the same however the input is split.
    """

    def __init__(self, max_capsule_size: int = DEFAULT_MAX_CAPSULE_SIZE) -> None:
        self._max = 0
        self.max_capsule_size = max_capsule_size
        self._state = _State.HEADER
        self._buf = bytearray()
        self._type = 0
        self._length = 0
        self._skip = 0
        self._error: CapsuleError | None = None
        self._ended = False

    @property
    def max_capsule_size(self) -> int:
        """Largest Capsule Length accepted for capsules that must be parsed.

        A larger DATAGRAM capsule is skipped (RFC 9297 §3.5); any other known
        capsule that large is an error (:attr:`Rule.CAPSULE_TOO_LARGE`) raised
        as soon as its header is read. Changing it affects capsules whose
        header has not been read yet.
        """
        return self._max

    @max_capsule_size.setter
    def max_capsule_size(self, value: int) -> None:
        if value < 0:
            raise ValueError(f"max_capsule_size must be >= 0, not {value}")
        self._max = value

    @property
    def error(self) -> CapsuleError | None:
        """The error that failed the parser, or None."""
        return self._error

    @property
    def at_boundary(self) -> bool:
        """True when no partial capsule is held (the stream may end here)."""
        return self._state is _State.HEADER and not self._buf

    @property
    def buffered(self) -> int:
        """Bytes currently held for an incomplete header or value."""
        return len(self._buf)

    def feed(self, data: bytes | bytearray | memoryview) -> list[ParsedCapsule]:
        """Consume ``data``; return every capsule it completed, in stream order.

        Raises :class:`CapsuleError` on malformed input (see the class
        docstring for capsules completed before the error), and
        ``RuntimeError`` if called after :meth:`end_of_stream`.
        """
        if self._error is not None:
            raise self._error
        if self._ended:
            raise RuntimeError("CapsuleParser.feed() called after end_of_stream()")
        out: list[ParsedCapsule] = []
        try:
            self._consume(memoryview(data), out)
        except CapsuleError as error:
            self._error = error
            self._buf = bytearray()
            if not out:
                raise
        return out

    def end_of_stream(self) -> None:
        """Declare that the stream ended cleanly (e.g. QUIC FIN).

        Raises :class:`CapsuleError` (:attr:`Rule.CAPSULE_TRUNCATED`) if a
        capsule was cut short (RFC 9297 §3.3), or the pending error if the
        parser had already failed.
        """
        if self._error is not None:
            raise self._error
        self._ended = True
        if self.at_boundary:
            return
        if self._state is _State.HEADER:
            detail = f"inside a capsule header ({len(self._buf)} bytes received)"
        elif self._state is _State.VALUE:
            detail = (
                f"inside capsule type 0x{self._type:x}: {len(self._buf)} of "
                f"{self._length} value bytes received"
            )
        else:
            detail = f"inside skipped capsule type 0x{self._type:x}: {self._skip} bytes missing"
        self._error = CapsuleError(
            f"stream ended {detail} (RFC 9297 §3.3: a truncated last capsule is malformed)",
            rule=Rule.CAPSULE_TRUNCATED,
        )
        raise self._error

    # -- internals ---------------------------------------------------------

    def _consume(self, data: memoryview, out: list[ParsedCapsule]) -> None:
        pos = 0
        size = len(data)
        while True:
            if self._state is _State.SKIP:
                step = min(self._skip, size - pos)
                pos += step
                self._skip -= step
                if self._skip:
                    return
                self._state = _State.HEADER
            elif self._state is _State.HEADER:
                # Copy at most one maximal header's worth, parse it from the
                # small buffer, then give back the bytes that belong to the value.
                held = len(self._buf)
                take = min(_MAX_HEADER - held, size - pos)
                self._buf += data[pos : pos + take]
                header = self._parse_header()
                if header is None:
                    return  # all of data went into the partial header
                header_len, skipped = header
                pos += header_len - held
                self._buf = bytearray()
                if skipped is not None:
                    out.append(skipped)
            else:
                need = self._length - len(self._buf)
                value: memoryview | bytearray
                if not self._buf and size - pos >= need:
                    # Fast path: the whole value is in this chunk; parse it in place.
                    value = data[pos : pos + need]
                    pos += need
                else:
                    step = min(need, size - pos)
                    self._buf += data[pos : pos + step]
                    pos += step
                    if len(self._buf) < self._length:
                        return
                    value, self._buf = self._buf, bytearray()
                self._state = _State.HEADER
                out.append(parse_capsule_value(self._type, value))

    def _parse_header(self) -> tuple[int, SkippedCapsule | None] | None:
        """Decode type and length from ``_buf``; pick the next state.

        Returns None while the header is incomplete, else the header's byte
        length and a :class:`SkippedCapsule` to report if the value is skipped.
        """
        type_field = try_decode_varint(self._buf)
        if type_field is None:
            return None
        capsule_type, offset = type_field
        length_field = try_decode_varint(self._buf, offset)
        if length_field is None:
            return None
        length, header_len = length_field
        self._type = capsule_type
        self._length = length
        known = capsule_type in _KNOWN_TYPES
        if known and length <= self._max:
            self._state = _State.VALUE
            return header_len, None
        if known and capsule_type != CapsuleType.DATAGRAM:
            raise CapsuleError(
                f"{CapsuleType(capsule_type).name} capsule announces a {length}-byte value, "
                f"over this endpoint's limit of {self._max} bytes",
                rule=Rule.CAPSULE_TOO_LARGE,
            )
        # Unknown type (RFC 9297 §3.2) or a DATAGRAM too large to use (§3.5):
        # step over the value without buffering it.
        self._state = _State.SKIP
        self._skip = length
        return header_len, SkippedCapsule(capsule_type, length)


_KNOWN_TYPES = frozenset(int(t) for t in CapsuleType)
