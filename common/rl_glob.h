/* Wildcard patterns: `*` matches any run of bytes (none, `.`, `/` and `:` included); every other
 * byte matches itself. The outbound-HTTP allow-list's paths (rl_urlmatch) and the security
 * policies' actions and resources (rl_security) share it. */
#ifndef RL_GLOB_H
#define RL_GLOB_H

#include <stddef.h>

/* 1 when the NUL-terminated pattern matches s[0..len). Greedy with one back-track point (the
   last `*`): O(len * strlen(pattern)) at worst, never exponential. */
int rl_glob_match(const char *pattern, const char *s, size_t len);

#endif
