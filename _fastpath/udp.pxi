# Batched UDP socket with GSO/GRO (csrc/udp.c).
# One Python call receives or sends a whole batch; GRO buffers are split and
# GSO runs are built in C.

from cpython.buffer cimport PyObject_GetBuffer, PyBuffer_Release, PyBUF_SIMPLE
from cpython.bytes cimport PyBytes_FromStringAndSize
from libc.stdlib cimport malloc, free, calloc
from libc.string cimport strerror, memcpy, memcmp
from posix.unistd cimport close as _posix_close

from _fastpath.includes.csrc cimport (
    masque_udp, masque_udp_addr, masque_udp_out, masque_udp_in,
    masque_udp_open, masque_udp_init, masque_udp_free, masque_udp_recv, masque_udp_send,
    masque_udp_addr_parse, masque_udp_addr_format,
    MASQUE_UDP_BATCH, MASQUE_UDP_F_GSO, MASQUE_UDP_F_GRO,
)

cdef extern from "<sys/socket.h>":
    enum: AF_INET
    enum: AF_INET6


cdef inline _udp_oserror(int neg_errno, str what):
    return OSError(-neg_errno, f"{what}: {strerror(-neg_errno).decode()}")


cdef int _udp_parse_addr(masque_udp_addr *a, int family, object addr) except -1:
    """Fill ``a`` from ``(host, port)`` or ``(host, port, flowinfo, scope_id)``."""
    cdef Py_ssize_t n = len(addr)
    if n != 2 and n != 4:
        raise ValueError(f"address must be (host, port[, flowinfo, scope_id]), got {addr!r}")
    cdef bytes host = (<str?>addr[0]).encode("ascii")
    cdef long port = addr[1]
    if port < 0 or port > 65535:
        raise ValueError(f"port out of range in {addr!r}")
    cdef unsigned long flowinfo = addr[2] if n == 4 else 0
    cdef unsigned long scope_id = addr[3] if n == 4 else 0
    cdef int err = masque_udp_addr_parse(a, family, host, <uint16_t>port,
                                         <uint32_t>flowinfo, <uint32_t>scope_id)
    if err < 0:
        raise ValueError(f"not a numeric address usable on this socket: {addr!r}")
    return 0


cdef object _udp_format_addr(const masque_udp_addr *a):
    cdef char host[64]
    cdef int port = masque_udp_addr_format(a, host, sizeof(host))
    if port < 0:
        return None
    return (host.decode("ascii"), port)


cdef class UdpSocket:
    """A UDP socket read and written in batches (recvmmsg/sendmmsg, GSO/GRO).

    ``UdpSocket(fd)`` wraps an existing UDP socket (e.g. asyncio's or aioquic's)
    without owning it: :meth:`close` leaves the fd open unless ``own=True``.
    :meth:`bind` creates and owns a non-blocking socket. ``gso``/``gro`` ask for
    UDP_SEGMENT/UDP_GRO; both are probed and fall back quietly (see
    :attr:`features`). ``gro`` defaults to on for sockets created by :meth:`bind`
    and off for wrapped fds, because every other reader of a shared fd would see
    coalesced buffers it cannot split.

    Not thread-safe: one thread at a time per object.
    """

    cdef masque_udp *_u
    cdef bint _open
    cdef bint _own

    def __cinit__(self, int fd, *, bint own=False, bint gso=True, object gro=None):
        self._u = <masque_udp *>calloc(1, sizeof(masque_udp))
        if self._u == NULL:
            raise MemoryError()
        self._open = False
        self._own = own
        cdef bint want_gro = (own if gro is None else bool(gro))
        cdef int err = masque_udp_init(self._u, fd, gso, want_gro)
        if err < 0:
            masque_udp_free(self._u)
            raise _udp_oserror(err, f"UDP socket fd {fd}")
        self._open = True

    def __dealloc__(self):
        if self._u != NULL:
            if self._open:
                masque_udp_free(self._u)
                if self._own:
                    _posix_close(self._u.fd)
            free(self._u)
            self._u = NULL

    @classmethod
    def bind(cls, str host="::", int port=0, *, bint dual_stack=True, bint gso=True,
             object gro=None):
        """Create a socket bound to ``(host, port)`` and own it.

        An IPv4 literal gives an AF_INET socket, an IPv6 one AF_INET6 (dual-stack
        unless ``dual_stack=False``); ``""`` means ``"::"``.
        """
        cdef masque_udp_addr a
        if not host:
            host = "::"
        family = AF_INET if ":" not in host else AF_INET6
        _udp_parse_addr(&a, family, (host, port))
        cdef int fd = masque_udp_open(&a, 0 if dual_stack else 1)
        if fd < 0:
            raise _udp_oserror(fd, f"binding UDP [{host}]:{port}")
        try:
            return cls(fd, own=True, gso=gso, gro=True if gro is None else gro)
        except BaseException:
            _posix_close(fd)
            raise

    def close(self):
        """Release the buffers; close the fd only if this object owns it."""
        if self._open:
            self._open = False
            masque_udp_free(self._u)
            if self._own:
                _posix_close(self._u.fd)

    def detach(self):
        """Give up ownership and return the fd (the object is closed)."""
        cdef int fd = self.fileno()
        self._own = False
        self.close()
        return fd

    cdef inline void _check(self) except *:
        if not self._open:
            raise ValueError("UdpSocket is closed")

    @property
    def closed(self):
        return not self._open

    def fileno(self):
        self._check()
        return self._u.fd

    @property
    def family(self):
        return self._u.family

    @property
    def dual_stack(self):
        return bool(self._u.dual_stack)

    @property
    def features(self):
        """``"gso+gro"``, ``"gso"``, ``"gro"`` or ``"plain"`` (what is in effect now)."""
        parts = []
        if self._u.features & MASQUE_UDP_F_GSO:
            parts.append("gso")
        if self._u.features & MASQUE_UDP_F_GRO:
            parts.append("gro")
        return "+".join(parts) or "plain"

    @property
    def local_address(self):
        import socket as _socket
        s = _socket.socket(fileno=self.fileno())
        try:
            return s.getsockname()[:2]
        finally:
            s.detach()

    @property
    def stats(self):
        """syscalls, datagrams_sent, datagrams_received, gso_batches, gro_splits,
        send_errors, recv_errors, truncated."""
        st = self._u.stats
        return {
            "syscalls": st.syscalls,
            "datagrams_sent": st.dgrams_sent,
            "datagrams_received": st.dgrams_received,
            "gso_batches": st.gso_batches,
            "gro_splits": st.gro_splits,
            "send_errors": st.send_errors,
            "recv_errors": st.recv_errors,
            "truncated": st.truncated,
        }

    def recv_batch(self, int max_datagrams=64, double timeout=0.0):
        """Receive with one recvmmsg: ``[(payload, (host, port), ecn), ...]``.

        ``max_datagrams`` bounds the messages read (at most 64); with GRO one
        message may yield several datagrams. ``timeout`` seconds to wait for
        the first one (0: don't wait, negative: forever). IPv4-mapped sources
        are given as IPv4. Returns ``[]`` when nothing is waiting.
        """
        self._check()
        cdef unsigned max_msgs = <unsigned>max_datagrams if max_datagrams > 0 else 0
        cdef int timeout_ms = -1 if timeout < 0 else <int>(min(timeout, 86400.0) * 1000.0 + 0.999)
        cdef int n
        with nogil:
            n = masque_udp_recv(self._u, max_msgs, timeout_ms)
        if n < 0:
            raise _udp_oserror(n, "recvmmsg")
        cdef list out = []
        cdef int i
        cdef int last_msg = -1
        cdef masque_udp_in *d
        cdef object addr = None
        cdef object prev_addr = None
        cdef const masque_udp_addr *prev_sa = NULL
        cdef const masque_udp_addr *sa
        for i in range(n):
            d = &self._u.rx_out[i]
            if d.msg != last_msg:
                last_msg = d.msg
                sa = &self._u.rx_addr[d.msg]
                if prev_sa != NULL and prev_sa.len == sa.len and \
                        memcmp(prev_sa, sa, sizeof(masque_udp_addr)) == 0:
                    addr = prev_addr
                else:
                    addr = _udp_format_addr(sa)
                    prev_addr = addr
                    prev_sa = sa
            out.append((PyBytes_FromStringAndSize(<const char *>d.data, d.len), addr, d.ecn))
        return out

    def send_batch(self, datagrams):
        """Send ``[(payload, addr), ...]`` in order with sendmmsg (and GSO).

        Returns how many datagrams from the front were handled: sent, or
        dropped on a hard error (counted in ``stats["send_errors"]``). Fewer
        than ``len(datagrams)`` only when the socket would block; resend the rest
        later.
        """
        self._check()
        cdef list items = list(datagrams)
        cdef Py_ssize_t n = len(items)
        if n == 0:
            return 0
        cdef masque_udp_out *outs = <masque_udp_out *>malloc(n * sizeof(masque_udp_out))
        cdef Py_buffer *bufs = <Py_buffer *>malloc(n * sizeof(Py_buffer))
        if outs == NULL or bufs == NULL:
            free(outs)
            free(bufs)
            raise MemoryError()
        cdef Py_ssize_t got = 0, i
        cdef size_t sent = 0
        cdef object prev_addr = None
        cdef int family = self._u.family
        try:
            for i in range(n):
                payload, addr = items[i]
                PyObject_GetBuffer(payload, &bufs[i], PyBUF_SIMPLE)
                got += 1
                outs[i].data = <const uint8_t *>bufs[i].buf
                outs[i].len = <size_t>bufs[i].len
                if i > 0 and (addr is prev_addr or addr == prev_addr):
                    memcpy(&outs[i].addr, &outs[i - 1].addr, sizeof(masque_udp_addr))
                else:
                    _udp_parse_addr(&outs[i].addr, family, addr)
                    prev_addr = addr
            with nogil:
                sent = masque_udp_send(self._u, outs, <size_t>n)
        finally:
            for i in range(got):
                PyBuffer_Release(&bufs[i])
            free(bufs)
            free(outs)
        return sent

    def __enter__(self):
        return self

    def __exit__(self, exc_type, exc, tb):
        self.close()

    def __repr__(self):
        state = "closed" if not self._open else f"fd={self._u.fd} {self.features}"
        return f"<UdpSocket {state}>"
