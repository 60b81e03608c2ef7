# The QUIC datagram lane's crypto and packet layer (csrc/quic_crypto.c,
# csrc/quic_packet.c): 1-RTT short-header packet protection with OpenSSL EVP
# and the frames the lane carries (PADDING, PING, ACK, DATAGRAM). aioquic stays
# the authority: Python derives the keys with aioquic's derive_key_iv_hp and
# hands every packet these functions do not accept to aioquic unchanged.

from cpython.buffer cimport PyObject_GetBuffer, PyBuffer_Release, PyBUF_SIMPLE
from cpython.bytes cimport PyBytes_FromStringAndSize
from cpython.mem cimport PyMem_Malloc, PyMem_Free
from libc.stdint cimport int64_t, uint64_t, UINT64_MAX

from _fastpath.includes.quic cimport (
    masque_quic_keys, masque_quic_keys_init, masque_quic_keys_set, masque_quic_keys_free,
    masque_quic_decode_pn, masque_quic_pn_len,
    masque_quic_ack, masque_quic_frames, masque_quic_iov, masque_quic_rx,
    masque_quic_parse_frames, masque_quic_write_ack, masque_quic_write_datagrams,
    masque_quic_unprotect, masque_quic_protect,
    masque_quic_unprotect_batch, masque_quic_protect_batch,
    MASQUE_QUIC_OK, MASQUE_QUIC_OTHER_FRAMES, MASQUE_QUIC_E_INVALID,
    MASQUE_QUIC_MAX_SHORT_HEADER, MASQUE_QUIC_MAX_PN_LEN, MASQUE_QUIC_TAG_LEN,
    MASQUE_QUIC_MAX_ACK_RANGES, MASQUE_QUIC_MAX_CID_LEN, MASQUE_QUIC_VARINT_MAX,
)

#: Result names of the C layer (enum masque_quic_status): 0 and 1 mean the packet
#: authenticated; only 0 leaves plaintext behind. Every other result leaves the
#: packet's bytes as they arrived, for aioquic.
QUIC_STATUS = {
    0: "ok",
    1: "other-frames",
    -1: "too-short",
    -2: "long-header",
    -3: "fixed-bit",
    -4: "key-phase",
    -5: "auth",
    -6: "reserved-bits",
    -7: "frame-encoding",
    -8: "no-frames",
    -9: "datagram-too-large",
    -10: "invalid",
    -11: "no-room",
    -12: "crypto",
}


cdef inline str _quic_status(int rc):
    return QUIC_STATUS.get(rc, f"status {rc}")


cdef inline const uint8_t *_quic_ptr(const uint8_t[::1] data):
    return &data[0] if data.shape[0] else NULL


cdef class QuicKeys:
    """One direction's 1-RTT packet keys: AEAD key, IV and header-protection key.

    ``cipher_suite`` is the TLS code point (0x1301 AES-128-GCM, 0x1302
    AES-256-GCM, 0x1303 ChaCha20-Poly1305); ``key``/``iv``/``hp`` are what
    ``aioquic.quic.crypto.derive_key_iv_hp`` returns for the traffic secret.
    ``key_phase`` is the phase these packet keys belong to: packets of the
    other phase are refused with ``"key-phase"``. After a key update the header
    protection key stays the one of the first 1-RTT secret (RFC 9001 6).

    The libcrypto contexts are set up once here and reused for every packet;
    not thread-safe (one thread at a time per object).
    """

    cdef masque_quic_keys k

    def __cinit__(self, int cipher_suite, const uint8_t[::1] key not None,
                  const uint8_t[::1] iv not None, const uint8_t[::1] hp not None,
                  int key_phase=0):
        masque_quic_keys_init(&self.k)
        if cipher_suite < 0 or key_phase not in (0, 1):
            raise ValueError(f"bad cipher suite {cipher_suite:#x} or key phase {key_phase}")
        cdef int rc = masque_quic_keys_set(
            &self.k, <unsigned>cipher_suite, _quic_ptr(key), <size_t>key.shape[0],
            _quic_ptr(iv), <size_t>iv.shape[0], _quic_ptr(hp), <size_t>hp.shape[0],
            <unsigned>key_phase)
        if rc == MASQUE_QUIC_E_INVALID:
            raise ValueError(
                f"cipher suite {cipher_suite:#x} with a {key.shape[0]}-byte key, "
                f"{iv.shape[0]}-byte iv and {hp.shape[0]}-byte hp key is not a QUIC key set")
        if rc != 0:
            raise MemoryError("libcrypto could not set up the key set")

    def __dealloc__(self):
        masque_quic_keys_free(&self.k)

    @property
    def cipher_suite(self):
        """The TLS cipher suite code point."""
        return self.k.cipher_suite

    @property
    def key_phase(self):
        """0 or 1: the key phase bit of packets these keys protect."""
        return self.k.key_phase

    def __repr__(self):
        return f"<QuicKeys suite={self.k.cipher_suite:#06x} key_phase={self.k.key_phase}>"


def quic_decode_pn(int64_t largest_pn, uint64_t truncated, int pn_len):
    """RFC 9000 A.3: the packet number a ``pn_len``-byte truncated value stands for,
    given the largest packet number received so far (-1: none)."""
    if not 1 <= pn_len <= 4 or truncated >> (8 * pn_len) or largest_pn < -1 \
            or largest_pn > <int64_t>MASQUE_QUIC_VARINT_MAX:
        raise ValueError("pn_len is 1..4, truncated must fit it, largest_pn -1 .. 2^62-1")
    return masque_quic_decode_pn(largest_pn, truncated, <unsigned>pn_len)


def quic_pn_length(uint64_t pn, int64_t largest_acked):
    """RFC 9000 A.2: bytes (1..4) to encode ``pn`` when ``largest_acked`` (-1:
    none) is the largest acknowledged packet number."""
    cdef int n = masque_quic_pn_len(pn, largest_acked)
    if n < 0:
        raise ValueError(f"packet number {pn} cannot be sent after {largest_acked} was acked")
    return n


def quic_unprotect(QuicKeys keys not None, const uint8_t[::1] datagram not None,
                   Py_ssize_t dcid_len, int64_t largest_pn):
    """Remove the protection of one short-header packet (a whole UDP payload).

    ``dcid_len``: our connection ID length; ``largest_pn``: the largest packet
    number received in the application space so far (-1: none). Returns
    ``(packet_number, key_phase, plaintext)`` or ``None`` when the packet is not
    a short-header packet these keys authenticate (see :func:`quic_unprotect_batch`
    for the reason). ``datagram`` itself is not modified.
    """
    if dcid_len < 0 or dcid_len > MASQUE_QUIC_MAX_CID_LEN:
        raise ValueError(f"a connection ID has 0..20 bytes, not {dcid_len}")
    cdef bytearray copy = bytearray(datagram)
    cdef uint8_t[::1] buf = copy
    cdef masque_quic_rx rx
    cdef size_t n = <size_t>buf.shape[0]
    cdef int rc = masque_quic_unprotect(&keys.k, &buf[0] if n else NULL, n, <size_t>dcid_len,
                                        largest_pn, &rx)
    if rc == MASQUE_QUIC_E_INVALID:
        raise ValueError(f"largest_pn {largest_pn} outside -1 .. 2^62-1")
    if rc != MASQUE_QUIC_OK:
        return None
    return (rx.pn, rx.key_phase, bytes(buf[rx.hdr_len:rx.hdr_len + rx.payload_len]))


def quic_protect(QuicKeys keys not None, const uint8_t[::1] dcid not None, uint64_t pn,
                 int64_t largest_acked, const uint8_t[::1] plaintext not None, *,
                 int pn_len=0):
    """Build one protected short-header packet carrying ``plaintext`` frames.

    The packet number is encoded in the RFC 9000 A.2 length for
    ``largest_acked`` (-1: nothing acknowledged yet) unless ``pn_len`` (1..4)
    forces one; PADDING frames are put in front when the header-protection
    sample needs them. The key phase bit is ``keys.key_phase``; the spin bit 0.
    """
    cdef Py_ssize_t n = plaintext.shape[0]
    if dcid.shape[0] > MASQUE_QUIC_MAX_CID_LEN:
        raise ValueError(f"a connection ID has 0..20 bytes, not {dcid.shape[0]}")
    if not 0 <= pn_len <= 4:
        raise ValueError(f"pn_len is 1..4 (0: automatic), not {pn_len}")
    if n == 0:
        raise ValueError("a packet needs at least one frame")
    cdef Py_ssize_t head = MASQUE_QUIC_MAX_SHORT_HEADER + MASQUE_QUIC_MAX_PN_LEN
    cdef bytearray out = bytearray(head + n + MASQUE_QUIC_TAG_LEN)
    cdef uint8_t[::1] buf = out
    buf[head:head + n] = plaintext
    cdef uint8_t *start = NULL
    cdef long rc = masque_quic_protect(&keys.k, &buf[head], <size_t>n, <size_t>head,
                                       MASQUE_QUIC_TAG_LEN, _quic_ptr(dcid), <size_t>dcid.shape[0],
                                       pn, largest_acked, <unsigned>pn_len, &start)
    if rc < 0:
        raise ValueError(f"cannot protect packet {pn}: {_quic_status(<int>rc)}")
    cdef Py_ssize_t off = start - &buf[0]
    return bytes(buf[off:off + rc])


cdef tuple _quic_ack_tuple(const masque_quic_ack *a):
    cdef uint32_t i
    ranges = tuple([(a.ranges[i].start, a.ranges[i].stop) for i in range(a.nranges)])
    ecn = (a.ecn[0], a.ecn[1], a.ecn[2]) if a.has_ecn else None
    return (a.ranges[0].stop - 1, a.delay, ranges, ecn)


cdef inline uint64_t _quic_max_frame(object max_datagram_frame_size) except? 0:
    if max_datagram_frame_size is None:
        return UINT64_MAX
    if max_datagram_frame_size < 0:
        raise ValueError("max_datagram_frame_size must not be negative")
    return <uint64_t>max_datagram_frame_size


def parse_lane_frames(const uint8_t[::1] plaintext not None, max_datagram_frame_size=None):
    """Walk the frames of a decrypted packet payload.

    Returns ``(lane_only, ack_eliciting, datagrams, ack)``. ``lane_only`` is
    True when the payload holds only PADDING, PING, ACK and DATAGRAM frames
    (at most 64 datagrams, one ACK frame of at most 64 ranges); otherwise the
    packet is aioquic's and the rest is ``(False, [], None)``. ``datagrams`` are
    the DATAGRAM payloads in order; ``ack`` is ``(largest_acknowledged,
    ack_delay, ranges, ecn)`` with ``ranges`` as descending half-open
    ``(start, stop)`` pairs (the first holds the largest acknowledged) and
    ``ecn`` the ``(ect0, ect1, ce)`` counts of an ACK_ECN frame, else None.
    ``max_datagram_frame_size``: our transport parameter (None: no limit).

    Raises ``ValueError("frame-encoding" | "no-frames" | "datagram-too-large")``
    for a payload that breaks the protocol.
    """
    cdef uint64_t limit = _quic_max_frame(max_datagram_frame_size)
    cdef masque_quic_frames fr
    cdef size_t n = <size_t>plaintext.shape[0]
    cdef int rc = masque_quic_parse_frames(_quic_ptr(plaintext), n, limit, &fr)
    if rc == MASQUE_QUIC_OTHER_FRAMES:
        return (False, False, [], None)
    if rc != MASQUE_QUIC_OK:
        raise ValueError(_quic_status(rc))
    cdef uint32_t i
    datagrams = [bytes(plaintext[fr.datagrams[i].off:fr.datagrams[i].off + fr.datagrams[i].len])
                 for i in range(fr.ndatagrams)]
    return (True, bool(fr.ack_eliciting), datagrams, _quic_ack_tuple(&fr.ack) if fr.has_ack else None)


cdef int _quic_fill_ack(masque_quic_ack *a, object ranges, object delay, object ecn) except -1:
    cdef list items = []
    for r in ranges:
        if isinstance(r, range):
            if r.step != 1:
                raise ValueError(f"ACK range {r!r} has a step")
            items.append((r.start, r.stop))
        else:
            start, stop = r
            items.append((int(start), int(stop)))
    if not items:
        raise ValueError("an ACK frame needs at least one range")
    if len(items) > MASQUE_QUIC_MAX_ACK_RANGES:
        raise ValueError(f"at most {MASQUE_QUIC_MAX_ACK_RANGES} ACK ranges, not {len(items)}")
    items.sort(reverse=True)
    cdef Py_ssize_t i
    for i, (start, stop) in enumerate(items):
        if not 0 <= start < stop <= MASQUE_QUIC_VARINT_MAX + 1:
            raise ValueError(f"bad ACK range [{start}, {stop})")
        a.ranges[i].start = start
        a.ranges[i].stop = stop
    a.nranges = <uint32_t>len(items)
    if not 0 <= delay <= MASQUE_QUIC_VARINT_MAX:
        raise ValueError(f"bad ACK delay {delay}")
    a.delay = delay
    a.has_ecn = 0
    a.ecn[0] = a.ecn[1] = a.ecn[2] = 0
    if ecn is not None:
        ect0, ect1, ce = ecn
        if not (0 <= ect0 <= MASQUE_QUIC_VARINT_MAX and 0 <= ect1 <= MASQUE_QUIC_VARINT_MAX
                and 0 <= ce <= MASQUE_QUIC_VARINT_MAX):
            raise ValueError(f"bad ECN counts {ecn!r}")
        a.has_ecn = 1
        a.ecn[0], a.ecn[1], a.ecn[2] = ect0, ect1, ce
    return 0


cdef bytes _quic_ack_frame(object ranges, object delay, object ecn):
    cdef masque_quic_ack a
    _quic_fill_ack(&a, ranges, delay, ecn)
    cdef uint8_t out[1 + 8 * (4 + 2 * 64 + 3)]
    cdef long n = masque_quic_write_ack(out, sizeof(out), &a)
    if n < 0:
        raise ValueError("ACK ranges must not overlap or touch (a gap of at least one packet)")
    return PyBytes_FromStringAndSize(<const char *>out, n)


def build_lane_frames(payloads, Py_ssize_t room, *, ack_ranges=None, ack_delay=0, ecn=None):
    """Frames for one packet payload of at most ``room`` bytes.

    An ACK frame first when ``ack_ranges`` is given (``(start, stop)`` pairs or
    ``range`` objects such as an aioquic RangeSet's, any order; ``ack_delay``
    as encoded; ``ecn`` = ``(ect0, ect1, ce)`` makes it ACK_ECN), then as many
    of ``payloads`` as fit, in order, as DATAGRAM frames: with a length except
    the last one, which runs to the end of the packet. Returns ``(frames,
    count)``: ``count`` payloads were packed. ``ValueError`` when the ACK frame
    alone exceeds ``room``.
    """
    if room < 0:
        raise ValueError("room must not be negative")
    cdef bytes ack = b"" if ack_ranges is None else _quic_ack_frame(ack_ranges, ack_delay, ecn)
    if len(ack) > room:
        raise ValueError(f"the ACK frame ({len(ack)} bytes) exceeds the room ({room})")
    cdef list items = list(payloads)
    cdef Py_ssize_t n = len(items), got = 0, i
    cdef masque_quic_iov *iov = <masque_quic_iov *>PyMem_Malloc((n + 1) * sizeof(masque_quic_iov))
    cdef Py_buffer *bufs = <Py_buffer *>PyMem_Malloc((n + 1) * sizeof(Py_buffer))
    cdef Py_ssize_t space = room - len(ack)
    cdef bytearray out = bytearray(space + 1)  # never empty, for &o[0]
    cdef uint8_t[::1] o = out
    cdef size_t packed = 0, written = 0
    if iov == NULL or bufs == NULL:
        PyMem_Free(iov)
        PyMem_Free(bufs)
        raise MemoryError()
    try:
        for i in range(n):
            PyObject_GetBuffer(items[i], &bufs[i], PyBUF_SIMPLE)
            got += 1
            iov[i].data = <const uint8_t *>bufs[i].buf
            iov[i].len = <size_t>bufs[i].len
        written = masque_quic_write_datagrams(&o[0], <size_t>space, iov, <size_t>n, &packed)
    finally:
        for i in range(got):
            PyBuffer_Release(&bufs[i])
        PyMem_Free(bufs)
        PyMem_Free(iov)
    return ack + bytes(out[:written]), packed


cdef inline object _quic_rx_pn(const masque_quic_rx *rx):
    return rx.pn if rx.pn_len else -1


def quic_unprotect_batch(QuicKeys keys not None, PacketBatch batch not None,
                         Py_ssize_t dcid_len, int64_t largest_pn):
    """Unprotect packets ``0 .. count-1`` of ``batch`` in place, in one C call.

    Returns ``[(status, packet_number, offset, length), ...]``: ``status`` 0
    (``QUIC_STATUS``) leaves the plaintext at ``batch.view(i)[offset:offset +
    length]`` (the header before it is unprotected too); any other status leaves
    the slot as it arrived. ``packet_number`` is -1 when the header could not
    be read; it is authenticated only for ``ok`` and ``reserved-bits``. Later
    packets decode against the largest authenticated packet number so far.
    """
    if dcid_len < 0 or dcid_len > MASQUE_QUIC_MAX_CID_LEN:
        raise ValueError(f"a connection ID has 0..20 bytes, not {dcid_len}")
    if largest_pn < -1 or largest_pn > <int64_t>MASQUE_QUIC_VARINT_MAX:
        raise ValueError(f"largest_pn {largest_pn} outside -1 .. 2^62-1")
    cdef uint32_t count = batch.b.count, i
    if count == 0:
        return []
    cdef masque_quic_rx *rx = <masque_quic_rx *>PyMem_Malloc(count * sizeof(masque_quic_rx))
    if rx == NULL:
        raise MemoryError()
    cdef int64_t largest = largest_pn
    try:
        masque_quic_unprotect_batch(&keys.k, &batch.b, <size_t>dcid_len, &largest, UINT64_MAX,
                                    rx, NULL)
        return [(rx[i].status, _quic_rx_pn(&rx[i]),
                 rx[i].hdr_len if rx[i].status == MASQUE_QUIC_OK else 0,
                 rx[i].payload_len if rx[i].status == MASQUE_QUIC_OK else 0)
                for i in range(count)]
    finally:
        PyMem_Free(rx)


def quic_receive_lane_batch(QuicKeys keys not None, PacketBatch batch not None,
                            Py_ssize_t dcid_len, int64_t largest_pn,
                            max_datagram_frame_size=None):
    """:func:`quic_unprotect_batch` plus the frame walk, in one C call.

    Returns ``[(status, packet_number, ack_eliciting, datagrams, ack), ...]``.
    Status 0: the packet holds only lane frames; it stays decrypted and
    ``datagrams`` are ``(offset, length)`` of its DATAGRAM payloads within
    ``batch.view(i)``; ``ack`` is as :func:`parse_lane_frames` reports it.
    Status 1 (``other-frames``) or a frame error: the packet authenticated but
    is aioquic's, and the slot is restored to the bytes that arrived. Other
    statuses: as :func:`quic_unprotect_batch`.
    """
    if dcid_len < 0 or dcid_len > MASQUE_QUIC_MAX_CID_LEN:
        raise ValueError(f"a connection ID has 0..20 bytes, not {dcid_len}")
    if largest_pn < -1 or largest_pn > <int64_t>MASQUE_QUIC_VARINT_MAX:
        raise ValueError(f"largest_pn {largest_pn} outside -1 .. 2^62-1")
    cdef uint64_t limit = _quic_max_frame(max_datagram_frame_size)
    cdef uint32_t count = batch.b.count, i, d
    if count == 0:
        return []
    cdef masque_quic_rx *rx = <masque_quic_rx *>PyMem_Malloc(count * sizeof(masque_quic_rx))
    cdef masque_quic_frames *fr = <masque_quic_frames *>PyMem_Malloc(
        count * sizeof(masque_quic_frames))
    cdef int64_t largest = largest_pn
    cdef list out = []
    if rx == NULL or fr == NULL:
        PyMem_Free(rx)
        PyMem_Free(fr)
        raise MemoryError()
    try:
        masque_quic_unprotect_batch(&keys.k, &batch.b, <size_t>dcid_len, &largest, limit, rx, fr)
        for i in range(count):
            if rx[i].status == MASQUE_QUIC_OK:
                out.append((0, rx[i].pn, bool(fr[i].ack_eliciting),
                            [(fr[i].datagrams[d].off, fr[i].datagrams[d].len)
                             for d in range(fr[i].ndatagrams)],
                            _quic_ack_tuple(&fr[i].ack) if fr[i].has_ack else None))
            else:
                out.append((rx[i].status, _quic_rx_pn(&rx[i]), False, [], None))
        return out
    finally:
        PyMem_Free(rx)
        PyMem_Free(fr)


def quic_protect_batch(QuicKeys keys not None, PacketBatch batch not None,
                       const uint8_t[::1] dcid not None, uint64_t pn, int64_t largest_acked, *,
                       bint datagram=False, bytes payload_prefix=b"", ack_ranges=None,
                       ack_delay=0, ecn=None):
    """Protect packets ``0 .. count-1`` of ``batch`` in place, in one C call.

    Packet ``i`` gets packet number ``pn + i``. Each slot holds plaintext
    frames, or with ``datagram=True`` one DATAGRAM payload (the frame type,
    followed by ``payload_prefix`` — e.g. an HTTP Datagram's quarter stream ID
    and context ID — is written into the headroom). ``ack_ranges``/``ack_delay``/``ecn`` (as for
    :func:`build_lane_frames`) put an ACK frame in front of packet 0's frames.
    The packet is built in the headroom (it needs 1 + len(dcid) + 4 + 3 bytes,
    plus the ACK frame) and moved to the slot's start; the slot must have 16
    more bytes than its content for the tag. Returns how many packets from the
    front were protected; the rest (no room) are left as they were.
    """
    if dcid.shape[0] > MASQUE_QUIC_MAX_CID_LEN:
        raise ValueError(f"a connection ID has 0..20 bytes, not {dcid.shape[0]}")
    if payload_prefix and not datagram:
        raise ValueError("payload_prefix needs datagram=True")
    cdef bytes prefix = b"\x30" + payload_prefix if datagram else b""
    cdef bytes first = prefix
    if ack_ranges is not None:
        first = _quic_ack_frame(ack_ranges, ack_delay, ecn) + prefix
    if batch.b.count == 0:
        return 0
    return masque_quic_protect_batch(&keys.k, &batch.b, _quic_ptr(dcid), <size_t>dcid.shape[0],
                                     pn, largest_acked, <const uint8_t *>first, len(first),
                                     <const uint8_t *>prefix, len(prefix))


#: Largest UDP payload quic_lane_receive takes (larger ones go to aioquic).
LANE_MAX_DATAGRAM = 2048


def quic_lane_receive(QuicKeys keys not None, const uint8_t[::1] datagram not None,
                      Py_ssize_t dcid_len, int64_t largest_pn, max_datagram_frame_size,
                      PacketBatch out not None, prefix):
    """The lane's receive path for one UDP payload, in one C call.

    Unprotects a copy of ``datagram`` (the original is never touched) and walks
    its frames. ``None`` when the packet is not the lane's: it does not
    authenticate with ``keys`` (or has the other key phase), or carries another
    frame, or breaks the protocol — aioquic must have the original bytes.
    Otherwise every DATAGRAM payload that starts with ``prefix`` (one session's
    HTTP Datagram framing: quarter stream ID and context ID 0) is appended to
    ``out`` without the prefix — straight into a slot, no Python object (with
    ``prefix`` None, nothing is: every payload comes back in ``others``) — and
    the result is ``(packet_number, ack_eliciting, ack, others)``: ``ack`` as in
    :func:`parse_lane_frames` or None, ``others`` the payloads that did not
    match the prefix or did not fit ``out`` (a list, possibly empty).
    """
    if dcid_len < 0 or dcid_len > MASQUE_QUIC_MAX_CID_LEN:
        raise ValueError(f"a connection ID has 0..20 bytes, not {dcid_len}")
    cdef size_t n = <size_t>datagram.shape[0]
    if n == 0 or n > LANE_MAX_DATAGRAM:
        return None
    cdef uint64_t max_frame = _quic_max_frame(max_datagram_frame_size)
    cdef uint8_t buf[2048]
    cdef masque_quic_rx rx
    cdef masque_quic_frames fr
    cdef int rc
    cdef bint match = prefix is not None
    cdef const uint8_t[::1] pview = prefix if match else b""
    cdef size_t plen = <size_t>pview.shape[0]
    cdef const uint8_t *pre = _quic_ptr(pview)
    cdef const uint8_t *payload
    cdef const uint8_t *d
    cdef uint32_t i, dlen
    cdef list others = []
    with nogil:
        memcpy(buf, &datagram[0], n)
        rc = masque_quic_unprotect(&keys.k, buf, n, <size_t>dcid_len, largest_pn, &rx)
        if rc == MASQUE_QUIC_OK:
            rc = masque_quic_parse_frames(buf + rx.hdr_len, rx.payload_len, max_frame, &fr)
    if rc != MASQUE_QUIC_OK:
        return None
    payload = buf + rx.hdr_len
    for i in range(fr.ndatagrams):
        d = payload + fr.datagrams[i].off
        dlen = fr.datagrams[i].len
        if (match and dlen >= plen and (plen == 0 or memcmp(d, pre, plen) == 0)
                and out.b.count < out.b.slots and dlen - plen <= out.b.slot_size):
            memcpy(masque_batch_packet(&out.b, out.b.count), d + plen, dlen - plen)
            out.b.lens[out.b.count] = dlen - plen
            out.b.count += 1
        else:
            others.append(PyBytes_FromStringAndSize(<const char *>d, dlen))
    ack = _quic_ack_tuple(&fr.ack) if fr.has_ack else None
    return (rx.pn, bool(fr.ack_eliciting), ack, others)
