"""Fail loudly when the installed aioquic lacks an internal masque-relay relies on.

``netio/aioquic_internals.py`` names every private aioquic attribute the relay and
client read (``relay/auth.py`` adds the client-certificate ones). This test runs a
real in-memory handshake between two aioquic connections and checks each name
on live objects, then exercises the accessors, so an aioquic upgrade that
renames or retypes one breaks here, with the name, rather than in production.
"""

from __future__ import annotations

import inspect
from collections import deque
from importlib.metadata import version

from aioquic import tls
from aioquic.h3.connection import H3_ALPN
from aioquic.quic import recovery
from aioquic.quic.configuration import QuicConfiguration
from aioquic.quic.connection import (
    QuicConnection,
    QuicConnectionId,
    QuicConnectionState,
    QuicNetworkPath,
)
from aioquic.quic.crypto import CryptoContext, CryptoPair
from aioquic.quic.packet import QuicProtocolVersion
from aioquic.quic.rangeset import RangeSet
from aioquic.tls import CipherSuite, cipher_suite_hash
from cryptography import x509

from netio import aioquic_internals
from netio.h3 import ConnectIpH3Connection, max_http_datagram_payload
from relay.auth import peer_certificates, request_client_certificate
from relay.certs import generate_self_signed

CLIENT_ADDR = ("1.2.3.4", 1234)
SERVER_ADDR = ("5.6.7.8", 4433)
#: Private names relay/auth.py reads for mTLS.
AUTH_CONNECTION_ATTRIBUTES = ("_initialize", "_is_client")
AUTH_TLS_ATTRIBUTES = ("_request_client_certificate", "_peer_certificate_chain")


def _pair(*, capture: bool = False) -> tuple[QuicConnection, QuicConnection]:
    """A client and a server connection after a completed handshake (in memory).

    ``capture``: catch their 1-RTT secrets for the datagram lane, as the relay and
    client do right after creating a connection.
    """
    cert, key = generate_self_signed(["relay.test"])
    server_config = QuicConfiguration(
        is_client=False,
        alpn_protocols=H3_ALPN,
        max_datagram_frame_size=65536,
        max_datagram_size=1452,
    )
    server_config.certificate = cert
    server_config.private_key = key
    client_config = QuicConfiguration(
        is_client=True,
        alpn_protocols=H3_ALPN,
        max_datagram_frame_size=65536,
        max_datagram_size=1452,
        server_name="relay.test",
        verify_mode=0,
    )
    client = QuicConnection(configuration=client_config)
    server = QuicConnection(
        configuration=server_config,
        original_destination_connection_id=client.original_destination_connection_id,
    )
    if capture:
        aioquic_internals.capture_one_rtt_secrets(client)
        aioquic_internals.capture_one_rtt_secrets(server)
    request_client_certificate(server)  # wraps _initialize: must still work
    client.connect(SERVER_ADDR, now=0.0)
    _shuttle(client, server, 0.0)
    return client, server


def _shuttle(client: QuicConnection, server: QuicConnection, now: float) -> float:
    """Move datagrams both ways until both sides are quiet; the time it took."""
    for _ in range(20):
        moved = False
        for sender, receiver, addr in (
            (client, server, CLIENT_ADDR),
            (server, client, SERVER_ADDR),
        ):
            for data, _ in sender.datagrams_to_send(now=now):
                receiver.receive_datagram(data, addr, now=now)
                moved = True
        now += 0.01
        if not moved:
            break
    return now


def test_aioquic_is_the_pinned_minor_version() -> None:
    assert version("aioquic").startswith("1.7."), "update netio/aioquic_internals.py first"


def test_every_named_internal_exists_on_live_objects() -> None:
    client, server = _pair()
    assert client._handshake_complete and server._handshake_complete
    for connection in (client, server):
        for name in aioquic_internals.QUIC_CONNECTION_ATTRIBUTES + AUTH_CONNECTION_ATTRIBUTES:
            assert hasattr(connection, name), f"QuicConnection.{name} is gone"
        for name in aioquic_internals.TLS_CONTEXT_ATTRIBUTES + AUTH_TLS_ATTRIBUTES:
            assert hasattr(connection.tls, name), f"tls.Context.{name} is gone"
    assert isinstance(client._datagrams_pending, deque)
    stream_id = client.get_next_available_stream_id()
    client.send_stream_data(stream_id, b"x" * 100)
    stream = client._streams[stream_id]
    for name in aioquic_internals.STREAM_ATTRIBUTES[1:]:
        assert hasattr(stream if name == "sender" else stream.sender, name), name


def test_accessors_read_the_right_values() -> None:
    client, server = _pair()
    assert aioquic_internals.max_udp_payload(client) == 1452
    assert aioquic_internals.peer_max_datagram_frame_size(client) == 65536
    assert aioquic_internals.peer_cid_length(client) == 8  # aioquic's default CID length
    assert aioquic_internals.pending_datagram_count(client) == 0
    client.send_datagram_frame(b"\x00" * 10)
    assert aioquic_internals.pending_datagram_count(client) == 1
    stream_id = client.get_next_available_stream_id()
    client.send_stream_data(stream_id, b"y" * 300)
    assert aioquic_internals.stream_send_buffered(client, stream_id) == 300
    assert aioquic_internals.stream_send_buffered(client, 999_996) == 0
    assert isinstance(aioquic_internals.peer_certificate(client), x509.Certificate)
    # The server asked for a client certificate; this client sent none.
    assert peer_certificates(server) == (None, [])
    # The datagram room our MTU logic computes fits aioquic's own packet builder.
    h3 = ConnectIpH3Connection(client)
    room = max_http_datagram_payload(client, 0)
    assert 1280 < room < 1452
    h3.send_datagram(0, b"\x00" + b"p" * (room - 1))
    sent = client.datagrams_to_send(now=1.0)
    assert aioquic_internals.pending_datagram_count(client) == 0, "did not fit one packet"
    assert all(len(data) <= 1452 for data, _ in sent)


def test_every_lane_internal_exists_with_the_types_the_lane_relies_on() -> None:
    client, server = _pair(capture=True)
    for connection in (client, server):
        assert connection._handshake_confirmed, "the lane starts after confirmation"
        for name in aioquic_internals.LANE_CONNECTION_ATTRIBUTES:
            assert hasattr(connection, name), f"QuicConnection.{name} is gone"
        space = connection._spaces[tls.Epoch.ONE_RTT]
        for name in aioquic_internals.LANE_SPACE_ATTRIBUTES:
            assert hasattr(space, name), f"QuicPacketSpace.{name} is gone"
        pair = connection._cryptos[tls.Epoch.ONE_RTT]
        assert isinstance(pair, CryptoPair)
        for context in (pair.recv, pair.send):
            assert isinstance(context, CryptoContext)
            for name in aioquic_internals.LANE_CRYPTO_ATTRIBUTES:
                assert hasattr(context, name), f"CryptoContext.{name} is gone"
            assert isinstance(context.cipher_suite, CipherSuite)
            assert isinstance(context.secret, bytes)
            assert len(context.secret) == cipher_suite_hash(context.cipher_suite).digest_size
            assert context.key_phase == 0 and isinstance(context.key_phase, int)
            assert context.is_valid() is True

        # The connection.
        assert connection.tls.update_traffic_key_cb == connection._update_traffic_key
        assert isinstance(connection._packet_number, int) and connection._packet_number > 0
        assert isinstance(connection._host_cids, list)
        assert all(isinstance(c, QuicConnectionId) for c in connection._host_cids)
        assert all(isinstance(c.cid, bytes) for c in connection._host_cids)
        assert isinstance(connection._peer_cid, QuicConnectionId)
        assert isinstance(connection._peer_cid.cid, bytes)
        paths = connection._network_paths
        assert isinstance(paths, list) and isinstance(paths[0], QuicNetworkPath)
        assert paths[0].is_validated is True
        assert paths[0].addr == (SERVER_ADDR if connection is client else CLIENT_ADDR)
        loss = connection._loss
        assert isinstance(loss, recovery.QuicPacketRecovery)
        assert isinstance(loss.peer_completed_address_validation, bool)
        params = inspect.signature(loss.on_ack_received).parameters
        assert {"ack_rangeset", "ack_delay", "now", "space"} <= set(params)
        assert isinstance(connection._close_at, float)
        assert isinstance(connection._idle_timeout(), float)
        assert isinstance(connection._ack_delay, float)
        assert isinstance(connection._ack_eliciting_sent_since_receipt, bool)
        assert isinstance(connection._local_ack_delay_exponent, int)
        assert isinstance(connection._remote_ack_delay_exponent, int)
        assert connection._handshake_confirmed is True
        assert connection._state == QuicConnectionState.CONNECTED
        config = connection._configuration
        assert isinstance(config, QuicConfiguration)
        assert config.connection_id_length == 8 and config.max_datagram_frame_size == 65536
        assert connection._version == QuicProtocolVersion.VERSION_1  # one_rtt_secrets()

        # Its application packet space.
        assert isinstance(space, recovery.QuicPacketSpace) and space.discarded is False
        assert isinstance(space.ack_queue, RangeSet)
        assert isinstance(space.largest_received_packet, int)
        assert space.largest_received_packet in space.received_packets
        assert space.largest_received_packet + 1 not in space.received_packets
        space.received_packets.add(space.largest_received_packet + 1)  # record_received()
        assert isinstance(space.largest_received_time, float)
        assert isinstance(space.expected_packet_number, int)
        assert isinstance(space.largest_acked_packet, int)
        assert space.ack_at is None or isinstance(space.ack_at, float)
        assert isinstance(space.sent_packets, dict)  # ack_received() acknowledges there
    # record_received() trims the ACK ranges as aioquic does.
    assert isinstance(recovery.MAX_ACK_RANGES, int)
    assert callable(RangeSet.shift)


def test_capture_one_rtt_secrets_catches_what_aioquic_installed() -> None:
    client, server = _pair(capture=True)
    captured = {}
    for connection in (client, server):
        secrets = aioquic_internals.one_rtt_secrets(connection)
        assert secrets is not None
        pair = connection._cryptos[tls.Epoch.ONE_RTT]
        assert pair.recv.cipher_suite is not None and pair.send.cipher_suite is not None
        assert secrets.recv_secret == pair.recv.secret
        assert secrets.send_secret == pair.send.secret
        assert secrets.cipher_suite == int(pair.recv.cipher_suite) == int(pair.send.cipher_suite)
        assert secrets.version == QuicProtocolVersion.VERSION_1
        assert aioquic_internals.crypto_state(connection, send=False) == (
            secrets.cipher_suite,
            secrets.recv_secret,
            0,
        )
        assert aioquic_internals.lane_ready(connection)
        captured[connection] = secrets
    # One side's receive secret is the other's send secret.
    assert captured[client].recv_secret == captured[server].send_secret
    assert captured[client].send_secret == captured[server].recv_secret
    assert captured[client].recv_secret != captured[client].send_secret
    # A key update changes aioquic's secrets, not the captured (first) ones, which
    # the header protection keys come from.
    client.request_key_update()
    client.send_ping(1)
    _shuttle(client, server, 2.0)
    for connection in (client, server):
        pair = connection._cryptos[tls.Epoch.ONE_RTT]
        assert pair.recv.key_phase == pair.send.key_phase == 1
        assert pair.recv.secret != captured[connection].recv_secret
        assert aioquic_internals.one_rtt_secrets(connection) == captured[connection]
    # Without the capture (or with it after the first datagram) there is nothing.
    plain_client, plain_server = _pair()
    assert aioquic_internals.one_rtt_secrets(plain_client) is None
    aioquic_internals.capture_one_rtt_secrets(plain_server)
    assert aioquic_internals.one_rtt_secrets(plain_server) is None


def test_lane_accessors_read_the_right_values() -> None:
    client, server = _pair(capture=True)
    assert aioquic_internals.host_cid_length(client) == 8
    assert client.host_cid in aioquic_internals.host_cids(client)
    assert aioquic_internals.peer_cid(client) == client._peer_cid.cid
    assert aioquic_internals.peer_cid(client) in aioquic_internals.host_cids(server)
    assert aioquic_internals.active_peer_address(client) == SERVER_ADDR
    assert aioquic_internals.active_peer_address(server) == CLIENT_ADDR
    assert aioquic_internals.local_max_datagram_frame_size(server) == 65536
    space = server._spaces[tls.Epoch.ONE_RTT]
    largest = aioquic_internals.largest_received(server)
    assert largest == space.largest_received_packet >= 0
    assert aioquic_internals.is_duplicate(server, largest)
    assert not aioquic_internals.is_duplicate(server, largest + 1)
    # Packet numbers the lane used: aioquic's counter moves on, the peer's ACKs them.
    first = aioquic_internals.next_packet_number(client)
    assert aioquic_internals.reserve_packet_numbers(client, 3) == first
    assert aioquic_internals.next_packet_number(client) == first + 3
    window = aioquic_internals.duplicate_window(server)
    assert window is space.received_packets
    for pn in (first, first + 2):  # what the lane does the moment it consumes a packet
        window.add(pn)
    aioquic_internals.record_received(server, [first + 2, first], True, 5.0)
    assert space.largest_received_packet == first + 2 and space.largest_received_time == 5.0
    assert aioquic_internals.is_duplicate(server, first + 2)
    assert not aioquic_internals.is_duplicate(server, first + 1)
    assert space.ack_at == 5.0 + server._ack_delay
    assert server._close_at == 5.0 + server._idle_timeout()
    due = aioquic_internals.ack_due(server, 5.001)
    assert due is not None
    ranges, delay = due
    assert ranges == list(space.ack_queue)
    acked = [pn for r in ranges for pn in r]
    assert first in acked and first + 2 in acked and first + 1 not in acked
    assert delay == int(0.001 * 1000000) >> server._local_ack_delay_exponent
    aioquic_internals.ack_sent(server)
    assert aioquic_internals.ack_due(server, 5.002) is None
    # An ACK frame the lane saw, for packets aioquic sent: loss recovery forgets them.
    client.send_ping(2)
    sent = [data for data, _ in client.datagrams_to_send(now=6.0)]
    assert sent
    client_space = client._spaces[tls.Epoch.ONE_RTT]
    pns = sorted(client_space.sent_packets)
    assert pns and pns[0] >= first + 3
    aioquic_internals.ack_received(client, ((pns[0], pns[-1] + 1),), 0, 6.05)
    assert not client_space.sent_packets
    assert aioquic_internals.largest_acked(client) == pns[-1]
    assert abs(client._loss._rtt_latest - 0.05) < 1e-9  # an RTT sample was taken
