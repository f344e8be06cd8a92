/* One-pass envelope scanner for client text frames: UTF-8, strict JSON, the top-level keys. */
#ifndef RL_ENVELOPE_H
#define RL_ENVELOPE_H

#include <stddef.h>
#include <sys/types.h>

/* At most this many containers are open at once (the top-level one counts); the same bound as
   RL_JSON_MAX_DEPTH, so that what the hub accepts every plugin can decode again. */
#define RL_ENV_MAX_DEPTH 100

/* Bytes [off, off + len) of the frame. Absent fields are {0, 0}. */
typedef struct rl_env_span {
    size_t off, len;
} rl_env_span;

typedef enum rl_env_status {
    RL_ENV_OK = 0,          /* one valid JSON object */
    RL_ENV_NOT_OBJECT = 1,  /* one valid JSON value that is not an object */
    RL_ENV_INCOMPLETE = -1, /* a proper prefix of a valid frame (also: empty or only whitespace) */
    RL_ENV_INVALID = -2,    /* not JSON as the node reads it; valid UTF-8 as far as it goes */
    RL_ENV_BAD_UTF8 = -3,   /* invalid UTF-8 somewhere, whatever else is wrong (close with 1007) */
} rl_env_status;

typedef struct rl_envelope {
    unsigned has_type : 1;       /* the top-level object has a member "type" */
    unsigned type_is_string : 1; /* ... whose value is a string */
    unsigned type_escaped : 1;   /* ... holding at least one backslash escape (rl_env_unescape) */
    unsigned has_request_id : 1; /* the top-level object has a member "request_id" */
    /* The frame ends inside a UTF-8 sequence that is valid so far (only with INCOMPLETE or
       INVALID). A caller holding a whole frame treats this as RL_ENV_BAD_UTF8. */
    unsigned utf8_cut : 1;
    rl_env_span type;       /* the string's content between the quotes, still escaped, when
                               type_is_string; else the raw JSON value */
    rl_env_span request_id; /* the raw JSON value of the first "request_id", quotes included, to
                               echo byte for byte */
    /* Static text for INCOMPLETE, INVALID and BAD_UTF8, NULL otherwise: "truncated", "truncated
       UTF-8", "invalid UTF-8", "trailing data", "depth", "duplicate key", "control character in
       string", "\\u0000 in string", "bad escape", "unpaired surrogate", "bad number", "bad
       literal", "unexpected byte". */
    const char *why;
    size_t err_off; /* where the problem is (for INCOMPLETE: len, or where the cut sequence starts) */
} rl_envelope;

/* Scans buf[0..len) (no NUL needed; nothing read past len; NULL when len is 0) in one pass, without allocating or
   recursing, and fills *env (reset first; its spans point into buf and are set only with
   RL_ENV_OK). Stricter than RFC 8259 on purpose: a \u0000 escape (plugins read C strings), more
   than RL_ENV_MAX_DEPTH open containers, and a repeated top-level "type" or "conn_pid" member
   are invalid. Keys are compared unescaped ("typ\u0065" is "type"); other repeated keys are
   allowed, and keys of nested objects are not looked at. Returns an rl_env_status. */
int rl_env_scan(const char *buf, size_t len, rl_envelope *env);

/* Unescapes the content of a JSON string (a span rl_env_scan gave) into out, NUL-terminated, the
   surrogate pairs of \u escapes joined into one UTF-8 sequence. Returns the length without the
   NUL, or -1 when it (and its NUL) does not fit in cap bytes or an escape is malformed, lone
   surrogates and \u0000 included. Other bytes are copied as they are: their UTF-8 and the
   absence of raw quotes and control bytes are rl_env_scan's to check. */
ssize_t rl_env_unescape(const char *s, size_t len, char *out, size_t cap);

/* 1 when s[0..len) is valid UTF-8 (no overlong forms, no surrogates, nothing past U+10FFFF, no
   sequence cut by the end), else 0. */
int rl_env_utf8_valid(const char *s, size_t len);

#endif
