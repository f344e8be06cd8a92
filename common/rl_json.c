/* JSON helpers on cJSON shared by the node's modules. */
#include "rl_json.h"

#include <ctype.h>
#include <string.h>

int rl_json_depth_ok(const cJSON *v, int max)
{
    if (max < 0)
        return 0;
    for (const cJSON *c = v->child; c; c = c->next)
        if (c->child && !rl_json_depth_ok(c, max - 1))
            return 0;
    return 1;
}

/* cJSON keeps strings as C strings and lets raw control bytes through: refuse what it would
   silently cut or accept against RFC 8259 (a raw byte below 0x20, a \u0000 escape, or a \u
   escape without four hex digits inside a string). The node reads client JSON with the envelope
   scanner and the Lua decoder; this strict reader on cJSON is what the tests and fuzz targets
   hold those against. */
static int strings_clean(const char *buf, size_t len)
{
    int in_string = 0;
    for (size_t i = 0; i < len; i++) {
        unsigned char c = (unsigned char)buf[i];
        if (!in_string) {
            in_string = c == '"';
        } else if (c == '"') {
            in_string = 0;
        } else if (c < 0x20) {
            return 0;
        } else if (c == '\\' && i + 1 < len) {
            if (buf[i + 1] == 'u') {
                /* cJSON reads \u with non-hex digits as U+0000 (and cuts the string there) */
                if (i + 5 >= len || memcmp(buf + i + 2, "0000", 4) == 0)
                    return 0;
                for (size_t k = i + 2; k < i + 6; k++)
                    if (!isxdigit((unsigned char)buf[k]))
                        return 0;
            }
            i++; /* the escaped character is not a quote that ends the string */
        }
    }
    return 1;
}

cJSON *rl_json_parse(const char *buf, size_t len)
{
    if (!strings_clean(buf, len))
        return NULL;
    const char *end = NULL;
    cJSON *v = cJSON_ParseWithLengthOpts(buf, len, &end, 0);
    if (!v)
        return NULL;
    for (const char *p = end; p < buf + len; p++) {
        if (*p != ' ' && *p != '\t' && *p != '\n' && *p != '\r') {
            cJSON_Delete(v);
            return NULL;
        }
    }
    return v;
}

size_t rl_json_escape(char *out, size_t cap, const char *s, size_t len)
{
    static const char hex[] = "0123456789abcdef";
    size_t n = 0;
#define PUT(c)                                                                                    \
    do {                                                                                          \
        if (n + 1 < cap)                                                                          \
            out[n] = (c);                                                                         \
        n++;                                                                                      \
    } while (0)
    PUT('"');
    for (size_t i = 0; i < len; i++) {
        unsigned char c = (unsigned char)s[i];
        if (c == '"' || c == '\\') {
            PUT('\\');
            PUT((char)c);
        } else if (c < 0x20) {
            const char *e = c == '\n' ? "n" : c == '\r' ? "r" : c == '\t' ? "t" : c == '\b' ? "b" : c == '\f' ? "f" : NULL;
            PUT('\\');
            if (e) {
                PUT(e[0]);
            } else {
                PUT('u');
                PUT('0');
                PUT('0');
                PUT(hex[c >> 4]);
                PUT(hex[c & 15]);
            }
        } else {
            PUT((char)c);
        }
    }
    PUT('"');
#undef PUT
    if (cap)
        out[n < cap ? n : cap - 1] = '\0';
    return n;
}
