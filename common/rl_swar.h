/* Eight bytes at a time over JSON string contents: the gateway's envelope scanner and the Lua
   host's JSON module skip plain runs (printable ASCII other than '"' and '\') with these. */
#ifndef RL_SWAR_H
#define RL_SWAR_H

#include <stdint.h>
#include <string.h>

#define RL_SWAR_ONES 0x0101010101010101ull
#define RL_SWAR_HIGH 0x8080808080808080ull

static inline uint64_t rl_load8(const uint8_t *p)
{
    uint64_t x;
    memcpy(&x, p, sizeof x);
    return x;
}

/* Nonzero when one of the 8 bytes of x is not plain: below 0x20, '"', '\\' or above 0x7F
   (the exact "has a byte below n" and "has a zero byte" tests, Hacker's Delight 6-1). */
static inline uint64_t rl_str_special8(uint64_t x)
{
    uint64_t q = x ^ (RL_SWAR_ONES * '"'), b = x ^ (RL_SWAR_ONES * '\\');
    return (((x - RL_SWAR_ONES * 0x20) & ~x) | ((q - RL_SWAR_ONES) & ~q) | ((b - RL_SWAR_ONES) & ~b) |
            x) &
           RL_SWAR_HIGH;
}

/* The index of the first byte of a word loaded from memory whose high bit is set in m (m != 0).
   The tests above are exact for the lowest such byte: a borrow only runs upwards. Elsewhere
   than on little-endian machines 0: the caller's byte loop finds the byte. */
static inline unsigned rl_first_byte(uint64_t m)
{
#if defined __BYTE_ORDER__ && __BYTE_ORDER__ == __ORDER_LITTLE_ENDIAN__
    return (unsigned)__builtin_ctzll(m) >> 3;
#else
    (void)m;
    return 0;
#endif
}

/* p moved over whole words of plain bytes: to the first byte that is not plain (or a few bytes
   before it) or to where fewer than 8 bytes are left before end. A byte loop finishes. */
static inline const uint8_t *rl_skip_plain8(const uint8_t *p, const uint8_t *end)
{
    for (uint64_t m; end - p >= 8; p += 8)
        if ((m = rl_str_special8(rl_load8(p))) != 0)
            return p + rl_first_byte(m);
    return p;
}

#endif
