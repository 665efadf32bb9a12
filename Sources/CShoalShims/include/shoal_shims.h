#ifndef SHOAL_SHIMS_H
#define SHOAL_SHIMS_H
// C that Swift cannot call directly: the O_DIRECT macro (only visible under _GNU_SOURCE), GNU
// extensions, and CRC32C through the SSE4.2 instruction. It includes no library's header and
// links nothing but libc: ShoalCore and the client's system layer build on it. curl's wrappers
// are in CShoalCurl, OpenSSL's in CShoalTLS.

#include <stddef.h>
#include <stdint.h>

/// CRC32C (Castagnoli), hardware-accelerated where the CPU has SSE4.2. `crc` is the running
/// value (0 to start); the result is finalised, so chaining passes the previous result.
uint32_t shoal_crc32c(uint32_t crc, const void *data, size_t length);
/// 2 when shoal_crc32c folds long inputs with VPCLMULQDQ (and uses the crc32 instruction for the
/// rest), 1 when it uses the crc32 instruction alone, 0 for the table fallback.
int shoal_crc32c_is_hardware(void);
/// shoal_crc32c without the VPCLMULQDQ folding (tests compare the paths).
uint32_t shoal_crc32c_unfolded(uint32_t crc, const void *data, size_t length);
/// 1 where the CPU has VPCLMULQDQ with AVX-512 (F and BW) and the OS keeps the 512-bit state:
/// CRC32C's folding and the frame tags' GHASH (CShoalTLS/gmac.c) use it then.
int shoal_cpu_has_wide_clmul(void);

/// The O_DIRECT open flag for this architecture.
int shoal_o_direct(void);

// GNU extensions Glibc's Swift module does not expose (they need _GNU_SOURCE).
int shoal_accept_cloexec(int fd);

/// eventfd(0, EFD_CLOEXEC): <sys/eventfd.h> is not in Swift's Glibc module.
int shoal_eventfd(void);

/// SOCK_CLOEXEC for io_uring's accept (the CURing module's socket names clash with Glibc's).
int shoal_sock_cloexec(void);

/// MSG_NOSIGNAL, for the same reason.
int shoal_msg_nosignal(void);
long shoal_getrandom(void *buffer, size_t length);
void shoal_set_thread_name(const char *name);

#endif
