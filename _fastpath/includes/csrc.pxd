# C declarations of _fastpath/csrc, one block per header.
from libc.stdint cimport uint8_t, uint16_t, uint32_t


cdef extern from "checksum.h" nogil:
    uint16_t masque_csum_partial(const uint8_t *buf, size_t len, uint32_t initial)
    uint16_t masque_csum(const uint8_t *buf, size_t len, uint32_t initial)
