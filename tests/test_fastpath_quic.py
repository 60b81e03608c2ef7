"""_fastpath's QUIC datagram lane layer (csrc/quic_crypto.c, csrc/quic_packet.c).

Short-header packet protection in C (OpenSSL EVP) must agree byte for byte with
aioquic, the authority of every connection: packets aioquic builds decrypt in C
to the same plaintext, packets C builds are accepted by aioquic (CryptoPair and
a real QuicConnection pair, for each of the three TLS 1.3 cipher suites), the
RFC 9001 test vector holds, and every packet C does not accept is handed back
byte-identical so aioquic can take it.
"""

from __future__ import annotations

import itertools
import os
from collections.abc import Iterator

import pytest
from aioquic import tls
from aioquic._buffer import Buffer
from aioquic.h3.connection import H3_ALPN
from aioquic.quic import events
from aioquic.quic.configuration import QuicConfiguration
from aioquic.quic.connection import QuicConnection
from aioquic.quic.crypto import CryptoContext, CryptoPair, derive_key_iv_hp, next_key_phase
from aioquic.quic.packet import (
    PACKET_FIXED_BIT,
    QuicFrameType,
    QuicPacketType,
    QuicProtocolVersion,
    decode_packet_number,
    pull_ack_frame,
    push_ack_frame,
)
from aioquic.quic.packet_builder import QuicPacketBuilder
from aioquic.quic.rangeset import RangeSet
from aioquic.tls import CipherSuite, cipher_suite_hash
from hypothesis import given, settings
from hypothesis import strategies as st

from _fastpath._core import (
    QUIC_STATUS,
    PacketBatch,
    QuicKeys,
    build_lane_frames,
    parse_lane_frames,
    quic_decode_pn,
    quic_pn_length,
    quic_protect,
    quic_protect_batch,
    quic_receive_lane_batch,
    quic_unprotect,
    quic_unprotect_batch,
)
from tests.pki import Pki

SUITES = [
    CipherSuite.AES_128_GCM_SHA256,
    CipherSuite.AES_256_GCM_SHA384,
    CipherSuite.CHACHA20_POLY1305_SHA256,
]
V1 = QuicProtocolVersion.VERSION_1
STATUS = {name: code for code, name in QUIC_STATUS.items()}
DCID = bytes.fromhex("0011223344556677")
CLIENT_ADDR = ("1.2.3.4", 1234)
SERVER_ADDR = ("5.6.7.8", 4433)

# RFC 9001 A.5: ChaCha20-Poly1305 short header packet (empty DCID, 3-byte PN).
RFC9001_A5_SECRET = bytes.fromhex(
    "9ac312a7f877468ebe69422748ad00a15443f18203a07d6060f688f30f21632b"
)
RFC9001_A5_PN = 654360564
RFC9001_A5_PACKET = bytes.fromhex("4cfe4189655e5cd55c41f69080575d7999c25a5bfb")

# aioquic's AES-128-GCM short-header vector (tests/test_crypto_v1.py): 8-byte DCID,
# 2-byte packet number 3, a CRYPTO frame as payload.
AIOQUIC_SHORT_SECRET = bytes.fromhex(
    "310281977cb8c1c1c1212d784b2d29e5a6489e23de848d370a5a2f9537f3a100"
)
AIOQUIC_SHORT_PAYLOAD = bytes.fromhex(
    "06003904000035000151805a4bebf5000020b098c8dc4183e4c182572e10ac3e"
    "2b88897e0524c8461847548bd2dffa2c0ae60008002a0004ffffffff"
)
AIOQUIC_SHORT_PACKET = bytes.fromhex(
    "5db01fd24a586a9cf33dec094aaec6d6b4b7a5e15f5a3f05d06cf1ad0355c19d"
    "cce0807eecf7bf1c844a66e1ecd1f74b2a2d69bfd25d217833edd973246597bd"
    "5107ea15cb1e210045396afa602fe23432f4ab24ce251b"
)


# -- helpers -------------------------------------------------------------------


def secret_for(suite: CipherSuite, seed: int = 1) -> bytes:
    size = cipher_suite_hash(suite).digest_size
    return bytes((seed * 131 + i * 7) & 0xFF for i in range(size))


def keys_from_secret(
    suite: CipherSuite, secret: bytes, key_phase: int = 0, hp_secret: bytes | None = None
) -> QuicKeys:
    """QuicKeys as the lane installs them: aioquic's derive_key_iv_hp of the secret
    (the header-protection key from ``hp_secret``, the first 1-RTT secret)."""
    key, iv, hp = derive_key_iv_hp(cipher_suite=suite, secret=secret, version=V1)
    if hp_secret is not None:
        hp = derive_key_iv_hp(cipher_suite=suite, secret=hp_secret, version=V1)[2]
    return QuicKeys(int(suite), key, iv, hp, key_phase)


def keys_from_context(ctx: CryptoContext) -> QuicKeys:
    """QuicKeys for one direction of a live aioquic connection."""
    assert ctx.secret is not None and ctx.cipher_suite is not None and ctx.version is not None
    key, iv, hp = derive_key_iv_hp(
        cipher_suite=ctx.cipher_suite, secret=ctx.secret, version=ctx.version
    )
    return QuicKeys(int(ctx.cipher_suite), key, iv, hp, ctx.key_phase)


def crypto_pair(suite: CipherSuite, seed: int = 1) -> CryptoPair:
    """An aioquic CryptoPair whose send and receive keys are both ``secret_for``."""
    pair = CryptoPair()
    pair.send.setup(cipher_suite=suite, secret=secret_for(suite, seed), version=V1)
    pair.recv.setup(cipher_suite=suite, secret=secret_for(suite, seed), version=V1)
    return pair


def builder_packets(
    pair: CryptoPair,
    first_pn: int,
    packets: list[list[bytes]],
    *,
    ping: bool = False,
    spin_bit: bool = False,
) -> list[bytes]:
    """1-RTT packets built by aioquic's QuicPacketBuilder, one DATAGRAM frame per payload."""
    builder = QuicPacketBuilder(
        host_cid=b"\x99" * 8,
        peer_cid=DCID,
        version=V1,
        is_client=True,
        max_datagram_size=1452,
        packet_number=first_pn,
        spin_bit=spin_bit,
    )
    for payloads in packets:
        builder.start_packet(QuicPacketType.ONE_RTT, pair)
        if ping:
            builder.start_frame(QuicFrameType.PING)
        for payload in payloads:
            buf = builder.start_frame(QuicFrameType.DATAGRAM_WITH_LENGTH, 9 + len(payload))
            buf.push_uint_var(len(payload))
            buf.push_bytes(payload)
    datagrams, sent = builder.flush()
    assert [p.packet_number for p in sent] == list(range(first_pn, first_pn + len(packets)))
    return datagrams


def aioquic_decrypt(
    pair: CryptoPair, packet: bytes, dcid_len: int, expected: int
) -> tuple[bytes, bytes, int]:
    plain_header, payload, pn = pair.decrypt_packet(packet, 1 + dcid_len, expected)
    return plain_header, payload, pn


def batch_of(packets: list[bytes], slot_size: int = 2048, headroom: int = 64) -> PacketBatch:
    batch = PacketBatch(slots=max(1, len(packets)), slot_size=slot_size, headroom=headroom)
    for packet in packets:
        batch.append(packet)
    return batch


def assert_rejected_untouched(keys: QuicKeys, packet: bytes, dcid_len: int, largest: int) -> int:
    """The packet does not unprotect, and the batch path hands it back as it came."""
    assert quic_unprotect(keys, packet, dcid_len, largest) is None
    batch = batch_of([packet])
    ((status, _pn, offset, length),) = quic_unprotect_batch(keys, batch, dcid_len, largest)
    assert status != 0 and (offset, length) == (0, 0)
    assert bytes(batch.view(0)) == packet
    return int(status)


# -- aioquic connection pair ---------------------------------------------------


def configuration(suite: CipherSuite, *, is_client: bool) -> QuicConfiguration:
    return QuicConfiguration(
        is_client=is_client,
        alpn_protocols=H3_ALPN,
        max_datagram_frame_size=65536,
        max_datagram_size=1452,
        cipher_suites=[suite],
        server_name="relay.test" if is_client else None,
        verify_mode=0 if is_client else None,
    )


def shuttle(client: QuicConnection, server: QuicConnection, now: float) -> None:
    """Move datagrams both ways until neither side has anything to send."""
    for _ in range(50):
        moved = False
        for sender, receiver, addr in (
            (client, server, CLIENT_ADDR),
            (server, client, SERVER_ADDR),
        ):
            for data, _ in sender.datagrams_to_send(now=now):
                receiver.receive_datagram(data, addr, now=now)
                moved = True
        if not moved:
            return
    raise AssertionError("the connections never went quiet")


def drain(connection: QuicConnection) -> list[events.QuicEvent]:
    out = []
    while (event := connection.next_event()) is not None:
        out.append(event)
    return out


def connected(suite: CipherSuite) -> tuple[QuicConnection, QuicConnection]:
    """A client and a server with a confirmed handshake over ``suite``, in memory."""
    cert, key = Pki().issue("relay.test")
    server_config = configuration(suite, is_client=False)
    server_config.certificate = cert
    server_config.private_key = key
    client = QuicConnection(configuration=configuration(suite, is_client=True))
    server = QuicConnection(
        configuration=server_config,
        original_destination_connection_id=client.original_destination_connection_id,
    )
    client.connect(SERVER_ADDR, now=0.0)
    shuttle(client, server, 0.0)
    shuttle(client, server, 1.0)  # flush delayed ACKs
    assert client._handshake_confirmed and server._handshake_complete
    for connection in (client, server):
        assert connection._cryptos[tls.Epoch.ONE_RTT].send.cipher_suite == suite
        drain(connection)
    return client, server


def one_rtt(connection: QuicConnection) -> tuple[CryptoContext, CryptoContext]:
    pair = connection._cryptos[tls.Epoch.ONE_RTT]
    return pair.recv, pair.send


# -- known answers -------------------------------------------------------------


def test_rfc9001_chacha20_short_header_vector() -> None:
    keys = keys_from_secret(CipherSuite.CHACHA20_POLY1305_SHA256, RFC9001_A5_SECRET)
    assert keys.cipher_suite == 0x1303 and keys.key_phase == 0
    assert quic_unprotect(keys, RFC9001_A5_PACKET, 0, RFC9001_A5_PN - 1) == (
        RFC9001_A5_PN,
        0,
        b"\x01",
    )
    # The same packet out of C: PING, 3-byte packet number, no padding needed.
    assert quic_protect(keys, b"", RFC9001_A5_PN, -1, b"\x01", pn_len=3) == RFC9001_A5_PACKET
    assert parse_lane_frames(b"\x01") == (True, True, [], None)


def test_aioquic_aes128_short_header_vector() -> None:
    keys = keys_from_secret(CipherSuite.AES_128_GCM_SHA256, AIOQUIC_SHORT_SECRET)
    assert quic_unprotect(keys, AIOQUIC_SHORT_PACKET, 8, -1) == (3, 0, AIOQUIC_SHORT_PAYLOAD)
    dcid = AIOQUIC_SHORT_PACKET[1:9]
    packet = quic_protect(keys, dcid, 3, -1, AIOQUIC_SHORT_PAYLOAD, pn_len=2)
    assert packet == AIOQUIC_SHORT_PACKET
    # A CRYPTO frame is aioquic's.
    assert parse_lane_frames(AIOQUIC_SHORT_PAYLOAD) == (False, False, [], None)


def test_key_set_validation() -> None:
    key16, key32, iv = b"k" * 16, b"k" * 32, b"i" * 12
    QuicKeys(0x1301, key16, iv, key16)
    QuicKeys(0x1302, key32, iv, key32, 1)
    QuicKeys(0x1303, key32, iv, key32)
    for args in (
        (0x1301, key32, iv, key32),
        (0x1302, key16, iv, key16),
        (0x1303, key32, iv, key16),
        (0x1301, key16, b"i" * 8, key16),
        (0x1304, key16, iv, key16),
        (0x1301, b"", iv, key16),
    ):
        with pytest.raises(ValueError):
            QuicKeys(*args)
    with pytest.raises(ValueError):
        QuicKeys(0x1301, key16, iv, key16, 2)
    assert "0x1303" in repr(QuicKeys(0x1303, key32, iv, key32))


# -- packet numbers ------------------------------------------------------------


def test_packet_number_decoding_rfc9000_a3() -> None:
    # RFC 9000 A.3: largest 0xa82f30ea, 16-bit 0x9b32 -> 0xa82f9b32
    assert quic_decode_pn(0xA82F30EA, 0x9B32, 2) == 0xA82F9B32
    assert quic_decode_pn(-1, 0, 1) == 0  # the first packet
    assert quic_decode_pn(-1, 0xFF, 1) == 0xFF
    assert quic_decode_pn(0xFF, 0x00, 1) == 0x100  # wraps forward
    assert quic_decode_pn(0x100, 0xFF, 1) == 0xFF  # a late packet wraps back
    assert quic_decode_pn(0x17F, 0x00, 1) == 0x200  # more than half a window ahead
    assert quic_decode_pn(0x180, 0x00, 1) == 0x200
    assert quic_decode_pn((1 << 62) - 2, 0xFF, 1) == (1 << 62) - 1  # top of the space
    for bad in ((0, 0x100, 1), (0, 0, 0), (0, 0, 5), (-2, 0, 1), (1 << 62, 0, 1)):
        with pytest.raises(ValueError):
            quic_decode_pn(*bad)


@given(
    largest=st.integers(-1, (1 << 62) - 2),
    truncated=st.integers(0, (1 << 32) - 1),
    pn_len=st.integers(1, 4),
)
def test_packet_number_decoding_matches_aioquic(largest: int, truncated: int, pn_len: int) -> None:
    truncated &= (1 << (8 * pn_len)) - 1
    expected = decode_packet_number(truncated, 8 * pn_len, largest + 1)
    assert quic_decode_pn(largest, truncated, pn_len) == expected


def test_packet_number_length_rfc9000_a2() -> None:
    # RFC 9000 A.2: acked 0xabe8b3; sending 0xac5c02 needs 16 bits, 0xace8fe 24.
    assert quic_pn_length(0xAC5C02, 0xABE8B3) == 2
    assert quic_pn_length(0xACE8FE, 0xABE8B3) == 3
    assert quic_pn_length(0, -1) == 1
    assert quic_pn_length(127, -1) == 1  # 128 packets in flight: 8 bits
    assert quic_pn_length(128, -1) == 2
    assert quic_pn_length(1000 + 128, 1000) == 1
    assert quic_pn_length(1000 + 129, 1000) == 2
    assert quic_pn_length(1000 + (1 << 15), 1000) == 2
    assert quic_pn_length(1000 + (1 << 15) + 1, 1000) == 3
    assert quic_pn_length(1000 + (1 << 31), 1000) == 4
    for bad in ((1000, 1000), (5, 9), (1000 + (1 << 31) + 1, 1000)):
        with pytest.raises(ValueError):
            quic_pn_length(*bad)


# -- aioquic -> C --------------------------------------------------------------


@pytest.mark.parametrize("suite", SUITES)
def test_packets_built_by_aioquic_decrypt_in_c(suite: CipherSuite) -> None:
    pair = crypto_pair(suite)
    keys = keys_from_secret(suite, secret_for(suite))
    payloads = [[b"\x00\x00" + bytes(range(40))], [b"a" * 1300], [b"x", b"", b"yz" * 100]]
    first_pn = 254  # the 2-byte PNs aioquic sends cross a byte boundary
    packets = builder_packets(pair, first_pn, payloads, spin_bit=True)
    largest = first_pn - 1
    for i, packet in enumerate(packets):
        _, aioquic_plain, pn = aioquic_decrypt(pair, packet, len(DCID), largest + 1)
        result = quic_unprotect(keys, packet, len(DCID), largest)
        assert result is not None
        assert result == (pn, 0, aioquic_plain) and pn == first_pn + i
        lane_only, eliciting, datagrams, ack = parse_lane_frames(result[2])
        assert lane_only and eliciting and ack is None
        assert datagrams == payloads[i]
        largest = pn


@pytest.mark.parametrize("suite", SUITES)
def test_single_byte_packets_from_aioquic(suite: CipherSuite) -> None:
    # A lone PING: aioquic pads the payload for the header-protection sample.
    pair = crypto_pair(suite)
    keys = keys_from_secret(suite, secret_for(suite))
    (packet,) = builder_packets(pair, 7, [[]], ping=True)
    result = quic_unprotect(keys, packet, len(DCID), 6)
    assert result is not None and result[0] == 7
    assert result[2][0] == 0x01 and set(result[2][1:]) <= {0}
    assert parse_lane_frames(result[2]) == (True, True, [], None)


# -- C -> aioquic --------------------------------------------------------------


@pytest.mark.parametrize("suite", SUITES)
def test_packets_protected_in_c_decrypt_in_aioquic(suite: CipherSuite) -> None:
    pair = crypto_pair(suite)
    keys = keys_from_secret(suite, secret_for(suite))
    pn = 0x1234567
    for pn_len in (0, 1, 2, 3, 4):
        for frames in (b"\x01", b"\x01\x01", b"\x30hello", b"\x31\x01a\x30" + b"b" * 1300):
            packet = quic_protect(keys, DCID, pn, pn - 3, frames, pn_len=pn_len)
            want_len = pn_len or 1
            pad = max(0, 4 - want_len - len(frames))
            assert len(packet) == 1 + len(DCID) + want_len + pad + len(frames) + 16
            plain_header, payload, got_pn = aioquic_decrypt(pair, packet, len(DCID), pn)
            assert got_pn == pn
            assert plain_header == bytes([PACKET_FIXED_BIT | (want_len - 1)]) + DCID + (
                pn & ((1 << (8 * want_len)) - 1)
            ).to_bytes(want_len, "big")
            assert payload == bytes(pad) + frames  # PADDING in front, DATAGRAM stays last
            assert quic_unprotect(keys, packet, len(DCID), pn - 1) == (pn, 0, payload)
            pn += 1


def test_protect_rejects_what_it_cannot_send() -> None:
    suite = CipherSuite.AES_128_GCM_SHA256
    keys = keys_from_secret(suite, secret_for(suite))
    with pytest.raises(ValueError):
        quic_protect(keys, DCID, 5, -1, b"")  # no frames
    with pytest.raises(ValueError):
        quic_protect(keys, b"c" * 21, 5, -1, b"\x01")
    with pytest.raises(ValueError):
        quic_protect(keys, DCID, 5, 5, b"\x01")  # already acknowledged
    with pytest.raises(ValueError):
        quic_protect(keys, DCID, 5, -1, b"\x01", pn_len=5)
    with pytest.raises(OverflowError):
        quic_protect(keys, DCID, -1, -1, b"\x01")
    with pytest.raises(ValueError):
        quic_protect(keys, DCID, 1 << 62, -1, b"\x01", pn_len=4)


# -- key phases ----------------------------------------------------------------


@pytest.mark.parametrize("suite", SUITES)
def test_key_update_needs_the_new_keys_and_the_old_hp_key(suite: CipherSuite) -> None:
    secret0 = secret_for(suite)
    pair = crypto_pair(suite)
    pair.update_key()  # aioquic's own key update: new packet keys, same hp (RFC 9001 6)
    header = bytes([PACKET_FIXED_BIT | 0x04 | 1]) + DCID + (9).to_bytes(2, "big")
    packet = pair.encrypt_packet(header, b"\x30phase one", 9)
    assert pair.send.key_phase == 1 and pair.send.secret not in (None, secret0)
    assert pair.send.secret is not None

    old = keys_from_secret(suite, secret0)
    status = assert_rejected_untouched(old, packet, len(DCID), 8)
    assert status == STATUS["key-phase"]
    new = keys_from_secret(suite, pair.send.secret, key_phase=1, hp_secret=secret0)
    assert new.key_phase == 1
    assert quic_unprotect(new, packet, len(DCID), 8) == (9, 1, b"\x30phase one")
    # An hp key derived from the updated secret (what derive_key_iv_hp of the
    # context's current secret gives) is wrong: nothing authenticates.
    assert quic_unprotect(keys_from_context(pair.recv), packet, len(DCID), 8) is None
    # C's phase-1 packets decrypt in aioquic's phase-1 context.
    again = quic_protect(new, DCID, 10, 8, b"\x01")
    assert pair.decrypt_packet(again, 1 + len(DCID), 10)[1:] == (b"\x00\x00\x01", 10)
    # The next phase (back to 0) derives from the phase-1 secret in the same way.
    phase2 = next_key_phase(pair.send)
    assert phase2.secret is not None and phase2.key_phase == 0
    assert keys_from_secret(suite, phase2.secret, hp_secret=secret0).key_phase == 0


# -- rejection: every malformed or tampered packet comes back untouched ----------


@pytest.mark.parametrize("suite", SUITES)
def test_truncated_packets_never_unprotect(suite: CipherSuite) -> None:
    keys = keys_from_secret(suite, secret_for(suite))
    packet = quic_protect(keys, DCID, 77, 70, b"\x31\x05hello\x01\x30" + bytes(range(60)))
    assert quic_unprotect(keys, packet, len(DCID), 76) is not None
    for cut in range(len(packet)):
        assert_rejected_untouched(keys, packet[:cut], len(DCID), 76)
    # Trailing bytes (a coalesced packet after a short header) are part of it: no match.
    assert_rejected_untouched(keys, packet + b"\x00", len(DCID), 76)


@pytest.mark.parametrize("suite", SUITES)
def test_every_bit_flip_fails_authentication(suite: CipherSuite) -> None:
    keys = keys_from_secret(suite, secret_for(suite))
    packet = quic_protect(keys, DCID, 1000, 990, b"\x31\x03abc\x30" + b"z" * 40)
    assert quic_unprotect(keys, packet, len(DCID), 999) is not None
    seen = set()
    for bit in range(8 * len(packet)):
        flipped = bytearray(packet)
        flipped[bit // 8] ^= 1 << (bit % 8)
        seen.add(assert_rejected_untouched(keys, bytes(flipped), len(DCID), 999))
    assert seen <= {STATUS[n] for n in ("auth", "key-phase", "long-header", "fixed-bit")}
    assert STATUS["auth"] in seen and STATUS["long-header"] in seen
    # The wrong connection ID length is a different header (AAD): not authentic either.
    for dcid_len in (0, 7, 9, 20):
        assert_rejected_untouched(keys, packet, dcid_len, 999)


def test_long_header_fixed_bit_and_short_packets_rejected() -> None:
    suite = CipherSuite.AES_128_GCM_SHA256
    keys = keys_from_secret(suite, secret_for(suite))
    client = QuicConnection(configuration=configuration(suite, is_client=True))
    client.connect(SERVER_ADDR, now=0.0)
    ((initial, _),) = client.datagrams_to_send(now=0.0)
    assert initial[0] & 0x80
    assert assert_rejected_untouched(keys, initial, 8, -1) == STATUS["long-header"]
    packet = quic_protect(keys, DCID, 3, -1, b"\x01")
    no_fixed = bytes([packet[0] & ~PACKET_FIXED_BIT]) + packet[1:]
    assert assert_rejected_untouched(keys, no_fixed, len(DCID), -1) == STATUS["fixed-bit"]
    # Too short to hold the 16-byte sample 4 bytes after the packet number.
    assert assert_rejected_untouched(keys, b"", 0, -1) == STATUS["too-short"]
    short = packet[: 1 + len(DCID) + 19]
    assert assert_rejected_untouched(keys, short, len(DCID), -1) == STATUS["too-short"]
    with pytest.raises(ValueError):
        quic_unprotect(keys, packet, 21, -1)
    with pytest.raises(ValueError):
        quic_unprotect(keys, packet, len(DCID), -2)


@pytest.mark.parametrize("suite", SUITES)
def test_reserved_bits_are_reported_not_accepted(suite: CipherSuite) -> None:
    pair = crypto_pair(suite)
    keys = keys_from_secret(suite, secret_for(suite))
    header = bytes([PACKET_FIXED_BIT | 0x10 | 1]) + DCID + (5).to_bytes(2, "big")
    packet = pair.send.encrypt_packet(header, b"\x30reserved", 5)
    status = assert_rejected_untouched(keys, packet, len(DCID), 4)
    assert status == STATUS["reserved-bits"]
    batch = batch_of([packet])
    assert quic_unprotect_batch(keys, batch, len(DCID), 4)[0][:2] == (status, 5)


# -- frames --------------------------------------------------------------------


def ack_frame_by_aioquic(ranges: RangeSet, delay: int) -> bytes:
    buf = Buffer(capacity=4096)
    buf.push_uint_var(QuicFrameType.ACK)
    push_ack_frame(buf, ranges, delay, 4000)
    return buf.data


def test_ack_frames_with_ranges_and_ecn() -> None:
    ranges = RangeSet([range(0, 3), range(5, 6), range(10, 20), range(1000, 1001)])
    frame = ack_frame_by_aioquic(ranges, 77)
    expected = ((1000, 1001), (10, 20), (5, 6), (0, 3))
    assert parse_lane_frames(frame) == (True, False, [], (1000, 77, expected, None))
    # ACK_ECN: three more counts. Written by C, read by aioquic.
    frames, count = build_lane_frames([], 200, ack_ranges=ranges, ack_delay=77, ecn=(1, 2, 3))
    assert count == 0 and frames[0] == 0x03
    assert parse_lane_frames(frames) == (True, False, [], (1000, 77, expected, (1, 2, 3)))
    buf = Buffer(data=frames[1:])
    assert pull_ack_frame(buf) == (ranges, 77)
    assert [buf.pull_uint_var() for _ in range(3)] == [1, 2, 3] and buf.eof()
    # Without ECN C writes the same bytes as aioquic.
    assert build_lane_frames([], 200, ack_ranges=list(ranges), ack_delay=77)[0] == frame
    # A single range starting at packet 0, with padding and a datagram around it.
    packet = b"\x00\x00" + ack_frame_by_aioquic(RangeSet([range(0, 1)]), 0) + b"\x30dg"
    assert parse_lane_frames(packet) == (True, True, [b"dg"], (0, 0, ((0, 1),), None))


def test_malformed_ack_frames() -> None:
    frame = ack_frame_by_aioquic(RangeSet([range(0, 3), range(5, 6), range(10, 20)]), 3)
    for cut in range(1, len(frame)):
        with pytest.raises(ValueError, match="frame-encoding"):
            parse_lane_frames(frame[:cut])
    bad = [
        b"\x02\x05\x00\x00\x06",  # first range below packet 0
        b"\x02\x05\x00\x01\x05\x00\x00",  # gap below packet 0
        b"\x02\x05\x00\x01\x02\x00\x01",  # 5..3, gap 0 -> 1, length 1 -> 0: fine
        b"\x02\x05\x00\x01\x02\x00\x02",  # ... length 2 -> -1
        b"\x03\x05\x00\x00\x00\x01\x02",  # ACK_ECN with two counts
    ]
    assert parse_lane_frames(bad[2])[3] == (5, 0, ((3, 6), (0, 2)), None)
    for frame in bad[:2] + bad[3:]:
        with pytest.raises(ValueError, match="frame-encoding"):
            parse_lane_frames(frame)
    # More ranges than the lane keeps: aioquic takes the packet.
    many = RangeSet([range(2 * i, 2 * i + 1) for i in range(70)])
    assert parse_lane_frames(ack_frame_by_aioquic(many, 0))[0] is False
    with pytest.raises(ValueError):
        build_lane_frames([], 4000, ack_ranges=list(many))
    for ranges in ([(0, 3), (3, 5)], [(0, 3), (2, 5)], [(3, 3)], [], [range(0, 9, 2)]):
        with pytest.raises(ValueError):
            build_lane_frames([], 100, ack_ranges=ranges)
    with pytest.raises(ValueError):
        build_lane_frames([], 3, ack_ranges=[(0, 1000)])  # the ACK alone exceeds the room


def test_other_frames_leave_the_packet_to_aioquic() -> None:
    not_lane = [
        b"\x06\x00\x01x",  # CRYPTO
        b"\x08\x00x",  # STREAM
        b"\x10\x05",  # MAX_DATA
        b"\x1e",  # HANDSHAKE_DONE
        b"\x1c\x00\x00\x00",  # CONNECTION_CLOSE
        b"\x40\x01",  # PING in a 2-byte (non-minimal) encoding
        b"\x01\x30dg",  # lane frames: PING then DATAGRAM
        b"\x02\x00\x00\x00\x00\x02\x00\x00\x00\x00",  # two ACK frames
        b"\x31\x01a\x18",  # DATAGRAM then NEW_CONNECTION_ID
    ]
    for payload in not_lane:
        lane_only = payload == b"\x01\x30dg"
        assert parse_lane_frames(payload)[0] is lane_only, payload
    assert parse_lane_frames(b"\x00" * 30) == (True, False, [], None)  # padding only
    with pytest.raises(ValueError, match="no-frames"):
        parse_lane_frames(b"")
    # At most 64 datagrams per packet in the lane.
    assert len(parse_lane_frames(b"\x31\x00" * 63 + b"\x30")[2]) == 64
    assert parse_lane_frames(b"\x31\x00" * 64 + b"\x30")[0] is False


def test_datagram_frames() -> None:
    assert parse_lane_frames(b"\x30") == (True, True, [b""], None)
    assert parse_lane_frames(b"\x31\x00\x30") == (True, True, [b"", b""], None)
    long = bytes(range(256)) * 2
    framed = b"\x31\x42\x00" + long + b"\x31\x01!"
    assert parse_lane_frames(framed)[2] == [long, b"!"]
    with pytest.raises(ValueError, match="frame-encoding"):
        parse_lane_frames(b"\x31\x05abcd")
    with pytest.raises(ValueError, match="frame-encoding"):
        parse_lane_frames(b"\x31")
    # max_datagram_frame_size counts the whole frame (RFC 9221 3), as aioquic does.
    assert parse_lane_frames(b"\x31\x03abc", 5)[2] == [b"abc"]
    with pytest.raises(ValueError, match="datagram-too-large"):
        parse_lane_frames(b"\x31\x03abc", 4)
    assert parse_lane_frames(b"\x30abcd", 5)[2] == [b"abcd"]
    with pytest.raises(ValueError, match="datagram-too-large"):
        parse_lane_frames(b"\x30abcde", 5)
    with pytest.raises(ValueError, match="datagram-too-large"):
        parse_lane_frames(b"\x30", 0)  # 0: DATAGRAM frames not supported


def test_build_lane_frames_packs_what_fits() -> None:
    assert build_lane_frames([b"abc"], 4) == (b"\x30abc", 1)
    assert build_lane_frames([b"abc"], 3) == (b"", 0)
    assert build_lane_frames([b"abc", b"de"], 8) == (b"\x31\x03abc\x30de", 2)
    assert build_lane_frames([b"abc", b"de"], 7) == (b"\x30abc", 1)
    assert build_lane_frames([b"abc", b"", b"de"], 100) == (b"\x31\x03abc\x31\x00\x30de", 3)
    big = b"p" * 100  # a 2-byte length
    assert build_lane_frames([b"a", big], 104)[1] == 2
    assert build_lane_frames([big, b"a"], 105) == (b"\x31\x40\x64" + big + b"\x30a", 2)
    assert build_lane_frames([big, b"a"], 104) == (b"\x30" + big, 1)
    frames, count = build_lane_frames([b"d1", b"d2"], 30, ack_ranges=[(0, 5)], ack_delay=1)
    assert count == 2 and parse_lane_frames(frames) == (
        True,
        True,
        [b"d1", b"d2"],
        (4, 1, ((0, 5),), None),
    )
    with pytest.raises(ValueError):
        build_lane_frames([], -1)


def _varint_len(n: int) -> int:
    return 1 if n < 1 << 6 else 2 if n < 1 << 14 else 4 if n < 1 << 30 else 8


@settings(max_examples=200)
@given(
    payloads=st.lists(st.binary(max_size=300), max_size=12),
    room=st.integers(0, 1500),
    ack=st.none() | st.lists(st.integers(1, 1 << 20), min_size=1, max_size=10),
)
def test_build_then_parse_round_trip(
    payloads: list[bytes], room: int, ack: list[int] | None
) -> None:
    ranges: list[tuple[int, int]] | None = None
    ack_bytes = b""
    if ack is not None:
        ranges, at = [], 0  # distinct ranges with at least one packet between them
        for size in ack:
            ranges.append((at, at + size % 50 + 1))
            at += size % 50 + 1 + size % 7 + 1
        ack_bytes = build_lane_frames([], 10_000, ack_ranges=ranges, ack_delay=9)[0]
        if len(ack_bytes) > room:
            with pytest.raises(ValueError):
                build_lane_frames(payloads, room, ack_ranges=ranges, ack_delay=9)
            return
    frames, count = build_lane_frames(payloads, room, ack_ranges=ranges, ack_delay=9)
    assert len(frames) <= room and frames.startswith(ack_bytes)
    # Greedy and maximal: the next payload would not fit even as the last frame.
    need = len(ack_bytes) + sum(1 + _varint_len(len(p)) + len(p) for p in payloads[:count])
    if count < len(payloads):
        assert need + 1 + len(payloads[count]) > room
    if not frames:
        return
    lane_only, eliciting, datagrams, parsed_ack = parse_lane_frames(frames)
    assert lane_only and datagrams == payloads[:count] and eliciting == (count > 0)
    if ranges is not None:
        assert parsed_ack is not None and parsed_ack[2] == tuple(sorted(ranges, reverse=True))


# -- batches -------------------------------------------------------------------


@pytest.mark.parametrize("suite", SUITES)
def test_unprotect_batch_in_place_and_restores_the_rest(suite: CipherSuite) -> None:
    pair = crypto_pair(suite)
    keys = keys_from_secret(suite, secret_for(suite))
    lane = builder_packets(pair, 250, [[b"one"], [b"two", b"three"]])
    header = bytes([PACKET_FIXED_BIT | 1]) + DCID
    stream = pair.send.encrypt_packet(header + b"\x00\xfc", b"\x08\x00stream data", 252)
    reserved_header = bytes([PACKET_FIXED_BIT | 0x08 | 1]) + DCID + b"\x00\xfd"
    reserved = pair.send.encrypt_packet(reserved_header, b"\x01\x00", 253)
    after = quic_protect(keys, DCID, 256, 250, b"\x30four")  # 1-byte PN 0x00 -> 256
    tampered = bytearray(lane[0])
    tampered[-1] ^= 1
    packets = [lane[0], bytes(tampered), lane[1], stream, b"\xc0" + lane[1][1:], reserved, after]
    batch = batch_of(packets)
    results = quic_unprotect_batch(keys, batch, len(DCID), 249)
    assert [r[0] for r in results] == [
        0,
        STATUS["auth"],
        0,
        0,
        STATUS["long-header"],
        STATUS["reserved-bits"],
        0,
    ]
    assert [r[1] for r in results if r[0] in (0, STATUS["reserved-bits"])] == [
        250,
        251,
        252,
        253,
        256,
    ]
    for i, (status, _pn, offset, length) in enumerate(results):
        if status:
            assert bytes(batch.view(i)) == packets[i]
        else:
            view = bytes(batch.view(i))
            assert offset == 1 + len(DCID) + (2 if i < 6 else 1)
            assert offset + length + 16 == len(view)
            assert view[0] & 0x1F == (1 if i < 6 else 0)  # header unprotected too
    assert bytes(batch.view(3))[results[3][2] :][: results[3][3]] == b"\x08\x00stream data"
    # The frame walk restores the packets that are aioquic's.
    batch = batch_of(packets)
    lane_results = quic_receive_lane_batch(keys, batch, len(DCID), 249)
    assert [r[0] for r in lane_results] == [0, -5, 0, 1, -2, -6, 0]
    assert lane_results[0][:3] == (0, 250, True)
    for i in (1, 3, 4, 5):
        assert bytes(batch.view(i)) == packets[i]
    got = [bytes(batch.view(i))[off : off + n] for i in (0, 2, 6) for off, n in lane_results[i][3]]
    assert got == [b"one", b"two", b"three", b"four"]
    assert quic_unprotect_batch(keys, PacketBatch(slots=1), 8, -1) == []


def test_receive_lane_batch_reports_acks_and_limits() -> None:
    suite = CipherSuite.AES_256_GCM_SHA384
    keys = keys_from_secret(suite, secret_for(suite))
    ack_only, _ = build_lane_frames([], 100, ack_ranges=[(0, 10), (20, 30)], ack_delay=5)
    big_dgram, _ = build_lane_frames([b"x" * 100], 200)
    packets = [
        quic_protect(keys, DCID, 1, -1, ack_only),
        quic_protect(keys, DCID, 2, -1, big_dgram),
        quic_protect(keys, DCID, 3, -1, b"\x00\x00"),
    ]
    batch = batch_of(packets)
    results = quic_receive_lane_batch(keys, batch, len(DCID), 0, max_datagram_frame_size=100)
    assert results[0] == (0, 1, False, [], (29, 5, ((20, 30), (0, 10)), None))
    assert results[1][:2] == (STATUS["datagram-too-large"], 2)
    assert bytes(batch.view(1)) == packets[1]
    assert results[2] == (0, 3, False, [], None)


@pytest.mark.parametrize("suite", SUITES)
def test_protect_batch_with_datagrams_and_ack(suite: CipherSuite) -> None:
    pair = crypto_pair(suite)
    keys = keys_from_secret(suite, secret_for(suite))
    payloads = [b"\x00" + bytes(range(200)), b"", b"z" * 1400]
    batch = batch_of(payloads, slot_size=1500)
    protected = quic_protect_batch(
        keys, batch, DCID, 500, 480, datagram=True, ack_ranges=[range(7, 9)], ack_delay=3
    )
    assert protected == 3
    for i, payload in enumerate(payloads):
        packet = bytes(batch.view(i))
        _, plain, pn = aioquic_decrypt(pair, packet, len(DCID), 500 + i)
        assert pn == 500 + i
        lane_only, _, datagrams, ack = parse_lane_frames(plain)
        assert lane_only and datagrams == [payload]
        assert ack == ((8, 3, ((7, 9),), None) if i == 0 else None)
    # Back through the C receive path.
    results = quic_receive_lane_batch(keys, batch, len(DCID), 499)
    assert [(r[0], r[1], len(r[3])) for r in results] == [(0, 500, 1), (0, 501, 1), (0, 502, 1)]


def test_protect_batch_stops_where_room_runs_out() -> None:
    suite = CipherSuite.AES_128_GCM_SHA256
    keys = keys_from_secret(suite, secret_for(suite))
    # Slot 1 has no room for the tag; slot 0 fits exactly.
    batch = batch_of([b"\x01" * 100, b"\x01" * 110], slot_size=1 + 8 + 1 + 100 + 16, headroom=16)
    assert quic_protect_batch(keys, batch, DCID, 1, 0) == 1
    assert bytes(batch.view(1)) == b"\x01" * 110
    assert quic_unprotect(keys, bytes(batch.view(0)), 8, 0) == (1, 0, b"\x01" * 100)
    # Headroom too small for the header.
    batch = batch_of([b"\x01"], headroom=8)
    assert quic_protect_batch(keys, batch, DCID, 1, 0) == 0
    assert bytes(batch.view(0)) == b"\x01"
    assert quic_protect_batch(keys, PacketBatch(slots=1), DCID, 1, 0) == 0
    with pytest.raises(ValueError):
        quic_protect_batch(keys, batch, b"c" * 21, 1, 0)


# -- a real aioquic connection pair --------------------------------------------


@pytest.mark.parametrize("suite", SUITES)
def test_datagrams_between_aioquic_connections_and_c(suite: CipherSuite) -> None:
    client, server = connected(suite)
    now = 2.0
    server_recv, server_send = one_rtt(server)
    client_recv, client_send = one_rtt(client)
    c2s_len = len(client._peer_cid.cid)  # the server's CID, in the client's packets
    s2c_len = len(server._peer_cid.cid)

    # aioquic -> C: the client's DATAGRAM packets decrypt in C with the server's keys.
    rx = keys_from_context(server_recv)
    sent = [b"\x00\x00" + os.urandom(1200), b"small", b"\x00" * 3]
    for payload in sent:
        client.send_datagram_frame(payload)
    packets = [data for data, _ in client.datagrams_to_send(now=now)]
    assert packets
    largest = server._spaces[tls.Epoch.ONE_RTT].largest_received_packet
    got: list[bytes] = []
    for packet in packets:
        result = quic_unprotect(rx, packet, c2s_len, largest)
        assert result is not None
        pn, key_phase, plain = result
        assert key_phase == 0 and pn == largest + 1
        lane_only, _, datagrams, _ = parse_lane_frames(plain, 65536)
        assert lane_only
        got += datagrams
        largest = pn
        server.receive_datagram(packet, CLIENT_ADDR, now=now)  # the bytes are unchanged
    assert got == sent
    received = [e.data for e in drain(server) if isinstance(e, events.DatagramFrameReceived)]
    assert received == sent

    # C -> aioquic: packets C protects with the client's send keys reach the server.
    tx = keys_from_context(client_send)
    lane_payloads = [[b"lane-1", b"lane-2"], [b"\x00" * 1300], [b"x"]]
    pn = client._packet_number
    largest_acked = client._spaces[tls.Epoch.ONE_RTT].largest_acked_packet
    dcid = client._peer_cid.cid
    for i, payloads in enumerate(lane_payloads):
        frames, count = build_lane_frames(payloads, 1452 - 1 - len(dcid) - 4 - 16)
        assert count == len(payloads)
        packet = quic_protect(tx, dcid, pn + i, largest_acked, frames, pn_len=(0, 4, 3)[i])
        assert len(packet) <= 1452
        server.receive_datagram(packet, CLIENT_ADDR, now=now)
    client._packet_number = pn + len(lane_payloads)  # the lane used those numbers
    received = [e.data for e in drain(server) if isinstance(e, events.DatagramFrameReceived)]
    assert received == [p for payloads in lane_payloads for p in payloads]
    space = server._spaces[tls.Epoch.ONE_RTT]
    assert space.largest_received_packet == pn + len(lane_payloads) - 1

    # The server's ACK of them is lane-only and C reads the ranges aioquic keeps.
    ack_queue = [(r.start, r.stop) for r in space.ack_queue]
    replies = [data for data, _ in server.datagrams_to_send(now=now + 1.0)]
    assert replies
    rx_client = keys_from_context(client_recv)
    largest_c = client._spaces[tls.Epoch.ONE_RTT].largest_received_packet
    acks = []
    for packet in replies:
        result = quic_unprotect(rx_client, packet, s2c_len, largest_c)
        assert result is not None
        lane_only, eliciting, datagrams, ack = parse_lane_frames(result[2])
        assert lane_only and not eliciting and not datagrams and ack is not None
        acks.append(ack)
        largest_c = result[0]
        client.receive_datagram(packet, SERVER_ADDR, now=now + 1.0)
    assert acks[-1][0] == pn + len(lane_payloads) - 1
    assert acks[-1][2] == tuple(reversed(ack_queue))

    # A batch protected in C, the other way: server -> client, ACK included.
    tx_server = keys_from_context(server_send)
    batch = batch_of([b"b-1", b"b-2" * 200], slot_size=1452)
    first = server._packet_number
    s_acked = server._spaces[tls.Epoch.ONE_RTT].largest_acked_packet
    client_space = client._spaces[tls.Epoch.ONE_RTT]
    ranges = list(client_space.ack_queue)
    count = quic_protect_batch(
        tx_server,
        batch,
        server._peer_cid.cid,
        first,
        s_acked,
        datagram=True,
        ack_ranges=ranges,
    )
    assert count == 2
    server._packet_number = first + 2
    for i in range(2):
        client.receive_datagram(bytes(batch.view(i)), SERVER_ADDR, now=now + 1.0)
    client_events = drain(client)
    assert [e.data for e in client_events if isinstance(e, events.DatagramFrameReceived)] == [
        b"b-1",
        b"b-2" * 200,
    ]
    assert not any(isinstance(e, events.ConnectionTerminated) for e in client_events)

    # aioquic keeps working on the same connection afterwards.
    stream_id = client.get_next_available_stream_id()
    client.send_stream_data(stream_id, b"after the lane", end_stream=True)
    shuttle(client, server, now + 2.0)
    received_stream = [e for e in drain(server) if isinstance(e, events.StreamDataReceived)]
    assert b"".join(e.data for e in received_stream) == b"after the lane"


@pytest.mark.parametrize("suite", SUITES)
def test_aioquic_stream_packets_are_not_lane_packets(suite: CipherSuite) -> None:
    client, server = connected(suite)
    rx = keys_from_context(one_rtt(server)[0])
    stream_id = client.get_next_available_stream_id()
    client.send_stream_data(stream_id, b"for aioquic")
    packets = [data for data, _ in client.datagrams_to_send(now=3.0)]
    batch = batch_of(packets)
    largest = server._spaces[tls.Epoch.ONE_RTT].largest_received_packet
    results = quic_receive_lane_batch(rx, batch, len(client._peer_cid.cid), largest)
    assert [r[0] for r in results] == [STATUS["other-frames"]] * len(packets)
    for i, packet in enumerate(packets):
        assert bytes(batch.view(i)) == packet
        server.receive_datagram(bytes(batch.view(i)), CLIENT_ADDR, now=3.0)
    assert any(isinstance(e, events.StreamDataReceived) for e in drain(server))


# -- fuzz ----------------------------------------------------------------------


def _fuzz_keys() -> Iterator[QuicKeys]:
    for suite in SUITES:
        yield keys_from_secret(suite, secret_for(suite, 3))


FUZZ_KEYS = list(_fuzz_keys())


@settings(max_examples=300)
@given(
    data=st.binary(max_size=200),
    dcid_len=st.integers(0, 20),
    largest=st.integers(-1, (1 << 62) - 1),
    which=st.integers(0, 2),
)
def test_fuzz_unprotect_random_bytes(data: bytes, dcid_len: int, largest: int, which: int) -> None:
    keys = FUZZ_KEYS[which]
    assert quic_unprotect(keys, data, dcid_len, largest) is None
    batch = batch_of([data, data[:30]], slot_size=256)
    for status, *_ in quic_receive_lane_batch(keys, batch, dcid_len, largest, 1000):
        assert status < 0
    assert bytes(batch.view(0)) == data and bytes(batch.view(1)) == data[:30]


@settings(max_examples=200)
@given(
    frames=st.binary(min_size=1, max_size=120),
    flip=st.integers(0, 8 * 160 - 1),
    which=st.integers(0, 2),
)
def test_fuzz_tampered_valid_packets(frames: bytes, flip: int, which: int) -> None:
    keys = FUZZ_KEYS[which]
    packet = quic_protect(keys, DCID, 42, 40, frames)
    bad = bytearray(packet)
    bad[(flip // 8) % len(bad)] ^= 1 << (flip % 8)
    assert quic_unprotect(keys, packet, len(DCID), 41) is not None
    assert_rejected_untouched(keys, bytes(bad), len(DCID), 41)


@settings(max_examples=500)
@given(data=st.binary(max_size=300), limit=st.none() | st.integers(0, 400))
def test_fuzz_frame_walk(data: bytes, limit: int | None) -> None:
    try:
        lane_only, eliciting, datagrams, ack = parse_lane_frames(data, limit)
    except ValueError as exc:
        assert str(exc) in ("frame-encoding", "no-frames", "datagram-too-large")
        return
    if not lane_only:
        assert (eliciting, datagrams, ack) == (False, [], None)
        return
    assert sum(len(d) for d in datagrams) <= len(data)
    if ack is not None:
        largest, _delay, ranges, _ecn = ack
        assert ranges[0][1] - 1 == largest
        assert all(0 <= start < stop for start, stop in ranges)
        assert all(a[0] > b[1] for a, b in itertools.pairwise(ranges))


@settings(max_examples=200)
@given(
    ranges=st.lists(
        st.tuples(st.integers(0, 1 << 40), st.integers(1, 1000)), min_size=1, max_size=20
    ),
    delay=st.integers(0, (1 << 62) - 1),
)
def test_fuzz_ack_round_trip_with_aioquic(ranges: list[tuple[int, int]], delay: int) -> None:
    rangeset = RangeSet()
    for start, size in ranges:
        rangeset.add(start, start + size)
    frames, _ = build_lane_frames([], 2000, ack_ranges=rangeset, ack_delay=delay)
    buf = Buffer(data=frames[1:])
    assert pull_ack_frame(buf) == (rangeset, delay) and buf.eof()
    assert frames == ack_frame_by_aioquic(rangeset, delay)
    parsed = parse_lane_frames(frames)[3]
    assert parsed is not None and parsed[1] == delay
    assert parsed[2] == tuple((r.start, r.stop) for r in reversed(rangeset))
