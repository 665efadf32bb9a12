#define _GNU_SOURCE
#include <sys/eventfd.h>
#include <fcntl.h>
#include <pthread.h>
#include <sys/random.h>
#include <sys/socket.h>
#include "shoal_shims.h"

#if defined(__x86_64__)
#include <cpuid.h>
#include <immintrin.h>
#endif

static uint32_t crc32c_table[8][256];
static int crc32c_mode = -1; /* -1 unknown, 0 table, 1 crc32 instruction, 2 that and VPCLMULQDQ folding */
#if defined(__x86_64__)
static void crc32c_init_shift(void);
static void crc32c_init_fold(void);
#endif

static void crc32c_init(void) {
    for (uint32_t n = 0; n < 256; n++) {
        uint32_t c = n;
        for (int k = 0; k < 8; k++) c = (c & 1) ? (c >> 1) ^ 0x82F63B78u : c >> 1;
        crc32c_table[0][n] = c;
    }
    for (uint32_t n = 0; n < 256; n++) {
        uint32_t c = crc32c_table[0][n];
        for (int k = 1; k < 8; k++) {
            c = crc32c_table[0][c & 0xff] ^ (c >> 8);
            crc32c_table[k][n] = c;
        }
    }
    int hw = 0;
#if defined(__x86_64__)
    unsigned eax, ebx, ecx, edx;
    if (__get_cpuid(1, &eax, &ebx, &ecx, &edx)) hw = (ecx & bit_SSE4_2) != 0;
    if (hw) crc32c_init_shift();
    if (hw && shoal_cpu_has_wide_clmul()) {
        crc32c_init_fold();
        hw = 2;
    }
#endif
    __atomic_store_n(&crc32c_mode, hw, __ATOMIC_RELEASE);
}

/* The tables and the mode, made once by whichever thread comes first (the others wait). */
static int crc32c_ready(void) {
    static pthread_once_t once = PTHREAD_ONCE_INIT;
    pthread_once(&once, crc32c_init);
    return __atomic_load_n(&crc32c_mode, __ATOMIC_ACQUIRE);
}

static uint32_t crc32c_soft(uint32_t crc, const unsigned char *p, size_t n) {
    while (n >= 8) {
        uint64_t w;
        __builtin_memcpy(&w, p, 8);
        w ^= crc;
        crc = crc32c_table[7][w & 0xff] ^ crc32c_table[6][(w >> 8) & 0xff] ^
              crc32c_table[5][(w >> 16) & 0xff] ^ crc32c_table[4][(w >> 24) & 0xff] ^
              crc32c_table[3][(w >> 32) & 0xff] ^ crc32c_table[2][(w >> 40) & 0xff] ^
              crc32c_table[1][(w >> 48) & 0xff] ^ crc32c_table[0][w >> 56];
        p += 8; n -= 8;
    }
    while (n--) crc = crc32c_table[0][(crc ^ *p++) & 0xff] ^ (crc >> 8);
    return crc;
}

#if defined(__x86_64__)
// The crc32 instruction has a latency of three cycles and a throughput of one, so one stream runs
// at a third of what a core can do. Long inputs go as three interleaved streams over adjacent
// stripes, joined afterwards: the CRC register is linear over GF(2), so
//     crc(x, A || B) = shift(crc(x, A), |B|) ^ crc(0, B)
// where shift(c, n) runs c through n zero bytes. For the fixed stripe length, shift is a 32x32
// bit matrix, kept as four byte-indexed tables built once from its 32 basis vectors.
#define CRC_STRIPE 4096
static uint32_t crc32c_stripe_shift[4][256];

__attribute__((target("sse4.2")))
static uint32_t crc32c_zeros_hw(uint32_t c, size_t n) {
    uint64_t r = c;
    for (size_t i = 0; i < n / 8; i++) r = _mm_crc32_u64(r, 0);
    return (uint32_t)r;
}

static void crc32c_init_shift(void) {
    uint32_t basis[32];
    for (int i = 0; i < 32; i++) basis[i] = crc32c_zeros_hw(1u << i, CRC_STRIPE);
    for (int k = 0; k < 4; k++) {
        for (uint32_t b = 0; b < 256; b++) {
            uint32_t v = 0;
            for (int i = 0; i < 8; i++) if (b & (1u << i)) v ^= basis[8 * k + i];
            crc32c_stripe_shift[k][b] = v;
        }
    }
}

static inline uint32_t crc32c_shift_stripe(uint32_t c) {
    return crc32c_stripe_shift[0][c & 0xff] ^ crc32c_stripe_shift[1][(c >> 8) & 0xff] ^
           crc32c_stripe_shift[2][(c >> 16) & 0xff] ^ crc32c_stripe_shift[3][c >> 24];
}

__attribute__((target("sse4.2")))
static uint32_t crc32c_hw(uint32_t crc, const unsigned char *p, size_t n) {
    uint64_t c = crc;
    while (n && ((uintptr_t)p & 7)) { c = _mm_crc32_u8((uint32_t)c, *p++); n--; }
    while (n >= 3 * CRC_STRIPE) {
        uint64_t c1 = 0, c2 = 0;
        for (size_t i = 0; i < CRC_STRIPE; i += 8) {
            uint64_t a, b, d;
            __builtin_memcpy(&a, p + i, 8);
            __builtin_memcpy(&b, p + CRC_STRIPE + i, 8);
            __builtin_memcpy(&d, p + 2 * CRC_STRIPE + i, 8);
            c = _mm_crc32_u64(c, a);
            c1 = _mm_crc32_u64(c1, b);
            c2 = _mm_crc32_u64(c2, d);
        }
        c = crc32c_shift_stripe((uint32_t)c) ^ (uint32_t)c1;
        c = crc32c_shift_stripe((uint32_t)c) ^ (uint32_t)c2;
        p += 3 * CRC_STRIPE; n -= 3 * CRC_STRIPE;
    }
    while (n >= 8) { uint64_t w; __builtin_memcpy(&w, p, 8); c = _mm_crc32_u64(c, w); p += 8; n -= 8; }
    while (n--) c = _mm_crc32_u8((uint32_t)c, *p++);
    return (uint32_t)c;
}

// Longer inputs, where the CPU has VPCLMULQDQ with AVX-512: the data is folded, 256 bytes a step,
// into four 512-bit registers (sixteen 128-bit lanes), and the lanes into one 128-bit value, which
// the crc32 instruction then finishes with the tail. Folding a 128-bit lane S forward by D bits
// onto the lane there is
//     S.lo * k(D + 31) ^ S.hi * k(D - 33)    (carry-less, 64 x 32 bits)
// where k(N) is x^N mod the CRC32C polynomial, bit-reflected as the CRC is; the product is
// congruent to S moved D bits on. A test checks this path against the others on every length
// near its steps.
static uint64_t crc32c_fold_k[5][2]; /* distances 2048, 512, 384, 256, 128 bits: {k(D + 31), k(D - 33)} */

static uint32_t crc32c_x_power(unsigned n) { /* x^n mod P, bit-reflected */
    uint64_t r = 1;
    for (unsigned i = 0; i < n; i++) {
        r <<= 1;
        if (r >> 32) r ^= 0x11EDC6F41ull;
    }
    uint32_t out = 0;
    for (int i = 0; i < 32; i++) if (r & (1ull << i)) out |= 1u << (31 - i);
    return out;
}

static void crc32c_init_fold(void) {
    static const unsigned distances[5] = {2048, 512, 384, 256, 128};
    for (int i = 0; i < 5; i++) {
        crc32c_fold_k[i][0] = crc32c_x_power(distances[i] + 31);
        crc32c_fold_k[i][1] = crc32c_x_power(distances[i] - 33);
    }
}

int shoal_cpu_has_wide_clmul(void) {
    unsigned eax, ebx, ecx, edx;
    if (!__get_cpuid(1, &eax, &ebx, &ecx, &edx)) return 0;
    if (!(ecx & bit_PCLMUL) || !(ecx & bit_OSXSAVE) || !(ecx & bit_SSE4_1) || !(ecx & bit_SSSE3)) return 0;
    unsigned lo, hi;
    __asm__("xgetbv" : "=a"(lo), "=d"(hi) : "c"(0));
    (void)hi;
    if ((lo & 0xE6) != 0xE6) return 0; /* SSE, AVX and the three AVX-512 states enabled by the OS */
    if (!__get_cpuid_count(7, 0, &eax, &ebx, &ecx, &edx)) return 0;
    return (ebx & bit_AVX512F) && (ebx & bit_AVX512BW) && (ecx & bit_VPCLMULQDQ);
}

__attribute__((target("avx512f,vpclmulqdq,pclmul,sse4.2")))
static inline __m512i crc32c_fold512(__m512i s, __m512i k, __m512i onto) {
    return _mm512_ternarylogic_epi64(_mm512_clmulepi64_epi128(s, k, 0x00), _mm512_clmulepi64_epi128(s, k, 0x11), onto, 0x96);
}

__attribute__((target("pclmul,sse4.2")))
static inline __m128i crc32c_fold128(__m128i s, int distance, __m128i onto) {
    __m128i k = _mm_set_epi64x((long long)crc32c_fold_k[distance][1], (long long)crc32c_fold_k[distance][0]);
    return _mm_xor_si128(_mm_xor_si128(_mm_clmulepi64_si128(s, k, 0x00), _mm_clmulepi64_si128(s, k, 0x11)), onto);
}

/* At least 512 bytes. */
__attribute__((target("avx512f,vpclmulqdq,pclmul,sse4.2")))
static uint32_t crc32c_wide(uint32_t crc, const unsigned char *p, size_t n) {
    const __m512i k2048 = _mm512_broadcast_i32x4(_mm_set_epi64x((long long)crc32c_fold_k[0][1], (long long)crc32c_fold_k[0][0]));
    const __m512i k512 = _mm512_broadcast_i32x4(_mm_set_epi64x((long long)crc32c_fold_k[1][1], (long long)crc32c_fold_k[1][0]));
    /* The register's value goes into the first four bytes: the rest then runs from zero. */
    __m512i x0 = _mm512_xor_si512(_mm512_loadu_si512((const void *)p), _mm512_inserti32x4(_mm512_setzero_si512(), _mm_cvtsi32_si128((int)crc), 0));
    __m512i x1 = _mm512_loadu_si512((const void *)(p + 64));
    __m512i x2 = _mm512_loadu_si512((const void *)(p + 128));
    __m512i x3 = _mm512_loadu_si512((const void *)(p + 192));
    p += 256;
    n -= 256;
    for (; n >= 256; p += 256, n -= 256) {
        x0 = crc32c_fold512(x0, k2048, _mm512_loadu_si512((const void *)p));
        x1 = crc32c_fold512(x1, k2048, _mm512_loadu_si512((const void *)(p + 64)));
        x2 = crc32c_fold512(x2, k2048, _mm512_loadu_si512((const void *)(p + 128)));
        x3 = crc32c_fold512(x3, k2048, _mm512_loadu_si512((const void *)(p + 192)));
    }
    x1 = crc32c_fold512(x0, k512, x1);
    x2 = crc32c_fold512(x1, k512, x2);
    x3 = crc32c_fold512(x2, k512, x3);
    __m128i s = _mm512_extracti32x4_epi32(x3, 3);
    s = crc32c_fold128(_mm512_extracti32x4_epi32(x3, 0), 2, s);
    s = crc32c_fold128(_mm512_extracti32x4_epi32(x3, 1), 3, s);
    s = crc32c_fold128(_mm512_extracti32x4_epi32(x3, 2), 4, s);
    uint64_t c = _mm_crc32_u64(0, (uint64_t)_mm_cvtsi128_si64(s));
    c = _mm_crc32_u64(c, (uint64_t)_mm_extract_epi64(s, 1));
    return crc32c_hw((uint32_t)c, p, n);
}
#else
int shoal_cpu_has_wide_clmul(void) { return 0; }
#endif

/* The CRC by the fastest path this CPU has (`fold` 0: never the VPCLMULQDQ one). */
static uint32_t crc32c(uint32_t crc, const void *data, size_t length, int fold) {
    int mode = __atomic_load_n(&crc32c_mode, __ATOMIC_ACQUIRE);
    if (mode < 0) mode = crc32c_ready();
    crc = ~crc;
#if defined(__x86_64__)
    if (fold && mode == 2 && length >= 512) return ~crc32c_wide(crc, (const unsigned char *)data, length);
    if (mode >= 1) return ~crc32c_hw(crc, (const unsigned char *)data, length);
#endif
    return ~crc32c_soft(crc, (const unsigned char *)data, length);
}

uint32_t shoal_crc32c(uint32_t crc, const void *data, size_t length) { return crc32c(crc, data, length, 1); }

uint32_t shoal_crc32c_unfolded(uint32_t crc, const void *data, size_t length) { return crc32c(crc, data, length, 0); }

int shoal_crc32c_is_hardware(void) {
    return crc32c_ready();
}

int shoal_o_direct(void) { return O_DIRECT; }

int shoal_accept_cloexec(int fd) { return accept4(fd, NULL, NULL, SOCK_CLOEXEC); }
long shoal_getrandom(void *buffer, size_t length) { return (long)getrandom(buffer, length, 0); }
void shoal_set_thread_name(const char *name) { pthread_setname_np(pthread_self(), name); }

int shoal_eventfd(void) { return eventfd(0, EFD_CLOEXEC); }

int shoal_sock_cloexec(void) { return SOCK_CLOEXEC; }

int shoal_msg_nosignal(void) { return MSG_NOSIGNAL; }
