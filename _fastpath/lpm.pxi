# PrefixTable: longest-prefix match from destination address to session id
# (csrc/lpm.c, a binary trie per IP version: O(32) / O(128) per lookup).

import ipaddress

from cpython.mem cimport PyMem_Malloc, PyMem_Free
from libc.stdint cimport int32_t

from _fastpath.includes.csrc cimport (
    masque_lpm, masque_lpm_init, masque_lpm_free, masque_lpm_insert,
    masque_lpm_remove, masque_lpm_lookup, masque_lpm_lookup_batch,
)


cdef class PrefixTable:
    """Assigned prefixes (IPv4 and IPv6) mapped to integer session ids.

    :meth:`lookup` returns the id of the longest prefix covering an address,
    -1 when none does; :meth:`lookup_batch` does so for the destination of
    every packet of a :class:`PacketBatch` in one C call.
    """

    cdef masque_lpm t

    def __cinit__(self):
        if masque_lpm_init(&self.t) != 0:
            raise MemoryError()

    def __dealloc__(self):
        masque_lpm_free(&self.t)

    def __len__(self):
        return self.t.prefixes

    def add(self, network, int sid):
        """Map ``network`` (an ip_network or its text; host bits must be zero) to
        ``sid`` >= 0, replacing an earlier mapping of the same prefix."""
        if sid < 0:
            raise ValueError(f"session id must not be negative: {sid}")
        net = ipaddress.ip_network(network)
        cdef bytes packed = net.network_address.packed
        rc = masque_lpm_insert(&self.t, net.version, packed, net.prefixlen, sid)
        if rc == -12:
            raise MemoryError()
        if rc != 0:
            raise ValueError(f"cannot add {net}")

    def remove(self, network) -> int:
        """Remove exactly ``network``; return its session id. KeyError if absent."""
        net = ipaddress.ip_network(network)
        cdef bytes packed = net.network_address.packed
        old = masque_lpm_remove(&self.t, net.version, packed, net.prefixlen)
        if old < 0:
            raise KeyError(str(net))
        return old

    def lookup(self, address) -> int:
        """Session id of the longest prefix covering ``address`` (packed 4/16 bytes,
        an ip_address or its text), -1 if none."""
        cdef bytes packed
        if isinstance(address, (bytes, bytearray, memoryview)):
            packed = bytes(address)
            if len(packed) != 4 and len(packed) != 16:
                raise ValueError(f"a packed address is 4 or 16 bytes, not {len(packed)}")
        else:
            packed = ipaddress.ip_address(address).packed
        return masque_lpm_lookup(&self.t, 4 if len(packed) == 4 else 6, packed)

    def lookup_batch(self, PacketBatch batch not None) -> list:
        """Session id for the destination of each packet of ``batch`` (-1: none,
        or too short to hold an IPv4/IPv6 destination)."""
        cdef Py_ssize_t n = batch.b.count
        cdef int32_t *out = <int32_t *>PyMem_Malloc(max(n, 1) * sizeof(int32_t))
        if out == NULL:
            raise MemoryError()
        try:
            with nogil:
                masque_lpm_lookup_batch(&self.t, &batch.b, out)
            return [out[i] for i in range(n)]
        finally:
            PyMem_Free(out)
