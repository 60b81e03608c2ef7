#include "checksum.h"

#include <string.h>

/* The one's-complement sum is independent of byte order (RFC 1071 §2(B)): sum
 * native-order 32-bit words into a 64-bit accumulator, fold, and swap to
 * big-endian once at the end. Eight bytes per iteration, no carries lost. */

static inline uint16_t fold64(uint64_t sum)
{
    sum = (sum & 0xffffffffu) + (sum >> 32);
    sum = (sum & 0xffffffffu) + (sum >> 32);
    sum = (sum & 0xffffu) + (sum >> 16);
    sum = (sum & 0xffffu) + (sum >> 16);
    return (uint16_t)sum;
}

static inline uint16_t to_native16(uint16_t be_value)
{
#if __BYTE_ORDER__ == __ORDER_LITTLE_ENDIAN__
    return (uint16_t)((be_value >> 8) | (be_value << 8));
#else
    return be_value;
#endif
}

uint16_t masque_csum_partial(const uint8_t *buf, size_t len, uint32_t initial)
{
    uint64_t sum = 0;
    uint32_t word;

    while (len >= 8) {
        uint64_t pair;
        memcpy(&pair, buf, 8);
        sum += pair & 0xffffffffu;
        sum += pair >> 32;
        buf += 8;
        len -= 8;
    }
    if (len >= 4) {
        memcpy(&word, buf, 4);
        sum += word;
        buf += 4;
        len -= 4;
    }
    if (len >= 2) {
        uint16_t half;
        memcpy(&half, buf, 2);
        sum += half;
        buf += 2;
        len -= 2;
    }
    if (len == 1) {
        /* Pad with a zero byte: the trailing byte is the high byte of a
         * big-endian word, i.e. the first byte in memory. */
        uint8_t last[2] = {buf[0], 0};
        uint16_t half;
        memcpy(&half, last, 2);
        sum += half;
    }
    /* `initial` is a big-endian value: fold it and bring it to native order. */
    sum += to_native16(fold64(initial));
    return to_native16(fold64(sum));
}

uint16_t masque_csum(const uint8_t *buf, size_t len, uint32_t initial)
{
    return (uint16_t)~masque_csum_partial(buf, len, initial);
}
