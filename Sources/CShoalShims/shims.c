#define _GNU_SOURCE
#include <sys/eventfd.h>
#include <fcntl.h>
#include <pthread.h>
#include <sys/random.h>
#include <sys/socket.h>
#include "shoal_shims.h"

#if defined(__x86_64__)
#include <cpuid.h>
#include <nmmintrin.h>
#endif

static uint32_t crc32c_table[8][256];
static int crc32c_mode = -1; /* -1 unknown, 0 table, 1 hardware */
#if defined(__x86_64__)
static void crc32c_init_shift(void);
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
#endif
    __atomic_store_n(&crc32c_mode, hw, __ATOMIC_RELEASE);
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
#endif

uint32_t shoal_crc32c(uint32_t crc, const void *data, size_t length) {
    int mode = __atomic_load_n(&crc32c_mode, __ATOMIC_ACQUIRE);
    if (mode < 0) { crc32c_init(); mode = crc32c_mode; }
    crc = ~crc;
#if defined(__x86_64__)
    if (mode == 1) return ~crc32c_hw(crc, (const unsigned char *)data, length);
#endif
    return ~crc32c_soft(crc, (const unsigned char *)data, length);
}

int shoal_crc32c_is_hardware(void) {
    if (__atomic_load_n(&crc32c_mode, __ATOMIC_ACQUIRE) < 0) crc32c_init();
    return crc32c_mode;
}

int shoal_o_direct(void) { return O_DIRECT; }

int shoal_accept_cloexec(int fd) { return accept4(fd, NULL, NULL, SOCK_CLOEXEC); }
long shoal_getrandom(void *buffer, size_t length) { return (long)getrandom(buffer, length, 0); }
void shoal_set_thread_name(const char *name) { pthread_setname_np(pthread_self(), name); }

int shoal_eventfd(void) { return eventfd(0, EFD_CLOEXEC); }

int shoal_sock_cloexec(void) { return SOCK_CLOEXEC; }

int shoal_msg_nosignal(void) { return MSG_NOSIGNAL; }
