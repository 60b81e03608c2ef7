# TUN device with vnet_hdr offloads (csrc/tun.c, csrc/offload.c, csrc/gro.c).
# One Python call reads or writes a whole batch; GSO super-segments are split in C
# on read, TCP segments coalesced into super-frames (GRO) on write.

from cpython.bytes cimport PyBytes_FromStringAndSize
from libc.stdlib cimport malloc, free
from libc.string cimport memset, strerror
from libc.stdint cimport int32_t
from posix.uio cimport iovec
from libc.errno cimport EAGAIN

from _fastpath.includes.csrc cimport (
    masque_tun, masque_tun_open, masque_tun_close, masque_tun_next, masque_tun_write,
    masque_tun_read_batch, masque_tun_write_batch,
    masque_vnet_hdr, masque_vnet_hdr_decode, masque_gso_split, masque_vnet_complete_csum,
    MASQUE_TUN_F_CSUM, MASQUE_TUN_F_TSO4, MASQUE_TUN_F_TSO6, MASQUE_TUN_F_USO4,
    MASQUE_TUN_F_USO6, MASQUE_VNET_HDR_LEN, MASQUE_VNET_GSO_NONE, MASQUE_VNET_F_NEEDS_CSUM,
    masque_gro, masque_gro_reserve, masque_gro_free, masque_gro_plan, masque_gro_frame,
    MASQUE_GRO_MAX_SEGS, MASQUE_GRO_HDR_BUF, MASQUE_GRO_SKIP,
)


cdef inline _tun_oserror(int neg_errno, str what):
    return OSError(-neg_errno, f"{what}: {strerror(-neg_errno).decode()}")


cdef class Tun:
    """A TUN device (``IFF_TUN | IFF_NO_PI``) read and written in batches.

    ``Tun(name, vnet_hdr=True, queues=1)`` opens or attaches to ``name``
    (``"mqtun%d"`` lets the kernel choose). ``vnet_hdr`` asks for
    ``IFF_VNET_HDR`` plus TSO4/TSO6 (and USO when the kernel accepts it);
    ``queues > 1`` asks for ``IFF_MULTI_QUEUE``. Each is probed and falls back
    quietly: :attr:`mode` says what was negotiated. The device is left down
    and unconfigured; all fds are non-blocking.
    """

    cdef masque_tun *_t
    cdef bint _open

    def __cinit__(self, str name="mqtun%d", *, bint vnet_hdr=True, int queues=1):
        self._t = <masque_tun *>malloc(sizeof(masque_tun))
        if self._t == NULL:
            raise MemoryError()
        self._open = False
        cdef bytes encoded = name.encode()
        cdef int err = masque_tun_open(self._t, encoded, vnet_hdr, queues)
        if err < 0:
            raise _tun_oserror(err, f"opening TUN {name!r}")
        self._open = True

    def __dealloc__(self):
        if self._t != NULL:
            if self._open:
                masque_tun_close(self._t)
            free(self._t)
            self._t = NULL

    cdef inline void _check(self, int queue) except *:
        if not self._open:
            raise ValueError("TUN is closed")
        if queue < 0 or queue >= self._t.nqueues:
            raise IndexError(f"queue {queue} out of range (have {self._t.nqueues})")

    def close(self):
        """Close every queue (a non-persistent device disappears with the last)."""
        if self._open:
            masque_tun_close(self._t)
            self._open = False

    @property
    def closed(self):
        return not self._open

    @property
    def name(self):
        return self._t.name.decode()

    @property
    def queues(self):
        return self._t.nqueues

    @property
    def vnet_hdr(self):
        return bool(self._t.vnet_hdr)

    @property
    def offloads(self):
        """The TUN_F_* bits TUNSETOFFLOAD accepted (0 without vnet_hdr)."""
        return self._t.offloads

    @property
    def mode(self):
        """What was negotiated: ``"plain"`` or e.g. ``"vnet_hdr+csum+tso4+tso6+uso"``, plus ``"+mqN"``."""
        cdef unsigned o = self._t.offloads
        parts = []
        if self._t.vnet_hdr:
            parts.append("vnet_hdr")
            if o & MASQUE_TUN_F_CSUM:
                parts.append("csum")
            if o & MASQUE_TUN_F_TSO4:
                parts.append("tso4")
            if o & MASQUE_TUN_F_TSO6:
                parts.append("tso6")
            if o & MASQUE_TUN_F_USO4 and o & MASQUE_TUN_F_USO6:
                parts.append("uso")
        else:
            parts.append("plain")
        if self._t.multi_queue:
            parts.append(f"mq{self._t.nqueues}")
        return "+".join(parts)

    def fileno(self, int queue=0):
        self._check(queue)
        return self._t.q[queue].fd

    @property
    def fds(self):
        return tuple(self._t.q[i].fd for i in range(self._t.nqueues)) if self._open else ()

    @property
    def stats(self):
        """Counters since open.

        ``reads`` frames read; ``writes`` packets written (a coalesced
        super-frame counts each of its segments); ``gso_frames`` frames read
        that were GSO super-segments and ``segments_split`` the packets made of
        them; ``largest_read`` the largest frame read (bytes, without the
        vnet_hdr); ``oversize`` packets :meth:`read_batch` dropped for being
        larger than a slot; ``gro_frames`` super-frames written and
        ``segments_coalesced`` the packets inside them; ``write_errors`` writes
        the kernel refused; ``errors`` malformed frames dropped plus refused
        writes.
        """
        return {
            "reads": self._t.stats.reads,
            "writes": self._t.stats.writes,
            "gso_frames": self._t.stats.gso_frames,
            "segments_split": self._t.stats.segments_split,
            "errors": self._t.stats.errors,
            "largest_read": self._t.stats.largest_read,
            "oversize": self._t.stats.oversize,
            "gro_frames": self._t.stats.gro_frames,
            "segments_coalesced": self._t.stats.segments_coalesced,
            "write_errors": self._t.stats.write_errors,
        }

    def read_batch(self, PacketBatch batch not None, int queue=0, int mtu=1500):
        """Append packets read from ``queue`` to ``batch``, without blocking.

        Packets go into slots ``batch.count``, ``batch.count + 1``, ... (each
        right after the slot's headroom, so framing can be written in front)
        until the batch is full or the device has nothing more. A GSO
        super-segment (vnet_hdr) is split in C: TCP into packets of at most
        ``min(mtu, batch.slot_size)`` bytes (``mtu`` 0: the slot size), UDP into
        the sender's datagrams; partial checksums are completed. Segments that
        do not fit the slots left stay in the Tun and come first on the next
        call (on this queue), so nothing is lost and the order is kept. A
        packet larger than a slot is dropped and counted in
        ``stats["oversize"]``. Returns the number of packets appended (0 when
        nothing was ready); OSError when a read fails before any packet came.
        """
        self._check(queue)
        cdef int r
        cdef size_t m = <size_t>mtu if mtu > 0 else 0
        with nogil:
            r = masque_tun_read_batch(self._t, queue, &batch.b, m)
        if r < 0:
            raise _tun_oserror(r, f"reading {self.name}")
        return r

    def write_batch(self, PacketBatch batch not None, const uint8_t[::1] verdicts=None, int queue=0):
        """Write packets ``0 .. batch.count-1`` whose verdict byte is 0 (all when
        ``verdicts`` is None) to ``queue``; return how many were written.

        With vnet_hdr, TCP segments of one flow anywhere in the batch are
        coalesced (GRO) into super-frames the kernel takes in one write:
        only when splitting the super-frame gives back the very segments
        (same 5-tuple, IP and TCP header fields, ACK number and options,
        contiguous sequence numbers, equal payload sizes but for a shorter
        last one, ACK/PSH flags only, valid checksums; at most 64 KB). A
        super-frame goes out at the position of its first segment, so the
        packets of one flow keep their order; everything else is written
        alone. Coalesced packets count individually in the result and in
        ``stats["writes"]``. Stops at EAGAIN/ENOBUFS (the rest is not
        written); a packet the kernel refuses is counted in
        ``stats["write_errors"]`` and skipped. Empty packets are skipped.
        """
        self._check(queue)
        if verdicts is not None and <size_t>verdicts.shape[0] < batch.b.count:
            raise ValueError("fewer verdicts than packets")
        cdef const uint8_t *v = NULL
        if verdicts is not None and verdicts.shape[0]:
            v = &verdicts[0]
        cdef int r
        with nogil:
            r = masque_tun_write_batch(self._t, queue, &batch.b, v)
        return r

    def read_packets(self, int max_packets=64, int mtu=1500, int queue=0):
        """Read up to ``max_packets`` IP packets from ``queue`` without blocking.

        GSO super-segments (vnet_hdr) are split into packets of at most ``mtu``
        bytes (TCP; UDP keeps the sender's segment size) with complete
        checksums; segments beyond ``max_packets`` wait for the next call.
        Returns ``[]`` when nothing is ready.
        """
        self._check(queue)
        cdef list out = []
        cdef const uint8_t *pkt
        cdef size_t length
        cdef int r
        while len(out) < max_packets:
            r = masque_tun_next(self._t, queue, <size_t>mtu if mtu > 0 else 0, &pkt, &length)
            if r == 0:
                break
            if r < 0:
                if out:
                    break
                raise _tun_oserror(r, f"reading {self.name}")
            out.append(PyBytes_FromStringAndSize(<const char *>pkt, <Py_ssize_t>length))
        return out

    def write_packets(self, packets, int queue=0):
        """Write IP packets to ``queue``; return how many went out.

        Stops at the first packet the device cannot take now (EAGAIN); a packet
        the kernel rejects is counted in ``stats["errors"]`` and skipped.
        """
        self._check(queue)
        cdef int written = 0
        cdef int r
        cdef const uint8_t[::1] view
        for packet in packets:
            view = packet
            if view.shape[0] == 0:
                continue
            r = masque_tun_write(self._t, queue, &view[0], <size_t>view.shape[0])
            if r == 0:
                written += 1
            elif r == -EAGAIN:
                break
        return written

    def __enter__(self):
        return self

    def __exit__(self, *exc_info):
        self.close()

    def __repr__(self):
        state = "closed" if not self._open else self.mode
        return f"<Tun {self.name} {state}>"


def vnet_split(const uint8_t[::1] frame not None, int mtu=0):
    """Process one frame as read from a vnet_hdr TUN (10-byte header + packet).

    Returns the packets :meth:`Tun.read_packets` would hand out for it: the
    split segments of a GSO frame, or the single packet with a partial
    checksum completed. Raises ValueError for a frame that cannot be split.
    """
    cdef size_t n = <size_t>frame.shape[0]
    if n < MASQUE_VNET_HDR_LEN:
        raise ValueError("frame shorter than a virtio_net_hdr")
    cdef masque_vnet_hdr h
    masque_vnet_hdr_decode(&frame[0], &h)
    cdef bytearray pkt = bytearray(frame[MASQUE_VNET_HDR_LEN:])
    cdef uint8_t *p = <uint8_t *>(<char *>pkt)
    cdef size_t plen = n - MASQUE_VNET_HDR_LEN
    if h.gso_type == MASQUE_VNET_GSO_NONE:
        if h.flags & MASQUE_VNET_F_NEEDS_CSUM:
            if masque_vnet_complete_csum(p, plen, &h) < 0:
                raise ValueError("checksum offset outside the packet")
        return [bytes(pkt)]
    cdef int max_segs = 1024
    cdef size_t cap = 4 * 65536
    cdef uint8_t *out = <uint8_t *>malloc(cap)
    cdef uint16_t *lens = <uint16_t *>malloc(max_segs * sizeof(uint16_t))
    cdef int segs, i
    cdef size_t off = 0
    try:
        if out == NULL or lens == NULL:
            raise MemoryError()
        segs = masque_gso_split(p, plen, &h, <size_t>mtu if mtu > 0 else 0, out, cap, lens, max_segs)
        if segs < 0:
            raise ValueError(f"cannot split GSO frame: {strerror(-segs).decode()}")
        result = []
        for i in range(segs):
            result.append(PyBytes_FromStringAndSize(<const char *>out + off, lens[i]))
            off += lens[i]
        return result
    finally:
        free(out)
        free(lens)


def gro_frames(PacketBatch batch not None, const uint8_t[::1] verdicts=None):
    """The frames :meth:`Tun.write_batch` writes for ``batch`` on a vnet_hdr
    device, in write order, each as ``(indices, frame)``: the batch indices of
    the packets it carries and its bytes, virtio_net_hdr (10 bytes) first. A
    frame carrying one packet has an all-zero header. The batch is not changed.
    """
    cdef Py_ssize_t count = batch.b.count
    if verdicts is not None and verdicts.shape[0] < count:
        raise ValueError("fewer verdicts than packets")
    cdef const uint8_t *v = NULL
    if verdicts is not None and verdicts.shape[0]:
        v = &verdicts[0]
    cdef masque_gro g
    memset(&g, 0, sizeof(g))
    cdef uint8_t hdrbuf[MASQUE_GRO_HDR_BUF]
    cdef iovec *iov = <iovec *>malloc((MASQUE_GRO_MAX_SEGS + 1) * sizeof(iovec))
    cdef Py_ssize_t i
    cdef int32_t role, j
    cdef int n, k
    cdef list out = []
    try:
        if iov == NULL or masque_gro_reserve(&g, <uint32_t>count) < 0:
            raise MemoryError()
        masque_gro_plan(&g, &batch.b, v, 1)
        for i in range(count):
            role = g.role[i]
            if role == MASQUE_GRO_SKIP or (role >= 0 and g.items[role].first != <uint32_t>i):
                continue
            if role >= 0 and g.items[role].nsegs > 1:
                n = masque_gro_frame(&g, &batch.b, <uint32_t>role, hdrbuf, iov)
                parts = []
                for k in range(n):
                    parts.append(PyBytes_FromStringAndSize(<const char *>iov[k].iov_base,
                                                           <Py_ssize_t>iov[k].iov_len))
                frame = b"".join(parts)
                indices = []
                j = <int32_t>i
                while j >= 0:
                    indices.append(j)
                    j = g.next[j]
                out.append((tuple(indices), frame))
            else:
                out.append(((i,), bytes(MASQUE_VNET_HDR_LEN) + bytes(batch.view(i))))
        return out
    finally:
        masque_gro_free(&g)
        free(iov)
