/* QUIC 1-RTT packet protection with OpenSSL libcrypto (RFC 9001 5).
 *
 * Each key set keeps three EVP_CIPHER_CTX initialised once with their key;
 * per packet only the nonce (AEAD) or the sample (ChaCha20 header protection)
 * is set. The AEADs are stream ciphers (CTR/ChaCha20 keystream XOR), so a
 * payload decrypted in place is restored by running the same keystream over
 * it again: that is how unprotect hands back untouched bytes on failure and
 * how reprotect restores a packet for aioquic. */
#include "quic.h"

#include <openssl/evp.h>
#include <string.h>

#define SHORT_HEADER_FORM 0x80u
#define FIXED_BIT 0x40u
#define KEY_PHASE_BIT 0x04u
#define RESERVED_BITS 0x18u
#define SHORT_HEADER_MASK 0x1fu /* bits of the first byte header protection covers */

void masque_quic_keys_init(masque_quic_keys *k)
{
    memset(k, 0, sizeof(*k));
}

void masque_quic_keys_free(masque_quic_keys *k)
{
    EVP_CIPHER_CTX_free(k->seal);
    EVP_CIPHER_CTX_free(k->open);
    EVP_CIPHER_CTX_free(k->hp);
    OPENSSL_cleanse(k->iv, sizeof(k->iv));
    memset(k, 0, sizeof(*k));
}

int masque_quic_keys_set(masque_quic_keys *k, unsigned cipher_suite,
                         const uint8_t *key, size_t key_len, const uint8_t *iv, size_t iv_len,
                         const uint8_t *hp, size_t hp_len, unsigned key_phase)
{
    const EVP_CIPHER *aead, *hpc;
    size_t want;
    switch (cipher_suite) {
    case MASQUE_QUIC_AES_128_GCM_SHA256:
        aead = EVP_aes_128_gcm(), hpc = EVP_aes_128_ecb(), want = 16;
        break;
    case MASQUE_QUIC_AES_256_GCM_SHA384:
        aead = EVP_aes_256_gcm(), hpc = EVP_aes_256_ecb(), want = 32;
        break;
    case MASQUE_QUIC_CHACHA20_POLY1305_SHA256:
        aead = EVP_chacha20_poly1305(), hpc = EVP_chacha20(), want = 32;
        break;
    default:
        return MASQUE_QUIC_E_INVALID;
    }
    if (key_len != want || hp_len != want || iv_len != MASQUE_QUIC_IV_LEN || key_phase > 1)
        return MASQUE_QUIC_E_INVALID;
    masque_quic_keys_free(k);
    k->seal = EVP_CIPHER_CTX_new();
    k->open = EVP_CIPHER_CTX_new();
    k->hp = EVP_CIPHER_CTX_new();
    if (!k->seal || !k->open || !k->hp || aead == NULL || hpc == NULL
        || EVP_EncryptInit_ex(k->seal, aead, NULL, key, NULL) != 1
        || EVP_DecryptInit_ex(k->open, aead, NULL, key, NULL) != 1
        || EVP_EncryptInit_ex(k->hp, hpc, NULL, hp, NULL) != 1
        || EVP_CIPHER_CTX_set_padding(k->hp, 0) != 1
        || EVP_CIPHER_CTX_iv_length(k->seal) != (int)MASQUE_QUIC_IV_LEN) {
        masque_quic_keys_free(k);
        return MASQUE_QUIC_E_CRYPTO;
    }
    memcpy(k->iv, iv, MASQUE_QUIC_IV_LEN);
    k->cipher_suite = (uint16_t)cipher_suite;
    k->key_phase = (uint8_t)key_phase;
    k->hp_chacha = cipher_suite == MASQUE_QUIC_CHACHA20_POLY1305_SHA256;
    return 0;
}

/* RFC 9001 5.3: the IV XOR the packet number, left-padded to 12 bytes. */
static void make_nonce(const masque_quic_keys *k, uint64_t pn, uint8_t nonce[MASQUE_QUIC_IV_LEN])
{
    memcpy(nonce, k->iv, MASQUE_QUIC_IV_LEN);
    for (int i = 0; i < 8; i++)
        nonce[MASQUE_QUIC_IV_LEN - 1 - i] ^= (uint8_t)(pn >> (8 * i));
}

/* RFC 9001 5.4.3 / 5.4.4: the first 5 bytes of AES-ECB(hp, sample), or of
 * ChaCha20(hp, counter = sample[0..4] little-endian, nonce = sample[4..16], zeros),
 * which is OpenSSL's 16-byte ChaCha20 IV layout exactly. */
static int hp_mask(const masque_quic_keys *k, const uint8_t *sample, uint8_t mask[5])
{
    static const uint8_t zeros[5];
    uint8_t out[MASQUE_QUIC_SAMPLE_LEN];
    int outl = 0;
    if (k->hp_chacha) {
        if (EVP_EncryptInit_ex(k->hp, NULL, NULL, NULL, sample) != 1
            || EVP_EncryptUpdate(k->hp, out, &outl, zeros, (int)sizeof(zeros)) != 1 || outl != 5)
            return MASQUE_QUIC_E_CRYPTO;
    } else if (EVP_EncryptUpdate(k->hp, out, &outl, sample, (int)MASQUE_QUIC_SAMPLE_LEN) != 1
               || outl != (int)MASQUE_QUIC_SAMPLE_LEN) {
        return MASQUE_QUIC_E_CRYPTO;
    }
    memcpy(mask, out, 5);
    return 0;
}

/* XOR the AEAD keystream for `nonce` over buf: undoes a decryption in place. */
static int rerun_keystream(const masque_quic_keys *k, const uint8_t *nonce, uint8_t *buf, size_t len)
{
    int outl = 0;
    if (EVP_DecryptInit_ex(k->open, NULL, NULL, NULL, nonce) != 1)
        return MASQUE_QUIC_E_CRYPTO;
    if (len && (EVP_DecryptUpdate(k->open, buf, &outl, buf, (int)len) != 1 || (size_t)outl != len))
        return MASQUE_QUIC_E_CRYPTO;
    return 0;
}

int masque_quic_unprotect(const masque_quic_keys *k, uint8_t *pkt, size_t len, size_t dcid_len,
                          int64_t largest_pn, masque_quic_rx *rx)
{
    memset(rx, 0, sizeof(*rx));
    if (k->cipher_suite == 0 || dcid_len > MASQUE_QUIC_MAX_CID_LEN || len > INT32_MAX
        || largest_pn < -1 || largest_pn > (int64_t)MASQUE_QUIC_VARINT_MAX)
        return MASQUE_QUIC_E_INVALID;
    if (len == 0)
        return MASQUE_QUIC_E_SHORT;
    if (pkt[0] & SHORT_HEADER_FORM)
        return MASQUE_QUIC_E_LONG_HEADER;
    if (!(pkt[0] & FIXED_BIT))
        return MASQUE_QUIC_E_FIXED_BIT;
    size_t pn_off = 1 + dcid_len;
    /* The sample starts 4 bytes after the packet number field (RFC 9001 5.4.2);
     * that also leaves room for any PN length and the tag. */
    if (len < pn_off + MASQUE_QUIC_MAX_PN_LEN + MASQUE_QUIC_SAMPLE_LEN)
        return MASQUE_QUIC_E_SHORT;

    uint8_t mask[5];
    if (hp_mask(k, pkt + pn_off + MASQUE_QUIC_MAX_PN_LEN, mask))
        return MASQUE_QUIC_E_CRYPTO;
    /* The unprotected header is built aside as the AAD; the packet is only
     * written once it authenticates. */
    uint8_t aad[MASQUE_QUIC_MAX_SHORT_HEADER];
    uint8_t first = pkt[0] ^ (mask[0] & SHORT_HEADER_MASK);
    unsigned pn_len = (first & 0x03u) + 1;
    size_t hdr_len = pn_off + pn_len;
    uint64_t truncated = 0;
    aad[0] = first;
    memcpy(aad + 1, pkt + 1, dcid_len);
    for (unsigned i = 0; i < pn_len; i++) {
        aad[pn_off + i] = pkt[pn_off + i] ^ mask[1 + i];
        truncated = (truncated << 8) | aad[pn_off + i];
    }
    rx->pn = masque_quic_decode_pn(largest_pn, truncated, pn_len);
    rx->hdr_len = (uint32_t)hdr_len;
    rx->payload_len = (uint32_t)(len - hdr_len - MASQUE_QUIC_TAG_LEN);
    rx->pn_len = (uint8_t)pn_len;
    rx->key_phase = (first & KEY_PHASE_BIT) ? 1 : 0;
    rx->first = first;
    memcpy(rx->mask, mask, sizeof(mask));
    if (rx->key_phase != k->key_phase)
        return MASQUE_QUIC_E_KEY_PHASE; /* other packet keys: aioquic's key update */

    uint8_t nonce[MASQUE_QUIC_IV_LEN];
    uint8_t *payload = pkt + hdr_len;
    size_t n = rx->payload_len;
    int outl = 0;
    make_nonce(k, rx->pn, nonce);
    if (EVP_DecryptInit_ex(k->open, NULL, NULL, NULL, nonce) != 1
        || EVP_DecryptUpdate(k->open, NULL, &outl, aad, (int)hdr_len) != 1)
        return MASQUE_QUIC_E_CRYPTO;
    if (n && (EVP_DecryptUpdate(k->open, payload, &outl, payload, (int)n) != 1 || (size_t)outl != n)) {
        rerun_keystream(k, nonce, payload, n);
        return MASQUE_QUIC_E_CRYPTO;
    }
    if (EVP_CIPHER_CTX_ctrl(k->open, EVP_CTRL_AEAD_SET_TAG, (int)MASQUE_QUIC_TAG_LEN, payload + n) != 1
        || EVP_DecryptFinal_ex(k->open, payload + n, &outl) != 1) {
        /* Final writes nothing for GCM/ChaCha20-Poly1305; the tag stays. */
        return rerun_keystream(k, nonce, payload, n) ? MASQUE_QUIC_E_CRYPTO : MASQUE_QUIC_E_AUTH;
    }
    if (first & RESERVED_BITS) {
        /* RFC 9000 17.3.1: a PROTOCOL_VIOLATION, for aioquic to close on. */
        return rerun_keystream(k, nonce, payload, n) ? MASQUE_QUIC_E_CRYPTO : MASQUE_QUIC_E_RESERVED;
    }
    memcpy(pkt, aad, hdr_len);
    return MASQUE_QUIC_OK;
}

int masque_quic_reprotect(const masque_quic_keys *k, uint8_t *pkt, size_t len,
                          const masque_quic_rx *rx)
{
    if (k->cipher_suite == 0 || rx->pn_len < 1 || rx->pn_len > MASQUE_QUIC_MAX_PN_LEN
        || (size_t)rx->hdr_len + rx->payload_len + MASQUE_QUIC_TAG_LEN != len)
        return MASQUE_QUIC_E_INVALID;
    uint8_t nonce[MASQUE_QUIC_IV_LEN];
    make_nonce(k, rx->pn, nonce);
    if (rerun_keystream(k, nonce, pkt + rx->hdr_len, rx->payload_len))
        return MASQUE_QUIC_E_CRYPTO;
    size_t pn_off = rx->hdr_len - rx->pn_len;
    pkt[0] ^= rx->mask[0] & SHORT_HEADER_MASK;
    for (unsigned i = 0; i < rx->pn_len; i++)
        pkt[pn_off + i] ^= rx->mask[1 + i];
    return MASQUE_QUIC_OK;
}

long masque_quic_protect(const masque_quic_keys *k, uint8_t *payload, size_t len,
                         size_t headroom, size_t tailroom, const uint8_t *dcid, size_t dcid_len,
                         uint64_t pn, int64_t largest_acked, unsigned pn_len, uint8_t **start)
{
    if (k->cipher_suite == 0 || dcid_len > MASQUE_QUIC_MAX_CID_LEN || pn > MASQUE_QUIC_VARINT_MAX
        || len == 0 || len > INT32_MAX || pn_len > MASQUE_QUIC_MAX_PN_LEN)
        return MASQUE_QUIC_E_INVALID;
    if (pn_len == 0) {
        int n = masque_quic_pn_len(pn, largest_acked);
        if (n < 0)
            return MASQUE_QUIC_E_INVALID;
        pn_len = (unsigned)n;
    }
    /* RFC 9001 5.4.2: PN length + plaintext >= 4 so the 16-byte sample taken
     * 4 bytes after the PN start lies inside the ciphertext + tag. PADDING
     * frames go in front: a DATAGRAM frame without length must stay last. */
    size_t pad = pn_len + len < MASQUE_QUIC_MAX_PN_LEN ? MASQUE_QUIC_MAX_PN_LEN - pn_len - len : 0;
    size_t pn_off = 1 + dcid_len;
    size_t hdr_len = pn_off + pn_len;
    if (headroom < hdr_len + pad || tailroom < MASQUE_QUIC_TAG_LEN)
        return MASQUE_QUIC_E_NO_ROOM;
    uint8_t *p = payload - pad - hdr_len;
    uint8_t *plain = payload - pad;
    size_t n = len + pad;
    memset(plain, 0, pad);
    p[0] = (uint8_t)(FIXED_BIT | (k->key_phase ? KEY_PHASE_BIT : 0) | (pn_len - 1));
    if (dcid_len)
        memcpy(p + 1, dcid, dcid_len);
    for (unsigned i = 0; i < pn_len; i++)
        p[pn_off + i] = (uint8_t)(pn >> (8 * (pn_len - 1 - i)));

    uint8_t nonce[MASQUE_QUIC_IV_LEN];
    int outl = 0;
    make_nonce(k, pn, nonce);
    if (EVP_EncryptInit_ex(k->seal, NULL, NULL, NULL, nonce) != 1
        || EVP_EncryptUpdate(k->seal, NULL, &outl, p, (int)hdr_len) != 1
        || EVP_EncryptUpdate(k->seal, plain, &outl, plain, (int)n) != 1 || (size_t)outl != n
        || EVP_EncryptFinal_ex(k->seal, plain + n, &outl) != 1 || outl != 0
        || EVP_CIPHER_CTX_ctrl(k->seal, EVP_CTRL_AEAD_GET_TAG, (int)MASQUE_QUIC_TAG_LEN, plain + n) != 1)
        return MASQUE_QUIC_E_CRYPTO;

    uint8_t mask[5];
    if (hp_mask(k, p + pn_off + MASQUE_QUIC_MAX_PN_LEN, mask))
        return MASQUE_QUIC_E_CRYPTO;
    p[0] ^= mask[0] & SHORT_HEADER_MASK;
    for (unsigned i = 0; i < pn_len; i++)
        p[pn_off + i] ^= mask[1 + i];
    *start = p;
    return (long)(hdr_len + n + MASQUE_QUIC_TAG_LEN);
}

uint32_t masque_quic_unprotect_batch(const masque_quic_keys *k, masque_batch *b, size_t dcid_len,
                                     int64_t *largest_pn, uint64_t max_datagram_frame_size,
                                     masque_quic_rx *rx, masque_quic_frames *frames)
{
    uint32_t plain = 0;
    for (uint32_t i = 0; i < b->count; i++) {
        uint8_t *pkt = masque_batch_packet(b, i);
        size_t len = b->lens[i];
        int rc = masque_quic_unprotect(k, pkt, len, dcid_len, *largest_pn, &rx[i]);
        /* authentic packets (OK, E_RESERVED) raise the largest packet number */
        if ((rc == MASQUE_QUIC_OK || rc == MASQUE_QUIC_E_RESERVED) && (int64_t)rx[i].pn > *largest_pn)
            *largest_pn = (int64_t)rx[i].pn;
        if (rc == MASQUE_QUIC_OK && frames != NULL) {
            int walk = masque_quic_parse_frames(pkt + rx[i].hdr_len, rx[i].payload_len,
                                                max_datagram_frame_size, &frames[i]);
            if (walk != MASQUE_QUIC_OK) {
                rc = masque_quic_reprotect(k, pkt, len, &rx[i]) ? MASQUE_QUIC_E_CRYPTO : walk;
            } else {
                /* spans relative to the slot's packet start */
                for (uint32_t d = 0; d < frames[i].ndatagrams; d++)
                    frames[i].datagrams[d].off += rx[i].hdr_len;
            }
        }
        rx[i].status = (int16_t)rc;
        if (rc == MASQUE_QUIC_OK)
            plain++;
    }
    return plain;
}

uint32_t masque_quic_protect_batch(const masque_quic_keys *k, masque_batch *b,
                                   const uint8_t *dcid, size_t dcid_len, uint64_t first_pn,
                                   int64_t largest_acked, const uint8_t *first_prefix,
                                   size_t first_prefix_len, const uint8_t *prefix,
                                   size_t prefix_len)
{
    for (uint32_t i = 0; i < b->count; i++) {
        const uint8_t *pre = i == 0 ? first_prefix : prefix;
        size_t pre_len = i == 0 ? first_prefix_len : prefix_len;
        uint8_t *pkt = masque_batch_packet(b, i);
        size_t len = b->lens[i];
        uint64_t pn = first_pn + i;
        int pn_len = masque_quic_pn_len(pn, largest_acked);
        if (pn_len < 0 || dcid_len > MASQUE_QUIC_MAX_CID_LEN)
            return i;
        size_t body = pre_len + len;
        size_t pad = (size_t)pn_len + body < MASQUE_QUIC_MAX_PN_LEN
                         ? MASQUE_QUIC_MAX_PN_LEN - (size_t)pn_len - body : 0;
        size_t hdr = 1 + dcid_len + (size_t)pn_len;
        /* the packet must fit the headroom while built, and the slot after the move */
        if (pre_len + pad + hdr > b->headroom || hdr + pad + body + MASQUE_QUIC_TAG_LEN > b->slot_size)
            return i;
        if (pre_len)
            memcpy(pkt - pre_len, pre, pre_len);
        uint8_t *start = NULL;
        long n = masque_quic_protect(k, pkt - pre_len, body, b->headroom - pre_len,
                                     b->slot_size - len, dcid, dcid_len, pn, largest_acked,
                                     (unsigned)pn_len, &start);
        if (n < 0)
            return i;
        memmove(pkt, start, (size_t)n);
        b->lens[i] = (uint32_t)n;
    }
    return b->count;
}
