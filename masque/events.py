"""Events that :class:`masque.session.ConnectIpSession` hands to its owner.

Each event says what the *peer* did, in the past tense. They are plain frozen
dataclasses so the asyncio layers can match on them and tests can compare them.
"""

from __future__ import annotations

from dataclasses import dataclass

from masque.capsule import AssignedAddress, IpAddressRange, RequestedAddress

__all__ = [
    "AddressRequested",
    "AddressesAssigned",
    "DatagramReceived",
    "Event",
    "RoutesAdvertised",
    "SessionAborted",
]


@dataclass(frozen=True, slots=True)
class AddressesAssigned:
    """The peer sent ADDRESS_ASSIGN: our complete set of usable source prefixes changed.

    RFC 9484 §4.7.1: every ADDRESS_ASSIGN carries the full list and replaces
    the previous one; an empty list withdraws every address.
    """

    addresses: tuple[AssignedAddress, ...]
    """Every prefix we may now use as a source, refusals left out. Empty means
    all earlier assignments are withdrawn."""
    answered: tuple[AssignedAddress, ...] = ()
    """Entries that answered one of our outstanding ADDRESS_REQUESTs with an
    address; those requests are no longer outstanding."""
    refused: tuple[int, ...] = ()
    """Request IDs of our outstanding requests that the peer refused (answered
    with 0.0.0.0/32 or ::/128, RFC 9484 §4.7.2)."""


@dataclass(frozen=True, slots=True)
class AddressRequested:
    """The peer sent ADDRESS_REQUEST (RFC 9484 §4.7.2).

    The owner should answer every entry with
    :meth:`~masque.session.ConnectIpSession.assign_addresses`, either with an
    address or with :meth:`~masque.capsule.AssignedAddress.rejection`.
    """

    requests: tuple[RequestedAddress, ...]
    """The requests in this capsule (at least one, distinct non-zero IDs never
    used before by the peer). An all-zero address means "any address of this
    family with this prefix length"."""


@dataclass(frozen=True, slots=True)
class RoutesAdvertised:
    """The peer sent ROUTE_ADVERTISEMENT: the set of destinations it routes changed.

    RFC 9484 §4.7.3: each advertisement supersedes the previous one; an empty
    one withdraws every route.
    """

    ranges: tuple[IpAddressRange, ...]
    """Every range we may now send to, sorted by (IP version, IP protocol,
    start) and non-overlapping per version and protocol."""


@dataclass(frozen=True, slots=True)
class DatagramReceived:
    """The peer sent an IP packet in a DATAGRAM capsule on the stream (RFC 9297 §3.5).

    Packets arriving as QUIC DATAGRAM frames do not go through the session's
    stream parser and produce no event; only the stream carrier does.
    """

    packet: bytes
    """The full IP packet (Context ID 0 removed). Not yet checked: pass it to
    :meth:`~masque.session.ConnectIpSession.check_incoming` before forwarding."""


@dataclass(frozen=True, slots=True)
class SessionAborted:
    """The peer broke the protocol; the CONNECT-IP request stream must be aborted.

    RFC 9297 §3.3 / RFC 9484 §4.7: treat as a malformed message (in HTTP/3,
    reset the stream with H3_MESSAGE_ERROR or H3_GENERAL_PROTOCOL_ERROR). The
    session ignores all input after this event.
    """

    reason: str
    """Human-readable explanation naming the rule that broke."""
    rule: str
    """Stable machine-readable identifier of the rule (a metrics label), e.g.
    ``"range-overlap"`` or ``"capsule-truncated"``."""


#: Any event returned by :meth:`~masque.session.ConnectIpSession.receive_capsule_data`.
Event = AddressesAssigned | AddressRequested | RoutesAdvertised | DatagramReceived | SessionAborted
