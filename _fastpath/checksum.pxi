# Internet checksum (RFC 1071), the C implementation behind every packet check.


def internet_checksum(const uint8_t[::1] data not None, uint32_t initial=0):
    """Return the Internet checksum of ``data`` (the value for a checksum field).

    ``initial`` is a big-endian partial sum to fold in (e.g. a pseudo-header sum);
    a buffer whose stored checksum is correct yields 0.
    """
    cdef size_t n = <size_t>data.shape[0]
    cdef const uint8_t *p = &data[0] if n else NULL
    cdef uint16_t result
    with nogil:
        result = masque_csum(p, n, initial)
    return result


def checksum_partial(const uint8_t[::1] data not None, uint32_t initial=0):
    """Return the folded one's-complement sum of ``data`` plus ``initial``, not complemented.

    Chain calls to checksum discontiguous pieces (pseudo-header, header, payload).
    """
    cdef size_t n = <size_t>data.shape[0]
    cdef const uint8_t *p = &data[0] if n else NULL
    cdef uint16_t result
    with nogil:
        result = masque_csum_partial(p, n, initial)
    return result
