"""Every private aioquic attribute masque-relay reads, in one place.

aioquic has no public API for these; the pinned range in pyproject.toml is the
one ``tests/test_aioquic_internals.py`` checks, and that test fails loudly when
an upgrade renames or retypes any of them.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from aioquic import tls
from aioquic.asyncio.protocol import QuicConnectionProtocol
from aioquic.quic.connection import QuicConnection, QuicConnectionState
from aioquic.quic.crypto import derive_key_iv_hp
from aioquic.quic.packet import QuicProtocolVersion
from aioquic.quic.rangeset import RangeSet
from aioquic.quic.recovery import MAX_ACK_RANGES
from aioquic.tls import CipherSuite
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


# -- the datagram lane (netio/lane.py) ---------------------------------------------------
#
# The lane reads keys, connection IDs, the path and packet-number state, and
# writes back what it received, what ACKs it saw and which packet numbers it
# used. These are all the names it touches.

LANE_CONNECTION_ATTRIBUTES = (
    "_update_traffic_key",  # bound method handed to tls.Context in _initialize(); wrapped
    "_cryptos",  # epoch -> CryptoPair (recv/send CryptoContext: cipher_suite, secret, key_phase)
    "_spaces",  # epoch -> QuicPacketSpace (see LANE_SPACE_ATTRIBUTES)
    "_packet_number",  # next packet number aioquic will use (shared by every space)
    "_host_cids",  # our QuicConnectionId list (.cid): DCIDs the peer may use
    "_peer_cid",  # QuicConnectionId we send to (.cid)
    "_network_paths",  # QuicNetworkPath list, [0] is the active one (.addr, .is_validated)
    "_loss",  # QuicPacketRecovery: on_ack_received(), peer_completed_address_validation
    "_close_at",  # idle-timeout deadline, pushed back by every received packet
    "_idle_timeout",  # method: the idle timeout in seconds
    "_ack_delay",  # how long aioquic waits before sending an ACK
    "_ack_eliciting_sent_since_receipt",  # reset by every received packet
    "_local_ack_delay_exponent",  # encoding of our ACK frames' delay
    "_remote_ack_delay_exponent",  # decoding of the peer's
    "_handshake_confirmed",  # keys may be used by the lane only after this
    "_state",  # QuicConnectionState: the lane runs while CONNECTED
    "_configuration",  # connection_id_length, max_datagram_frame_size
    "_version",  # QUIC version: part of the key schedule's labels
)
LANE_SPACE_ATTRIBUTES = (
    "ack_at",
    "ack_queue",
    "largest_received_packet",
    "largest_received_time",
    "received_packets",  # the duplicate window (RFC 9000 §12.3)
    "expected_packet_number",
    "largest_acked_packet",
    "discarded",
)
LANE_CRYPTO_ATTRIBUTES = ("cipher_suite", "secret", "key_phase", "is_valid")


@dataclass(frozen=True)
class OneRttSecrets:
    """The first 1-RTT traffic secrets of a connection, as TLS installed them."""

    cipher_suite: int
    recv_secret: bytes
    send_secret: bytes
    version: int


_SECRETS_ATTRIBUTE = "_masque_one_rtt_secrets"


def capture_one_rtt_secrets(quic: QuicConnection) -> None:
    """Remember the first 1-RTT secrets of ``quic`` for :func:`one_rtt_secrets`.

    Header protection keys never change (RFC 9001 §6) but aioquic keeps only the
    current packet-key secret, so the first ones are caught as TLS installs them:
    ``_initialize()`` hands ``self._update_traffic_key`` to the TLS context, and an
    instance attribute set before that wins. Call right after creating the
    connection (before ``connect()`` or its first datagram).
    """
    original = quic._update_traffic_key
    captured: dict[tls.Direction, tuple[int, bytes]] = {}

    def update_traffic_key(
        direction: tls.Direction, epoch: tls.Epoch, cipher_suite: tls.CipherSuite, secret: bytes
    ) -> None:
        if epoch == tls.Epoch.ONE_RTT and direction not in captured:
            captured[direction] = (int(cipher_suite), secret)
        original(direction, epoch, cipher_suite, secret)

    quic._update_traffic_key = update_traffic_key  # type: ignore[method-assign]
    setattr(quic, _SECRETS_ATTRIBUTE, captured)


def one_rtt_secrets(quic: QuicConnection) -> OneRttSecrets | None:
    """The secrets :func:`capture_one_rtt_secrets` caught, once both directions have them."""
    captured: dict[tls.Direction, tuple[int, bytes]] | None = getattr(
        quic, _SECRETS_ATTRIBUTE, None
    )
    if not captured or len(captured) < 2:
        return None
    suite, recv = captured[tls.Direction.DECRYPT]
    _, send = captured[tls.Direction.ENCRYPT]
    return OneRttSecrets(suite, recv, send, int(quic._version or QuicProtocolVersion.VERSION_1))


def derive_hp_keys(secrets: OneRttSecrets) -> tuple[bytes, bytes]:
    """The (receive, send) header-protection keys, with aioquic's own key schedule."""
    keys = []
    for secret in (secrets.recv_secret, secrets.send_secret):
        _, _, hp = derive_key_iv_hp(
            cipher_suite=CipherSuite(secrets.cipher_suite), secret=secret, version=secrets.version
        )
        keys.append(hp)
    return keys[0], keys[1]


def derive_key_iv(secrets: OneRttSecrets, secret: bytes) -> tuple[bytes, bytes]:
    """The AEAD key and IV of a (possibly updated) traffic secret."""
    key, iv, _ = derive_key_iv_hp(
        cipher_suite=CipherSuite(secrets.cipher_suite), secret=secret, version=secrets.version
    )
    return key, iv


def lane_ready(quic: QuicConnection) -> bool:
    """Connected, handshake confirmed, 1-RTT keys in both directions."""
    if not quic._handshake_confirmed or quic._state != QuicConnectionState.CONNECTED:
        return False
    pair = quic._cryptos.get(tls.Epoch.ONE_RTT)
    return pair is not None and pair.recv.is_valid() and pair.send.is_valid()


def crypto_state(quic: QuicConnection, *, send: bool) -> tuple[int, bytes, int]:
    """(cipher suite, current secret, key phase) of one direction's 1-RTT keys."""
    pair = quic._cryptos[tls.Epoch.ONE_RTT]
    context = pair.send if send else pair.recv
    assert context.cipher_suite is not None and context.secret is not None
    return int(context.cipher_suite), context.secret, int(context.key_phase)


def host_cids(quic: QuicConnection) -> frozenset[bytes]:
    """Every connection ID the peer may put in packets to us."""
    return frozenset(c.cid for c in quic._host_cids)


def host_cid_length(quic: QuicConnection) -> int:
    """Length of our connection IDs (fixed per configuration)."""
    return int(quic._configuration.connection_id_length)


def peer_cid(quic: QuicConnection) -> bytes:
    return bytes(quic._peer_cid.cid)


def active_peer_address(quic: QuicConnection) -> Any:
    """The validated address aioquic sends to, or None (migration in progress)."""
    paths = quic._network_paths
    if not paths or not paths[0].is_validated:
        return None
    return paths[0].addr


def local_max_datagram_frame_size(quic: QuicConnection) -> int | None:
    value = quic._configuration.max_datagram_frame_size
    return None if value is None else int(value)


def _application_space(quic: QuicConnection) -> Any:
    return quic._spaces[tls.Epoch.ONE_RTT]


def largest_received(quic: QuicConnection) -> int:
    return int(_application_space(quic).largest_received_packet)


def is_duplicate(quic: QuicConnection, packet_number: int) -> bool:
    return packet_number in _application_space(quic).received_packets


def mark_received(quic: QuicConnection, packet_number: int) -> None:
    """Enter a packet number in aioquic's duplicate window right away."""
    _application_space(quic).received_packets.add(packet_number)


def duplicate_window(quic: QuicConnection) -> Any:
    """aioquic's duplicate window itself (``pn in w``, ``w.add(pn)``), for a hot loop."""
    return _application_space(quic).received_packets


def record_received(
    quic: QuicConnection, packet_numbers: list[int], ack_eliciting: bool, now: float
) -> None:
    """What aioquic does at the end of ``_receive_datagram`` for each packet, for a batch.

    The duplicate window is not touched: the lane enters each number there the
    moment it consumes the packet (:func:`duplicate_window`).
    """
    space = _application_space(quic)
    if space.discarded or not packet_numbers:
        return
    largest = max(packet_numbers)
    if largest > space.largest_received_packet:
        space.largest_received_packet = largest
        space.largest_received_time = now
    if largest >= space.expected_packet_number:
        space.expected_packet_number = largest + 1
    # One RangeSet insertion per run of consecutive numbers (usually the whole batch).
    ordered = sorted(packet_numbers)
    start = previous = ordered[0]
    for pn in ordered[1:]:
        if pn != previous + 1:
            space.ack_queue.add(start, previous + 1)
            start = pn
        previous = pn
    space.ack_queue.add(start, previous + 1)
    while len(space.ack_queue) > MAX_ACK_RANGES:
        space.ack_queue.shift()
    if ack_eliciting and space.ack_at is None:
        space.ack_at = now + quic._ack_delay
    quic._close_at = now + quic._idle_timeout()
    quic._ack_eliciting_sent_since_receipt = False


def ack_received(
    quic: QuicConnection, ranges: tuple[tuple[int, int], ...], delay_encoded: int, now: float
) -> None:
    """An ACK frame the lane read, handed to aioquic's loss recovery."""
    rangeset = RangeSet()
    for start, stop in ranges:
        rangeset.add(start, stop)
    quic._loss.peer_completed_address_validation = True
    quic._loss.on_ack_received(
        ack_rangeset=rangeset,
        ack_delay=(delay_encoded << quic._remote_ack_delay_exponent) / 1000000,
        now=now,
        space=_application_space(quic),
    )


def ack_due(quic: QuicConnection, now: float) -> tuple[list[range], int] | None:
    """(ranges, encoded delay) of the ACK aioquic owes the peer, or None."""
    space = _application_space(quic)
    if space.ack_at is None or space.largest_received_time is None:
        return None
    delay = max(now - space.largest_received_time, 0.0)
    return list(space.ack_queue), int(delay * 1000000) >> quic._local_ack_delay_exponent


def ack_sent(quic: QuicConnection) -> None:
    """The lane sent the owed ACK: aioquic need not."""
    _application_space(quic).ack_at = None


def next_packet_number(quic: QuicConnection) -> int:
    return int(quic._packet_number)


def reserve_packet_numbers(quic: QuicConnection, count: int) -> int:
    """Take ``count`` packet numbers from aioquic's counter; the first one."""
    first = int(quic._packet_number)
    quic._packet_number = first + count
    return first


def largest_acked(quic: QuicConnection) -> int:
    return int(_application_space(quic).largest_acked_packet)
