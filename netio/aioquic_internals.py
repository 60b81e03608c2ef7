"""Every private aioquic attribute masque-relay reads, in one place.

aioquic has no public API for these; the pinned range in pyproject.toml is the
one ``tests/test_aioquic_internals.py`` checks, and that test fails loudly when
an upgrade renames or retypes any of them.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from aioquic import tls
from aioquic.asyncio.protocol import QuicConnectionProtocol
from aioquic.quic.connection import QuicConnection
from cryptography import x509

# Names read below, listed for the internals test.
QUIC_CONNECTION_ATTRIBUTES = (
    "_max_datagram_size",  # UDP payload size the connection builds packets to
    "_remote_max_datagram_frame_size",  # peer's max_datagram_frame_size (RFC 9221 §3)
    "_peer_cid",  # connection ID we put in short headers (its length costs bytes)
    "_datagrams_pending",  # the unbounded deque behind send_datagram_frame()
    "_streams",  # stream ID -> QuicStream (see STREAM_ATTRIBUTES)
    "tls",  # the tls.Context (see TLS_CONTEXT_ATTRIBUTES); exists once connect() ran
)

# Names read on QuicConnection.tls (an aioquic.tls.Context), listed for the internals test.
TLS_CONTEXT_ATTRIBUTES = (
    "_peer_certificate",  # peer's end-entity x509.Certificate, set when its Certificate arrives
    "update_traffic_key_cb",  # called as each key is installed; the client's 1-RTT read key
    # comes after the server's Certificate/CertificateVerify/Finished, before our Finished
)


def max_udp_payload(quic: QuicConnection) -> int:
    """The UDP payload size this connection builds its packets to."""
    return int(quic._max_datagram_size)


def peer_max_datagram_frame_size(quic: QuicConnection) -> int | None:
    """The peer's max_datagram_frame_size transport parameter, if it sent one."""
    value = quic._remote_max_datagram_frame_size
    return None if value is None else int(value)


def peer_cid_length(quic: QuicConnection) -> int:
    """Length of the destination connection ID in our short-header packets."""
    return len(quic._peer_cid.cid)


def pending_datagram_count(quic: QuicConnection) -> int:
    """DATAGRAM frames queued in aioquic and not yet written into a packet."""
    return len(quic._datagrams_pending)


STREAM_ATTRIBUTES = (
    "_streams",  # QuicConnection: stream ID -> QuicStream
    "sender",  # QuicStream: its QuicStreamSender
    "_buffer",  # QuicStreamSender: bytes written and not yet acknowledged
)


def stream_send_buffered(quic: QuicConnection, stream_id: int) -> int:
    """Bytes queued on a stream that the peer has not acknowledged yet (0 if gone)."""
    stream = quic._streams.get(stream_id)
    if stream is None:
        return 0
    return len(stream.sender._buffer)


def peer_certificate(quic: QuicConnection) -> x509.Certificate | None:
    """The certificate the peer presented in this connection's handshake.

    None before the peer's Certificate message arrived, when the peer sent none
    (a client without a certificate) or when the session was resumed (PSK
    handshakes carry no certificate).
    """
    context: tls.Context | None = getattr(quic, "tls", None)
    if context is None:
        return None
    return context._peer_certificate


def on_client_handshake_verified(quic: QuicConnection, check: Callable[[], None]) -> None:
    """Run ``check()`` in a client handshake once the server is authenticated.

    aioquic has no certificate-verification hook. The closest point is the
    installation of the client's 1-RTT read key: aioquic does it right after it
    checked the server's CertificateVerify signature and Finished, and before it
    sends its own Finished (``tls.Context._client_handle_finished``). ``check``
    runs there; if it raises a :class:`aioquic.tls.Alert` the handshake fails
    with that alert (aioquic closes the connection with CRYPTO_ERROR + alert
    code, HandshakeCompleted never comes and nothing has been sent under 1-RTT
    keys).

    Call after ``QuicConnection.connect()`` (which creates ``quic.tls``) and
    before the first datagram from the server is received.
    """
    context: tls.Context | None = getattr(quic, "tls", None)
    if context is None:
        raise RuntimeError("the TLS context exists only after QuicConnection.connect()")
    if not quic.configuration.is_client:
        raise RuntimeError("on_client_handshake_verified() is for client connections")
    installed = context.update_traffic_key_cb

    def update_traffic_key(
        direction: tls.Direction, epoch: tls.Epoch, cipher_suite: tls.CipherSuite, secret: bytes
    ) -> None:
        if direction == tls.Direction.DECRYPT and epoch == tls.Epoch.ONE_RTT:
            check()
        installed(direction, epoch, cipher_suite, secret)

    context.update_traffic_key_cb = update_traffic_key


PROTOCOL_ATTRIBUTES = (
    "_quic",  # QuicConnectionProtocol: its QuicConnection
    "_loop",  # QuicConnectionProtocol: the event loop (clock for receive_datagram)
    "_process_events",  # QuicConnectionProtocol: hands QUIC events to quic_event_received
)


def receive_without_transmit(protocol: QuicConnectionProtocol, data: bytes, addr: Any) -> None:
    """What ``QuicConnectionProtocol.datagram_received`` does, minus its ``transmit()``.

    aioquic transmits after every datagram (a full pass over the connection, about
    a third of a receiver's CPU); a batched endpoint calls ``transmit()`` once per
    connection per batch instead.
    """
    protocol._quic.receive_datagram(data, addr, now=protocol._loop.time())
    protocol._process_events()
