/* Key files (keyfile.h). */
#define _DEFAULT_SOURCE /* O_NOFOLLOW */
#include "runtime/core/keyfile.h"

#include <errno.h>
#include <fcntl.h>
#include <stdio.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>

dsla_status_t dsla_keyfile_open(const char *path, bool writable, int *fd, uint64_t *size,
                                unsigned *mode) {
    *fd = open(path, (writable ? O_RDWR : O_RDONLY) | O_NOFOLLOW | O_NONBLOCK | O_CLOEXEC);
    if (*fd < 0)
        return dsla_error(errno == ELOOP    ? DSLA_ERR_FORMAT
                          : errno == ENOENT ? DSLA_ERR_NOT_FOUND
                                            : DSLA_ERR_IO,
                          "%s: cannot open: %s", path,
                          errno == ELOOP ? "a symbolic link" : strerror(errno));
    struct stat sb;
    if (fstat(*fd, &sb) != 0)
        return dsla_error(DSLA_ERR_IO, "%s: cannot stat: %s", path, strerror(errno));
    if (!S_ISREG(sb.st_mode)) return dsla_error(DSLA_ERR_FORMAT, "%s: not a regular file", path);
    *size = (uint64_t)sb.st_size;
    if (mode) *mode = (unsigned)(sb.st_mode & 07777);
    return DSLA_OK;
}

dsla_status_t dsla_keyfile_read(const char *path, bool secret, char *out, size_t cap, size_t *len) {
    out[0] = '\0';
    int fd = -1;
    uint64_t size = 0;
    unsigned mode = 0;
    dsla_status_t st = dsla_keyfile_open(path, false, &fd, &size, &mode);
    if (st == DSLA_OK && secret && (mode & 077))
        st = dsla_error(DSLA_ERR_PERMISSION_DENIED,
                        "key file %s: mode %03o lets group or others at a secret key; chmod 600 %s",
                        path, mode & 0777, path);
    else if (st == DSLA_OK && size >= cap)
        st =
            dsla_error(DSLA_ERR_INVALID_ARGUMENT, "key file %s: %llu bytes, above the limit of %zu",
                       path, (unsigned long long)size, cap - 1);
    size_t got = 0;
    while (st == DSLA_OK && got < cap - 1) {
        ssize_t n = read(fd, out + got, cap - 1 - got);
        if (n < 0 && errno == EINTR) continue;
        if (n < 0) st = dsla_error(DSLA_ERR_IO, "key file %s: %s", path, strerror(errno));
        if (n <= 0) break;
        got += (size_t)n;
    }
    if (fd >= 0) close(fd);
    out[st == DSLA_OK ? got : 0] = '\0';
    if (len) *len = st == DSLA_OK ? got : 0;
    return st;
}

dsla_status_t dsla_keyfile_write(const char *path, bool secret, const char *text) {
    int fd = open(path, O_WRONLY | O_CREAT | O_EXCL | O_NOFOLLOW | O_CLOEXEC, secret ? 0600 : 0644);
    if (fd < 0)
        return dsla_error(errno == EEXIST ? DSLA_ERR_INVALID_ARGUMENT : DSLA_ERR_IO,
                          "key file %s: %s%s", path, strerror(errno),
                          errno == EEXIST ? " (keys are never overwritten; remove it first)" : "");
    size_t len = strlen(text), done = 0;
    dsla_status_t st = DSLA_OK;
    while (done < len) {
        ssize_t n = write(fd, text + done, len - done);
        if (n < 0 && errno == EINTR) continue;
        if (n < 0) {
            st = dsla_error(DSLA_ERR_IO, "key file %s: %s", path, strerror(errno));
            break;
        }
        done += (size_t)n;
    }
    if (st == DSLA_OK && fsync(fd) != 0)
        st = dsla_error(DSLA_ERR_IO, "key file %s: fsync: %s", path, strerror(errno));
    close(fd);
    if (st != DSLA_OK) unlink(path);
    return st;
}
