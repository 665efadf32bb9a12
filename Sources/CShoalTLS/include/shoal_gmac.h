#ifndef SHOAL_GMAC_H
#define SHOAL_GMAC_H
// GMAC for frame tags (docs/PROTOCOL.md, "Frame tags"): AES-256-GCM's tag over additional data
// only, under one key, one frame after another. Hashed with VPCLMULQDQ where the CPU has it,
// otherwise by OpenSSL's GCM; the tags are the same either way.

#include <stddef.h>

typedef struct shoal_gmac shoal_gmac;

/// A context for `key` (32 bytes); `allow_fast` 0 keeps it on OpenSSL's GCM (tests compare the
/// two). NULL when OpenSSL fails.
shoal_gmac *shoal_gmac_new(const unsigned char *key, int allow_fast);
void shoal_gmac_free(shoal_gmac *g);
/// Starts a tag under a 12-byte nonce. 1 on success.
int shoal_gmac_start(shoal_gmac *g, const unsigned char *nonce);
/// Adds bytes to the tag's additional data (any lengths, in order). 1 on success.
int shoal_gmac_add(shoal_gmac *g, const void *data, size_t length);
/// Writes the 16-byte tag. 1 on success.
int shoal_gmac_finish(shoal_gmac *g, unsigned char *tag);
/// 1 where the hash runs here with VPCLMULQDQ (unless SHOAL_GMAC_OPENSSL is set), 0 where
/// OpenSSL does it all.
int shoal_gmac_is_accelerated(void);

#endif
