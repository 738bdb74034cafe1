/* Key files: the small text files that hold secrets the operator made (a CURVE secret key, the
 * layer MAC key) and their public companions.
 *
 * Contract: a file is opened with O_NOFOLLOW and O_NONBLOCK, must be a regular file and at most
 * the caller's capacity; a secret file must not be readable or writable by group or others (the
 * refusal says "chmod 600 PATH"), as ssh refuses such a private key. Writes never replace an
 * existing file (O_EXCL), and a secret file is created 0600. Nothing here knows what the bytes
 * mean. */
#ifndef DSLA_CORE_KEYFILE_H
#define DSLA_CORE_KEYFILE_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

#include "runtime/core/status.h"

/* Opens a file that configuration or a message names, for reading (or writing): without
 * following a final symbolic link, never blocking (a FIFO or device answers at once), and only
 * when it is a regular file; *size its size. FORMAT naming the file for a link or anything not
 * regular, NOT_FOUND or IO otherwise; *mode (may be NULL) its permission bits. The caller closes
 * *fd (-1 when open failed). */
dsla_status_t dsla_keyfile_open(const char *path, bool writable, int *fd, uint64_t *size,
                                unsigned *mode);
/* Reads path into out (NUL-terminated; at most cap - 1 bytes, else INVALID_ARGUMENT naming the
 * limit), *len its length when len is not NULL. */
dsla_status_t dsla_keyfile_read(const char *path, bool secret, char *out, size_t cap, size_t *len);
/* Creates path with text; INVALID_ARGUMENT when it exists (keys are never overwritten). */
dsla_status_t dsla_keyfile_write(const char *path, bool secret, const char *text);

#endif
