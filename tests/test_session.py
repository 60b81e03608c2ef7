"""Tests for masque.session: a client and a relay session wired together in memory."""

from __future__ import annotations

from ipaddress import IPv4Address, IPv4Network, IPv6Address, IPv6Network

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from scapy.layers.inet import ICMP, IP, TCP, UDP
from scapy.layers.inet6 import (
    ICMPv6EchoRequest,
    IPv6,
    IPv6ExtHdrDestOpt,
    IPv6ExtHdrFragment,
    IPv6ExtHdrHopByHop,
)
from scapy.layers.sctp import SCTP

from masque.capsule import (
    AssignedAddress,
    CapsuleType,
    IpAddressRange,
    Rule,
    encode_capsule_header,
    encode_raw_capsule,
)
from masque.datagram import encode_datagram
from masque.events import (
    AddressesAssigned,
    AddressRequested,
    DatagramReceived,
    Event,
    RoutesAdvertised,
    SessionAborted,
)
from masque.session import ConnectIpSession, Role, Scope, SessionRule, Verdict

V4 = IPv4Network
V6 = IPv6Network
A4 = IPv4Address
A6 = IPv6Address

FULL_V4 = IpAddressRange(A4("0.0.0.0"), A4("255.255.255.255"))
FULL_V6 = IpAddressRange(A6("::"), A6("ffff:ffff:ffff:ffff:ffff:ffff:ffff:ffff"))


def udp4(src: str, dst: str) -> bytes:
    return bytes(IP(src=src, dst=dst) / UDP(sport=4000, dport=53))


def tcp4(src: str, dst: str) -> bytes:
    return bytes(IP(src=src, dst=dst) / TCP(sport=4000, dport=443))


def icmp4(src: str, dst: str) -> bytes:
    return bytes(IP(src=src, dst=dst) / ICMP())


def udp6(src: str, dst: str) -> bytes:
    return bytes(IPv6(src=src, dst=dst) / UDP(sport=4000, dport=53))


def tcp6(src: str, dst: str) -> bytes:
    return bytes(IPv6(src=src, dst=dst) / TCP(sport=4000, dport=443))


def icmp6(src: str, dst: str) -> bytes:
    return bytes(IPv6(src=src, dst=dst) / ICMPv6EchoRequest())


def deliver(wire: bytes, to: ConnectIpSession) -> list[Event]:
    """Send ``wire`` to ``to`` one byte at a time and check it matches a whole delivery."""
    events: list[Event] = []
    for i in range(len(wire)):
        events.extend(to.receive_capsule_data(wire[i : i + 1]))
    return events


def vpn_pair(scope: Scope | None = None) -> tuple[ConnectIpSession, ConnectIpSession]:
    """RFC 9484 Figure 15: the client asks for an IPv4 address and gets a full tunnel."""
    client = ConnectIpSession(Role.CLIENT)
    relay = ConnectIpSession(Role.RELAY, scope=scope)
    (requested,) = relay.receive_capsule_data(client.request_addresses([V4("0.0.0.0/32")]))
    assert isinstance(requested, AddressRequested)
    assert requested.requests[0].request_id == 1
    events = client.receive_capsule_data(
        relay.assign_addresses([AssignedAddress(1, V4("192.0.2.11/32"))])
        + relay.advertise_routes([FULL_V4])
    )
    assert [type(e) for e in events] == [AddressesAssigned, RoutesAdvertised]
    return client, relay


# ---------------------------------------------------------------------------
# Capsule exchange


def test_remote_access_vpn_exchange() -> None:
    client = ConnectIpSession(Role.CLIENT)
    relay = ConnectIpSession(Role.RELAY)

    events = deliver(client.request_addresses([V4("0.0.0.0/32"), V6("::/64")]), relay)
    assert len(events) == 1 and isinstance(events[0], AddressRequested)
    assert [r.request_id for r in events[0].requests] == [1, 2]
    assert set(client.pending_requests) == {1, 2}
    assert set(relay.unanswered_peer_requests) == {1, 2}

    assign = relay.assign_addresses(
        [AssignedAddress(1, V4("192.0.2.11/32")), AssignedAddress(2, V6("2001:db8:1::/64"))]
    )
    assert relay.unanswered_peer_requests == {}
    events = deliver(assign, client)
    assert events == [
        AddressesAssigned(
            addresses=(
                AssignedAddress(1, V4("192.0.2.11/32")),
                AssignedAddress(2, V6("2001:db8:1::/64")),
            ),
            answered=(
                AssignedAddress(1, V4("192.0.2.11/32")),
                AssignedAddress(2, V6("2001:db8:1::/64")),
            ),
            refused=(),
        )
    ]
    assert client.pending_requests == {}
    assert client.local_addresses == relay.peer_addresses

    events = deliver(relay.advertise_routes([FULL_V4, FULL_V6]), client)
    assert events == [RoutesAdvertised((FULL_V4, FULL_V6))]
    assert client.peer_routes == relay.local_routes == (FULL_V4, FULL_V6)


def test_refused_request_is_reported_and_not_usable() -> None:
    client = ConnectIpSession(Role.CLIENT)
    relay = ConnectIpSession(Role.RELAY)
    relay.receive_capsule_data(client.request_addresses([V4("0.0.0.0/32"), V6("::/128")]))
    wire = relay.assign_addresses(
        [AssignedAddress(1, V4("10.0.0.2/32")), AssignedAddress.rejection(2, 6)]
    )
    (event,) = client.receive_capsule_data(wire)
    assert isinstance(event, AddressesAssigned)
    assert event.addresses == (AssignedAddress(1, V4("10.0.0.2/32")),)
    assert event.answered == (AssignedAddress(1, V4("10.0.0.2/32")),)
    assert event.refused == (2,)
    assert client.pending_requests == {}
    assert relay.peer_addresses == (AssignedAddress(1, V4("10.0.0.2/32")),)


def test_partial_answer_keeps_other_requests_pending() -> None:
    client = ConnectIpSession(Role.CLIENT)
    relay = ConnectIpSession(Role.RELAY)
    relay.receive_capsule_data(client.request_addresses([V4("0.0.0.0/32"), V6("::/128")]))
    client.receive_capsule_data(relay.assign_addresses([AssignedAddress(2, V6("fd00::5/128"))]))
    assert set(client.pending_requests) == {1}
    assert set(relay.unanswered_peer_requests) == {1}
    # A later full set may repeat the already-answered ID 2: not an error.
    (event,) = client.receive_capsule_data(
        relay.assign_addresses(
            [AssignedAddress(1, V4("10.0.0.9/32")), AssignedAddress(2, V6("fd00::5/128"))]
        )
    )
    assert isinstance(event, AddressesAssigned)
    assert event.answered == (AssignedAddress(1, V4("10.0.0.9/32")),)
    assert client.pending_requests == {}


def test_request_ids_increase_and_are_never_reused() -> None:
    client = ConnectIpSession(Role.CLIENT)
    client.request_addresses([V4("0.0.0.0/32")])
    client.request_addresses([V4("0.0.0.0/32"), V6("::/128")])
    assert sorted(client.pending_requests) == [1, 2, 3]


def test_assign_replaces_and_empty_withdraws() -> None:
    client, relay = vpn_pair()
    assert client.check_outgoing(udp4("192.0.2.11", "8.8.8.8")) is Verdict.ACCEPT
    # Unsolicited re-assignment (Request ID 0) replaces the whole set.
    client.receive_capsule_data(relay.assign_addresses([AssignedAddress(0, V4("192.0.2.50/32"))]))
    assert client.local_addresses == (AssignedAddress(0, V4("192.0.2.50/32")),)
    assert client.check_outgoing(udp4("192.0.2.11", "8.8.8.8")) is Verdict.DROP_SRC_NOT_ASSIGNED
    assert relay.check_incoming(udp4("192.0.2.11", "8.8.8.8")) is Verdict.DROP_SRC_NOT_ASSIGNED
    assert client.check_outgoing(udp4("192.0.2.50", "8.8.8.8")) is Verdict.ACCEPT
    # Empty ADDRESS_ASSIGN: every address withdrawn.
    (event,) = client.receive_capsule_data(relay.assign_addresses([]))
    assert event == AddressesAssigned(())
    assert client.check_outgoing(udp4("192.0.2.50", "8.8.8.8")) is Verdict.DROP_SRC_NOT_ASSIGNED
    assert relay.check_incoming(udp4("192.0.2.50", "8.8.8.8")) is Verdict.DROP_SRC_NOT_ASSIGNED


def test_route_advertisement_replaces_and_empty_withdraws() -> None:
    client, relay = vpn_pair()
    split = IpAddressRange(A4("192.0.2.0"), A4("192.0.2.255"))
    client.receive_capsule_data(relay.advertise_routes([split]))
    assert client.check_outgoing(udp4("192.0.2.11", "8.8.8.8")) is Verdict.DROP_DST_NOT_IN_SCOPE
    assert relay.check_incoming(udp4("192.0.2.11", "8.8.8.8")) is Verdict.DROP_DST_NOT_IN_SCOPE
    assert client.check_outgoing(udp4("192.0.2.11", "192.0.2.80")) is Verdict.ACCEPT
    (event,) = client.receive_capsule_data(relay.advertise_routes([]))
    assert event == RoutesAdvertised(())
    assert client.check_outgoing(udp4("192.0.2.11", "192.0.2.80")) is Verdict.DROP_DST_NOT_IN_SCOPE


def test_both_endpoints_may_send_every_capsule() -> None:
    # RFC 9484 §4.7: "Both endpoints MAY send any number of these new capsules."
    client = ConnectIpSession(Role.CLIENT)
    relay = ConnectIpSession(Role.RELAY)
    (event,) = client.receive_capsule_data(relay.request_addresses([V4("0.0.0.0/32")]))
    assert isinstance(event, AddressRequested)
    events = relay.receive_capsule_data(
        client.assign_addresses([AssignedAddress(1, V4("192.0.2.200/32"))])
        + client.advertise_routes([IpAddressRange(A4("192.0.2.0"), A4("192.0.2.255"))])
    )
    assert [type(e) for e in events] == [AddressesAssigned, RoutesAdvertised]
    assert relay.local_addresses == (AssignedAddress(1, V4("192.0.2.200/32")),)


def test_whole_conversation_byte_at_a_time_equals_whole() -> None:
    client = ConnectIpSession(Role.CLIENT)
    relay = ConnectIpSession(Role.RELAY)
    relay.receive_capsule_data(client.request_addresses([V4("0.0.0.0/32")]))
    stream = (
        relay.assign_addresses([AssignedAddress(1, V4("192.0.2.11/32"))])
        + encode_raw_capsule(0x29 * 7 + 0x17, b"grease")
        + relay.advertise_routes([FULL_V4])
        + relay.send_datagram_capsule(udp4("8.8.8.8", "192.0.2.11"))
    )
    whole_client = ConnectIpSession(Role.CLIENT)
    whole_client.request_addresses([V4("0.0.0.0/32")])
    whole = whole_client.receive_capsule_data(stream, end_stream=True)
    bytewise = deliver(stream, client) + client.receive_capsule_data(b"", end_stream=True)
    assert whole == bytewise
    assert [type(e) for e in whole] == [AddressesAssigned, RoutesAdvertised, DatagramReceived]
    assert client.skipped_capsules == whole_client.skipped_capsules == 1
    assert client.peer_ended and not client.is_aborted


# ---------------------------------------------------------------------------
# DATAGRAM capsules (the stream carrier)


def test_datagram_capsule_carries_packet() -> None:
    client, relay = vpn_pair()
    packet = udp4("192.0.2.11", "8.8.8.8")
    (event,) = deliver(client.send_datagram_capsule(packet), relay)
    assert event == DatagramReceived(packet)
    assert relay.check_incoming(event.packet) is Verdict.ACCEPT


def test_datagram_capsule_with_unknown_context_is_dropped() -> None:
    _client, relay = vpn_pair()
    wire = encode_raw_capsule(CapsuleType.DATAGRAM, encode_datagram(64, b"extension"))
    assert relay.receive_capsule_data(wire) == []
    assert relay.unknown_context_datagrams == 1
    assert not relay.is_aborted


def test_oversized_datagram_capsule_is_discarded() -> None:
    relay = ConnectIpSession(Role.RELAY, max_capsule_size=100)
    wire = encode_capsule_header(CapsuleType.DATAGRAM, 200) + b"\x00" * 200
    assert relay.receive_capsule_data(wire) == []
    assert relay.oversized_datagrams == 1
    assert not relay.is_aborted


def test_receive_quic_datagram() -> None:
    relay = ConnectIpSession(Role.RELAY)
    packet = udp4("192.0.2.11", "8.8.8.8")
    view = relay.receive_datagram(encode_datagram(0, packet))
    assert view is not None and bytes(view) == packet
    assert relay.receive_datagram(encode_datagram(2, packet)) is None
    assert relay.unknown_context_datagrams == 1
    assert relay.receive_datagram(b"") is None
    assert relay.receive_datagram(b"\x40") is None
    assert relay.malformed_datagrams == 2
    assert not relay.is_aborted  # a bad QUIC datagram is dropped, not fatal


# ---------------------------------------------------------------------------
# Protocol violations abort the session


def _abort_rule(events: list[Event]) -> str:
    assert events and isinstance(events[-1], SessionAborted)
    assert all(not isinstance(e, SessionAborted) for e in events[:-1])
    return events[-1].rule


@pytest.mark.parametrize(
    ("wire", "rule"),
    [
        # A capsule-level rule (every one is covered in test_capsule.py).
        (bytes.fromhex("0200"), Rule.ADDRESS_REQUEST_EMPTY),
        # ROUTE_ADVERTISEMENT (03), length 10, IPv4, start 10.0.0.1 > end 10.0.0.0, any protocol.
        (bytes.fromhex("03 0a 04 0a000001 0a000000 00"), Rule.RANGE_START_AFTER_END),
        # A DATAGRAM capsule too short to hold its Context ID (RFC 9297 §3.3).
        (bytes.fromhex("00 00"), "datagram-truncated"),  # DATAGRAM, length 0: no Context ID
        (bytes.fromhex("00 01 40"), "datagram-truncated"),  # length 1: half a 2-byte varint
        # ADDRESS_ASSIGN answering a Request ID this endpoint never sent (§4.7.1).
        # ADDRESS_ASSIGN (01), length 7, Request ID 7, IPv4, 10.0.0.1, /32.
        (bytes.fromhex("01 07 07 04 0a000001 20"), SessionRule.ASSIGN_UNKNOWN_REQUEST_ID),
    ],
)
def test_violation_aborts(wire: bytes, rule: str) -> None:
    session = ConnectIpSession(Role.CLIENT)
    events = session.receive_capsule_data(wire)
    assert _abort_rule(events) == rule
    assert session.is_aborted
    assert session.abort_event == events[-1]
    assert "RFC" in events[-1].reason  # the reason says which rule broke


def test_request_id_reused_across_capsules_aborts() -> None:
    client = ConnectIpSession(Role.CLIENT)
    relay = ConnectIpSession(Role.RELAY)
    first = client.request_addresses([V4("0.0.0.0/32")])
    relay.receive_capsule_data(first)
    # The same capsule again reuses Request ID 1 (§4.7.2: MUST NOT be reused).
    assert _abort_rule(relay.receive_capsule_data(first)) == SessionRule.REQUEST_ID_REUSED


def test_too_many_address_requests_aborts() -> None:
    client = ConnectIpSession(Role.CLIENT)
    relay = ConnectIpSession(Role.RELAY, max_address_requests=3)
    relay.receive_capsule_data(client.request_addresses([V4("0.0.0.0/32")] * 3))
    events = relay.receive_capsule_data(client.request_addresses([V4("0.0.0.0/32")]))
    assert _abort_rule(events) == SessionRule.TOO_MANY_ADDRESS_REQUESTS


def test_truncated_stream_at_fin_aborts() -> None:
    client, relay = vpn_pair()
    wire = relay.advertise_routes([FULL_V4])
    events = client.receive_capsule_data(wire[:-1], end_stream=True)
    assert _abort_rule(events) == Rule.CAPSULE_TRUNCATED


def test_too_large_control_capsule_aborts_on_header() -> None:
    relay = ConnectIpSession(Role.RELAY, max_capsule_size=1000)
    events = relay.receive_capsule_data(encode_capsule_header(CapsuleType.ADDRESS_REQUEST, 5000))
    assert _abort_rule(events) == Rule.CAPSULE_TOO_LARGE


def test_capsules_before_the_bad_one_are_delivered() -> None:
    client = ConnectIpSession(Role.CLIENT)
    relay = ConnectIpSession(Role.RELAY)
    wire = client.request_addresses([V4("0.0.0.0/32")]) + bytes.fromhex("0200")
    events = relay.receive_capsule_data(wire)
    assert isinstance(events[0], AddressRequested)
    assert _abort_rule(events) == Rule.ADDRESS_REQUEST_EMPTY


def test_aborted_session_ignores_input_and_drops_packets() -> None:
    client, relay = vpn_pair()
    relay.receive_capsule_data(bytes.fromhex("0200"))
    assert relay.is_aborted
    assert relay.receive_capsule_data(client.request_addresses([V4("0.0.0.0/32")])) == []
    assert relay.check_incoming(udp4("192.0.2.11", "8.8.8.8")) is Verdict.DROP_SESSION_CLOSED
    assert relay.receive_datagram(encode_datagram(0, b"x")) is None
    with pytest.raises(RuntimeError):
        relay.advertise_routes([])


def test_local_abort() -> None:
    client, _ = vpn_pair()
    event = client.abort("tunnel MTU below 1280 (RFC 9484 §7.2)")
    assert event.rule == SessionRule.LOCAL_ABORT
    assert client.is_aborted
    assert client.check_outgoing(udp4("192.0.2.11", "8.8.8.8")) is Verdict.DROP_SESSION_CLOSED


def test_clean_end_of_stream() -> None:
    client, relay = vpn_pair()
    assert client.receive_capsule_data(b"", end_stream=True) == []
    assert client.peer_ended and not client.is_aborted
    assert client.receive_capsule_data(relay.advertise_routes([])) == []  # ignored after FIN


@settings(max_examples=200)
@given(st.binary(max_size=200), st.booleans())
def test_property_any_input_yields_events_never_exceptions(data: bytes, fin: bool) -> None:
    session = ConnectIpSession(Role.RELAY, max_capsule_size=64)
    events = session.receive_capsule_data(data, end_stream=fin)
    aborts = [e for e in events if isinstance(e, SessionAborted)]
    assert len(aborts) <= 1
    if aborts:
        assert events[-1] is aborts[0] and session.is_aborted


# ---------------------------------------------------------------------------
# Sending side validation


def test_assign_rejects_request_id_never_received() -> None:
    relay = ConnectIpSession(Role.RELAY)
    with pytest.raises(ValueError, match="never requested"):
        relay.assign_addresses([AssignedAddress(9, V4("10.0.0.1/32"))])
    assert relay.peer_addresses == ()


def test_request_addresses_rejects_empty() -> None:
    client = ConnectIpSession(Role.CLIENT)
    with pytest.raises(ValueError):
        client.request_addresses([])
    assert client.pending_requests == {}
    client.request_addresses([V4("0.0.0.0/32")])
    assert list(client.pending_requests) == [1]  # the failed call consumed no ID


def test_advertise_routes_rejects_unsorted_and_keeps_state() -> None:
    relay = ConnectIpSession(Role.RELAY)
    relay.advertise_routes([FULL_V4])
    with pytest.raises(ValueError, match="range-version-order"):
        relay.advertise_routes([FULL_V6, FULL_V4])
    assert relay.local_routes == (FULL_V4,)


def test_scope_validation() -> None:
    with pytest.raises(ValueError):
        Scope(ipproto=256)
    with pytest.raises(TypeError):
        ConnectIpSession("relay")  # type: ignore[arg-type]


# ---------------------------------------------------------------------------
# Packet policy


def test_nothing_passes_before_addresses_and_routes() -> None:
    client = ConnectIpSession(Role.CLIENT)
    relay = ConnectIpSession(Role.RELAY)
    packet = udp4("192.0.2.11", "8.8.8.8")
    assert client.check_outgoing(packet) is Verdict.DROP_SRC_NOT_ASSIGNED
    assert relay.check_incoming(packet) is Verdict.DROP_SRC_NOT_ASSIGNED


def test_vpn_both_directions() -> None:
    client, relay = vpn_pair()
    out = udp4("192.0.2.11", "198.51.100.7")
    assert client.check_outgoing(out) is Verdict.ACCEPT
    assert relay.check_incoming(out) is Verdict.ACCEPT
    back = udp4("198.51.100.7", "192.0.2.11")
    assert relay.check_outgoing(back) is Verdict.ACCEPT
    assert client.check_incoming(back) is Verdict.ACCEPT


def test_bcp38_spoofed_source_dropped() -> None:
    client, relay = vpn_pair()
    spoofed = udp4("192.0.2.12", "198.51.100.7")
    assert client.check_outgoing(spoofed) is Verdict.DROP_SRC_NOT_ASSIGNED
    assert relay.check_incoming(spoofed) is Verdict.DROP_SRC_NOT_ASSIGNED
    # ICMP from the client is no exception to BCP 38.
    assert relay.check_incoming(icmp4("192.0.2.12", "198.51.100.7")) is (
        Verdict.DROP_SRC_NOT_ASSIGNED
    )
    # No IPv6 address was assigned, so no IPv6 source is valid.
    assert relay.check_incoming(udp6("2001:db8::1", "2001:db8:2::1")) is (
        Verdict.DROP_SRC_NOT_ASSIGNED
    )


def test_prefix_assignment_allows_every_address_inside() -> None:
    client = ConnectIpSession(Role.CLIENT)
    relay = ConnectIpSession(Role.RELAY)
    client.receive_capsule_data(
        relay.assign_addresses([AssignedAddress(0, V6("2001:db8:1::/64"))])
        + relay.advertise_routes([FULL_V6])
    )
    assert relay.check_incoming(udp6("2001:db8:1::1234", "2001:db8:9::1")) is Verdict.ACCEPT
    assert relay.check_incoming(udp6("2001:db8:2::1", "2001:db8:9::1")) is (
        Verdict.DROP_SRC_NOT_ASSIGNED
    )


def test_reply_to_unassigned_destination_dropped() -> None:
    client, relay = vpn_pair()
    stray = udp4("198.51.100.7", "192.0.2.99")
    assert relay.check_outgoing(stray) is Verdict.DROP_DST_NOT_IN_SCOPE
    assert client.check_incoming(stray) is Verdict.DROP_DST_NOT_IN_SCOPE


def test_route_protocol_restricts_but_icmp_always_passes() -> None:
    # RFC 9484 Figure 22: routes scoped to UDP, ICMP always allowed (§4.7.3).
    client = ConnectIpSession(Role.CLIENT)
    relay = ConnectIpSession(Role.RELAY)
    client.receive_capsule_data(
        relay.assign_addresses(
            [
                AssignedAddress(0, V4("192.0.2.3/32")),
                AssignedAddress(0, V6("2001:db8::1234:1234/128")),
            ]
        )
        + relay.advertise_routes(
            [
                IpAddressRange(A4("198.51.100.2"), A4("198.51.100.2"), 17),
                IpAddressRange(A6("2001:db8:3456::b"), A6("2001:db8:3456::b"), 17),
            ]
        )
    )
    for session in (client.check_outgoing, relay.check_incoming):
        assert session(udp4("192.0.2.3", "198.51.100.2")) is Verdict.ACCEPT
        assert session(tcp4("192.0.2.3", "198.51.100.2")) is Verdict.DROP_PROTO_NOT_IN_SCOPE
        assert session(icmp4("192.0.2.3", "198.51.100.2")) is Verdict.ACCEPT
        assert session(udp4("192.0.2.3", "198.51.100.3")) is Verdict.DROP_DST_NOT_IN_SCOPE
        v6src, v6dst = "2001:db8::1234:1234", "2001:db8:3456::b"
        assert session(udp6(v6src, v6dst)) is Verdict.ACCEPT
        assert session(tcp6(v6src, v6dst)) is Verdict.DROP_PROTO_NOT_IN_SCOPE
        assert session(icmp6(v6src, v6dst)) is Verdict.ACCEPT
    # Replies: the source must lie in the relay's routes for that protocol.
    assert relay.check_outgoing(udp4("198.51.100.2", "192.0.2.3")) is Verdict.ACCEPT
    assert client.check_incoming(udp4("198.51.100.2", "192.0.2.3")) is Verdict.ACCEPT
    assert client.check_incoming(tcp4("198.51.100.2", "192.0.2.3")) is (
        Verdict.DROP_PROTO_NOT_IN_SCOPE
    )
    assert client.check_incoming(udp4("198.51.100.9", "192.0.2.3")) is (
        Verdict.DROP_SRC_NOT_ASSIGNED
    )


def test_icmp_errors_from_outside_routes_reach_the_client() -> None:
    # RFC 9484 §7.2.1: ICMP can come from a router outside the routes and target.
    client = ConnectIpSession(Role.CLIENT)
    relay = ConnectIpSession(Role.RELAY, scope=Scope(targets=(V4("198.51.100.2/32"),)))
    client.receive_capsule_data(
        relay.assign_addresses([AssignedAddress(0, V4("192.0.2.3/32"))])
        + relay.advertise_routes([IpAddressRange(A4("198.51.100.2"), A4("198.51.100.2"))])
    )
    router_icmp = icmp4("203.0.113.1", "192.0.2.3")
    assert relay.check_outgoing(router_icmp) is Verdict.ACCEPT
    assert client.check_incoming(router_icmp) is Verdict.ACCEPT
    # Not for other protocols.
    assert relay.check_outgoing(udp4("203.0.113.1", "192.0.2.3")) is Verdict.DROP_SRC_NOT_ASSIGNED


def test_ipv6_extension_headers_are_walked_for_protocol() -> None:
    # RFC 9484 §4.8: match the first non-extension Next Header, not Hop-by-Hop (0).
    client = ConnectIpSession(Role.CLIENT)
    relay = ConnectIpSession(Role.RELAY)
    client.receive_capsule_data(
        relay.assign_addresses([AssignedAddress(0, V6("2001:db8:1::1/128"))])
        + relay.advertise_routes([IpAddressRange(A6("2001:db8:2::"), A6("2001:db8:2::ff"), 17)])
    )
    base = IPv6(src="2001:db8:1::1", dst="2001:db8:2::1")
    udp_behind_ext = bytes(base / IPv6ExtHdrHopByHop() / IPv6ExtHdrDestOpt() / UDP())
    tcp_behind_ext = bytes(base / IPv6ExtHdrHopByHop() / IPv6ExtHdrDestOpt() / TCP())
    udp_fragment = bytes(base / IPv6ExtHdrFragment(m=1) / UDP() / (b"x" * 16))
    assert relay.check_incoming(udp_behind_ext) is Verdict.ACCEPT
    assert relay.check_incoming(tcp_behind_ext) is Verdict.DROP_PROTO_NOT_IN_SCOPE
    assert relay.check_incoming(udp_fragment) is Verdict.ACCEPT


def test_request_scope_ipproto() -> None:
    # RFC 9484 Figure 20: a flow scoped to SCTP (132); ICMP still allowed.
    _client, relay = vpn_pair(scope=Scope(ipproto=132))
    sctp = bytes(IP(src="192.0.2.11", dst="198.51.100.2") / SCTP())
    assert relay.check_incoming(sctp) is Verdict.ACCEPT
    assert relay.check_incoming(udp4("192.0.2.11", "198.51.100.2")) is (
        Verdict.DROP_PROTO_NOT_IN_SCOPE
    )
    assert relay.check_incoming(icmp4("192.0.2.11", "198.51.100.2")) is Verdict.ACCEPT
    assert relay.check_outgoing(udp4("198.51.100.2", "192.0.2.11")) is (
        Verdict.DROP_PROTO_NOT_IN_SCOPE
    )


def test_request_scope_target() -> None:
    _client, relay = vpn_pair(scope=Scope(targets=(V4("198.51.100.0/24"),)))
    assert relay.check_incoming(udp4("192.0.2.11", "198.51.100.2")) is Verdict.ACCEPT
    assert relay.check_incoming(udp4("192.0.2.11", "203.0.113.2")) is (
        Verdict.DROP_DST_NOT_IN_SCOPE
    )
    assert relay.check_outgoing(udp4("198.51.100.2", "192.0.2.11")) is Verdict.ACCEPT
    assert relay.check_outgoing(udp4("203.0.113.2", "192.0.2.11")) is (
        Verdict.DROP_SRC_NOT_IN_SCOPE
    )
    # A client can enforce its own requested scope too.
    scoped_client = ConnectIpSession(Role.CLIENT, scope=Scope(targets=(V4("198.51.100.0/24"),)))
    scoped_client.receive_capsule_data(
        relay.assign_addresses([AssignedAddress(0, V4("192.0.2.11/32"))])
        + relay.advertise_routes([FULL_V4])
    )
    assert scoped_client.check_outgoing(udp4("192.0.2.11", "203.0.113.2")) is (
        Verdict.DROP_DST_NOT_IN_SCOPE
    )
    assert scoped_client.check_incoming(udp4("203.0.113.2", "192.0.2.11")) is (
        Verdict.DROP_SRC_NOT_IN_SCOPE
    )


def test_site_to_site_forwarding_both_ways() -> None:
    # RFC 9484 Figure 18: each side assigns the other an address and advertises its network.
    client = ConnectIpSession(Role.CLIENT)
    relay = ConnectIpSession(Role.RELAY)
    relay.receive_capsule_data(
        client.assign_addresses([AssignedAddress(0, V4("192.0.2.200/32"))])
        + client.advertise_routes([IpAddressRange(A4("192.0.2.0"), A4("192.0.2.255"))])
    )
    client.receive_capsule_data(
        relay.assign_addresses([AssignedAddress(0, V4("203.0.113.100/32"))])
        + relay.advertise_routes([IpAddressRange(A4("203.0.113.0"), A4("203.0.113.255"))])
    )
    branch_to_corp = udp4("192.0.2.1", "203.0.113.9")  # forwarded by the client
    assert client.check_outgoing(branch_to_corp) is Verdict.ACCEPT
    assert relay.check_incoming(branch_to_corp) is Verdict.ACCEPT
    corp_to_branch = udp4("203.0.113.9", "192.0.2.1")  # forwarded by the relay
    assert relay.check_outgoing(corp_to_branch) is Verdict.ACCEPT
    assert client.check_incoming(corp_to_branch) is Verdict.ACCEPT
    maintenance = udp4("192.0.2.200", "192.0.2.3")  # the relay's own address
    assert relay.check_outgoing(maintenance) is Verdict.ACCEPT
    assert client.check_incoming(maintenance) is Verdict.ACCEPT
    assert relay.check_outgoing(udp4("198.51.100.1", "192.0.2.3")) is (
        Verdict.DROP_SRC_NOT_ASSIGNED
    )


@pytest.mark.parametrize(
    "packet",
    [
        udp6("fe80::1", "2001:db8::1"),  # link-local source
        udp6("2001:db8:1::1", "fe80::2"),  # link-local destination
        icmp6("2001:db8:1::1", "ff02::1"),  # link-local all-nodes multicast (§7.2 MTU probe)
        udp4("169.254.1.1", "198.51.100.7"),
        udp4("192.0.2.11", "224.0.0.251"),  # local network control block (mDNS)
    ],
)
def test_link_local_never_forwarded(packet: bytes) -> None:
    client = ConnectIpSession(Role.CLIENT)
    relay = ConnectIpSession(Role.RELAY)
    client.receive_capsule_data(
        relay.assign_addresses(
            [AssignedAddress(0, V4("0.0.0.0/0")), AssignedAddress(0, V6("::/0"))]
        )
        + relay.advertise_routes([FULL_V4, FULL_V6])
    )
    assert relay.check_incoming(packet) is Verdict.DROP_LINK_LOCAL
    assert client.check_outgoing(packet) is Verdict.DROP_LINK_LOCAL


@pytest.mark.parametrize(
    "packet",
    [
        b"",
        b"\x45",
        b"\x60" + b"\x00" * 10,
        b"\x75" + b"\x00" * 30,  # version 7
        udp4("192.0.2.11", "8.8.8.8")[:-1],  # shorter than its Total Length
    ],
)
def test_malformed_packets_dropped(packet: bytes) -> None:
    client, relay = vpn_pair()
    assert relay.check_incoming(packet) is Verdict.DROP_MALFORMED
    assert client.check_outgoing(packet) is Verdict.DROP_MALFORMED


@settings(max_examples=200)
@given(st.binary(max_size=80))
def test_property_any_packet_gets_a_verdict(packet: bytes) -> None:
    client, relay = _PAIR
    assert isinstance(relay.check_incoming(packet), Verdict)
    assert isinstance(client.check_outgoing(packet), Verdict)


_PAIR = vpn_pair()
