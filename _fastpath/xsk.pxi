# AF_XDP socket with its own UMEM (csrc/xsk.c): the relay's XDP datagram lane.
# One Python call drains the RX ring into a PacketBatch or fills the TX ring
# from one; Ethernet/IP/UDP parsing and header building happen in C.

from cpython.buffer cimport PyObject_GetBuffer, PyBuffer_Release, PyBUF_SIMPLE
from cpython.bytes cimport PyBytes_FromStringAndSize
from cpython.mem cimport PyMem_Malloc, PyMem_Realloc, PyMem_Free
from libc.stdint cimport uint64_t
from libc.string cimport memcmp, memcpy, memset, strerror

from _fastpath.includes.xsk cimport (
    masque_xsk, masque_xsk_meta, masque_xsk_flow, masque_xsk_iov,
    masque_xsk_open, masque_xsk_close, masque_xsk_recv, masque_xsk_send,
    masque_xsk_send_batch, masque_xsk_flush, masque_xsk_rx_pending, masque_xsk_tx_free,
    masque_xsk_kernel_stats, masque_xsk_addr_format, masque_xsk_addr_parse,
    MASQUE_XSK_MODE_AUTO, MASQUE_XSK_MODE_COPY, MASQUE_XSK_MODE_ZEROCOPY,
)


cdef object _xsk_addr_text(int family, const uint8_t *addr):
    cdef char text[64]
    if masque_xsk_addr_format(family, addr, text, sizeof(text)) < 0:
        return None
    return text.decode("ascii")


cdef int _xsk_endpoint(object endpoint, uint8_t *addr, uint16_t *port, str what) except -1:
    """``(host, port)`` with a numeric host -> address bytes and port; returns 4 or 6."""
    if not isinstance(endpoint, tuple) or len(endpoint) < 2:
        raise ValueError(f"{what} must be (host, port), got {endpoint!r}")
    cdef bytes host = (<str?>endpoint[0]).encode("ascii")
    cdef long p = endpoint[1]
    if p < 0 or p > 65535:
        raise ValueError(f"{what} port out of range in {endpoint!r}")
    cdef int family = masque_xsk_addr_parse(host, addr)
    if family < 0:
        raise ValueError(f"{what} host is not an IPv4 or IPv6 literal: {endpoint!r}")
    port[0] = <uint16_t>p
    return family


cdef int _xsk_mac(object mac, uint8_t *out, str what) except -1:
    cdef const uint8_t[::1] view = mac
    if view.shape[0] != 6:
        raise ValueError(f"{what} must be 6 bytes, got {len(mac)}")
    memcpy(out, &view[0], 6)
    return 0


cdef int _xsk_flow(masque_xsk_flow *f, object src, object dst, object src_mac,
                   object dst_mac) except -1:
    memset(f, 0, sizeof(masque_xsk_flow))
    cdef int fam = _xsk_endpoint(src, f.src, &f.src_port, "src")
    if _xsk_endpoint(dst, f.dst, &f.dst_port, "dst") != fam:
        raise ValueError(f"src {src!r} and dst {dst!r} are not of the same address family")
    f.family = <uint8_t>fam
    _xsk_mac(src_mac, f.src_mac, "src_mac")
    _xsk_mac(dst_mac, f.dst_mac, "dst_mac")
    return 0


cdef class XskSocket:
    """An AF_XDP socket bound to one RX/TX queue of an interface, with its own UMEM.

    ``XskSocket(ifindex, queue)`` maps a UMEM of ``frames`` frames of
    ``frame_size`` bytes (half of them for RX, kept on the fill ring; half for
    TX), creates the fill, completion, RX and TX rings (each a power of two
    >= ``frames / 2`` entries) and binds to ``ifindex``/``queue`` with
    ``XDP_USE_NEED_WAKEUP``. ``zero_copy``: ``None`` tries ``XDP_ZEROCOPY``
    and falls back to ``XDP_COPY`` (see :attr:`mode`), ``True`` insists on
    zero-copy, ``False`` asks for copy mode. ``tx_budget`` is requested with
    ``XDP_MAX_TX_SKB_BUDGET`` (Linux 6.17+, copy mode: descriptors one
    ``sendto`` hands to the driver; 32..ring size); a kernel that refuses it
    keeps its default of 32 (:attr:`tx_budget` says which is in effect).

    The socket belongs to the network namespace of the thread that creates it,
    and ``ifindex`` is looked up there. Nothing arrives until an XDP program on
    the interface redirects to it: put :meth:`fileno` into the program's XSKMAP
    at index ``queue``. Closing the socket removes it from the map.

    Event loops: the fd polls readable while the RX ring holds descriptors, so
    ``loop.add_reader(xsk.fileno(), on_readable)`` with ``on_readable``
    calling :meth:`recv_batch` until it returns fewer than asked is the
    intended use (level-triggered: what is left re-arms the reader). Sending
    never blocks; :meth:`send_batch` kicks the kernel itself.

    Sizes: in copy mode the kernel writes a received frame 256 bytes
    (XDP_PACKET_HEADROOM) into its UMEM frame, so frames longer than
    ``frame_size - 256`` bytes are dropped by the kernel (``kernel_rx_dropped``);
    a sent frame (Ethernet + IP + UDP headers + payload) must fit
    ``frame_size``.

    Not thread-safe: one thread at a time per object.
    """

    cdef masque_xsk _x
    cdef bint _open
    cdef masque_xsk_meta *_meta
    cdef uint32_t _meta_cap
    # Last addresses returned, reused while packets keep coming from the same flow.
    cdef masque_xsk_meta _last
    cdef object _last_src
    cdef object _last_dst
    cdef object _last_mac

    def __cinit__(self, int ifindex, int queue=0, *, int frames=4096, int frame_size=2048,
                  object zero_copy=None, int tx_budget=256):
        self._open = False
        self._meta = NULL
        self._meta_cap = 0
        self._x.fd = -1
        memset(&self._last, 0, sizeof(masque_xsk_meta))
        if ifindex < 0:
            raise ValueError(f"ifindex must not be negative, got {ifindex}")
        if queue < 0:
            raise ValueError(f"queue must not be negative, got {queue}")
        if frames <= 0 or frame_size <= 0 or tx_budget < 0:
            raise ValueError("frames and frame_size must be positive, tx_budget not negative")
        cdef int mode = (MASQUE_XSK_MODE_AUTO if zero_copy is None else
                         MASQUE_XSK_MODE_ZEROCOPY if zero_copy else MASQUE_XSK_MODE_COPY)
        cdef char what[160]
        what[0] = 0
        cdef int err
        with nogil:
            err = masque_xsk_open(&self._x, ifindex, <uint32_t>queue, <uint32_t>frames,
                                  <uint32_t>frame_size, mode, <uint32_t>tx_budget, what,
                                  sizeof(what))
        if err < 0:
            step = what.decode("ascii", "replace")
            if err == -22 and step.startswith("UMEM geometry"):
                raise ValueError(f"{step}: got frames={frames}, frame_size={frame_size}")
            reason = strerror(-err).decode()
            if err == -19:  # ENODEV
                reason += " (no interface with that index in this network namespace)"
            elif err == -22 and step.startswith("bind"):  # EINVAL
                reason += " (queue beyond the interface's RX queues?)"
            raise OSError(-err, f"AF_XDP socket on ifindex {ifindex} queue {queue}: {step}: "
                                f"{reason}")
        self._open = True

    def __dealloc__(self):
        if self._open:
            masque_xsk_close(&self._x)
            self._open = False
        PyMem_Free(self._meta)
        self._meta = NULL

    def close(self):
        """Unmap the rings and the UMEM and close the fd; a second call does nothing."""
        if self._open:
            self._open = False
            masque_xsk_close(&self._x)

    cdef inline void _check(self) except *:
        if not self._open:
            raise ValueError("XskSocket is closed")

    @property
    def closed(self):
        return not self._open

    def fileno(self):
        """The AF_XDP socket's fd: for the XSKMAP and for ``loop.add_reader``."""
        self._check()
        return self._x.fd

    @property
    def ifindex(self):
        return self._x.ifindex

    @property
    def queue(self):
        return self._x.queue

    @property
    def mode(self):
        """``"zero-copy"`` or ``"copy"``: how the kernel bound the socket."""
        return "zero-copy" if self._x.zero_copy else "copy"

    @property
    def frames(self):
        return self._x.frames

    @property
    def frame_size(self):
        return self._x.frame_size

    @property
    def tx_budget(self):
        """The XDP_MAX_TX_SKB_BUDGET in effect, or 0 when the kernel kept its default (32)."""
        return self._x.tx_budget

    @property
    def rx_pending(self):
        """Descriptors waiting on the RX ring."""
        self._check()
        return masque_xsk_rx_pending(&self._x)

    @property
    def tx_free(self):
        """TX frames free now (completions reclaimed first)."""
        self._check()
        return masque_xsk_tx_free(&self._x)

    @property
    def stats(self):
        """Counters since the socket was opened.

        rx_packets, rx_bytes (UDP payload bytes), rx_dropped_not_udp (frames that
        were not Ethernet [+ VLAN] / IPv4 without fragmentation or IPv6 without
        extension headers / UDP, or were inconsistent), rx_dropped_too_big
        (payload larger than the batch's slot), fill_refills (frames given back
        to the fill ring), tx_packets, tx_bytes, tx_full (packets not queued: no
        free TX frame), tx_dropped_too_big, tx_completions, tx_kick_errors,
        wakeups (sendto/recvfrom kicks); and the kernel's XDP_STATISTICS while
        open: kernel_rx_dropped, kernel_rx_invalid_descs,
        kernel_tx_invalid_descs, kernel_rx_ring_full,
        kernel_rx_fill_ring_empty, kernel_tx_ring_empty.
        """
        st = self._x.stats
        out = {
            "rx_packets": st.rx_packets,
            "rx_bytes": st.rx_bytes,
            "rx_dropped_not_udp": st.rx_dropped_not_udp,
            "rx_dropped_too_big": st.rx_dropped_too_big,
            "fill_refills": st.fill_refills,
            "tx_packets": st.tx_packets,
            "tx_bytes": st.tx_bytes,
            "tx_full": st.tx_full,
            "tx_dropped_too_big": st.tx_dropped_too_big,
            "tx_completions": st.tx_completions,
            "tx_kick_errors": st.tx_kick_errors,
            "wakeups": st.wakeups,
        }
        cdef uint64_t k[6]
        if self._open and masque_xsk_kernel_stats(&self._x, k) == 0:
            out["kernel_rx_dropped"] = k[0]
            out["kernel_rx_invalid_descs"] = k[1]
            out["kernel_tx_invalid_descs"] = k[2]
            out["kernel_rx_ring_full"] = k[3]
            out["kernel_rx_fill_ring_empty"] = k[4]
            out["kernel_tx_ring_empty"] = k[5]
        return out

    cdef int _reserve_meta(self, uint32_t n) except -1:
        cdef masque_xsk_meta *m
        if n <= self._meta_cap:
            return 0
        m = <masque_xsk_meta *>PyMem_Realloc(self._meta, n * sizeof(masque_xsk_meta))
        if m == NULL:
            raise MemoryError()
        memset(m, 0, n * sizeof(masque_xsk_meta))
        self._meta = m
        self._meta_cap = n
        return 0

    def recv_batch(self, PacketBatch batch not None, int max_packets=64):
        """Take up to ``max_packets`` UDP datagrams off the RX ring without waiting.

        Each payload is appended to ``batch`` (from ``batch.count`` on, as
        :meth:`PacketBatch.append` would) and its frame goes straight back to the
        fill ring. Returns one ``((src_ip, src_port), (dst_ip, dst_port),
        src_mac)`` per appended packet, in order: addresses as Python's socket
        module writes them (IPv4 dotted, IPv6 compressed), ``src_mac`` the
        sender's 6-byte MAC, i.e. the next hop for a reply on the same link.
        Frames that are not Ethernet [+ up to two VLAN tags] / IPv4 (not a
        fragment) or IPv6 (no extension header) / UDP with consistent lengths
        are dropped and counted (``rx_dropped_not_udp``); so are payloads larger
        than the batch's slot size. UDP checksums are not verified (the lane's
        AEAD authenticates the payload). Stops early when ``batch`` is full:
        what is left stays on the RX ring for the next call.
        """
        self._check()
        cdef uint32_t room = batch.b.slots - batch.b.count
        cdef uint32_t want = <uint32_t>max_packets if max_packets > 0 else 0
        if want > room:
            want = room
        if want == 0:
            return []
        self._reserve_meta(want)
        cdef uint32_t got
        with nogil:
            got = masque_xsk_recv(&self._x, &batch.b, want, self._meta)
        cdef list out = []
        cdef uint32_t i
        cdef masque_xsk_meta *m
        cdef masque_xsk_meta *last = &self._last
        cdef int addr_len
        for i in range(got):
            m = &self._meta[i]
            addr_len = 4 if m.family == 4 else 16
            if (self._last_src is None or m.family != last.family or
                    m.src_port != last.src_port or memcmp(m.src, last.src, addr_len) != 0):
                self._last_src = (_xsk_addr_text(m.family, m.src), m.src_port)
                last.src_port = m.src_port
                memcpy(last.src, m.src, 16)
            if (self._last_dst is None or m.family != last.family or
                    m.dst_port != last.dst_port or memcmp(m.dst, last.dst, addr_len) != 0):
                self._last_dst = (_xsk_addr_text(m.family, m.dst), m.dst_port)
                last.dst_port = m.dst_port
                memcpy(last.dst, m.dst, 16)
            if self._last_mac is None or memcmp(m.src_mac, last.src_mac, 6) != 0:
                self._last_mac = PyBytes_FromStringAndSize(<const char *>m.src_mac, 6)
                memcpy(last.src_mac, m.src_mac, 6)
            last.family = m.family
            out.append((self._last_src, self._last_dst, self._last_mac))
        return out

    def send_batch(self, PacketBatch batch not None, int count, object src, object dst,
                   object src_mac, object dst_mac):
        """Send packets ``0 .. count-1`` of ``batch`` (UDP payloads) from ``src`` to ``dst``.

        ``src``/``dst`` are ``(ip, port)`` of one family; ``src_mac`` is this
        interface's MAC, ``dst_mac`` the next hop's (for a peer on the link: the
        ``src_mac`` :meth:`recv_batch` reported). Ethernet, IPv4 (header checksum,
        DF, TTL 64) or IPv6 (hop limit 64) and UDP headers with a full checksum
        are built in front of each payload in a TX frame; completed frames are
        reclaimed first and the kernel is kicked (``sendto``) when the ring asks
        for it. Returns how many packets from the front were handled (queued,
        or dropped as larger than a frame: ``tx_dropped_too_big``); fewer than
        ``count`` only when TX frames ran out, the rest counted in ``tx_full``.
        """
        self._check()
        if count < 0 or <uint32_t>count > batch.b.count:
            raise ValueError(f"count must be 0..{batch.b.count}, not {count}")
        cdef masque_xsk_flow f
        _xsk_flow(&f, src, dst, src_mac, dst_mac)
        cdef uint32_t sent
        with nogil:
            sent = masque_xsk_send_batch(&self._x, &f, &batch.b, <uint32_t>count)
        return sent

    def send_list(self, payloads, object src, object dst, object src_mac, object dst_mac):
        """:meth:`send_batch` for a sequence of bytes-like payloads."""
        self._check()
        cdef masque_xsk_flow f
        _xsk_flow(&f, src, dst, src_mac, dst_mac)
        cdef list items = list(payloads)
        cdef Py_ssize_t n = len(items)
        if n == 0:
            return 0
        cdef masque_xsk_iov *iov = <masque_xsk_iov *>PyMem_Malloc(n * sizeof(masque_xsk_iov))
        cdef Py_buffer *bufs = <Py_buffer *>PyMem_Malloc(n * sizeof(Py_buffer))
        if iov == NULL or bufs == NULL:
            PyMem_Free(iov)
            PyMem_Free(bufs)
            raise MemoryError()
        cdef Py_ssize_t got = 0, i
        cdef uint32_t sent = 0
        try:
            for i in range(n):
                PyObject_GetBuffer(items[i], &bufs[i], PyBUF_SIMPLE)
                got += 1
                iov[i].data = <const uint8_t *>bufs[i].buf
                iov[i].len = <size_t>bufs[i].len
            with nogil:
                sent = masque_xsk_send(&self._x, &f, iov, <uint32_t>n)
        finally:
            for i in range(got):
                PyBuffer_Release(&bufs[i])
            PyMem_Free(bufs)
            PyMem_Free(iov)
        return sent

    def flush(self):
        """Reclaim completions and kick the kernel for descriptors still on the TX
        ring (left there when it stopped at its budget); returns how many remain."""
        self._check()
        cdef uint32_t left
        with nogil:
            left = masque_xsk_flush(&self._x)
        return left

    def __enter__(self):
        return self

    def __exit__(self, exc_type, exc, tb):
        self.close()

    def __repr__(self):
        if not self._open:
            return "<XskSocket closed>"
        return (f"<XskSocket fd={self._x.fd} ifindex={self._x.ifindex} queue={self._x.queue} "
                f"{self.mode}>")
