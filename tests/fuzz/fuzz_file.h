/* For the fuzz targets of loaders that take a path: the input as a file (an anonymous memfd named
 * by /proc/self/fd), so that the loader's own open, fstat and read or mmap run as in production. */
#ifndef DSLA_TESTS_FUZZ_FILE_H
#define DSLA_TESTS_FUZZ_FILE_H

#define _GNU_SOURCE /* memfd_create */
#include <stdint.h>
#include <stdio.h>
#include <sys/mman.h>
#include <unistd.h>

/* Writes data to a fresh memfd; its path goes to path. The fd, or -1. */
static int fuzz_file(const uint8_t *data, size_t size, char *path, size_t cap) {
    int fd = memfd_create("fuzz", MFD_CLOEXEC);
    if (fd < 0) return -1;
    if (size && write(fd, data, size) != (ssize_t)size) {
        close(fd);
        return -1;
    }
    snprintf(path, cap, "/proc/self/fd/%d", fd);
    return fd;
}

#endif
