"""Fail loudly when the installed aioquic lacks an internal masque-relay relies on.

``netio/aioquic_internals.py`` names every private aioquic attribute the relay and
client read (``relay/auth.py`` adds the client-certificate ones). This test runs a
real in-memory handshake between two aioquic connections and checks each name
on live objects, then exercises the accessors, so an aioquic upgrade that
renames or retypes one breaks here, with the name, rather than in production.
"""

from __future__ import annotations

from collections import deque
from importlib.metadata import version

from aioquic.h3.connection import H3_ALPN
from aioquic.quic.configuration import QuicConfiguration
from aioquic.quic.connection import QuicConnection
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


def _pair() -> tuple[QuicConnection, QuicConnection]:
    """A client and a server connection after a completed handshake (in memory)."""
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
    request_client_certificate(server)  # wraps _initialize: must still work
    client.connect(SERVER_ADDR, now=0.0)
    now = 0.0
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
    return client, server


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
