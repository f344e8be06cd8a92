/* The outbound-HTTP allow-list: which URLs a plugin may fetch (relay.node http.allow). */
#ifndef RL_URLMATCH_H
#define RL_URLMATCH_H

#include <stddef.h>

#define RL_URL_MAX 8192 /* bytes of a URL or a pattern */

/* A pattern is SCHEME://HOST[:PORT][/PATH]: SCHEME http or https; HOST a name, an IPv4 address,
   an [IPv6] address, `*` (any host) or `*.example.com` (any name below example.com, not
   example.com itself); PORT a number or `*` (absent: the scheme's default port); PATH a glob in
   which `*` matches any run of characters, `/` included (absent: any path). Names compare
   without case and without one trailing dot.

   The URL is parsed by libcurl, the parser that then fetches it, and refused outright when it
   has credentials (http://allowed@evil), a scheme other than http/https, a host that is a
   non-canonical IPv4 form (0x7f.1, 2130706433, 0177.0.0.1) or percent-encoded, or a path with
   an encoded dot, slash or backslash (%2e %2f %5c) or a raw backslash (a server that decodes
   those could be walked out of an allowed path). The query string is not matched.

   Returns 0 and a malloc'd normalised URL in *canon (the one to fetch, caller frees), -EACCES
   when no pattern matches, -EINVAL when the URL is refused as such, -ENOMEM; why gets the
   reason on error. */
int rl_url_check(const char *const *patterns, size_t n, const char *url, char **canon, char *why,
                 size_t whylen);

/* 0 when pattern is well-formed (for config load), else -EINVAL with the reason. */
int rl_url_pattern_check(const char *pattern, char *why, size_t whylen);

#endif
