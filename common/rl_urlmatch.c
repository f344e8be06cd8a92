/* The outbound-HTTP allow-list (rl_urlmatch.h). URLs are parsed with libcurl's URL API so that
 * what is matched is exactly what curl then fetches: the normalised URL it hands back is the
 * one the request uses. Patterns are the operator's and parsed here by hand. */
#include "rl_urlmatch.h"

#include <arpa/inet.h>
#include <ctype.h>
#include <curl/curl.h>
#include <errno.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>

#include "rl_glob.h"

#define HOST_MAX 256

typedef struct url_parts {
    char scheme[8];
    char host[HOST_MAX]; /* lower case, no trailing dot; IPv6 without brackets, canonical */
    long port;           /* -1 in a pattern: any */
    const char *path;    /* pattern: NULL = any */
} url_parts;

static int fail(char *why, size_t whylen, int rc, const char *fmt, const char *arg)
{
    if (why && whylen)
        snprintf(why, whylen, fmt, arg);
    return rc;
}

static long default_port(const char *scheme) { return strcmp(scheme, "https") == 0 ? 443 : 80; }

/* Lower-cases h in place and drops one trailing dot. */
static void host_fold(char *h)
{
    for (char *p = h; *p; p++)
        *p = (char)tolower((unsigned char)*p);
    size_t n = strlen(h);
    if (n > 1 && h[n - 1] == '.')
        h[n - 1] = '\0';
}

/* 1 when h is meant as an IPv4 address in the WHATWG sense: its last label is a number
   (decimal, or 0x hex). Such a host must then be canonical dotted decimal. */
static int looks_ipv4(const char *h)
{
    const char *last = strrchr(h, '.');
    last = last ? last + 1 : h;
    if (!*last)
        return 0;
    if ((last[0] == '0' && (last[1] == 'x' || last[1] == 'X'))) {
        for (const char *p = last + 2; *p; p++)
            if (!isxdigit((unsigned char)*p))
                return 0;
        return 1;
    }
    for (const char *p = last; *p; p++)
        if (!isdigit((unsigned char)*p))
            return 0;
    return 1;
}

/* Canonical form of an IPv4 or IPv6 literal host in place; -1 when it is not one. */
static int ip_canon(char *h, int v6)
{
    unsigned char buf[16];
    char out[INET6_ADDRSTRLEN];
    int af = v6 ? AF_INET6 : AF_INET;
    if (inet_pton(af, h, buf) != 1 || !inet_ntop(af, buf, out, sizeof out))
        return -1;
    if (!v6 && strcmp(out, h) != 0)
        return -1; /* inet_pton takes only dotted decimal; this also refuses leading zeros */
    snprintf(h, HOST_MAX, "%s", out);
    return 0;
}

/* Checks and canonicalises a host (URL or pattern side). */
static int host_canon(char *h, char *why, size_t whylen)
{
    size_t n = strlen(h);
    if (!n)
        return fail(why, whylen, -EINVAL, "%s", "no host");
    if (strchr(h, '%'))
        return fail(why, whylen, -EINVAL, "percent-encoded or zoned host '%s'", h);
    if (h[0] == '[') {
        if (h[n - 1] != ']')
            return fail(why, whylen, -EINVAL, "bad IPv6 host '%s'", h);
        memmove(h, h + 1, n - 2);
        h[n - 2] = '\0';
        if (ip_canon(h, 1) < 0)
            return fail(why, whylen, -EINVAL, "bad IPv6 host '%s'", h);
        return 0;
    }
    host_fold(h);
    if (looks_ipv4(h) && ip_canon(h, 0) < 0)
        return fail(why, whylen, -EINVAL, "'%s' is not a canonical IPv4 address", h);
    return 0;
}


static int host_match(const char *pat, const char *host)
{
    if (strcmp(pat, "*") == 0)
        return 1;
    if (pat[0] == '*' && pat[1] == '.') {
        size_t pl = strlen(pat + 1), hl = strlen(host); /* ".example.com" */
        return hl > pl && strcmp(host + hl - pl, pat + 1) == 0;
    }
    return strcmp(pat, host) == 0;
}

/* Parses pattern into p (p->path points into pattern). */
static int pattern_parse(const char *pattern, url_parts *p, char *why, size_t whylen)
{
    memset(p, 0, sizeof *p);
    const char *s = pattern;
    if (strncasecmp(s, "http://", 7) == 0) {
        strcpy(p->scheme, "http");
        s += 7;
    } else if (strncasecmp(s, "https://", 8) == 0) {
        strcpy(p->scheme, "https");
        s += 8;
    } else {
        return fail(why, whylen, -EINVAL, "'%s' does not start with http:// or https://", pattern);
    }
    if (strlen(pattern) >= RL_URL_MAX)
        return fail(why, whylen, -EINVAL, "%s", "pattern too long");
    for (const char *q = pattern; *q; q++)
        if ((unsigned char)*q <= ' ' || *q == 0x7f)
            return fail(why, whylen, -EINVAL, "'%s' has a space or control character", pattern);
    const char *end = strchr(s, '/');
    size_t alen = end ? (size_t)(end - s) : strlen(s);
    if (memchr(s, '@', alen) || memchr(s, '?', alen) || memchr(s, '#', alen))
        return fail(why, whylen, -EINVAL, "'%s': the host part may not hold @, ? or #", pattern);
    p->path = end; /* NULL: any path */
    /* the port: after the last ':' outside brackets */
    const char *close = memchr(s, ']', alen);
    const char *colon = NULL;
    for (const char *q = close ? close : s; q < s + alen; q++)
        if (*q == ':')
            colon = q;
    size_t hlen = colon ? (size_t)(colon - s) : alen;
    if (hlen == 0 || hlen >= HOST_MAX)
        return fail(why, whylen, -EINVAL, "'%s': bad host", pattern);
    memcpy(p->host, s, hlen);
    p->host[hlen] = '\0';
    if (colon) {
        const char *ps = colon + 1;
        size_t plen = (size_t)(s + alen - ps);
        if (plen == 1 && *ps == '*') {
            p->port = -1;
        } else {
            long v = 0;
            if (plen == 0 || plen > 5)
                return fail(why, whylen, -EINVAL, "'%s': bad port", pattern);
            for (size_t i = 0; i < plen; i++) {
                if (!isdigit((unsigned char)ps[i]))
                    return fail(why, whylen, -EINVAL, "'%s': bad port", pattern);
                v = v * 10 + (ps[i] - '0');
            }
            if (v < 1 || v > 65535)
                return fail(why, whylen, -EINVAL, "'%s': bad port", pattern);
            p->port = v;
        }
    } else {
        p->port = default_port(p->scheme);
    }
    if (strcmp(p->host, "*") == 0)
        return 0;
    if (p->host[0] == '*') {
        if (p->host[1] != '.' || !p->host[2] || strchr(p->host + 1, '*'))
            return fail(why, whylen, -EINVAL, "'%s': a wildcard host is * or *.name", pattern);
        host_fold(p->host + 2);
        return 0;
    }
    if (strchr(p->host, '*'))
        return fail(why, whylen, -EINVAL, "'%s': a wildcard host is * or *.name", pattern);
    return host_canon(p->host, why, whylen);
}

int rl_url_pattern_check(const char *pattern, char *why, size_t whylen)
{
    url_parts p;
    return pattern_parse(pattern, &p, why, whylen);
}

/* Copies a URL part into out (bounded); -1 when absent or too long. */
static int part(CURLU *u, CURLUPart what, unsigned flags, char *out, size_t cap)
{
    char *v = NULL;
    if (curl_url_get(u, what, &v, flags) != CURLUE_OK || !v)
        return -1;
    int rc = strlen(v) < cap ? 0 : -1;
    if (!rc)
        strcpy(out, v);
    curl_free(v);
    return rc;
}

static int has_part(CURLU *u, CURLUPart what)
{
    char *v = NULL;
    int has = curl_url_get(u, what, &v, 0) == CURLUE_OK && v;
    curl_free(v);
    return has;
}

int rl_url_check(const char *const *patterns, size_t n, const char *url, char **canon, char *why,
                 size_t whylen)
{
    *canon = NULL;
    if (!url || strlen(url) >= RL_URL_MAX)
        return fail(why, whylen, -EINVAL, "%s", "URL missing or too long");
    CURLU *u = curl_url();
    if (!u)
        return fail(why, whylen, -ENOMEM, "%s", "out of memory");
    int rc = -EINVAL;
    char *path = NULL, *full = NULL;
    url_parts x;
    memset(&x, 0, sizeof x);
    CURLUcode uc = curl_url_set(u, CURLUPART_URL, url, 0);
    if (uc != CURLUE_OK) {
        fail(why, whylen, -EINVAL, "malformed URL (%s)", curl_url_strerror(uc));
        goto out;
    }
    if (part(u, CURLUPART_SCHEME, 0, x.scheme, sizeof x.scheme) < 0 ||
        (strcmp(x.scheme, "http") != 0 && strcmp(x.scheme, "https") != 0)) {
        fail(why, whylen, -EINVAL, "%s", "only http:// and https:// URLs");
        goto out;
    }
    if (has_part(u, CURLUPART_USER) || has_part(u, CURLUPART_PASSWORD) ||
        has_part(u, CURLUPART_OPTIONS)) {
        fail(why, whylen, -EINVAL, "%s", "credentials in the URL (user@host) are not allowed");
        goto out;
    }
    if (has_part(u, CURLUPART_ZONEID)) {
        fail(why, whylen, -EINVAL, "%s", "IPv6 zone ids are not allowed");
        goto out;
    }
    if (part(u, CURLUPART_HOST, 0, x.host, sizeof x.host) < 0) {
        fail(why, whylen, -EINVAL, "%s", "no host or host too long");
        goto out;
    }
    if ((rc = host_canon(x.host, why, whylen)) < 0)
        goto out;
    rc = -EINVAL;
    char port[8];
    if (part(u, CURLUPART_PORT, CURLU_DEFAULT_PORT, port, sizeof port) < 0) {
        fail(why, whylen, -EINVAL, "%s", "bad port");
        goto out;
    }
    x.port = strtol(port, NULL, 10);
    if (curl_url_get(u, CURLUPART_PATH, &path, 0) != CURLUE_OK || !path) {
        fail(why, whylen, -EINVAL, "%s", "no path");
        goto out;
    }
    if (strchr(path, '\\') || strcasestr(path, "%2e") || strcasestr(path, "%2f") ||
        strcasestr(path, "%5c")) {
        fail(why, whylen, -EINVAL, "%s", "encoded dots, slashes or backslashes in the path");
        goto out;
    }
    rc = -EACCES;
    for (size_t i = 0; i < n && rc == -EACCES; i++) {
        url_parts p;
        if (pattern_parse(patterns[i], &p, NULL, 0) < 0)
            continue; /* checked at config load */
        if (strcmp(p.scheme, x.scheme) == 0 && host_match(p.host, x.host) &&
            (p.port < 0 || p.port == x.port) &&
            (!p.path || rl_glob_match(p.path, path, strlen(path))))
            rc = 0;
    }
    if (rc < 0) {
        fail(why, whylen, -EACCES, "%s is not on the http.allow list", x.host);
        goto out;
    }
    if (curl_url_get(u, CURLUPART_URL, &full, 0) != CURLUE_OK || !full ||
        !(*canon = strdup(full))) {
        rc = fail(why, whylen, -ENOMEM, "%s", "out of memory");
        goto out;
    }
    rc = 0;
out:
    curl_free(path);
    curl_free(full);
    curl_url_cleanup(u);
    return rc;
}
