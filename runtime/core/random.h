/* splitmix64 (Steele, Lea and Flood; Vigna's public-domain version): the one small seedable
 * generator every module uses where it needs reproducible numbers from a 64-bit seed (sampler
 * seeding, DSLA layer initialisation, data shuffles, reservoir sampling, test inputs). Tiny, and
 * the same on every platform. Not for secrets. Header-only so that hot loops inline it; device code
 * (kernels/cuda) keeps its own copy of the finaliser, since it cannot call host functions. */
#ifndef DSLA_CORE_RANDOM_H
#define DSLA_CORE_RANDOM_H

#include <stdint.h>

/* Advances *state and returns the next 64 random bits. */
static inline uint64_t dsla_splitmix64(uint64_t *state) {
    uint64_t z = (*state += 0x9e3779b97f4a7c15ull);
    z = (z ^ (z >> 30)) * 0xbf58476d1ce4e5b9ull;
    z = (z ^ (z >> 27)) * 0x94d049bb133111ebull;
    return z ^ (z >> 31);
}

#endif
