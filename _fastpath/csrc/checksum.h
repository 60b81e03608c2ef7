/* Internet checksum (RFC 1071) over a buffer, shared by every packet check,
 * header builder and offload split in _fastpath. */
#ifndef MASQUE_FASTPATH_CHECKSUM_H
#define MASQUE_FASTPATH_CHECKSUM_H

#include <stddef.h>
#include <stdint.h>

/* One's-complement sum of `len` bytes read as big-endian 16-bit words (an odd
 * trailing byte is padded with zero), plus `initial` (a big-endian partial sum,
 * e.g. of a pseudo-header; any 32-bit value). Returns the sum folded to 16 bits,
 * NOT complemented, so partial sums can be chained. */
uint16_t masque_csum_partial(const uint8_t *buf, size_t len, uint32_t initial);

/* The checksum field value: the complement of masque_csum_partial(). */
uint16_t masque_csum(const uint8_t *buf, size_t len, uint32_t initial);

#endif
