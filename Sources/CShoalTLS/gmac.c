// GMAC (AES-256-GCM with additional data only) for the frame tags of docs/PROTOCOL.md.
//
// OpenSSL 3.0 hashes GCM's additional data with 128-bit carry-less multiplies (about 9 GB/s
// here), and a worker or a client tags every byte it serves or receives, so that hash is a good
// part of what a small read costs. Where the CPU has VPCLMULQDQ with AVX-512, GHASH runs here
// instead (about 20 GB/s here): 32 blocks per step in eight 512-bit registers against the powers
// H^32..H^1, one reduction per step. AES itself (the hash key H and the block that masks the tag) stays
// OpenSSL's. Elsewhere every call goes to OpenSSL's GCM, unchanged. Both give the same tags;
// the tests compare them on random pieces and lengths.
//
// The field arithmetic is the usual one for GHASH with PCLMULQDQ: blocks byte-reversed into
// registers, the hash key stored as H*x^-1 ("H<<1" with its carry folded back), so the product
// of a block and a power needs no shift, and a 256-bit product is reduced in two shift phases.

#include "shoal_gmac.h"
#include "shoal_shims.h"

#include <openssl/crypto.h>
#include <openssl/evp.h>
#include <stdlib.h>
#include <string.h>

#if defined(__x86_64__)
#include <immintrin.h>

#define CLMUL_TARGET __attribute__((target("pclmul,sse4.1,ssse3")))
#define WIDE_TARGET __attribute__((target("avx512f,avx512bw,vpclmulqdq,pclmul,sse4.1,ssse3")))
#endif

struct shoal_gmac {
    int fast;
    EVP_CIPHER_CTX *gcm; /* the whole tag, where `fast` is 0 */
    EVP_CIPHER_CTX *aes; /* AES-256 on one block (the tag's mask), where `fast` is 1 */
#if defined(__x86_64__)
    __m128i powers[32]; /* H^(32-i) * x^-1, byte-reversed: powers[31] is H's */
    __m128i y;          /* the hash so far, byte-reversed */
#endif
    unsigned char mask[16];    /* E_K(nonce || 1) */
    unsigned char partial[16]; /* a block's first bytes, until the rest comes */
    size_t partial_count;
    uint64_t total;
};

#if defined(__x86_64__)

CLMUL_TARGET static inline __m128i byte_reversed(__m128i v) {
    return _mm_shuffle_epi8(v, _mm_set_epi8(0, 1, 2, 3, 4, 5, 6, 7, 8, 9, 10, 11, 12, 13, 14, 15));
}

/* The 256-bit product hi:lo reduced modulo GHASH's polynomial (byte-reversed domain). */
CLMUL_TARGET static inline __m128i reduce(__m128i lo, __m128i hi) {
    __m128i x = _mm_slli_epi64(lo, 5);
    __m128i t = _mm_xor_si128(lo, x);
    x = _mm_xor_si128(_mm_slli_epi64(x, 1), t);
    x = _mm_slli_epi64(x, 57);
    hi = _mm_xor_si128(hi, _mm_srli_si128(x, 8));
    x = _mm_xor_si128(_mm_slli_si128(x, 8), lo);
    hi = _mm_xor_si128(hi, x);
    t = _mm_xor_si128(x, _mm_srli_epi64(x, 1));
    x = _mm_xor_si128(_mm_srli_epi64(x, 6), t);
    x = _mm_srli_epi64(x, 1);
    return _mm_xor_si128(x, hi);
}

CLMUL_TARGET static inline __m128i multiply(__m128i a, __m128i b) {
    __m128i lo = _mm_clmulepi64_si128(a, b, 0x00);
    __m128i hi = _mm_clmulepi64_si128(a, b, 0x11);
    __m128i mid = _mm_xor_si128(_mm_clmulepi64_si128(a, b, 0x10), _mm_clmulepi64_si128(a, b, 0x01));
    return reduce(_mm_xor_si128(lo, _mm_slli_si128(mid, 8)), _mm_xor_si128(hi, _mm_srli_si128(mid, 8)));
}

/* H (E_K(0), as AES gives it) as the multiplier: byte-reversed, times x^-1. */
CLMUL_TARGET static void set_key(shoal_gmac *g, const unsigned char h[16]) {
    __m128i k = byte_reversed(_mm_loadu_si128((const __m128i *)h));
    __m128i carry = _mm_shuffle_epi32(k, 0xFF);
    carry = _mm_cmpgt_epi32(_mm_setzero_si128(), carry); /* all ones where bit 127 was set */
    __m128i shifted = _mm_or_si128(_mm_slli_epi64(k, 1), _mm_slli_si128(_mm_srli_epi64(k, 63), 8));
    __m128i poly = _mm_set_epi64x((long long)0xC200000000000000ULL, 1);
    __m128i h1 = _mm_xor_si128(shifted, _mm_and_si128(carry, poly));
    g->powers[31] = h1;
    for (int i = 30; i >= 0; i--) g->powers[i] = multiply(g->powers[i + 1], h1);
}

CLMUL_TARGET static void hash_blocks(shoal_gmac *g, const unsigned char *p, size_t blocks) {
    __m128i y = g->y, h = g->powers[31];
    for (size_t i = 0; i < blocks; i++, p += 16) y = multiply(_mm_xor_si128(y, byte_reversed(_mm_loadu_si128((const __m128i *)p))), h);
    g->y = y;
}

WIDE_TARGET static inline __m128i fold_lanes(__m512i v) {
    __m128i a = _mm_xor_si128(_mm512_extracti32x4_epi32(v, 0), _mm512_extracti32x4_epi32(v, 1));
    __m128i b = _mm_xor_si128(_mm512_extracti32x4_epi32(v, 2), _mm512_extracti32x4_epi32(v, 3));
    return _mm_xor_si128(a, b);
}

/* Four blocks (64 bytes at `q`, byte-reversed; the step's first ones with the hash so far added)
 * times four powers, added to the step's unreduced sums. */
#define ACCUMULATE(q, h, first)                                                                              \
    do {                                                                                                     \
        __m512i x_ = _mm512_shuffle_epi8(_mm512_loadu_si512((const void *)(q)), reverse);                    \
        if (first) x_ = _mm512_xor_si512(x_, _mm512_inserti32x4(_mm512_setzero_si512(), y, 0));           \
        lo = _mm512_xor_si512(lo, _mm512_clmulepi64_epi128(x_, h, 0x00));                                   \
        hi = _mm512_xor_si512(hi, _mm512_clmulepi64_epi128(x_, h, 0x11));                                   \
        mid = _mm512_ternarylogic_epi64(mid, _mm512_clmulepi64_epi128(x_, h, 0x01),                          \
                                        _mm512_clmulepi64_epi128(x_, h, 0x10), 0x96);                       \
    } while (0)

/* The sums of one step reduced into the hash. */
WIDE_TARGET static inline __m128i finish_step(__m512i lo, __m512i hi, __m512i mid) {
    lo = _mm512_xor_si512(lo, _mm512_bslli_epi128(mid, 8));
    hi = _mm512_xor_si512(hi, _mm512_bsrli_epi128(mid, 8));
    return reduce(fold_lanes(lo), fold_lanes(hi));
}

/* Whole 512- and then 256-byte steps of `p` (one reduction per step); returns the bytes taken. */
WIDE_TARGET static size_t hash_wide(shoal_gmac *g, const unsigned char *p, size_t n) {
    const __m512i reverse = _mm512_broadcast_i32x4(_mm_set_epi8(0, 1, 2, 3, 4, 5, 6, 7, 8, 9, 10, 11, 12, 13, 14, 15));
    __m512i h[8];
    for (int i = 0; i < 8; i++) h[i] = _mm512_loadu_si512((const void *)&g->powers[4 * i]);
    __m128i y = g->y;
    size_t done = 0;
    for (; n - done >= 512; done += 512) {
        __m512i lo = _mm512_setzero_si512(), hi = _mm512_setzero_si512(), mid = _mm512_setzero_si512();
        for (int i = 0; i < 8; i++) ACCUMULATE(p + done + 64 * i, h[i], i == 0);
        y = finish_step(lo, hi, mid);
    }
    if (n - done >= 256) {
        __m512i lo = _mm512_setzero_si512(), hi = _mm512_setzero_si512(), mid = _mm512_setzero_si512();
        for (int i = 0; i < 4; i++) ACCUMULATE(p + done + 64 * i, h[4 + i], i == 0);
        y = finish_step(lo, hi, mid);
        done += 256;
    }
    g->y = y;
    return done;
}
#undef ACCUMULATE

CLMUL_TARGET static void fast_start(shoal_gmac *g) { g->y = _mm_setzero_si128(); }

CLMUL_TARGET static void fast_finish(shoal_gmac *g, unsigned char tag[16]) {
    unsigned char lengths[16] = {0};
    uint64_t bits = g->total * 8;
    for (int i = 0; i < 8; i++) lengths[i] = (unsigned char)(bits >> (56 - 8 * i));
    hash_blocks(g, lengths, 1);
    __m128i t = _mm_xor_si128(byte_reversed(g->y), _mm_loadu_si128((const __m128i *)g->mask));
    _mm_storeu_si128((__m128i *)tag, t);
}

#endif

static int fast_available = -1;

int shoal_gmac_is_accelerated(void) {
    int v = __atomic_load_n(&fast_available, __ATOMIC_ACQUIRE);
    if (v < 0) {
        v = shoal_cpu_has_wide_clmul();
        const char *off = getenv("SHOAL_GMAC_OPENSSL");
        if (off && *off && strcmp(off, "0") != 0) v = 0;
        __atomic_store_n(&fast_available, v, __ATOMIC_RELEASE);
    }
    return v;
}

shoal_gmac *shoal_gmac_new(const unsigned char key[32], int allow_fast) {
    shoal_gmac *g = aligned_alloc(64, (sizeof(shoal_gmac) + 63) / 64 * 64);
    if (!g) return NULL;
    memset(g, 0, sizeof *g);
    g->fast = allow_fast && shoal_gmac_is_accelerated();
    if (!g->fast) {
        g->gcm = EVP_CIPHER_CTX_new();
        /* The key is set once; each frame sets only its nonce (12 bytes, GCM's default length). */
        if (!g->gcm || EVP_EncryptInit_ex(g->gcm, EVP_aes_256_gcm(), NULL, key, NULL) != 1) goto fail;
        return g;
    }
#if defined(__x86_64__)
    g->aes = EVP_CIPHER_CTX_new();
    if (!g->aes || EVP_EncryptInit_ex(g->aes, EVP_aes_256_ecb(), NULL, key, NULL) != 1) goto fail;
    EVP_CIPHER_CTX_set_padding(g->aes, 0);
    unsigned char zero[16] = {0}, h[16];
    int n = 0;
    if (EVP_EncryptUpdate(g->aes, h, &n, zero, 16) != 1 || n != 16) goto fail;
    set_key(g, h);
    OPENSSL_cleanse(h, sizeof h);
    return g;
#endif
fail:
    shoal_gmac_free(g);
    return NULL;
}

void shoal_gmac_free(shoal_gmac *g) {
    if (!g) return;
    EVP_CIPHER_CTX_free(g->gcm);
    EVP_CIPHER_CTX_free(g->aes);
    OPENSSL_cleanse(g, sizeof *g); /* H and its powers: with one tag, enough to forge others */
    free(g);
}

int shoal_gmac_start(shoal_gmac *g, const unsigned char nonce[12]) {
    if (!g->fast) return EVP_EncryptInit_ex(g->gcm, NULL, NULL, NULL, nonce) == 1;
#if defined(__x86_64__)
    /* Nothing of the frame before survives, even if AES fails below. */
    fast_start(g);
    g->partial_count = 0;
    g->total = 0;
    unsigned char j0[16];
    memcpy(j0, nonce, 12);
    j0[12] = 0, j0[13] = 0, j0[14] = 0, j0[15] = 1;
    int n = 0;
    return EVP_EncryptUpdate(g->aes, g->mask, &n, j0, 16) == 1 && n == 16;
#else
    return 0;
#endif
}

int shoal_gmac_add(shoal_gmac *g, const void *data, size_t length) {
    if (length == 0) return 1;
    if (!g->fast) {
        const unsigned char *p = data;
        while (length > 0) {
            int n = length > (1u << 30) ? (1 << 30) : (int)length, out = 0;
            if (EVP_EncryptUpdate(g->gcm, NULL, &out, p, n) != 1) return 0;
            p += n;
            length -= (size_t)n;
        }
        return 1;
    }
#if defined(__x86_64__)
    const unsigned char *p = data;
    g->total += length;
    if (g->partial_count > 0) {
        size_t take = 16 - g->partial_count < length ? 16 - g->partial_count : length;
        memcpy(g->partial + g->partial_count, p, take);
        g->partial_count += take;
        p += take;
        length -= take;
        if (g->partial_count < 16) return 1;
        hash_blocks(g, g->partial, 1);
        g->partial_count = 0;
    }
    size_t done = length >= 256 ? hash_wide(g, p, length) : 0;
    size_t blocks = (length - done) / 16;
    hash_blocks(g, p + done, blocks);
    done += blocks * 16;
    memcpy(g->partial, p + done, length - done);
    g->partial_count = length - done;
    return 1;
#else
    return 0;
#endif
}

int shoal_gmac_finish(shoal_gmac *g, unsigned char tag[16]) {
    if (!g->fast) {
        unsigned char none = 0;
        int out = 0;
        if (EVP_EncryptFinal_ex(g->gcm, &none, &out) != 1) return 0;
        return EVP_CIPHER_CTX_ctrl(g->gcm, EVP_CTRL_GCM_GET_TAG, 16, tag) == 1;
    }
#if defined(__x86_64__)
    if (g->partial_count > 0) {
        memset(g->partial + g->partial_count, 0, 16 - g->partial_count);
        hash_blocks(g, g->partial, 1);
        g->partial_count = 0;
    }
    fast_finish(g, tag);
    return 1;
#else
    return 0;
#endif
}
