# PacketBatch: a reusable arena of packet slots with headroom (csrc/batch.c).
#
# The C stages (TUN read/write, UDP recvmmsg/sendmmsg, packet checks, LPM)
# take the masque_batch struct, so Python crosses into C once per batch.

from cpython.buffer cimport PyBUF_FORMAT
from libc.string cimport memcpy, memset

from _fastpath.includes.csrc cimport (
    masque_batch, masque_batch_init, masque_batch_free, masque_batch_packet,
)


cdef class PacketBatch:
    """``slots`` packet slots of ``slot_size`` bytes, each after ``headroom`` spare bytes.

    One allocation, reused batch after batch. Slots ``0 .. count-1`` hold
    packets; :meth:`view` is a zero-copy memoryview of one (it keeps the batch
    alive), :meth:`headroom_view` the bytes just in front of it, where framing
    can be written without moving the packet.
    """

    cdef masque_batch b
    cdef Py_ssize_t _shape[1]
    cdef Py_ssize_t _strides[1]

    def __cinit__(self, int slots=64, int slot_size=2048, int headroom=64):
        if slots <= 0 or slot_size <= 0 or headroom < 0:
            raise ValueError("slots and slot_size must be positive, headroom not negative")
        rc = masque_batch_init(&self.b, <uint32_t>slots, <uint32_t>slot_size, <uint32_t>headroom)
        if rc == -12:
            raise MemoryError()
        if rc != 0:
            raise ValueError(f"unsupported batch geometry {slots}x{slot_size}+{headroom}")

    def __dealloc__(self):
        masque_batch_free(&self.b)

    def __getbuffer__(self, Py_buffer *buffer, int flags):
        # The whole arena, writable; views of packets are slices of it.
        self._shape[0] = <Py_ssize_t>self.b.slots * self.b.stride
        self._strides[0] = 1
        buffer.buf = self.b.arena
        buffer.obj = self
        buffer.len = self._shape[0]
        buffer.readonly = 0
        buffer.itemsize = 1
        buffer.format = NULL
        if flags & PyBUF_FORMAT:
            buffer.format = b"B"
        buffer.ndim = 1
        buffer.shape = self._shape
        buffer.strides = self._strides
        buffer.suboffsets = NULL
        buffer.internal = NULL

    def __releasebuffer__(self, Py_buffer *buffer):
        pass

    @property
    def slots(self) -> int:
        """Capacity in packets."""
        return self.b.slots

    @property
    def slot_size(self) -> int:
        """Largest packet one slot holds."""
        return self.b.slot_size

    @property
    def headroom(self) -> int:
        """Bytes reserved in front of every packet."""
        return self.b.headroom

    @property
    def count(self) -> int:
        """Slots in use (0 .. count-1)."""
        return self.b.count

    @count.setter
    def count(self, value):
        if not 0 <= value <= self.b.slots:
            raise ValueError(f"count must be 0..{self.b.slots}, not {value}")
        self.b.count = <uint32_t>value

    def __len__(self):
        return self.b.count

    cdef inline size_t _offset(self, Py_ssize_t i) except? 0:
        if i < 0 or i >= self.b.count:
            raise IndexError(f"packet {i} outside 0..{self.b.count - 1}")
        return <size_t>i * self.b.stride + self.b.headroom

    def view(self, Py_ssize_t i):
        """Zero-copy writable memoryview of packet ``i`` (without headroom)."""
        cdef size_t start = self._offset(i)
        return memoryview(self)[start:start + self.b.lens[i]]

    def headroom_view(self, Py_ssize_t i, Py_ssize_t n):
        """Writable memoryview of the ``n`` bytes right in front of packet ``i``."""
        cdef size_t start = self._offset(i)
        if n < 0 or n > self.b.headroom:
            raise ValueError(f"headroom is {self.b.headroom} bytes, not {n}")
        return memoryview(self)[start - n:start]

    def slot_view(self, Py_ssize_t i):
        """Writable memoryview of the whole packet area of slot ``i`` (``slot_size``
        bytes), to fill in place; then :meth:`set_length`. Any slot < ``slots``."""
        if i < 0 or i >= self.b.slots:
            raise IndexError(f"slot {i} outside 0..{self.b.slots - 1}")
        cdef size_t start = <size_t>i * self.b.stride + self.b.headroom
        return memoryview(self)[start:start + self.b.slot_size]

    def length(self, Py_ssize_t i) -> int:
        """Length of the packet in slot ``i``."""
        if i < 0 or i >= self.b.slots:
            raise IndexError(f"slot {i} outside 0..{self.b.slots - 1}")
        return self.b.lens[i]

    def set_length(self, Py_ssize_t i, Py_ssize_t n):
        """Set the length of slot ``i`` (filled through :meth:`slot_view`);
        grows :attr:`count` to ``i + 1`` if needed."""
        if i < 0 or i >= self.b.slots:
            raise IndexError(f"slot {i} outside 0..{self.b.slots - 1}")
        if n < 0 or n > self.b.slot_size:
            raise ValueError(f"length {n} outside 0..{self.b.slot_size}")
        self.b.lens[i] = <uint32_t>n
        if <uint32_t>i >= self.b.count:
            self.b.count = <uint32_t>i + 1

    def set(self, Py_ssize_t i, const uint8_t[::1] data not None):
        """Copy ``data`` into slot ``i``; grows :attr:`count` to ``i + 1`` if needed."""
        cdef Py_ssize_t n = data.shape[0]
        if i < 0 or i >= self.b.slots:
            raise IndexError(f"slot {i} outside 0..{self.b.slots - 1}")
        if n > self.b.slot_size:
            raise ValueError(f"packet of {n} bytes exceeds the slot size {self.b.slot_size}")
        if n:
            memcpy(masque_batch_packet(&self.b, <uint32_t>i), &data[0], <size_t>n)
        self.b.lens[i] = <uint32_t>n
        if <uint32_t>i >= self.b.count:
            self.b.count = <uint32_t>i + 1

    def append(self, const uint8_t[::1] data not None) -> int:
        """Copy ``data`` into the next free slot and return its index."""
        cdef Py_ssize_t i = self.b.count
        if i >= self.b.slots:
            raise IndexError("the batch is full")
        self.set(i, data)
        return i

    def clear(self):
        """Forget every packet (count = 0, lengths 0); the arena is kept."""
        memset(self.b.lens, 0, <size_t>self.b.slots * sizeof(uint32_t))
        self.b.count = 0
