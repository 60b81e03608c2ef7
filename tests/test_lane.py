"""netio/lane.py: the datagram lane between two real aioquic connections, in memory.

A client and a server :class:`QuicConnection` shake hands in memory (the
"network" is this file moving ``datagrams_to_send()`` output into the other
side's ``receive_datagram`` or its :class:`LaneTable`). Each side installs a
:class:`DatagramLane` once its handshake is confirmed, and the tests check that
the lane and aioquic agree: keys (packets of one side's aioquic are consumed by
the other side's lane and the other way round), state (what the lane consumed
and the ACKs it saw reach aioquic, packet numbers are never reused), and what
the lane must leave to aioquic (other frames, key updates until refreshed,
other addresses, duplicates, tampered bytes).
"""

from __future__ import annotations

import functools
from dataclasses import dataclass, field
from typing import Any

import pytest
from aioquic import tls
from aioquic.h3.connection import H3_ALPN
from aioquic.quic import events
from aioquic.quic.configuration import QuicConfiguration
from aioquic.quic.connection import QuicConnection, QuicConnectionState
from aioquic.quic.crypto import derive_key_iv_hp
from aioquic.quic.packet import QuicErrorCode, QuicFrameType
from aioquic.tls import CipherSuite
from cryptography import x509
from cryptography.hazmat.primitives.asymmetric import ec
from hypothesis import HealthCheck, event, given, settings
from hypothesis import strategies as st

from _fastpath import PacketBatch, QuicKeys, quic_protect
from netio import aioquic_internals
from netio.lane import MAX_IN_FLIGHT, DatagramLane, LaneTable
from tests.pki import Pki

Address = tuple[Any, ...]

ONE_RTT = tls.Epoch.ONE_RTT
CLIENT_ADDR: Address = ("1.2.3.4", 1234)
SERVER_ADDR: Address = ("5.6.7.8", 4433)
OTHER_ADDR: Address = ("9.9.9.9", 9999)
SUITES = [
    CipherSuite.AES_128_GCM_SHA256,
    CipherSuite.AES_256_GCM_SHA384,
    CipherSuite.CHACHA20_POLY1305_SHA256,
]
#: HTTP Datagram framing the lane writes in front of each packet (quarter stream ID 0,
#: context ID 0).
PREFIX = b"\x00\x00"


# -- an in-memory connection pair ------------------------------------------------------


@functools.cache
def _certificate() -> tuple[x509.Certificate, ec.EllipticCurvePrivateKey]:
    return Pki().issue("relay.test")


def _configuration(
    suite: CipherSuite, *, is_client: bool, max_datagram_frame_size: int | None
) -> QuicConfiguration:
    config = QuicConfiguration(
        is_client=is_client,
        alpn_protocols=H3_ALPN,
        max_datagram_frame_size=max_datagram_frame_size,
        max_datagram_size=1452,
        cipher_suites=[suite],
        server_name="relay.test" if is_client else None,
        verify_mode=0 if is_client else None,
    )
    if not is_client:
        config.certificate, config.private_key = _certificate()
    return config


@dataclass(eq=False)
class Peer:
    """One side: its aioquic connection, the address its datagrams come from, its lane."""

    quic: QuicConnection
    addr: Address
    table: LaneTable = field(default_factory=LaneTable)
    lane: DatagramLane | None = None
    #: What the lane delivered (DATAGRAM payloads) and sent (packet, destination).
    delivered: list[bytes] = field(default_factory=list)
    wire: list[tuple[bytes, Address]] = field(default_factory=list)
    #: Where :meth:`outgoing` left aioquic's clock (pacing moves it by microseconds).
    clock: float = 0.0

    def install(self) -> DatagramLane | None:
        lane = DatagramLane.install(
            self.quic, send=self._send, deliver=self.delivered.append, owner=self
        )
        if lane is not None:
            self.lane = lane
            self.table.add(lane)
        return lane

    def _send(self, packets: list[bytes], addr: Address) -> None:
        self.wire.extend((bytes(data), addr) for data in packets)

    @property
    def the_lane(self) -> DatagramLane:
        assert self.lane is not None
        return self.lane

    def outgoing(self, now: float) -> list[bytes]:
        """What aioquic sends now (all to the other side).

        aioquic paces its packets microseconds apart: the clock moves on by as
        much (never more than a millisecond) until it has nothing left to send.
        """
        now = max(now, self.clock)
        packets: list[bytes] = []
        for _ in range(1000):
            sent = self.quic.datagrams_to_send(now=now)
            packets += [data for data, _ in sent]
            timer = self.quic.get_timer()
            if sent:
                now += 1e-5
            elif timer is not None and now < timer <= now + 1e-3:
                now = timer  # the pacer's
            else:
                self.clock = now
                return packets
        raise AssertionError("aioquic never stopped sending")

    def lane_sent(self) -> list[bytes]:
        packets = [data for data, _ in self.wire]
        self.wire.clear()
        return packets

    def events(self) -> list[events.QuicEvent]:
        out = []
        while (event := self.quic.next_event()) is not None:
            out.append(event)
        return out

    def datagrams(self) -> list[bytes]:
        """DATAGRAM payloads aioquic received since the last call (other events dropped)."""
        return [e.data for e in self.events() if isinstance(e, events.DatagramFrameReceived)]

    def space(self) -> Any:
        return self.quic._spaces[ONE_RTT]

    def sent_packet_numbers(self) -> set[int]:
        return set(self.space().sent_packets)

    def receive(self, packets: list[bytes], src: Address, now: float) -> list[bool]:
        """One receive batch as the endpoint runs it: the lane first, then aioquic; sync."""
        consumed = []
        for data in packets:
            taken = self.table.intercept(data, src)
            if not taken:
                self.quic.receive_datagram(data, src, now=now)
            consumed.append(taken)
        self.table.end_batch(now)
        if self.lane is not None and not all(consumed):
            assert self.lane.refresh()  # aioquic touched the connection
            self.table.index(self.lane)
        return consumed


def pair(
    suite: CipherSuite = CipherSuite.AES_128_GCM_SHA256,
    *,
    capture: bool = True,
    server_max_datagram_frame_size: int | None = 65536,
) -> tuple[Peer, Peer]:
    """A client and a server connection, secrets captured, not connected yet."""
    client = QuicConnection(
        configuration=_configuration(suite, is_client=True, max_datagram_frame_size=65536)
    )
    if capture:
        aioquic_internals.capture_one_rtt_secrets(client)
    server = QuicConnection(
        configuration=_configuration(
            suite, is_client=False, max_datagram_frame_size=server_max_datagram_frame_size
        ),
        original_destination_connection_id=client.original_destination_connection_id,
    )
    if capture:
        aioquic_internals.capture_one_rtt_secrets(server)
    return Peer(client, CLIENT_ADDR), Peer(server, SERVER_ADDR)


def shuttle(client: Peer, server: Peer, now: float) -> None:
    """Move datagrams both ways through aioquic only, until neither side sends."""
    for _ in range(50):
        moved = False
        for sender, receiver in ((client, server), (server, client)):
            for data, _ in sender.quic.datagrams_to_send(now=now):
                receiver.quic.receive_datagram(data, sender.addr, now=now)
                moved = True
        if not moved:
            return
    raise AssertionError("the connections never went quiet")


def handshake(client: Peer, server: Peer) -> None:
    client.quic.connect(SERVER_ADDR, now=0.0)
    shuttle(client, server, 0.0)
    shuttle(client, server, 1.0)  # delayed ACKs, HANDSHAKE_DONE
    shuttle(client, server, 2.0)
    assert client.quic._handshake_confirmed and server.quic._handshake_confirmed


def connected(
    suite: CipherSuite = CipherSuite.AES_128_GCM_SHA256,
    *,
    lanes: bool = True,
    server_max_datagram_frame_size: int | None = 65536,
) -> tuple[Peer, Peer]:
    """A confirmed handshake, events drained, and (by default) a lane on each side."""
    client, server = pair(suite, server_max_datagram_frame_size=server_max_datagram_frame_size)
    handshake(client, server)
    for peer in (client, server):
        peer.events()
        if lanes:
            assert peer.install() is not None
    return client, server


def ip_batch(payloads: list[bytes]) -> PacketBatch:
    batch = PacketBatch(slots=max(1, len(payloads)), slot_size=2048, headroom=16)
    for payload in payloads:
        batch.append(payload)
    return batch


def lane_send(peer: Peer, payloads: list[bytes]) -> list[bytes]:
    """Packets ``peer``'s lane protects for ``payloads`` (all of them, to the other side)."""
    sent = peer.the_lane.send(ip_batch(payloads), list(range(len(payloads))), PREFIX)
    assert sent == len(payloads)
    destination = aioquic_internals.active_peer_address(peer.quic)
    assert destination is not None and destination != peer.addr
    assert [addr for _, addr in peer.wire] == [destination] * sent
    return peer.lane_sent()


def aioquic_send(peer: Peer, payloads: list[bytes], now: float) -> list[bytes]:
    """Packets ``peer``'s aioquic builds for DATAGRAM frames ``payloads``."""
    for payload in payloads:
        peer.quic.send_datagram_frame(payload)
    return peer.outgoing(now)


def send_keys(peer: Peer) -> QuicKeys:
    """``peer``'s current 1-RTT send keys, straight from aioquic (to forge packets)."""
    ctx = peer.quic._cryptos[ONE_RTT].send
    assert ctx.cipher_suite is not None and ctx.secret is not None and ctx.version is not None
    secrets = aioquic_internals.one_rtt_secrets(peer.quic)
    assert secrets is not None
    key, iv, _ = derive_key_iv_hp(
        cipher_suite=ctx.cipher_suite, secret=ctx.secret, version=ctx.version
    )
    _, _, hp = derive_key_iv_hp(
        cipher_suite=ctx.cipher_suite, secret=secrets.send_secret, version=ctx.version
    )
    return QuicKeys(int(ctx.cipher_suite), key, iv, hp, ctx.key_phase)


def forge(peer: Peer, frames: bytes) -> bytes:
    """A short-header packet ``peer`` could have sent with ``frames`` (its next PN)."""
    pn = aioquic_internals.reserve_packet_numbers(peer.quic, 1)
    return quic_protect(
        send_keys(peer),
        aioquic_internals.peer_cid(peer.quic),
        pn,
        aioquic_internals.largest_acked(peer.quic),
        frames,
    )


# -- 1. install and keys ---------------------------------------------------------------


def test_lane_installs_only_once_the_handshake_is_confirmed() -> None:
    client, server = pair()
    client.quic.connect(SERVER_ADDR, now=0.0)
    secrets_before_confirmation = False
    now = 0.0
    for _ in range(20):
        for sender, receiver in ((client, server), (server, client)):
            for data in sender.outgoing(now):
                receiver.quic.receive_datagram(data, sender.addr, now=now)
            for peer in (client, server):
                if peer.lane is not None:
                    continue
                confirmed = peer.quic._handshake_confirmed
                if not confirmed and aioquic_internals.one_rtt_secrets(peer.quic) is not None:
                    secrets_before_confirmation = True
                assert (peer.install() is not None) == confirmed
        if client.lane is not None and server.lane is not None:
            break
        now += 0.01
    assert client.lane is not None and server.lane is not None
    # The client had both 1-RTT keys before HANDSHAKE_DONE: readiness, not keys, gated it.
    assert secrets_before_confirmation
    assert client.the_lane.cid_length == server.the_lane.cid_length == 8
    assert client.the_lane.host_cids == {c.cid for c in client.quic._host_cids}
    assert len(client.table) == len(server.table) == 1


def test_no_lane_without_captured_secrets() -> None:
    client, server = pair(capture=False)
    handshake(client, server)
    assert client.install() is None and server.install() is None
    # Captured too late (after connect(): TLS already holds aioquic's callback).
    client, server = pair(capture=False)
    client.quic.connect(SERVER_ADDR, now=0.0)
    aioquic_internals.capture_one_rtt_secrets(client.quic)
    shuttle(client, server, 0.0)
    shuttle(client, server, 1.0)
    assert client.quic._handshake_confirmed
    assert client.install() is None


@pytest.mark.parametrize("suite", SUITES)
def test_lane_keys_match_aioquic_both_ways(suite: CipherSuite) -> None:
    client, server = connected(suite)
    now = 2.0
    payloads = [b"\x00\x00" + bytes(range(200)), b"a" * 1300, b"", b"z"]
    for sender, receiver in ((client, server), (server, client)):
        # aioquic -> lane
        packets = aioquic_send(sender, payloads, now)
        assert packets
        assert all(receiver.table.intercept(p, sender.addr) for p in packets)
        consumed = len(packets)
        assert receiver.delivered == payloads
        assert receiver.quic.next_event() is None  # aioquic never saw them
        receiver.delivered.clear()
        # lane -> aioquic
        ip = [b"\x45" + bytes(39), b"x" * 1300, b"y"]
        packets = lane_send(sender, ip)
        assert len(packets) == 3
        for p in packets:
            receiver.quic.receive_datagram(p, sender.addr, now=now)
        assert receiver.datagrams() == [PREFIX + p for p in ip]
        # lane -> lane
        packets = lane_send(sender, ip)
        assert all(receiver.table.intercept(p, sender.addr) for p in packets)
        assert receiver.delivered == [PREFIX + p for p in ip]
        receiver.delivered.clear()
        for peer in (client, server):
            peer.table.end_batch(now)
        stats = receiver.the_lane.stats
        assert stats["received"] == consumed + 3 and stats["datagrams_received"] == 4 + 3
        assert stats["handed_to_aioquic"] == 0 and sender.the_lane.stats["sent"] == 6
        now += 0.1
    for peer in (client, server):
        assert peer.quic._state == QuicConnectionState.CONNECTED
        assert not any(isinstance(e, events.ConnectionTerminated) for e in peer.events())


def test_bound_session_gets_its_packets_in_a_batch() -> None:
    client, server = connected()
    now = 2.0
    batches: list[list[bytes]] = []

    def sink(batch: PacketBatch) -> None:
        batches.append([bytes(batch.view(i)) for i in range(batch.count)])

    server.the_lane.bind(PREFIX, sink)
    ip = [b"\x45" + bytes(39), b"x" * 1300]
    other = b"\x04\x00other session"  # quarter stream ID 4
    packets = lane_send(client, ip) + aioquic_send(client, [PREFIX + b"y", other], now)
    assert all(server.table.intercept(p, CLIENT_ADDR) for p in packets)
    assert server.delivered == [other] and batches == []
    # A replay within the batch adds nothing.
    assert server.table.intercept(packets[0], CLIENT_ADDR)
    server.table.end_batch(now)
    assert batches == [[*ip, b"y"]]
    assert server.the_lane.stats["datagrams_received"] == 4
    server.the_lane.unbind()
    packets = lane_send(client, [b"z"])
    assert server.table.intercept(packets[0], CLIENT_ADDR)
    server.table.end_batch(now)
    assert server.delivered == [other, PREFIX + b"z"] and len(batches) == 1


def test_unbound_lane_delivers_every_payload() -> None:
    """Without a bound session every DATAGRAM payload reaches ``deliver``, whatever it is."""
    client, server = connected()
    payloads = [b"\xff" + bytes(20), b"\xff", b"\x00\x00\xff", b"\xfe\xff"]
    packets = aioquic_send(client, payloads, 2.0)
    assert all(server.table.intercept(p, CLIENT_ADDR) for p in packets)
    server.table.end_batch(2.0)
    assert server.delivered == payloads


# -- 2. sync with aioquic --------------------------------------------------------------


def test_consumed_packets_are_acknowledged_by_aioquic() -> None:
    client, server = connected()
    now = 10.0
    space = server.space()
    close_at = server.quic._close_at
    assert close_at is not None
    before = client.sent_packet_numbers()
    packets = [p for i in range(5) for p in aioquic_send(client, [b"d%d" % i], now)]
    pns = client.sent_packet_numbers() - before
    assert len(pns) == len(packets) == 5
    assert all(server.table.intercept(p, CLIENT_ADDR) for p in packets)
    # In aioquic's duplicate window at once (a replay later in the batch is refused),
    # acknowledged only once end_batch() tells aioquic.
    assert all(pn in space.received_packets for pn in pns)
    assert not any(pn in space.ack_queue for pn in pns)
    assert space.ack_at is None and space.largest_received_packet < min(pns)
    assert server.table.end_batch(now) == [server.lane]
    assert server.table.end_batch(now) == []  # nothing new
    assert all(pn in space.received_packets and pn in space.ack_queue for pn in pns)
    assert space.largest_received_packet == max(pns)
    assert space.largest_received_time == now
    assert space.ack_at == now + server.quic._ack_delay  # DATAGRAM frames elicit an ACK
    # The idle timer was pushed back as for any received packet.
    assert server.quic._close_at == now + server.quic._idle_timeout() > close_at
    # aioquic's own ACK covers them: the client's loss recovery forgets them.
    assert pns <= client.sent_packet_numbers()
    replies = server.outgoing(now + 0.1)
    assert replies
    for reply in replies:
        client.quic.receive_datagram(reply, SERVER_ADDR, now=now + 0.1)
    assert not pns & client.sent_packet_numbers()
    assert server.space().ack_at is None


def test_consumed_ping_is_acknowledged() -> None:
    client, server = connected()
    client.quic.send_ping(7)
    packets = client.outgoing(3.0)
    assert server.receive(packets, CLIENT_ADDR, 3.0) == [True] * len(packets)
    client.receive(server.outgoing(3.1), SERVER_ADDR, 3.1)
    assert any(isinstance(e, events.PingAcknowledged) and e.uid == 7 for e in client.events())


def test_ack_only_packets_do_not_elicit_an_ack() -> None:
    client, server = connected()
    # The server's stream data makes the client owe an ACK; it sends it alone.
    sid = server.quic.get_next_available_stream_id()
    server.quic.send_stream_data(sid, b"elicit")
    client.receive(server.outgoing(4.0), SERVER_ADDR, 4.0)
    acks = client.outgoing(4.1)
    assert acks
    assert server.receive(acks, CLIENT_ADDR, 4.1) == [True] * len(acks)  # ACK frames: lane
    assert server.space().ack_at is None
    assert server.outgoing(5.0) == []


def test_acks_seen_by_the_lane_reach_loss_recovery() -> None:
    client, server = connected()
    t0 = 20.0
    sid = server.quic.get_next_available_stream_id()
    server.quic.send_stream_data(sid, b"hello")
    before = server.sent_packet_numbers()
    for p in server.outgoing(t0):
        client.quic.receive_datagram(p, SERVER_ADDR, now=t0)
    stream_pns = server.sent_packet_numbers() - before
    assert stream_pns
    rtt_samples = server.quic._loss._rtt_latest
    # 50 ms later the client's aioquic sends a DATAGRAM with the ACK it owes.
    t1 = t0 + 0.05
    packets = aioquic_send(client, [b"carrier"], t1)
    assert all(server.table.intercept(p, CLIENT_ADDR) for p in packets)
    assert server.delivered == [b"carrier"]
    assert stream_pns <= server.sent_packet_numbers()  # not synced yet
    server.table.end_batch(t1)
    assert not stream_pns & server.sent_packet_numbers()
    assert server.space().largest_acked_packet == max(stream_pns)
    loss = server.quic._loss
    assert loss._rtt_latest != rtt_samples
    # latest RTT 50 ms, less the ACK delay the client reported (capped at max_ack_delay)
    assert loss._rtt_latest == pytest.approx(0.05 - min(0.05, loss.max_ack_delay), abs=1e-3)
    assert server.quic._state == QuicConnectionState.CONNECTED


def test_lane_piggybacks_the_ack_aioquic_owes() -> None:
    client, server = connected()
    t0 = 30.0
    sid = server.quic.get_next_available_stream_id()
    server.quic.send_stream_data(sid, b"hello")
    before = server.sent_packet_numbers()
    client.receive(server.outgoing(t0), SERVER_ADDR, t0)
    stream_pns = server.sent_packet_numbers() - before
    assert client.space().ack_at is not None
    packets = lane_send(client, [b"with an ack"])
    assert client.the_lane.stats["acks_sent"] == 1
    assert client.space().ack_at is None  # aioquic need not send it again
    assert server.receive(packets, CLIENT_ADDR, t0 + 0.01) == [True]
    assert server.delivered == [PREFIX + b"with an ack"]
    assert not stream_pns & server.sent_packet_numbers()
    assert client.outgoing(t0 + 1.0) == []  # no separate ACK from aioquic
    # The next lane packet carries no ACK: nothing is owed.
    lane_send(client, [b"no ack"])
    assert client.the_lane.stats["acks_sent"] == 1


def test_lane_packet_numbers_come_from_aioquic() -> None:
    client, server = connected()
    now = 40.0
    first = client.quic._packet_number
    packets = lane_send(client, [b"l1", b"l2", b"l3"])
    assert client.quic._packet_number == first + 3
    # The first one through the server's aioquic, the rest through its lane.
    server.quic.receive_datagram(packets[0], CLIENT_ADDR, now=now)
    assert server.datagrams() == [PREFIX + b"l1"]
    assert server.receive(packets[1:], CLIENT_ADDR, now) == [True, True]
    assert server.delivered == [PREFIX + b"l2", PREFIX + b"l3"]
    space = server.space()
    assert all(pn in space.received_packets for pn in range(first, first + 3))
    assert space.largest_received_packet == first + 2
    # aioquic's next packet follows the lane's, and the server takes it.
    before = client.sent_packet_numbers()
    sid = client.quic.get_next_available_stream_id()
    client.quic.send_stream_data(sid, b"after the lane", end_stream=True)
    stream_packets = client.outgoing(now)
    new = client.sent_packet_numbers() - before
    assert new and min(new) >= first + 3
    assert server.receive(stream_packets, CLIENT_ADDR, now) == [False] * len(stream_packets)
    got = [e for e in server.events() if isinstance(e, events.StreamDataReceived)]
    assert b"".join(e.data for e in got) == b"after the lane"
    assert all(pn in space.received_packets for pn in new)
    # And the lane's next packets follow aioquic's.
    first = client.quic._packet_number
    assert first > max(new)
    assert server.receive(lane_send(client, [b"l4"]), CLIENT_ADDR, now) == [True]
    assert first in space.received_packets


def test_lane_stops_at_max_in_flight() -> None:
    client, server = connected()
    acked = aioquic_internals.largest_acked(client.quic)
    # As if the lane had sent that many packets the server never acknowledged.
    aioquic_internals.reserve_packet_numbers(
        client.quic, acked + MAX_IN_FLIGHT - 2 - client.quic._packet_number
    )
    lane = client.the_lane
    assert lane.send(ip_batch([b"1", b"2", b"3", b"4", b"5"]), [0, 1, 2, 3, 4], PREFIX) == 2
    assert lane.stats["window_full"] == 3 and lane.stats["sent"] == 2
    assert lane.send(ip_batch([b"6"]), [0], PREFIX) == 0
    assert lane.stats["window_full"] == 4
    packets = client.lane_sent()
    assert server.receive(packets, CLIENT_ADDR, 3.0) == [True, True]
    assert server.delivered == [PREFIX + b"1", PREFIX + b"2"]
    # The server's ACK opens the window again.
    client.receive(server.outgoing(3.1), SERVER_ADDR, 3.1)
    assert aioquic_internals.largest_acked(client.quic) == client.quic._packet_number - 1
    assert len(lane_send(client, [b"7"])) == 1


def test_table_routes_by_connection_id() -> None:
    (c1, s1), (c2, s2) = connected(), connected()
    table = LaneTable()
    for server in (s1, s2):
        table.add(server.the_lane)
    assert len(table) == 2
    p1 = aioquic_send(c1, [b"one"], 3.0)
    p2 = lane_send(c2, [b"two"])
    assert all(table.intercept(p, CLIENT_ADDR) for p in p1 + p2)
    assert s1.delivered == [b"one"] and s2.delivered == [PREFIX + b"two"]
    assert set(table.end_batch(3.0)) == {s1.lane, s2.lane}
    table.remove(s1.the_lane)
    assert len(table) == 1 and table.retired["received"] == 1
    assert not any(table.intercept(p, CLIENT_ADDR) for p in aioquic_send(c1, [b"gone"], 3.0))
    assert s1.delivered == [b"one"]


# -- 3. what the lane leaves to aioquic ------------------------------------------------


def test_stream_and_other_frames_go_to_aioquic_untouched() -> None:
    client, server = connected()
    now = 50.0
    sid = client.quic.get_next_available_stream_id()
    data = bytes(range(256)) * 20
    client.quic.send_stream_data(sid, data, end_stream=True)
    packets = client.outgoing(now)
    assert len(packets) > 1
    copies = [bytes(p) for p in packets]
    assert not any(server.table.intercept(p, CLIENT_ADDR) for p in packets)
    assert packets == copies
    for p in packets:
        server.quic.receive_datagram(p, CLIENT_ADDR, now=now)
    got = [e for e in server.events() if isinstance(e, events.StreamDataReceived)]
    assert b"".join(e.data for e in got) == data
    assert server.the_lane.stats["handed_to_aioquic"] == len(packets)
    assert server.delivered == [] and server.table.end_batch(now) == []
    # A DATAGRAM together with a stream frame: aioquic has the whole packet.
    client.quic.send_datagram_frame(b"mixed")
    client.quic.send_stream_data(sid + 4, b"s")
    packets = client.outgoing(now)
    assert len(packets) == 1
    assert server.receive(packets, CLIENT_ADDR, now) == [False]
    assert server.delivered == []
    mixed = server.events()
    assert [e.data for e in mixed if isinstance(e, events.DatagramFrameReceived)] == [b"mixed"]
    assert any(isinstance(e, events.StreamDataReceived) for e in mixed)
    # CONNECTION_CLOSE is aioquic's; the lane goes with the connection.
    client.quic.close(error_code=0, reason_phrase="bye")
    packets = client.outgoing(now)
    assert not any(server.table.intercept(p, CLIENT_ADDR) for p in packets)
    for p in packets:
        server.quic.receive_datagram(p, CLIENT_ADDR, now=now)
    assert server.quic._state == QuicConnectionState.DRAINING
    assert not server.the_lane.refresh()


@pytest.mark.parametrize("initiator", ["client", "server"])
def test_key_update_hands_packets_to_aioquic_until_refresh(initiator: str) -> None:
    client, server = connected(CipherSuite.CHACHA20_POLY1305_SHA256)
    a, b = (client, server) if initiator == "client" else (server, client)
    now = 60.0
    for generation in (1, 2):
        phase = generation % 2
        a.quic.request_key_update()
        packets = aioquic_send(a, [b"update %d" % generation], now)
        assert a.quic._cryptos[ONE_RTT].send.key_phase == phase
        assert a.the_lane.refresh()  # the initiator's lane follows its aioquic at once
        # The other side's lane has the old keys: aioquic takes the packet, updates.
        assert not any(b.table.intercept(p, a.addr) for p in packets)
        for p in packets:
            b.quic.receive_datagram(p, a.addr, now=now)
        assert b.datagrams() == [b"update %d" % generation]
        assert b.quic._cryptos[ONE_RTT].recv.key_phase == phase
        # ... and keeps taking them until the lane is refreshed.
        packets = aioquic_send(a, [b"before refresh"], now) + lane_send(a, [b"lane"])
        assert not any(b.table.intercept(p, a.addr) for p in packets)
        for p in packets:
            b.quic.receive_datagram(p, a.addr, now=now)
        assert b.datagrams() == [b"before refresh", PREFIX + b"lane"]
        assert b.delivered == []
        assert b.the_lane.refresh()
        for peer in (a, b):
            assert peer.the_lane.stats["reinstalls"] == 2 * generation
        # The new keys, both ways, lane to lane and lane to aioquic.
        for sender, receiver in ((a, b), (b, a)):
            packets = aioquic_send(sender, [b"aioquic"], now) + lane_send(sender, [b"lane"])
            assert all(receiver.table.intercept(p, sender.addr) for p in packets)
            assert receiver.delivered == [b"aioquic", PREFIX + b"lane"]
            receiver.delivered.clear()
            receiver.table.end_batch(now)
            for p in lane_send(sender, [b"to aioquic"]):
                receiver.quic.receive_datagram(p, sender.addr, now=now)
            assert receiver.datagrams() == [PREFIX + b"to aioquic"]
        now += 1.0
        shuttle(client, server, now)  # ACKs: the next update may start
        now += 1.0
    for peer in (client, server):
        assert peer.quic._state == QuicConnectionState.CONNECTED


def test_other_source_address_is_not_consumed() -> None:
    client, server = connected()
    now = 70.0
    packets = aioquic_send(client, [b"from elsewhere"], now)
    assert not any(server.table.intercept(p, OTHER_ADDR) for p in packets)
    assert server.delivered == []
    # aioquic takes it: NAT rebinding, the server validates the new path.
    for p in packets:
        server.quic.receive_datagram(p, OTHER_ADDR, now=now)
    assert server.datagrams() == [b"from elsewhere"]
    assert server.the_lane.refresh()
    server.table.index(server.the_lane)
    # Until the new path is validated the lane neither sends nor takes anything.
    assert server.the_lane.send(ip_batch([b"x"]), [0], PREFIX) == -1
    packets = aioquic_send(client, [b"old address"], now)
    assert not any(server.table.intercept(p, CLIENT_ADDR) for p in packets)
    client.addr = OTHER_ADDR
    for p in packets:
        server.quic.receive_datagram(p, OTHER_ADDR, now=now)
    shuttle(client, server, now + 0.1)  # PATH_CHALLENGE, PATH_RESPONSE
    assert server.the_lane.refresh()
    server.table.index(server.the_lane)
    assert aioquic_internals.active_peer_address(server.quic) == OTHER_ADDR
    packets = aioquic_send(client, [b"new path"], now + 0.2)
    assert not any(server.table.intercept(p, CLIENT_ADDR) for p in packets)
    assert all(server.table.intercept(p, OTHER_ADDR) for p in packets)
    assert server.delivered == [b"new path"]
    assert [addr for _, addr in server.wire] == []
    lane_send(server, [b"back"])


def test_duplicates_are_consumed_and_delivered_once() -> None:
    client, server = connected()
    now = 80.0
    (packet,) = aioquic_send(client, [b"once"], now)
    assert server.table.intercept(packet, CLIENT_ADDR)
    assert server.table.intercept(packet, CLIENT_ADDR)  # same batch
    assert server.delivered == [b"once"]
    server.table.end_batch(now)
    assert server.table.intercept(packet, CLIENT_ADDR)  # a later batch: aioquic knows it
    server.table.end_batch(now)
    assert server.delivered == [b"once"]
    stats = server.the_lane.stats
    assert stats["received"] == 1 and stats["duplicates"] == 2
    # A packet aioquic itself received, replayed to the lane.
    (packet,) = aioquic_send(client, [b"aioquic's"], now)
    server.quic.receive_datagram(packet, CLIENT_ADDR, now=now)
    assert server.datagrams() == [b"aioquic's"]
    assert server.table.intercept(packet, CLIENT_ADDR)
    assert server.delivered == [b"once"] and stats["duplicates"] == 3
    # A lane packet replayed to aioquic after the sync: aioquic drops it too.
    (packet,) = lane_send(client, [b"lane"])
    assert server.receive([packet], CLIENT_ADDR, now) == [True]
    server.quic.receive_datagram(packet, CLIENT_ADDR, now=now)
    assert server.datagrams() == []
    assert server.delivered == [b"once", PREFIX + b"lane"]


def _coalesced_behind_junk(packet: bytes) -> bytes:
    """``packet`` behind a junk 1200-byte Initial packet: aioquic skips to the second."""
    dcid = packet[1:9]
    body = bytes(1200)
    junk = b"\xc0" + (1).to_bytes(4, "big") + b"\x08" + dcid + b"\x00\x00"
    junk += (0x4000 | len(body)).to_bytes(2, "big") + body
    return junk + packet


@pytest.mark.parametrize("how", ["other-address", "coalesced"])
def test_replay_in_the_same_batch_is_not_delivered_again(how: str) -> None:
    """RFC 9000 §12.3: a packet number is processed once, whoever hands it over.

    The lane consumes a packet; a copy of it arrives in the same receive batch
    in a form the lane hands to aioquic — from another address (an on-path
    attacker replaying it), or coalesced behind a junk long-header packet — and
    aioquic must know the packet number already. Otherwise the payload is
    delivered twice and, from another address, the copy (carrying the highest
    packet number aioquic has seen) moves the connection to that address.
    """
    client, server = connected()
    now = 90.0
    (packet,) = aioquic_send(client, [b"replayed"], now)
    assert server.table.intercept(packet, CLIENT_ADDR)
    if how == "other-address":
        copy, src = packet, OTHER_ADDR
    else:
        copy, src = _coalesced_behind_junk(packet), CLIENT_ADDR
    assert not server.table.intercept(copy, src)
    server.quic.receive_datagram(copy, src, now=now)
    server.table.end_batch(now)
    assert server.delivered == [b"replayed"]
    assert server.datagrams() == [], "aioquic delivered a packet the lane had consumed"
    assert aioquic_internals.active_peer_address(server.quic) == CLIENT_ADDR


def test_no_lane_without_our_max_datagram_frame_size() -> None:
    """Without our max_datagram_frame_size the peer may send no DATAGRAM frame at
    all (aioquic closes the connection on one): the lane is not installed."""
    client, server = connected(server_max_datagram_frame_size=None, lanes=False)
    assert server.install() is None
    assert client.install() is not None  # the client did offer DATAGRAM frames


@pytest.mark.parametrize("limit", [50])
def test_lane_takes_exactly_the_datagram_frames_aioquic_accepts(limit: int) -> None:
    """max_datagram_frame_size (RFC 9221 §3, the whole frame): aioquic closes the
    connection on a larger frame. The lane must hand such packets over, never
    deliver them."""
    sizes: list[int | None] = [limit - 1, limit, limit + 1]
    for size in sizes:
        client, server = connected(server_max_datagram_frame_size=limit)
        data_len = 10 if size is None else size - 2  # type byte, 1-byte length (< 64)
        frame = b"\x31" + bytes([data_len]) + b"d" * data_len
        allowed = size is not None and limit is not None and size <= limit
        packet = forge(client, frame)
        assert server.table.intercept(packet, CLIENT_ADDR) == allowed, size
        if allowed:
            assert server.delivered == [b"d" * data_len]
            continue
        assert server.delivered == []
        server.quic.receive_datagram(packet, CLIENT_ADDR, now=3.0)
        assert server.quic._close_event is not None, "aioquic accepted it"
        assert server.quic._close_event.error_code == QuicErrorCode.PROTOCOL_VIOLATION
        assert server.quic._close_event.frame_type == QuicFrameType.DATAGRAM_WITH_LENGTH


# -- 4. fuzz ---------------------------------------------------------------------------


class FuzzWorld:
    """A connected pair and a pool of authentic client packets for the server's lane.

    Shared by the examples (a handshake per example would take a while).
    ``authentic`` maps each packet the client
    really sent to the payloads it carries, ``delivered`` holds those the lane has
    delivered: each may be delivered once, nothing else ever.
    """

    def __init__(self) -> None:
        self.client, self.server = connected()
        self.now = 100.0
        self.authentic: dict[bytes, list[bytes]] = {}
        self.pool: list[bytes] = []
        self.delivered: set[bytes] = set()
        client = self.client
        # Something for the client to acknowledge: its packets carry ACK frames too.
        sid = self.server.quic.get_next_available_stream_id()
        self.server.quic.send_stream_data(sid, b"acknowledge me")
        client.receive(self.server.outgoing(self.now), SERVER_ADDR, self.now)
        for i in range(40):
            # Large ones through the lane: aioquic's congestion window sees only its own.
            size = (i * 97) % (1300 if i % 3 == 0 else 300)
            payload = bytes([i % 0xFF]) + bytes((i + j) & 0xFF for j in range(size))
            if i % 3 == 0:
                packets = lane_send(client, [payload])
                self._add(packets, [PREFIX + payload])
            elif i % 7 == 1:
                client.quic.send_ping(i)
                self._add(client.outgoing(self.now), [])
            else:
                self._add(aioquic_send(client, [payload], self.now), [payload])
            self.now += 0.001
        assert len(self.pool) >= 40

    def _add(self, packets: list[bytes], payloads: list[bytes]) -> None:
        assert len(packets) == 1
        self.authentic[packets[0]] = payloads
        self.pool.append(packets[0])

    @property
    def cid(self) -> bytes:
        return aioquic_internals.peer_cid(self.client.quic)

    def alive(self) -> bool:
        quic = self.server.quic
        return quic._state == QuicConnectionState.CONNECTED and quic._close_event is None


_world: FuzzWorld | None = None


def fuzz_world() -> FuzzWorld:
    global _world
    if _world is None:
        _world = FuzzWorld()
    return _world


def mutate(packet: bytes, mutation: tuple[Any, ...], cid_length: int) -> bytes:
    kind, *args = mutation
    data = bytearray(packet)
    if kind == "flip":
        bit = args[0] % (8 * len(data))
        data[bit // 8] ^= 1 << (bit % 8)
    elif kind == "truncate":
        del data[args[0] % len(data) :]
    elif kind == "insert":
        at = args[0] % (len(data) + 1)
        data[at:at] = args[1]
    elif kind == "append":
        data += args[0]
    elif kind == "swap-cid":
        i, j = 1 + args[0] % cid_length, 1 + args[1] % cid_length
        data[i], data[j] = data[j], data[i]
    elif kind == "key-phase":
        data[0] ^= 0x04
    elif kind == "first-byte":
        data[0] = args[0]
    elif kind == "spin-bit":
        data[0] ^= 0x20
    else:
        assert kind == "identity"
    return bytes(data)


MUTATIONS = st.one_of(
    st.tuples(st.just("flip"), st.integers(0, 8 * 1500)),
    st.tuples(st.just("truncate"), st.integers(0, 1500)),
    st.tuples(st.just("insert"), st.integers(0, 1500), st.binary(min_size=1, max_size=8)),
    st.tuples(st.just("append"), st.binary(min_size=1, max_size=16)),
    st.tuples(st.just("swap-cid"), st.integers(0, 7), st.integers(0, 7)),
    st.tuples(st.just("key-phase")),
    st.tuples(st.just("first-byte"), st.integers(0, 255)),
    st.tuples(st.just("spin-bit")),
    st.tuples(st.just("identity")),
)
CASES = st.one_of(
    # a valid packet of the pool, mutated (or not)
    st.tuples(st.just("mutated"), st.integers(0, 1000), MUTATIONS),
    # random bytes, and random bytes behind a short header with the lane's CID
    st.tuples(st.just("random"), st.binary(max_size=1500)),
    st.tuples(st.just("random-cid"), st.integers(0, 255), st.binary(max_size=1400)),
)


def fuzz_datagram(world: FuzzWorld, case: tuple[Any, ...]) -> bytes:
    kind, *args = case
    if kind == "mutated":
        packet = world.pool[args[0] % len(world.pool)]
        return mutate(packet, args[1], len(world.cid))
    if kind == "random":
        return bytes(args[0])
    return bytes([0x40 | (args[0] & 0x3F)]) + world.cid + bytes(args[1])


@settings(
    max_examples=4000,
    deadline=None,
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large],
)
@given(case=CASES, sync=st.booleans())
def test_fuzz_intercept_delivers_only_authentic_packets_once(
    case: tuple[Any, ...], sync: bool
) -> None:
    world = fuzz_world()
    server = world.server
    data = fuzz_datagram(world, case)
    before = len(server.delivered)
    consumed = server.table.intercept(data, CLIENT_ADDR)
    delivered = server.delivered[before:]
    payloads = world.authentic.get(data)
    if payloads is None:
        # Not authentic: nothing delivered, and aioquic, which gets the bytes, finds
        # nothing in them either (and does not fail on them).
        assert not consumed and delivered == []
        event(f"{case[0]}: rejected")
        server.quic.receive_datagram(data, CLIENT_ADDR, now=world.now)
        assert server.datagrams() == []
        if server.the_lane.refresh():
            server.table.index(server.the_lane)
    else:
        assert consumed
        assert delivered == ([] if data in world.delivered else payloads)
        event("authentic: " + ("duplicate" if data in world.delivered else "delivered"))
        world.delivered.add(data)
    if sync:
        server.table.end_batch(world.now)
    assert server.the_lane.stats["received"] == len(world.delivered)
    # Nothing that failed authentication can have closed the connection.
    assert world.alive() and server.the_lane.refresh()
