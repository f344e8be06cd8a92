/* The node's configuration: reads the spec's YAML entries file, expands ${VAR}, applies RELAY_*. */
#include "rl_config.h"

#include <ctype.h>
#include <errno.h>
#include <fcntl.h>
#include <limits.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>
#include <sys/stat.h>
#include <unistd.h>
#include <yaml.h>

#include "rl_log.h"
#include "rl_urlmatch.h"
#include "rl_version.h"

/* Bounds on what a config file may hold. The file is trusted more than a peer, but a mistake
   (a binary file, a runaway ${VAR}) should fail with a message, not eat the machine. */
#define CFG_MAX_FILE_BYTES  (1u << 20)  /* the YAML file itself */
#define CFG_MAX_VALUE_BYTES (64u << 10) /* one scalar after ${VAR} expansion */
#define CFG_MAX_ENTRIES     4096
#define CFG_MAX_PLUGINS     256
#define CFG_MAX_LIST        256         /* modules, allowed_origins */
#define CFG_MAX_NAME        128         /* entry names, namespace, command prefixes */
#define CFG_MAX_HOST        255
#define CFG_MAX_MS          (366ULL * 24 * 3600 * 1000) /* longest duration a setting takes */
#define CFG_MAX_HUB_QUEUE   10000000ULL /* max_connections_per_user * queue_multiplier */
#define CFG_MAX_SOURCE_SCAN (4u << 20)  /* a plugin source larger than this is not scanned for its method */

#define MOD "config"

/* ------------------------------------------------------------------------------------------ */
/* Durations */

typedef struct dur_unit {
    const char *name;
    uint64_t ns;
} dur_unit;

/* Longer names first so "ms" is not read as "m" followed by junk. */
static const dur_unit dur_units[] = {
    {"ns", 1ULL},
    {"us", 1000ULL},
    {"\xc2\xb5s", 1000ULL}, /* U+00B5 micro sign */
    {"\xce\xbcs", 1000ULL}, /* U+03BC greek mu */
    {"ms", 1000000ULL},
    {"s", 1000000000ULL},
    {"m", 60ULL * 1000000000ULL},
    {"h", 3600ULL * 1000000000ULL},
};

/* Go's time.ParseDuration grammar without a sign; a string that is only a number is seconds.
   Computed in nanoseconds (so "1.5s" and "1h30m" are exact), returned in milliseconds; a positive
   duration under 1 ms rounds up to 1 ms rather than turning into 0 (which often means "off"). */
int rl_duration_parse(const char *s, uint64_t *ms)
{
    if (!s || !*s)
        return -EINVAL;
    uint64_t total = 0;
    const char *p = s;
    while (*p) {
        uint64_t whole = 0;
        int digits = 0;
        for (; *p >= '0' && *p <= '9'; p++, digits++) {
            if (whole > (UINT64_MAX - 9) / 10)
                return -EINVAL;
            whole = whole * 10 + (uint64_t)(*p - '0');
        }
        const char *frac = NULL;
        int nfrac = 0;
        if (*p == '.') {
            frac = ++p;
            for (; *p >= '0' && *p <= '9'; p++)
                nfrac++;
        }
        if (digits + nfrac == 0)
            return -EINVAL;
        uint64_t unit = 0;
        for (size_t i = 0; i < sizeof dur_units / sizeof dur_units[0]; i++) {
            size_t n = strlen(dur_units[i].name);
            if (strncmp(p, dur_units[i].name, n) == 0) {
                unit = dur_units[i].ns;
                p += n;
                break;
            }
        }
        if (unit == 0) {
            if (*p != '\0' || total != 0 || p - s != (digits + nfrac + (frac ? 1 : 0)))
                return -EINVAL;
            unit = dur_units[5].ns; /* bare number: seconds */
        }
        if (whole != 0 && unit > UINT64_MAX / whole)
            return -EINVAL;
        uint64_t add = whole * unit;
        uint64_t scale = unit;
        for (int i = 0; i < nfrac; i++) { /* digits below 1 ns are dropped */
            scale /= 10;
            add += (uint64_t)(frac[i] - '0') * scale;
        }
        if (add > UINT64_MAX - total)
            return -EINVAL;
        total += add;
    }
    uint64_t r = total / 1000000ULL;
    if (r == 0 && total != 0)
        r = 1;
    *ms = r;
    return 0;
}

/* ------------------------------------------------------------------------------------------ */
/* Typed settings: one table per place settings come from (relay.node, its auth map, the
   ns.dependency parameters); RELAY_* variables name rows of these tables. */

typedef enum {
    F_STR,      /* char *; "" means unset (NULL) unless a check refuses it */
    F_INT,      /* int in [min, max] */
    F_SIZE,     /* size_t in [min, max]; K/KiB, M/MiB, G/GiB suffixes allowed */
    F_U64,      /* uint64_t in [min, max] */
    F_DUR,      /* uint64_t milliseconds in [min, max] */
    F_BOOL,     /* int 0/1 */
    F_LISTEN,   /* "host:port" into listen_host/listen_port */
    F_AUTHMODE, /* jwt | insecure */
    F_PATH,     /* char *; a readable regular file, stored as an absolute path; "" = unset */
    F_STRLIST,  /* char ** at off, size_t count at off_n (YAML list only) */
    F_MAP,      /* a nested map: the rows of the submaps table under this key (YAML only) */
    F_HOSTPORT, /* "host:port" into char * at off and int at off_n */
} cfg_type;

typedef int (*cfg_check_fn)(const char *v, char *why, size_t whylen);

typedef struct cfg_field {
    const char *key;
    cfg_type type;
    size_t off;
    size_t off_n;
    uint64_t min, max;
    int required;       /* ns.dependency parameters only */
    cfg_check_fn check; /* F_STR: refuses a value with a reason */
} cfg_field;

static int check_nonempty(const char *v, char *why, size_t whylen)
{
    if (*v)
        return 0;
    snprintf(why, whylen, "must not be empty");
    return -EINVAL;
}

static int check_ws_path(const char *v, char *why, size_t whylen)
{
    if (v[0] == '/' && strlen(v) < 256 && !strpbrk(v, " ?#\t\r\n"))
        return 0;
    snprintf(why, whylen, "'%s' is not a path starting with '/'", v);
    return -EINVAL;
}

/* Only the scheme is checked here; the cluster module parses the rest when it connects. */
static int check_redis_url(const char *v, char *why, size_t whylen)
{
    if (!*v || strncasecmp(v, "redis://", 8) == 0 || strncasecmp(v, "redis+sentinel://", 17) == 0)
        return 0;
    snprintf(why, whylen, "'%s' is not a redis:// or redis+sentinel:// URL", v);
    return -EINVAL;
}

/* "namespace:name", e.g. app:processes or app.security:user_scope. */
static int check_ref(const char *v, char *why, size_t whylen)
{
    const char *colon = strrchr(v, ':');
    if (colon && colon != v && colon[1] && !strchr(v, ' '))
        return 0;
    snprintf(why, whylen, "'%s' is not namespace:name", v);
    return -EINVAL;
}

/* http.allow items: patterns as rl_urlmatch.h defines them. */
static int check_url_pattern(const char *v, char *why, size_t whylen)
{
    return rl_url_pattern_check(v, why, whylen);
}

/* connect_hook.url: an http:// or https:// URL without credentials. */
static int check_hook_url(const char *v, char *why, size_t whylen)
{
    if (!*v)
        return 0;
    if ((strncasecmp(v, "http://", 7) == 0 || strncasecmp(v, "https://", 8) == 0) &&
        !strpbrk(v, " \t\r\n@"))
        return 0;
    snprintf(why, whylen, "'%s' is not an http:// or https:// URL (without user@)", v);
    return -EINVAL;
}

static int check_on_failure(const char *v, char *why, size_t whylen)
{
    if (strcmp(v, "refuse") == 0 || strcmp(v, "accept") == 0)
        return 0;
    snprintf(why, whylen, "'%s' is not refuse or accept", v);
    return -EINVAL;
}

/* connect_hook.pass_headers items: header names (RFC 9110 token characters). */
static int check_header_name(const char *v, char *why, size_t whylen)
{
    for (const char *p = v; *p; p++)
        if (!isalnum((unsigned char)*p) && !strchr("!#$%&'*+-.^_`|~", *p)) {
            snprintf(why, whylen, "'%s' is not a header name", v);
            return -EINVAL;
        }
    return 0;
}

#define OFF(f) offsetof(rl_config, f)

static const cfg_field param_fields[] = {
    {"application_host", F_STR, OFF(application_host), 0, 0, 0, 1, check_ref},
    {"env_storage", F_STR, OFF(env_storage), 0, 0, 0, 0, check_ref},
    {"user_security_scope", F_STR, OFF(user_security_scope), 0, 0, 0, 1, check_ref},
    {"max_connections_per_user", F_INT, OFF(max_connections_per_user), 0, 1, 100000, 0, NULL},
    {"queue_multiplier", F_INT, OFF(queue_multiplier), 0, 1, 100000, 0, NULL},
    {"user_hub_inactivity_timeout", F_DUR, OFF(user_hub_inactivity_timeout_ms), 0, 1, CFG_MAX_MS, 0,
     NULL},
    {NULL, F_STR, 0, 0, 0, 0, 0, NULL},
};

static const cfg_field auth_fields[] = {
    {"mode", F_AUTHMODE, OFF(auth_mode), 0, 0, 0, 0, NULL},
    {"secret", F_STR, OFF(jwt_secret), 0, 0, 0, 0, NULL},
    {"issuer", F_STR, OFF(jwt_issuer), 0, 0, 0, 0, NULL},
    {"audience", F_STR, OFF(jwt_audience), 0, 0, 0, 0, NULL},
    {NULL, F_STR, 0, 0, 0, 0, 0, NULL},
};

/* relay.node tls: both or neither (checked by entry_node and config_check). In the file, relative
   paths are against the file's directory; from RELAY_TLS_* against the working directory. */
static const cfg_field tls_fields[] = {
    {"cert", F_PATH, OFF(tls_cert), 0, 0, 0, 0, NULL},
    {"key", F_PATH, OFF(tls_key), 0, 0, 0, 0, NULL},
    {NULL, F_STR, 0, 0, 0, 0, 0, NULL},
};

/* relay.node api: the server API; listen turns it on, and then keys are required. */
static const cfg_field api_fields[] = {
    {"listen", F_HOSTPORT, OFF(api_host), OFF(api_port), 0, 0, 0, NULL},
    {"keys", F_STRLIST, OFF(api_keys), OFF(napi_keys), 0, 0, 0, NULL},
    {"max_body", F_SIZE, OFF(api_max_body), 0, 64, 1ULL << 30, 0, NULL},
    {"rate", F_U64, OFF(api_rate), 0, 0, 1000000, 0, NULL},
    {"burst", F_U64, OFF(api_burst), 0, 1, 1000000, 0, NULL},
    {"idempotency_ttl", F_DUR, OFF(api_idempotency_ttl_ms), 0, 1000, 7ULL * 86400 * 1000, 0, NULL},
    {"cors_origins", F_STRLIST, OFF(api_cors_origins), OFF(napi_cors_origins), 0, 0, 0, NULL},
    {"stream", F_BOOL, OFF(api_stream), 0, 0, 0, 0, NULL},
    {"stream_claim_after", F_DUR, OFF(api_stream_claim_after_ms), 0, 6000, 86400 * 1000, 0, NULL},
    {"stream_result_ttl", F_DUR, OFF(api_stream_result_ttl_ms), 0, 1000, 30ULL * 86400 * 1000, 0,
     NULL},
    {"stream_maxlen", F_U64, OFF(api_stream_maxlen), 0, 100, 100000000, 0, NULL},
    {NULL, F_STR, 0, 0, 0, 0, 0, NULL},
};

/* relay.node http: what plugins may fetch, and the bounds of each request. */
static const cfg_field http_fields[] = {
    {"allow", F_STRLIST, OFF(http_allow), OFF(nhttp_allow), 0, 0, 0, check_url_pattern},
    {"timeout", F_DUR, OFF(http_timeout_ms), 0, 1, 3600ULL * 1000, 0, NULL},
    {"max_response_bytes", F_SIZE, OFF(http_max_response), 0, 1, 1ULL << 30, 0, NULL},
    {"max_request_bytes", F_SIZE, OFF(http_max_request), 0, 0, 1ULL << 30, 0, NULL},
    {"max_concurrent", F_SIZE, OFF(http_max_per_instance), 0, 1, 1024, 0, NULL},
    {"max_concurrent_node", F_SIZE, OFF(http_max_node), 0, 1, 100000, 0, NULL},
    {NULL, F_STR, 0, 0, 0, 0, 0, NULL},
};

/* relay.node connect_hook: the backend decides whether a user may join (docs/configuration.md). */
static const cfg_field hook_fields[] = {
    {"url", F_STR, OFF(hook_url), 0, 0, 0, 0, check_hook_url},
    {"timeout", F_DUR, OFF(hook_timeout_ms), 0, 1, CFG_MAX_MS, 0, NULL},
    {"on_failure", F_STR, OFF(hook_on_failure), 0, 0, 0, 0, check_on_failure},
    {"pass_headers", F_STRLIST, OFF(hook_headers), OFF(nhook_headers), 0, 0, 0, check_header_name},
    {NULL, F_STR, 0, 0, 0, 0, 0, NULL},
};

static const cfg_field node_fields[] = {
    {"listen", F_LISTEN, 0, 0, 0, 0, 0, NULL},
    {"ws_path", F_STR, OFF(ws_path), 0, 0, 0, 0, check_ws_path},
    {"node_id", F_STR, OFF(node_id), 0, 0, 0, 0, check_nonempty},
    {"redis", F_STR, OFF(redis_url), 0, 0, 0, 0, check_redis_url},
    {"redis_prefix", F_STR, OFF(redis_prefix), 0, 0, 0, 0, check_nonempty},
    {"auth", F_MAP, 0, 0, 0, 0, 0, NULL},
    {"tls", F_MAP, 0, 0, 0, 0, 0, NULL},
    {"api", F_MAP, 0, 0, 0, 0, 0, NULL},
    {"http", F_MAP, 0, 0, 0, 0, 0, NULL},
    {"connect_hook", F_MAP, 0, 0, 0, 0, 0, NULL},
    {"allowed_origins", F_STRLIST, OFF(allowed_origins), OFF(norigins), 0, 0, 0, NULL},
    {"max_message_bytes", F_SIZE, OFF(max_message_bytes), 0, 16, 1ULL << 30, 0, NULL},
    {"max_outbound_bytes", F_SIZE, OFF(max_outbound_bytes), 0, 1024, 1ULL << 32, 0, NULL},
    {"ping_interval", F_DUR, OFF(ping_interval_ms), 0, 0, CFG_MAX_MS, 0, NULL}, /* 0 = no pings */
    {"ping_timeout", F_DUR, OFF(ping_timeout_ms), 0, 1, CFG_MAX_MS, 0, NULL},
    {"handshake_timeout", F_DUR, OFF(handshake_timeout_ms), 0, 1, CFG_MAX_MS, 0, NULL},
    {"drain_timeout", F_DUR, OFF(drain_timeout_ms), 0, 0, CFG_MAX_MS, 0, NULL},
    {"node_ttl", F_DUR, OFF(node_ttl_ms), 0, 100, CFG_MAX_MS, 0, NULL},
    {"lease_ttl", F_DUR, OFF(lease_ttl_ms), 0, 100, CFG_MAX_MS, 0, NULL},
    {"redis_inflight_max", F_INT, OFF(redis_inflight_max), 0, 2, 1000000, 0, NULL},
    {"console", F_BOOL, OFF(console), 0, 0, 0, 0, NULL},
    {"lua_instruction_budget", F_U64, OFF(lua_instruction_budget), 0, 1000, 1ULL << 40, 0, NULL},
    {"lua_memory_limit", F_SIZE, OFF(lua_memory_limit), 0, 1ULL << 20, 1ULL << 40, 0, NULL},
    {"plugin_memory_limit", F_SIZE, OFF(plugin_memory_limit), 0, 0, 1ULL << 40, 0, NULL},
    {"plugin_queue", F_SIZE, OFF(plugin_queue), 0, 1, 1000000, 0, NULL},
    {"lua_result_max", F_SIZE, OFF(lua_result_max), 0, 1024, 1ULL << 31, 0, NULL},
    {"plugin_max_children", F_SIZE, OFF(plugin_max_children), 0, 0, 1000000, 0, NULL},
    {"plugin_max_timers", F_SIZE, OFF(plugin_max_timers), 0, 0, 1000000, 0, NULL},
    {"plugin_max_channels", F_SIZE, OFF(plugin_max_channels), 0, 0, 10000000, 0, NULL},
    {"plugin_user_max_processes", F_SIZE, OFF(plugin_user_max_processes), 0, 1, 30000, 0, NULL},
    {"plugin_user_max_timers", F_SIZE, OFF(plugin_user_max_timers), 0, 0, 30000, 0, NULL},
    {"plugin_user_max_channels", F_SIZE, OFF(plugin_user_max_channels), 0, 0, 100000000, 0, NULL},
    {"pg_max_scopes", F_SIZE, OFF(pg_max_scopes), 0, 0, 10000, 0, NULL},
    {"pg_max_groups", F_SIZE, OFF(pg_max_groups), 0, 0, 100000, 0, NULL},
    {"pg_max_members", F_SIZE, OFF(pg_max_members), 0, 0, 10000000, 0, NULL},
    {NULL, F_STR, 0, 0, 0, 0, 0, NULL},
};

/* The table each F_MAP key of relay.node reads its nested map with. */
static const struct {
    const char *key;
    const cfg_field *table;
} submaps[] = {
    {"auth", auth_fields},
    {"tls", tls_fields},
    {"api", api_fields},
    {"http", http_fields},
    {"connect_hook", hook_fields},
};

typedef struct cfg_env_var {
    const char *var;
    const cfg_field *table;
    const char *key;
} cfg_env_var;

static const cfg_env_var env_vars[] = {
    {"RELAY_LISTEN", node_fields, "listen"},
    {"RELAY_NODE_ID", node_fields, "node_id"},
    {"RELAY_REDIS_URL", node_fields, "redis"},
    {"RELAY_AUTH_MODE", auth_fields, "mode"},
    {"RELAY_JWT_SECRET", auth_fields, "secret"},
    {"RELAY_TLS_CERT", tls_fields, "cert"},
    {"RELAY_TLS_KEY", tls_fields, "key"},
    {"RELAY_MAX_CONNECTIONS_PER_USER", param_fields, "max_connections_per_user"},
    {"RELAY_QUEUE_MULTIPLIER", param_fields, "queue_multiplier"},
    {"RELAY_USER_HUB_INACTIVITY_TIMEOUT", param_fields, "user_hub_inactivity_timeout"},
};

static const cfg_field *field_find(const cfg_field *table, const char *key)
{
    for (; table->key; table++)
        if (strcmp(table->key, key) == 0)
            return table;
    return NULL;
}

/* Digits only, no sign, no spaces; 0 or -EINVAL (also on overflow). */
static int parse_u64(const char *s, uint64_t *out)
{
    uint64_t v = 0;
    if (!*s)
        return -EINVAL;
    for (; *s; s++) {
        if (*s < '0' || *s > '9' || v > (UINT64_MAX - 9) / 10)
            return -EINVAL;
        v = v * 10 + (uint64_t)(*s - '0');
    }
    *out = v;
    return 0;
}

static const struct {
    const char *suffix;
    uint64_t mult;
} size_suffixes[] = {
    {"KiB", 1ULL << 10}, {"K", 1ULL << 10}, {"MiB", 1ULL << 20},
    {"M", 1ULL << 20},   {"GiB", 1ULL << 30}, {"G", 1ULL << 30},
};

/* A byte count: digits, optionally followed by a binary suffix ("64KiB", "1M"). */
static int parse_size(const char *s, uint64_t *out)
{
    char digits[32];
    size_t n = strspn(s, "0123456789");
    if (n == 0 || n >= sizeof digits)
        return -EINVAL;
    memcpy(digits, s, n);
    digits[n] = '\0';
    uint64_t v, mult = 1;
    if (parse_u64(digits, &v) < 0)
        return -EINVAL;
    if (s[n]) {
        mult = 0;
        for (size_t i = 0; i < sizeof size_suffixes / sizeof size_suffixes[0]; i++)
            if (strcmp(s + n, size_suffixes[i].suffix) == 0)
                mult = size_suffixes[i].mult;
        if (mult == 0 || (v && mult > UINT64_MAX / v))
            return -EINVAL;
    }
    *out = v * mult;
    return 0;
}

/* YAML 1.1 booleans, which is what people write in YAML files. */
static int parse_bool(const char *s, int *out)
{
    static const char *const yes[] = {"true", "yes", "on"};
    static const char *const no[] = {"false", "no", "off"};
    for (int i = 0; i < 3; i++) {
        if (strcasecmp(s, yes[i]) == 0) {
            *out = 1;
            return 0;
        }
        if (strcasecmp(s, no[i]) == 0) {
            *out = 0;
            return 0;
        }
    }
    return -EINVAL;
}

/* "host:port", "[v6addr]:port" or ":port" (all interfaces). On success *host is malloc'd. */
static int parse_hostport(const char *s, char **host, int *port, char *why, size_t whylen)
{
    const char *colon, *hs = s;
    size_t hl;
    if (s[0] == '[') {
        const char *close = strchr(s, ']');
        if (!close || close[1] != ':') {
            snprintf(why, whylen, "'%s' is not [host]:port", s);
            return -EINVAL;
        }
        hs = s + 1;
        hl = (size_t)(close - hs);
        colon = close + 1;
    } else {
        colon = strrchr(s, ':');
        if (!colon || memchr(s, ':', (size_t)(colon - s))) {
            snprintf(why, whylen, "'%s' is not host:port", s);
            return -EINVAL;
        }
        hl = (size_t)(colon - s);
    }
    uint64_t p;
    if (parse_u64(colon + 1, &p) < 0 || p < 1 || p > 65535) {
        snprintf(why, whylen, "'%s': port must be 1..65535", s);
        return -EINVAL;
    }
    if (hl > CFG_MAX_HOST || memchr(hs, ' ', hl)) {
        snprintf(why, whylen, "'%s': bad host", s);
        return -EINVAL;
    }
    char *h = hl ? strndup(hs, hl) : strdup("0.0.0.0");
    if (!h) {
        snprintf(why, whylen, "out of memory");
        return -ENOMEM;
    }
    *host = h;
    *port = (int)p;
    return 0;
}

/* Checks path names a regular file this process can open for reading, and returns a malloc'd
   absolute copy in *out (the joined path if realpath fails for a reason open did not hit). On
   error writes "PATH: reason" into why. */
static int file_resolve(const char *path, char **out, char *why, size_t whylen)
{
    char resolved[PATH_MAX];
    int fd = open(path, O_RDONLY | O_CLOEXEC | O_NONBLOCK); /* a FIFO must not block the load */
    struct stat st;
    if (fd < 0) {
        snprintf(why, whylen, "%s: %s", path, strerror(errno));
        return -EINVAL;
    }
    int rc = fstat(fd, &st);
    close(fd);
    if (rc < 0 || !S_ISREG(st.st_mode)) {
        snprintf(why, whylen, "%s: not a regular file", path);
        return -EINVAL;
    }
    if (!(*out = strdup(realpath(path, resolved) ? resolved : path))) {
        snprintf(why, whylen, "out of memory");
        return -ENOMEM;
    }
    return 0;
}

int rl_config_set_listen(rl_config *c, const char *hostport, char *err, size_t errlen)
{
    char why[320];
    char *host;
    int port;
    int rc = parse_hostport(hostport, &host, &port, why, sizeof why);
    if (rc < 0) {
        snprintf(err, errlen, "listen: %s", why);
        return rc;
    }
    free(c->listen_host);
    c->listen_host = host;
    c->listen_port = port;
    return 0;
}

/* Sets the scalar-valued field f of c from s. On error writes the reason (without the key) into
   why. Strings are copied; c keeps owning what it owned before for other fields. */
static int field_set(rl_config *c, const cfg_field *f, const char *s, char *why, size_t whylen)
{
    char *base = (char *)c;
    uint64_t v;
    int b;
    switch (f->type) {
    case F_STR: {
        if (f->check && f->check(s, why, whylen) < 0)
            return -EINVAL;
        char *copy = NULL;
        if (*s && !(copy = strdup(s))) {
            snprintf(why, whylen, "out of memory");
            return -ENOMEM;
        }
        char **slot = (char **)(base + f->off);
        free(*slot);
        *slot = copy;
        return 0;
    }
    case F_PATH: {
        char *abs = NULL;
        int rc = *s ? file_resolve(s, &abs, why, whylen) : 0;
        if (rc < 0)
            return rc;
        char **slot = (char **)(base + f->off);
        free(*slot);
        *slot = abs;
        return 0;
    }
    case F_INT:
    case F_U64:
    case F_SIZE:
        if ((f->type == F_SIZE ? parse_size(s, &v) : parse_u64(s, &v)) < 0) {
            snprintf(why, whylen, "'%s' is not %s", s,
                     f->type == F_SIZE ? "a byte count" : "a non-negative integer");
            return -EINVAL;
        }
        if (v < f->min || v > f->max) {
            snprintf(why, whylen, "%llu is out of range %llu..%llu", (unsigned long long)v,
                     (unsigned long long)f->min, (unsigned long long)f->max);
            return -EINVAL;
        }
        if (f->type == F_INT)
            *(int *)(base + f->off) = (int)v;
        else if (f->type == F_SIZE)
            *(size_t *)(base + f->off) = (size_t)v;
        else
            *(uint64_t *)(base + f->off) = v;
        return 0;
    case F_DUR:
        if (rl_duration_parse(s, &v) < 0) {
            snprintf(why, whylen, "'%s' is not a duration (like 150ms, 2s, 1h30m)", s);
            return -EINVAL;
        }
        if (v < f->min || v > f->max) {
            snprintf(why, whylen, "'%s' is out of range (%llu ms..%llu ms)", s,
                     (unsigned long long)f->min, (unsigned long long)f->max);
            return -EINVAL;
        }
        *(uint64_t *)(base + f->off) = v;
        return 0;
    case F_BOOL:
        if (parse_bool(s, &b) < 0) {
            snprintf(why, whylen, "'%s' is not true or false", s);
            return -EINVAL;
        }
        *(int *)(base + f->off) = b;
        return 0;
    case F_LISTEN: {
        char *host;
        int port;
        int rc = parse_hostport(s, &host, &port, why, whylen);
        if (rc < 0)
            return rc;
        free(c->listen_host);
        c->listen_host = host;
        c->listen_port = port;
        return 0;
    }
    case F_HOSTPORT: {
        char *host;
        int port;
        int rc = parse_hostport(s, &host, &port, why, whylen);
        if (rc < 0)
            return rc;
        free(*(char **)(base + f->off));
        *(char **)(base + f->off) = host;
        *(int *)(base + f->off_n) = port;
        return 0;
    }
    case F_AUTHMODE:
        if (strcasecmp(s, "jwt") == 0)
            c->auth_mode = RL_AUTH_JWT;
        else if (strcasecmp(s, "insecure") == 0)
            c->auth_mode = RL_AUTH_INSECURE;
        else {
            snprintf(why, whylen, "'%s' is not jwt or insecure", s);
            return -EINVAL;
        }
        return 0;
    case F_STRLIST:
    case F_MAP:
        break;
    }
    snprintf(why, whylen, "expected a %s", f->type == F_MAP ? "map" : "list");
    return -EINVAL;
}

/* Limits that involve several settings; checked after the file and after the environment. */
static int config_check(const rl_config *c, char *why, size_t whylen)
{
    if (!c->listen_host || !c->ws_path || !c->node_id || !c->redis_prefix) {
        snprintf(why, whylen, "out of memory");
        return -ENOMEM;
    }
    if (!c->tls_cert != !c->tls_key) {
        snprintf(why, whylen, "tls.cert and tls.key must be given together (only tls.%s is set)",
                 c->tls_cert ? "cert" : "key");
        return -EINVAL;
    }
    if (c->api_host && !c->napi_keys) {
        snprintf(why, whylen, "api.listen is set but api.keys is empty: the API would be open");
        return -EINVAL;
    }
    for (size_t i = 0; i < c->napi_keys; i++)
        if (strlen(c->api_keys[i]) < 16) {
            snprintf(why, whylen, "api.keys: key %zu is shorter than 16 bytes", i + 1);
            return -EINVAL;
        }
    for (size_t i = 0; i < c->napi_cors_origins; i++) {
        const char *o = c->api_cors_origins[i], *host = strstr(o, "://");
        if (!host || (strncmp(o, "http://", 7) != 0 && strncmp(o, "https://", 8) != 0) ||
            !host[3] || strpbrk(host + 3, "/ ?#*") || strlen(o) > 200) {
            snprintf(why, whylen, "api.cors_origins: '%s' is not an origin (scheme://host[:port])", o);
            return -EINVAL;
        }
    }
    if (c->api_host && c->api_port == c->listen_port) {
        snprintf(why, whylen, "api.listen uses the port of listen (%d)", c->listen_port);
        return -EINVAL;
    }
    if ((uint64_t)c->max_connections_per_user * (uint64_t)c->queue_multiplier > CFG_MAX_HUB_QUEUE) {
        snprintf(why, whylen,
                 "max_connections_per_user * queue_multiplier (%d * %d) is over %llu",
                 c->max_connections_per_user, c->queue_multiplier,
                 (unsigned long long)CFG_MAX_HUB_QUEUE);
        return -EINVAL;
    }
    return 0;
}

/* ------------------------------------------------------------------------------------------ */
/* Defaults, environment, free */

void rl_config_defaults(rl_config *c)
{
    memset(c, 0, sizeof *c);
    c->max_connections_per_user = 5;
    c->queue_multiplier = 100;
    c->user_hub_inactivity_timeout_ms = 7200ULL * 1000;
    /* A failed strdup leaves NULL; load and apply_env report it as out of memory. */
    c->listen_host = strdup("127.0.0.1");
    c->listen_port = 8080;
    c->ws_path = strdup("/ws");
    c->node_id = strdup("n1");
    c->redis_prefix = strdup("relay:");
    c->auth_mode = RL_AUTH_JWT;
    c->max_message_bytes = 65536;
    c->max_outbound_bytes = 1u << 20;
    c->ping_interval_ms = 30000;
    c->ping_timeout_ms = 60000;
    c->handshake_timeout_ms = 10000;
    c->drain_timeout_ms = 10000;
    c->node_ttl_ms = 5000;
    c->lease_ttl_ms = 5000;
    c->redis_inflight_max = 2048;
    c->console = 0;
    c->lua_instruction_budget = 10000000;
    c->lua_memory_limit = 256u << 20;
    c->plugin_memory_limit = 16u << 20;
    c->plugin_queue = 1024;
    c->lua_result_max = 16u << 20;
    c->plugin_max_children = 64;
    c->plugin_max_timers = 256;
    c->plugin_max_channels = 10000;
    c->plugin_user_max_processes = 256;
    c->plugin_user_max_timers = 512;
    c->plugin_user_max_channels = 20000;
    c->pg_max_scopes = 16;
    c->pg_max_groups = 64;
    c->pg_max_members = 10000;
    c->api_max_body = 1u << 20;
    c->api_rate = 100;
    c->api_burst = 200;
    c->api_idempotency_ttl_ms = 600000;
    c->api_stream_claim_after_ms = 30000;
    c->api_stream_result_ttl_ms = 3600000;
    c->api_stream_maxlen = 100000;
    c->http_timeout_ms = 10000;
    c->http_max_response = 1u << 20;
    c->http_max_request = 1u << 20;
    c->http_max_per_instance = 4;
    c->http_max_node = 64;
    c->hook_timeout_ms = 2000;
}

/* An empty RELAY_* variable counts as unset, except RELAY_REDIS_URL="" which forces standalone. */
int rl_config_apply_env(rl_config *c, char *err, size_t errlen)
{
    char why[384];
    for (size_t i = 0; i < sizeof env_vars / sizeof env_vars[0]; i++) {
        const char *v = getenv(env_vars[i].var);
        const cfg_field *f = field_find(env_vars[i].table, env_vars[i].key);
        if (!v || (!*v && strcmp(env_vars[i].var, "RELAY_REDIS_URL") != 0))
            continue;
        if (strlen(v) > CFG_MAX_VALUE_BYTES) {
            snprintf(err, errlen, "environment %s: value too long", env_vars[i].var);
            return -EINVAL;
        }
        int rc = field_set(c, f, v, why, sizeof why);
        if (rc < 0) {
            snprintf(err, errlen, "environment %s: %s", env_vars[i].var, why);
            return rc;
        }
    }
    int rc = config_check(c, why, sizeof why);
    if (rc < 0)
        snprintf(err, errlen, "environment: %s", why);
    return rc;
}

static void plugin_free(rl_plugin_def *p)
{
    free(p->name);
    free(p->id);
    free(p->prefix);
    free(p->default_host);
    free(p->source_path);
    free(p->method);
    for (size_t i = 0; i < p->nmodules; i++)
        free(p->modules[i]);
    free(p->modules);
    for (size_t i = 0; i < p->nimports; i++) {
        free(p->import_names[i]);
        free(p->import_ids[i]);
    }
    free(p->import_names);
    free(p->import_ids);
    memset(p, 0, sizeof *p);
}

static void sec_free(rl_config *c);

void rl_config_free(rl_config *c)
{
    sec_free(c);
    free(c->path);
    free(c->namespace_);
    free(c->application_host);
    free(c->env_storage);
    free(c->user_security_scope);
    for (size_t i = 0; i < c->nplugins; i++)
        plugin_free(&c->plugins[i]);
    free(c->plugins);
    for (size_t i = 0; i < c->nlua_entries; i++)
        plugin_free(&c->lua_entries[i]);
    free(c->lua_entries);
    for (size_t i = 0; i < c->nenv_vars; i++) {
        free(c->env_vars[i].id);
        free(c->env_vars[i].name);
        free(c->env_vars[i].key);
        free(c->env_vars[i].deflt);
        free(c->env_vars[i].storage);
    }
    free(c->env_vars);
    free(c->listen_host);
    free(c->ws_path);
    free(c->node_id);
    free(c->redis_url);
    free(c->redis_prefix);
    free(c->jwt_secret);
    free(c->jwt_issuer);
    free(c->jwt_audience);
    free(c->tls_cert);
    free(c->tls_key);
    for (size_t i = 0; i < c->norigins; i++)
        free(c->allowed_origins[i]);
    free(c->allowed_origins);
    free(c->api_host);
    for (size_t i = 0; i < c->napi_keys; i++)
        free(c->api_keys[i]);
    free(c->api_keys);
    for (size_t i = 0; i < c->napi_cors_origins; i++)
        free(c->api_cors_origins[i]);
    free(c->api_cors_origins);
    for (size_t i = 0; i < c->nhttp_allow; i++)
        free(c->http_allow[i]);
    free(c->http_allow);
    free(c->hook_url);
    free(c->hook_on_failure);
    for (size_t i = 0; i < c->nhook_headers; i++)
        free(c->hook_headers[i]);
    free(c->hook_headers);
    memset(c, 0, sizeof *c);
}

/* ------------------------------------------------------------------------------------------ */
/* The YAML file */

typedef struct cfg_entry_ref {
    const char *name; /* both point into the loaded document */
    const char *kind;
} cfg_entry_ref;

typedef struct cfg_loader {
    rl_config *c;
    const char *path;
    const char *entry; /* name of the entry being read, NULL outside entries */
    char dir[PATH_MAX];
    yaml_document_t doc;
    cfg_entry_ref *entries;
    size_t nentries;
    const char *dep_entry;  /* the ns.dependency entry seen, if any */
    const char *node_entry; /* the relay.node entry seen, if any */
    char *err;
    size_t errlen;
} cfg_loader;

static int cfg_fail(cfg_loader *ld, int rc, const char *fmt, ...)
    __attribute__((format(printf, 3, 4)));

/* Writes "FILE: entry NAME: reason" (or "FILE: reason") and returns rc. */
static int cfg_fail(cfg_loader *ld, int rc, const char *fmt, ...)
{
    char why[512];
    va_list ap;
    va_start(ap, fmt);
    vsnprintf(why, sizeof why, fmt, ap);
    va_end(ap);
    if (ld->entry)
        snprintf(ld->err, ld->errlen, "%s: entry %s: %s", ld->path, ld->entry, why);
    else
        snprintf(ld->err, ld->errlen, "%s: %s", ld->path, why);
    return rc;
}

static yaml_node_t *node_at(cfg_loader *ld, int idx)
{
    return yaml_document_get_node(&ld->doc, idx);
}

static const char *scalar_text(const yaml_node_t *n) { return (const char *)n->data.scalar.value; }

static int is_null(const yaml_node_t *n)
{
    static const char *const nulls[] = {"", "~", "null", "Null", "NULL"};
    if (n->type != YAML_SCALAR_NODE || n->data.scalar.style != YAML_PLAIN_SCALAR_STYLE)
        return 0;
    for (int i = 0; i < 5; i++)
        if (strcmp(scalar_text(n), nulls[i]) == 0)
            return 1;
    return 0;
}

/* Checks n is a map with scalar keys, none repeated. */
static int map_check(cfg_loader *ld, const yaml_node_t *n, const char *what)
{
    if (!n || n->type != YAML_MAPPING_NODE)
        return cfg_fail(ld, -EINVAL, "%s must be a map", what);
    for (yaml_node_pair_t *p = n->data.mapping.pairs.start; p < n->data.mapping.pairs.top; p++) {
        yaml_node_t *k = node_at(ld, p->key);
        if (!k || k->type != YAML_SCALAR_NODE)
            return cfg_fail(ld, -EINVAL, "%s has a key that is not a string", what);
        for (yaml_node_pair_t *q = n->data.mapping.pairs.start; q < p; q++)
            if (strcmp(scalar_text(node_at(ld, q->key)), scalar_text(k)) == 0)
                return cfg_fail(ld, -EINVAL, "%s has key '%s' twice", what, scalar_text(k));
    }
    return 0;
}

/* The value under key in map m (already map_check'ed), or NULL. */
static yaml_node_t *map_get(cfg_loader *ld, const yaml_node_t *m, const char *key)
{
    for (yaml_node_pair_t *p = m->data.mapping.pairs.start; p < m->data.mapping.pairs.top; p++)
        if (strcmp(scalar_text(node_at(ld, p->key)), key) == 0)
            return node_at(ld, p->value);
    return NULL;
}

static int valid_var_name(const char *s, size_t n)
{
    if (n == 0 || (s[0] >= '0' && s[0] <= '9'))
        return 0;
    for (size_t i = 0; i < n; i++)
        if (!(s[i] == '_' || (s[i] >= 'a' && s[i] <= 'z') || (s[i] >= 'A' && s[i] <= 'Z') ||
              (s[i] >= '0' && s[i] <= '9')))
            return 0;
    return 1;
}

/* Appends n bytes to a growing buffer; -ENOMEM or -E2BIG past CFG_MAX_VALUE_BYTES. */
static int buf_put(char **buf, size_t *len, size_t *cap, const char *s, size_t n)
{
    if (*len + n > CFG_MAX_VALUE_BYTES)
        return -E2BIG;
    if (*len + n + 1 > *cap) {
        size_t ncap = (*len + n + 1) * 2;
        char *nb = realloc(*buf, ncap);
        if (!nb)
            return -ENOMEM;
        *buf = nb;
        *cap = ncap;
    }
    memcpy(*buf + *len, s, n);
    *len += n;
    (*buf)[*len] = '\0';
    return 0;
}

/* Expands ${VAR} and ${VAR:-default} from the environment storage (the process environment)
   into a malloc'd string. An undefined VAR without a default is an error, not "" : a missing
   secret should stop the node, not start it open. A '$' not followed by '{' is kept as is;
   values taken from the environment are not expanded again. */
static int expand_vars(cfg_loader *ld, const char *what, const char *s, char **out)
{
    char *buf = NULL;
    size_t len = 0, cap = 0;
    int rc = buf_put(&buf, &len, &cap, "", 0);
    while (rc == 0 && *s) {
        const char *d = strstr(s, "${");
        if (!d) {
            rc = buf_put(&buf, &len, &cap, s, strlen(s));
            break;
        }
        rc = buf_put(&buf, &len, &cap, s, (size_t)(d - s));
        if (rc < 0)
            break;
        const char *close = strchr(d + 2, '}');
        if (!close) {
            free(buf);
            return cfg_fail(ld, -EINVAL, "%s: unterminated ${ in '%s'", what, d);
        }
        const char *name = d + 2;
        const char *dflt = strstr(name, ":-");
        size_t nlen = (dflt && dflt < close) ? (size_t)(dflt - name) : (size_t)(close - name);
        if (!valid_var_name(name, nlen)) {
            free(buf);
            return cfg_fail(ld, -EINVAL, "%s: bad variable reference '%.*s'", what,
                            (int)(close - d + 1), d);
        }
        char var[256];
        if (nlen >= sizeof var) {
            free(buf);
            return cfg_fail(ld, -EINVAL, "%s: variable name too long", what);
        }
        memcpy(var, name, nlen);
        var[nlen] = '\0';
        const char *val = getenv(var);
        if (val)
            rc = buf_put(&buf, &len, &cap, val, strlen(val));
        else if (dflt && dflt < close)
            rc = buf_put(&buf, &len, &cap, dflt + 2, (size_t)(close - dflt - 2));
        else {
            free(buf);
            return cfg_fail(ld, -EINVAL, "%s: environment variable %s is not defined", what, var);
        }
        s = close + 1;
    }
    if (rc < 0) {
        free(buf);
        return rc == -ENOMEM ? cfg_fail(ld, rc, "out of memory")
                             : cfg_fail(ld, -EINVAL, "%s: value longer than %u bytes", what,
                                        CFG_MAX_VALUE_BYTES);
    }
    *out = buf;
    return 0;
}

/* A scalar value with ${VAR} expanded, malloc'd into *out; a YAML null reads as "". */
static int value_get(cfg_loader *ld, const yaml_node_t *n, const char *what, char **out)
{
    if (!n || n->type != YAML_SCALAR_NODE)
        return cfg_fail(ld, -EINVAL, "%s must be a single value, not a %s", what,
                        n && n->type == YAML_SEQUENCE_NODE ? "list" : "map");
    if (is_null(n)) {
        *out = strdup("");
        return *out ? 0 : cfg_fail(ld, -ENOMEM, "out of memory");
    }
    return expand_vars(ld, what, scalar_text(n), out);
}

/* A scalar used as-is (names, kinds): must be a non-null plain string. */
static int literal_get(cfg_loader *ld, const yaml_node_t *n, const char *what, const char **out)
{
    if (!n || n->type != YAML_SCALAR_NODE || is_null(n))
        return cfg_fail(ld, -EINVAL, "%s must be a non-empty string", what);
    *out = scalar_text(n);
    return 0;
}

/* Names and prefixes appear in pids, logs and JSON: keep them short and printable. */
static int name_ok(const char *s)
{
    size_t n = strlen(s);
    if (n == 0 || n > CFG_MAX_NAME)
        return 0;
    for (; *s; s++)
        if (!(*s == '_' || *s == '-' || *s == '.' || (*s >= 'a' && *s <= 'z') ||
              (*s >= 'A' && *s <= 'Z') || (*s >= '0' && *s <= '9')))
            return 0;
    return 1;
}

/* Sets field f from YAML node n; the error names the key. */
static int field_set_node(cfg_loader *ld, const cfg_field *f, const yaml_node_t *n,
                          const char *key);

/* Reads a map whose keys are all rows of table (plus `skip` keys the caller reads itself). Errors
   name a key as "what.key" when the map is nested (prefix set), else as "key". */
static int map_fields(cfg_loader *ld, const yaml_node_t *m, const char *what,
                      const cfg_field *table, const char *const *skip, const char *prefix)
{
    int rc = map_check(ld, m, what);
    if (rc < 0)
        return rc;
    for (yaml_node_pair_t *p = m->data.mapping.pairs.start; p < m->data.mapping.pairs.top; p++) {
        const char *key = scalar_text(node_at(ld, p->key));
        int skipped = 0;
        for (const char *const *s = skip; s && *s; s++)
            skipped |= strcmp(*s, key) == 0;
        if (skipped)
            continue;
        const cfg_field *f = field_find(table, key);
        if (!f)
            return cfg_fail(ld, -EINVAL, "unknown key '%s' in %s", key, what);
        char label[64];
        snprintf(label, sizeof label, "%s%s%s", prefix ? prefix : "", prefix ? "." : "", key);
        rc = field_set_node(ld, f, node_at(ld, p->value), label);
        if (rc < 0)
            return rc;
    }
    return 0;
}

/* Reads a list of non-empty strings (a single string counts as a list of one). */
static int strlist_get(cfg_loader *ld, const yaml_node_t *n, const char *what, char ***out,
                       size_t *nout)
{
    char **list = NULL;
    size_t len = 0;
    int rc = 0;
    if (n->type == YAML_SCALAR_NODE) {
        if (!is_null(n)) {
            if (!(list = calloc(1, sizeof *list)))
                return cfg_fail(ld, -ENOMEM, "out of memory");
            if ((rc = value_get(ld, n, what, &list[0])) < 0)
                goto fail;
            len = 1;
        }
    } else if (n->type == YAML_SEQUENCE_NODE) {
        size_t cnt = (size_t)(n->data.sequence.items.top - n->data.sequence.items.start);
        if (cnt > CFG_MAX_LIST)
            return cfg_fail(ld, -EINVAL, "%s has more than %d items", what, CFG_MAX_LIST);
        if (cnt && !(list = calloc(cnt, sizeof *list)))
            return cfg_fail(ld, -ENOMEM, "out of memory");
        for (size_t i = 0; i < cnt; i++) {
            const yaml_node_t *item = node_at(ld, n->data.sequence.items.start[i]);
            if ((rc = value_get(ld, item, what, &list[i])) < 0)
                goto fail;
            len++;
        }
    } else {
        return cfg_fail(ld, -EINVAL, "%s must be a list", what);
    }
    for (size_t i = 0; i < len; i++) {
        if (!list[i][0]) {
            rc = cfg_fail(ld, -EINVAL, "%s has an empty item", what);
            goto fail;
        }
        for (size_t j = 0; j < i; j++)
            if (strcmp(list[i], list[j]) == 0) {
                rc = cfg_fail(ld, -EINVAL, "%s has '%s' twice", what, list[i]);
                goto fail;
            }
    }
    *out = list;
    *nout = len;
    return 0;
fail:
    for (size_t i = 0; i < len; i++)
        free(list[i]);
    free(list);
    return rc;
}

static int field_set_node(cfg_loader *ld, const cfg_field *f, const yaml_node_t *n, const char *key)
{
    if (f->type == F_MAP) {
        for (size_t i = 0; i < sizeof submaps / sizeof submaps[0]; i++)
            if (strcmp(submaps[i].key, f->key) == 0)
                return map_fields(ld, n, key, submaps[i].table, NULL, key);
        return cfg_fail(ld, -EINVAL, "%s: no table for this map", key); /* a bug in the tables */
    }
    if (f->type == F_STRLIST) {
        char ***slot = (char ***)((char *)ld->c + f->off);
        size_t *nslot = (size_t *)((char *)ld->c + f->off_n);
        char **list;
        size_t len;
        int rc = strlist_get(ld, n, key, &list, &len);
        if (rc < 0)
            return rc;
        char why[384];
        for (size_t i = 0; i < len && f->check; i++)
            if (f->check(list[i], why, sizeof why) < 0) {
                rc = cfg_fail(ld, -EINVAL, "%s: %s", key, why);
                for (size_t j = 0; j < len; j++)
                    free(list[j]);
                free(list);
                return rc;
            }
        for (size_t i = 0; i < *nslot; i++)
            free((*slot)[i]);
        free(*slot);
        *slot = list;
        *nslot = len;
        return 0;
    }
    char *v, why[384];
    int rc = value_get(ld, n, key, &v);
    if (rc < 0)
        return rc;
    if (f->type == F_PATH && v[0] && v[0] != '/') { /* relative to the file, like sources */
        size_t jlen = strlen(ld->dir) + 1 + strlen(v) + 1;
        char *joined = malloc(jlen);
        if (!joined) {
            free(v);
            return cfg_fail(ld, -ENOMEM, "out of memory");
        }
        snprintf(joined, jlen, "%s/%s", ld->dir, v);
        free(v);
        v = joined;
    }
    rc = field_set(ld->c, f, v, why, sizeof why);
    free(v);
    return rc < 0 ? cfg_fail(ld, rc, "%s: %s", key, why) : 0;
}

/* Keys every entry may carry; kinds that read more list theirs. */
static const char *const entry_common_keys[] = {"name", "kind", "meta", "lifecycle", NULL};

static int key_in(const char *key, const char *const *list)
{
    for (; list && *list; list++)
        if (strcmp(*list, key) == 0)
            return 1;
    return 0;
}

/* Refuses any key of entry e that is neither common nor in `extra`. */
static int entry_keys_check(cfg_loader *ld, const yaml_node_t *e, const char *const *extra)
{
    for (yaml_node_pair_t *p = e->data.mapping.pairs.start; p < e->data.mapping.pairs.top; p++) {
        const char *key = scalar_text(node_at(ld, p->key));
        if (!key_in(key, entry_common_keys) && !key_in(key, extra))
            return cfg_fail(ld, -EINVAL, "unknown key '%s'", key);
    }
    return 0;
}

/* The top-level `version` values of the entries format this reader understands. */
static const char *const file_versions[] = {"1.0", NULL};

/* The names `require` resolves in a plugin: the prelude's `modules` table in plugins/rl_lua.c
   (kept in step by hand: common/ may not include the plugin host). */
static const char *const plugin_modules[] = {"json", "time", "logger", "security", "uuid",
                                             "http_client", "http", "env", "funcs", "ctx",
                                             "errors", "pg", NULL};

/* Parses up to three dot-separated numbers ("1", "0.1", "0.1.0"); returns how many, 0 if bad. */
static int semver_parse(const char *s, unsigned v[3])
{
    int n = 0;
    v[0] = v[1] = v[2] = 0;
    while (n < 3) {
        char *end;
        if (*s < '0' || *s > '9')
            return 0;
        unsigned long x = strtoul(s, &end, 10);
        if (x > 1000000)
            return 0;
        v[n++] = (unsigned)x;
        if (*end == '\0')
            return n;
        if (*end != '.')
            return 0;
        s = end + 1;
    }
    return 0;
}

static int semver_cmp(const unsigned a[3], const unsigned b[3])
{
    for (int i = 0; i < 3; i++)
        if (a[i] != b[i])
            return a[i] < b[i] ? -1 : 1;
    return 0;
}

/* 1 when this node's version (RL_VERSION) meets the ns.dependency version constraint: "*", or
   [=|v|^|~|>=]X[.Y[.Z]] ("0.1" = any 0.1.x; ^ keeps the first non-zero part given, ~ the major
   and minor, >= is a plain lower bound); 0 when it does not or cannot be read. */
static int version_satisfied(const char *want)
{
    unsigned have[3], v[3];
    char op = '=';
    if (strcmp(want, "*") == 0)
        return 1;
    if (strncmp(want, ">=", 2) == 0)
        op = '>', want += 2;
    else if (*want == '^' || *want == '~')
        op = *want++;
    else if (*want == '=' || *want == 'v')
        want++;
    int n = semver_parse(want, v);
    if (n == 0 || semver_parse(RL_VERSION, have) != 3)
        return 0;
    if (op == '>')
        return semver_cmp(have, v) >= 0;
    int fixed = n; /* how many leading parts must be equal */
    if (op == '^') {
        fixed = 1;
        while (fixed < n && v[fixed - 1] == 0)
            fixed++;
    } else if (op == '~') {
        fixed = n < 2 ? 1 : 2;
    }
    for (int i = 0; i < fixed; i++)
        if (have[i] != v[i])
            return 0;
    return op == '=' || semver_cmp(have, v) >= 0;
}

/* Lua long bracket at p ("[[", "[==["): its level, or -1 when p does not open one. */
static int long_bracket(const char *p, const char *end)
{
    int level = 0;
    if (p >= end || *p != '[')
        return -1;
    for (p++; p < end && *p == '='; p++)
        level++;
    return p < end && *p == '[' ? level : -1;
}

/* Skips a long string or comment body opened at p with the given level; returns the end. */
static const char *long_skip(const char *p, const char *end, int level)
{
    for (p += level + 2; p < end; p++) {
        if (*p != ']')
            continue;
        const char *q = p + 1;
        int l = 0;
        while (q < end && *q == '=')
            q++, l++;
        if (l == level && q < end && *q == ']')
            return q + 1;
    }
    return end;
}

/* 1 when `name` is an identifier of src[0..len) outside comments and strings. A source that
   never names its method cannot define it (short of building the name at run time); one that
   names it may still not define it, which the plugin host reports when the plugin starts. */
static int source_names(const char *src, size_t len, const char *name)
{
    const char *p = src, *end = src + len;
    size_t nlen = strlen(name);
    while (p < end) {
        int level;
        if (p + 1 < end && p[0] == '-' && p[1] == '-') {
            if ((level = long_bracket(p + 2, end)) >= 0)
                p = long_skip(p + 2, end, level);
            else
                while (p < end && *p != '\n')
                    p++;
        } else if ((level = long_bracket(p, end)) >= 0) {
            p = long_skip(p, end, level);
        } else if (*p == '"' || *p == '\'') {
            char q = *p++;
            while (p < end && *p != q && *p != '\n')
                p += (*p == '\\' && p + 1 < end) ? 2 : 1;
            p++;
        } else if (*p == '_' || (*p >= 'a' && *p <= 'z') || (*p >= 'A' && *p <= 'Z')) {
            const char *s = p;
            while (p < end && (*p == '_' || (*p >= 'a' && *p <= 'z') || (*p >= 'A' && *p <= 'Z') ||
                               (*p >= '0' && *p <= '9')))
                p++;
            if ((size_t)(p - s) == nlen && memcmp(s, name, nlen) == 0)
                return 1;
        } else if (*p >= '0' && *p <= '9') { /* a number: 0x1run is not the name run */
            while (p < end && ((*p >= '0' && *p <= '9') || (*p >= 'a' && *p <= 'z') ||
                               (*p >= 'A' && *p <= 'Z') || *p == '.' || *p == '_'))
                p++;
        } else {
            p++;
        }
    }
    return 0;
}

/* Refuses a plugin whose source never names its method (given, or the default run). */
static int plugin_method_check(cfg_loader *ld, const rl_plugin_def *p, int given)
{
    FILE *f = fopen(p->source_path, "rb");
    if (!f)
        return cfg_fail(ld, -EINVAL, "source %s: %s", p->source_path, strerror(errno));
    char *buf = malloc(CFG_MAX_SOURCE_SCAN + 1);
    if (!buf) {
        fclose(f);
        return cfg_fail(ld, -ENOMEM, "out of memory");
    }
    size_t n = fread(buf, 1, CFG_MAX_SOURCE_SCAN + 1, f);
    int bad = ferror(f);
    fclose(f);
    int found = bad || n > CFG_MAX_SOURCE_SCAN || source_names(buf, n, p->method);
    free(buf);
    if (found)
        return 0;
    if (given)
        return cfg_fail(ld, -EINVAL, "method '%s': source %s defines no '%s'", p->method,
                        p->source_path, p->method);
    return cfg_fail(ld, -EINVAL, "no method given and source %s defines no '%s' (the default): "
                                 "set method: to the plugin's entry function", p->source_path,
                    p->method);
}

static int entry_dependency(cfg_loader *ld, const yaml_node_t *e)
{
    static const char *const keys[] = {"component", "version", "parameters", NULL};
    const char *component = NULL;
    int rc = entry_keys_check(ld, e, keys);
    if (rc < 0 || (rc = literal_get(ld, map_get(ld, e, "component"), "component", &component)) < 0)
        return rc;
    if (strcmp(component, "wippy/relay") != 0)
        return cfg_fail(ld, -EINVAL, "component '%s' is not supported (only wippy/relay)",
                        component);
    if (ld->dep_entry)
        return cfg_fail(ld, -EINVAL, "a second ns.dependency for wippy/relay (the first is %s)",
                        ld->dep_entry);
    ld->dep_entry = ld->entry;
    const yaml_node_t *ver = map_get(ld, e, "version");
    if (ver && ver->type != YAML_SCALAR_NODE)
        return cfg_fail(ld, -EINVAL, "version must be a string");
    if (ver && !is_null(ver) && !version_satisfied(scalar_text(ver)))
        return cfg_fail(ld, -EINVAL, "version '%s': this node is wippy/relay %s (use \"*\" or a "
                                     "constraint such as \"^%s\")", scalar_text(ver), RL_VERSION,
                        RL_VERSION);

    const yaml_node_t *params = map_get(ld, e, "parameters");
    if (!params || is_null(params))
        return cfg_fail(ld, -EINVAL, "missing parameters (application_host and user_security_scope "
                                     "are required)");
    if (params->type != YAML_SEQUENCE_NODE)
        return cfg_fail(ld, -EINVAL, "parameters must be a list of {name, value}");
    unsigned seen = 0;
    const yaml_node_item_t *items = params->data.sequence.items.start;
    for (const yaml_node_item_t *it = items; it < params->data.sequence.items.top; it++) {
        static const char *const pkeys[] = {"name", "value", NULL};
        const yaml_node_t *p = node_at(ld, *it);
        const char *pname = NULL;
        if ((rc = map_check(ld, p, "a parameter")) < 0)
            return rc;
        if ((rc = literal_get(ld, map_get(ld, p, "name"), "parameter name", &pname)) < 0)
            return rc;
        for (yaml_node_pair_t *q = p->data.mapping.pairs.start; q < p->data.mapping.pairs.top; q++)
            if (!key_in(scalar_text(node_at(ld, q->key)), pkeys))
                return cfg_fail(ld, -EINVAL, "parameter %s: unknown key '%s'", pname,
                                scalar_text(node_at(ld, q->key)));
        const cfg_field *f = field_find(param_fields, pname);
        if (!f)
            return cfg_fail(ld, -EINVAL, "unknown parameter '%s'", pname);
        unsigned bit = 1u << (f - param_fields);
        if (seen & bit)
            return cfg_fail(ld, -EINVAL, "parameter %s given twice", pname);
        seen |= bit;
        const yaml_node_t *v = map_get(ld, p, "value");
        if (!v)
            return cfg_fail(ld, -EINVAL, "parameter %s has no value", pname);
        if ((rc = field_set_node(ld, f, v, pname)) < 0)
            return rc;
    }
    for (const cfg_field *f = param_fields; f->key; f++) {
        char **slot = (char **)((char *)ld->c + f->off);
        if (f->required && (!(seen & (1u << (f - param_fields))) || !*slot))
            return cfg_fail(ld, -EINVAL, "missing required parameter %s", f->key);
    }
    return 0;
}

/* Resolves a file:// source against the config's directory; checks it is a readable file. */
static int plugin_source(cfg_loader *ld, const yaml_node_t *n, char **out)
{
    char *src, joined[PATH_MAX], why[PATH_MAX + 64];
    int rc = value_get(ld, n, "source", &src);
    if (rc < 0)
        return rc;
    if (strncmp(src, "file://", 7) != 0 || !src[7]) {
        rc = cfg_fail(ld, -EINVAL, "source '%s' is not file://PATH", src);
        free(src);
        return rc;
    }
    const char *rel = src + 7;
    int n_ = rel[0] == '/' ? snprintf(joined, sizeof joined, "%s", rel)
                           : snprintf(joined, sizeof joined, "%s/%s", ld->dir, rel);
    free(src);
    if (n_ < 0 || (size_t)n_ >= sizeof joined)
        return cfg_fail(ld, -EINVAL, "source path too long");
    /* An absolute path keeps working if the node changes directory. */
    if ((rc = file_resolve(joined, out, why, sizeof why)) < 0)
        return cfg_fail(ld, rc, "source %s", why);
    return 0;
}

static int plugin_add(cfg_loader *ld, rl_plugin_def **out)
{
    rl_config *c = ld->c;
    if (c->nplugins >= CFG_MAX_PLUGINS)
        return cfg_fail(ld, -EINVAL, "more than %d plugins", CFG_MAX_PLUGINS);
    rl_plugin_def *np = realloc(c->plugins, (c->nplugins + 1) * sizeof *np);
    if (!np)
        return cfg_fail(ld, -ENOMEM, "out of memory");
    c->plugins = np;
    *out = &np[c->nplugins++];
    memset(*out, 0, sizeof **out);
    return 0;
}

/* imports: {name: namespace:entry}: library.lua entries a Lua entry gets with require(name).
   The targets are checked once the whole file is read (check_refs). */
static int imports_read(cfg_loader *ld, const yaml_node_t *e, rl_plugin_def *p)
{
    const yaml_node_t *n = map_get(ld, e, "imports");
    if (!n || is_null(n))
        return 0;
    int rc = map_check(ld, n, "imports");
    if (rc < 0)
        return rc;
    size_t cnt = (size_t)(n->data.mapping.pairs.top - n->data.mapping.pairs.start);
    if (cnt > CFG_MAX_LIST)
        return cfg_fail(ld, -EINVAL, "imports has more than %d items", CFG_MAX_LIST);
    if (cnt && (!(p->import_names = calloc(cnt, sizeof(char *))) ||
                !(p->import_ids = calloc(cnt, sizeof(char *)))))
        return cfg_fail(ld, -ENOMEM, "out of memory");
    for (size_t i = 0; i < cnt; i++) {
        const yaml_node_pair_t *pr = &n->data.mapping.pairs.start[i];
        const char *name = scalar_text(node_at(ld, pr->key));
        if (!name_ok(name) || strchr(name, '-'))
            return cfg_fail(ld, -EINVAL, "imports: '%s' is not a module name", name);
        if (key_in(name, plugin_modules))
            return cfg_fail(ld, -EINVAL, "imports: '%s' is the name of a built-in module", name);
        if (!(p->import_names[i] = strdup(name)))
            return cfg_fail(ld, -ENOMEM, "out of memory");
        p->nimports = i + 1;
        char what[CFG_MAX_NAME + 16];
        snprintf(what, sizeof what, "imports.%s", name);
        if ((rc = value_get(ld, node_at(ld, pr->value), what, &p->import_ids[i])) < 0)
            return rc;
        char why[320];
        if (check_ref(p->import_ids[i], why, sizeof why) < 0)
            return cfg_fail(ld, -EINVAL, "%s: %s", what, why);
    }
    return 0;
}

/* A Lua entry that is not a relay plugin: a process.lua plugins may spawn, a library.lua others
   import, a function.lua funcs.call runs. */
static int lua_entry_read(cfg_loader *ld, const yaml_node_t *e, int kind)
{
    static const char *const keys[] = {"source", "modules", "method", "imports", NULL};
    static const char *const lib_keys[] = {"source", "modules", "imports", NULL};
    rl_config *c = ld->c;
    int rc;
    const yaml_node_t *meta = map_get(ld, e, "meta");
    if (meta && !is_null(meta) && (rc = map_check(ld, meta, "meta")) < 0)
        return rc;
    if ((rc = entry_keys_check(ld, e, kind == RL_LUA_ENTRY_LIBRARY ? lib_keys : keys)) < 0)
        return rc;
    if (c->nlua_entries >= CFG_MAX_PLUGINS)
        return cfg_fail(ld, -EINVAL, "more than %d Lua entries besides plugins", CFG_MAX_PLUGINS);
    rl_plugin_def *np = realloc(c->lua_entries, (c->nlua_entries + 1) * sizeof *np);
    if (!np)
        return cfg_fail(ld, -ENOMEM, "out of memory");
    c->lua_entries = np;
    rl_plugin_def *p = &np[c->nlua_entries++];
    memset(p, 0, sizeof *p);
    p->lua_kind = kind;
    size_t idlen = strlen(c->namespace_) + 1 + strlen(ld->entry) + 1;
    p->name = strdup(ld->entry);
    p->id = malloc(idlen);
    p->method = strdup(kind == RL_LUA_ENTRY_LIBRARY ? "" : "run");
    if (!p->name || !p->id || !p->method)
        return cfg_fail(ld, -ENOMEM, "out of memory");
    snprintf(p->id, idlen, "%s:%s", c->namespace_, ld->entry);
    const yaml_node_t *n = map_get(ld, e, "source");
    if (!n)
        return cfg_fail(ld, -EINVAL, "missing source (file://PATH)");
    if ((rc = plugin_source(ld, n, &p->source_path)) < 0)
        return rc;
    if ((n = map_get(ld, e, "modules")) &&
        (rc = strlist_get(ld, n, "modules", &p->modules, &p->nmodules)) < 0)
        return rc;
    for (size_t i = 0; i < p->nmodules; i++)
        if (!key_in(p->modules[i], plugin_modules))
            rl_debug(MOD, "%s: entry %s: module '%s' is not provided here; require() of it fails",
                     ld->path, ld->entry, p->modules[i]);
    if ((rc = imports_read(ld, e, p)) < 0)
        return rc;
    if (kind == RL_LUA_ENTRY_LIBRARY)
        return 0;
    char *v;
    if ((n = map_get(ld, e, "method"))) {
        if ((rc = value_get(ld, n, "method", &v)) < 0)
            return rc;
        if (!name_ok(v) || strchr(v, '.') || strchr(v, '-') || (v[0] >= '0' && v[0] <= '9')) {
            rc = cfg_fail(ld, -EINVAL, "method '%s' is not a Lua name", v);
            free(v);
            return rc;
        }
        free(p->method);
        p->method = v;
    }
    return plugin_method_check(ld, p, n != NULL);
}

/* A process.lua entry: a relay plugin when meta.type is relay.plugin, otherwise a process
   plugins may spawn (process.spawn*). */
static int entry_process_lua(cfg_loader *ld, const yaml_node_t *e)
{
    static const char *const keys[] = {"source", "modules", "method", "imports", NULL};
    const yaml_node_t *meta = map_get(ld, e, "meta");
    const yaml_node_t *type = NULL;
    int rc;
    if (meta && meta->type == YAML_MAPPING_NODE) {
        if ((rc = map_check(ld, meta, "meta")) < 0)
            return rc;
        type = map_get(ld, meta, "type");
    }
    if (!type || type->type != YAML_SCALAR_NODE || strcmp(scalar_text(type), "relay.plugin") != 0) {
        /* a process plugins may spawn; one this node cannot run (no readable source, no
           method, keys of another runtime) is left out, as before, and only logged */
        size_t before = ld->c->nlua_entries;
        rc = lua_entry_read(ld, e, RL_LUA_ENTRY_PROCESS);
        if (rc < 0 && rc != -ENOMEM) {
            rl_debug(MOD, "process.lua without meta.type relay.plugin not spawnable: %s", ld->err);
            while (ld->c->nlua_entries > before)
                plugin_free(&ld->c->lua_entries[--ld->c->nlua_entries]);
            ld->err[0] = '\0';
            return 0;
        }
        return rc;
    }
    if ((rc = entry_keys_check(ld, e, keys)) < 0)
        return rc;
    rl_plugin_def *p = NULL;
    if ((rc = plugin_add(ld, &p)) < 0)
        return rc;
    char *v;
    size_t idlen = strlen(ld->c->namespace_) + 1 + strlen(ld->entry) + 1;
    p->name = strdup(ld->entry);
    p->id = malloc(idlen);
    p->method = strdup("run");
    if (!p->name || !p->id || !p->method)
        return cfg_fail(ld, -ENOMEM, "out of memory");
    snprintf(p->id, idlen, "%s:%s", ld->c->namespace_, ld->entry);

    const yaml_node_t *n = map_get(ld, meta, "command_prefix");
    if (!n)
        return cfg_fail(ld, -EINVAL, "missing meta.command_prefix");
    if ((rc = value_get(ld, n, "meta.command_prefix", &p->prefix)) < 0)
        return rc;
    if (!p->prefix[0])
        return cfg_fail(ld, -EINVAL, "meta.command_prefix must not be empty");
    if (strlen(p->prefix) > CFG_MAX_NAME || strpbrk(p->prefix, " \t\r\n"))
        return cfg_fail(ld, -EINVAL, "meta.command_prefix '%s' is too long or has spaces",
                        p->prefix);
    for (size_t i = 0; i + 1 < ld->c->nplugins; i++)
        if (strcmp(ld->c->plugins[i].prefix, p->prefix) == 0)
            return cfg_fail(ld, -EINVAL, "duplicate command_prefix '%s' (also used by %s)",
                            p->prefix, ld->c->plugins[i].name);
    if ((n = map_get(ld, meta, "auto_start"))) {
        if ((rc = value_get(ld, n, "meta.auto_start", &v)) < 0)
            return rc;
        rc = parse_bool(v, &p->auto_start);
        if (rc < 0)
            cfg_fail(ld, rc, "meta.auto_start: '%s' is not true or false", v);
        free(v);
        if (rc < 0)
            return rc;
    }
    if ((n = map_get(ld, meta, "default_host"))) {
        if ((rc = value_get(ld, n, "meta.default_host", &v)) < 0)
            return rc;
        p->default_host = v;
        if (!v[0]) {
            free(v);
            p->default_host = NULL;
        } else {
            char why[320];
            if (check_ref(v, why, sizeof why) < 0)
                return cfg_fail(ld, -EINVAL, "meta.default_host: %s", why);
        }
    }
    /* Other meta keys are free-form metadata (descriptions, tags) and pass through. */

    if (!(n = map_get(ld, e, "source")))
        return cfg_fail(ld, -EINVAL, "missing source (file://PATH)");
    if ((rc = plugin_source(ld, n, &p->source_path)) < 0)
        return rc;
    if ((n = map_get(ld, e, "modules")) &&
        (rc = strlist_get(ld, n, "modules", &p->modules, &p->nmodules)) < 0)
        return rc;
    for (size_t i = 0; i < p->nmodules; i++)
        if (!key_in(p->modules[i], plugin_modules))
            return cfg_fail(ld, -EINVAL, "modules: unknown module '%s' (plugins can require json, "
                                         "time, logger, security)", p->modules[i]);
    if ((n = map_get(ld, e, "method"))) {
        if ((rc = value_get(ld, n, "method", &v)) < 0)
            return rc;
        if (!name_ok(v) || strchr(v, '.') || strchr(v, '-') || (v[0] >= '0' && v[0] <= '9')) {
            rc = cfg_fail(ld, -EINVAL, "method '%s' is not a Lua name", v);
            free(v);
            return rc;
        }
        free(p->method);
        p->method = v;
    }
    if ((rc = imports_read(ld, e, p)) < 0)
        return rc;
    return plugin_method_check(ld, p, n != NULL);
}

static int entry_library_lua(cfg_loader *ld, const yaml_node_t *e)
{
    return lua_entry_read(ld, e, RL_LUA_ENTRY_LIBRARY);
}

static int entry_function_lua(cfg_loader *ld, const yaml_node_t *e)
{
    return lua_entry_read(ld, e, RL_LUA_ENTRY_FUNCTION);
}

/* env.variable: a name the plugins' env module may read, from a storage (env.storage.os reads
   the node's environment; any other storage gives only the default). */
static int entry_env_variable(cfg_loader *ld, const yaml_node_t *e)
{
    static const char *const keys[] = {"variable", "storage", "default", "readonly", NULL};
    rl_config *c = ld->c;
    int rc;
    if ((rc = entry_keys_check(ld, e, keys)) < 0)
        return rc;
    if (c->nenv_vars >= CFG_MAX_LIST * 4)
        return cfg_fail(ld, -EINVAL, "more than %d env.variable entries", CFG_MAX_LIST * 4);
    rl_env_var *nv = realloc(c->env_vars, (c->nenv_vars + 1) * sizeof *nv);
    if (!nv)
        return cfg_fail(ld, -ENOMEM, "out of memory");
    c->env_vars = nv;
    rl_env_var *v = &nv[c->nenv_vars++];
    memset(v, 0, sizeof *v);
    size_t idlen = strlen(c->namespace_) + 1 + strlen(ld->entry) + 1;
    if (!(v->id = malloc(idlen)))
        return cfg_fail(ld, -ENOMEM, "out of memory");
    snprintf(v->id, idlen, "%s:%s", c->namespace_, ld->entry);
    const yaml_node_t *n;
    if ((n = map_get(ld, e, "variable")) && !is_null(n)) {
        if ((rc = value_get(ld, n, "variable", &v->name)) < 0)
            return rc;
        if (!valid_var_name(v->name, strlen(v->name)))
            return cfg_fail(ld, -EINVAL, "variable '%s' is not letters, digits and _", v->name);
    }
    if (!(v->key = strdup(v->name ? v->name : ld->entry)))
        return cfg_fail(ld, -ENOMEM, "out of memory");
    if (!(n = map_get(ld, e, "storage")))
        return cfg_fail(ld, -EINVAL, "missing storage");
    if ((rc = value_get(ld, n, "storage", &v->storage)) < 0)
        return rc;
    if ((n = map_get(ld, e, "default")) && !is_null(n) &&
        (rc = value_get(ld, n, "default", &v->deflt)) < 0)
        return rc;
    return 0;
}

/* ------------------------------------------------------------------------------------------ */
/* security.policy and security.scope (the platform's shape: policy {actions, resources, effect,
   conditions} and groups; a scope is a policy group, optionally declared with its policies) */

#define CFG_MAX_POLICIES 1024
#define CFG_MAX_SCOPES   256
#define CFG_MAX_CONDS    32

static const char *const sec_op_names[] = {
#define RL_SEC_OP_NAME(id, name) name,
    RL_SEC_OPS(RL_SEC_OP_NAME)
#undef RL_SEC_OP_NAME
};

static void sec_strs_free(char **v, size_t n)
{
    for (size_t i = 0; i < n; i++)
        free(v[i]);
    free(v);
}

static void sec_policy_free(rl_sec_policy *p)
{
    free(p->id);
    sec_strs_free(p->actions, p->nactions);
    sec_strs_free(p->resources, p->nresources);
    sec_strs_free(p->groups, p->ngroups);
    for (size_t i = 0; i < p->nconds; i++) {
        free(p->conds[i].field);
        for (size_t j = 0; j < p->conds[i].nvalues; j++)
            free(p->conds[i].values[j].s);
        free(p->conds[i].values);
    }
    free(p->conds);
}

static void sec_free(rl_config *c)
{
    for (size_t i = 0; i < c->npolicies; i++)
        sec_policy_free(&c->policies[i]);
    free(c->policies);
    for (size_t i = 0; i < c->nscopes; i++) {
        free(c->scopes[i].id);
        sec_strs_free(c->scopes[i].policies, c->scopes[i].npolicies);
    }
    free(c->scopes);
}

/* "ns:name", or a bare name taken as this file's namespace (the platform's default for a
   policy's groups), into a malloc'd id. */
static int sec_ref(cfg_loader *ld, const char *what, const char *s, char **out)
{
    const char *colon = strrchr(s, ':');
    char ns[CFG_MAX_NAME + 1];
    if (colon) {
        if ((size_t)(colon - s) > CFG_MAX_NAME)
            return cfg_fail(ld, -EINVAL, "%s '%s' is not namespace:name", what, s);
        snprintf(ns, sizeof ns, "%.*s", (int)(colon - s), s);
    }
    if ((colon && (!name_ok(ns) || !name_ok(colon + 1))) || (!colon && !name_ok(s)))
        return cfg_fail(ld, -EINVAL, "%s '%s' is not namespace:name (letters, digits, '.', '_', "
                                     "'-')", what, s);
    size_t n = strlen(ld->c->namespace_) + 1 + strlen(s) + 1;
    if (!(*out = malloc(n)))
        return cfg_fail(ld, -ENOMEM, "out of memory");
    if (colon)
        snprintf(*out, n, "%s", s);
    else
        snprintf(*out, n, "%s:%s", ld->c->namespace_, s);
    return 0;
}

/* Resolves every item of a list of references in place. */
static int sec_refs(cfg_loader *ld, const char *what, char **v, size_t n)
{
    for (size_t i = 0; i < n; i++) {
        char *id;
        int rc = sec_ref(ld, what, v[i], &id);
        if (rc < 0)
            return rc;
        free(v[i]);
        v[i] = id;
    }
    return 0;
}

/* One condition value: a plain true/false is a boolean, a plain number a number, anything
   else (or quoted) a string. */
static int sec_value(cfg_loader *ld, const yaml_node_t *n, const char *what, rl_sec_value *v)
{
    if (!n || n->type != YAML_SCALAR_NODE || is_null(n))
        return cfg_fail(ld, -EINVAL, "%s must be a string, number or boolean", what);
    int rc = value_get(ld, n, what, &v->s);
    if (rc < 0)
        return rc;
    v->kind = RL_SEC_VSTR;
    if (n->data.scalar.style == YAML_PLAIN_SCALAR_STYLE) {
        char *end;
        if (strcmp(v->s, "true") == 0 || strcmp(v->s, "false") == 0) {
            v->kind = RL_SEC_VBOOL;
            v->num = v->s[0] == 't';
        } else if (v->s[0] && (v->num = strtod(v->s, &end), *end == '\0')) {
            v->kind = RL_SEC_VNUM;
        }
    }
    return 0;
}

static int sec_field_ok(const char *f)
{
    if (strcmp(f, "actor.id") == 0 || strcmp(f, "action") == 0 || strcmp(f, "resource") == 0)
        return 1;
    const char *rest = strncmp(f, "actor.meta.", 11) == 0 ? f + 11
                       : strncmp(f, "meta.", 5) == 0      ? f + 5
                                                          : NULL;
    if (!rest || !*rest || rest[strlen(rest) - 1] == '.' || strstr(rest, ".."))
        return 0;
    return 1;
}

static int sec_cond(cfg_loader *ld, const yaml_node_t *n, size_t idx, rl_sec_cond *c)
{
    static const char *const keys[] = {"field", "operator", "value", NULL};
    char what[64];
    snprintf(what, sizeof what, "policy.conditions[%zu]", idx + 1);
    int rc = map_check(ld, n, what);
    if (rc < 0)
        return rc;
    for (yaml_node_pair_t *p = n->data.mapping.pairs.start; p < n->data.mapping.pairs.top; p++) {
        const char *key = scalar_text(node_at(ld, p->key));
        if (strcmp(key, "value_from") == 0)
            return cfg_fail(ld, -EINVAL, "%s: value_from is not supported by this node", what);
        if (!key_in(key, keys))
            return cfg_fail(ld, -EINVAL, "%s: unknown key '%s'", what, key);
    }
    const char *op;
    if ((rc = literal_get(ld, map_get(ld, n, "field"), "condition field", &op)) < 0)
        return rc;
    if (!sec_field_ok(op))
        return cfg_fail(ld, -EINVAL, "%s: field '%s' is not actor.id, actor.meta.NAME, action, "
                                     "resource or meta.NAME", what, op);
    if (!(c->field = strdup(op)))
        return cfg_fail(ld, -ENOMEM, "out of memory");
    if ((rc = literal_get(ld, map_get(ld, n, "operator"), "condition operator", &op)) < 0)
        return rc;
    int found = -1;
    for (int i = 0; i < RL_SEC_OP_COUNT; i++)
        if (strcmp(sec_op_names[i], op) == 0)
            found = i;
    if (found < 0)
        return cfg_fail(ld, -EINVAL, "%s: operator '%s' is not supported (eq, ne, lt, gt, lte, "
                                     "gte, in, nin, exists, nexists, contains, ncontains)",
                        what, op);
    c->op = (rl_sec_op)found;
    const yaml_node_t *v = map_get(ld, n, "value");
    if (c->op == RL_SEC_OP_EXISTS || c->op == RL_SEC_OP_NEXISTS) {
        if (v && !is_null(v)) { /* "exists: false" reads as nexists */
            rl_sec_value b = {0};
            rc = sec_value(ld, v, what, &b);
            int kind = b.kind, on = b.num != 0;
            free(b.s);
            if (rc < 0)
                return rc;
            if (kind != RL_SEC_VBOOL)
                return cfg_fail(ld, -EINVAL, "%s: the value of %s must be true or false", what, op);
            if (!on)
                c->op = c->op == RL_SEC_OP_EXISTS ? RL_SEC_OP_NEXISTS : RL_SEC_OP_EXISTS;
        }
        return 0;
    }
    if (!v || is_null(v))
        return cfg_fail(ld, -EINVAL, "%s: operator %s needs a value", what, op);
    int list = c->op == RL_SEC_OP_IN || c->op == RL_SEC_OP_NIN;
    if (list != (v->type == YAML_SEQUENCE_NODE))
        return cfg_fail(ld, -EINVAL, "%s: the value of %s must be %s", what, op,
                        list ? "a list" : "a single value");
    size_t cnt = list ? (size_t)(v->data.sequence.items.top - v->data.sequence.items.start) : 1;
    if (cnt == 0 || cnt > CFG_MAX_LIST)
        return cfg_fail(ld, -EINVAL, "%s: the list must have 1 to %d values", what, CFG_MAX_LIST);
    if (!(c->values = calloc(cnt, sizeof *c->values)))
        return cfg_fail(ld, -ENOMEM, "out of memory");
    for (size_t i = 0; i < cnt; i++) {
        const yaml_node_t *item = list ? node_at(ld, v->data.sequence.items.start[i]) : v;
        if ((rc = sec_value(ld, item, what, &c->values[i])) < 0)
            return rc;
        c->nvalues++;
    }
    int numeric = c->op == RL_SEC_OP_LT || c->op == RL_SEC_OP_GT || c->op == RL_SEC_OP_LTE ||
                  c->op == RL_SEC_OP_GTE;
    if (numeric && c->values[0].kind != RL_SEC_VNUM)
        return cfg_fail(ld, -EINVAL, "%s: the value of %s must be a number", what, op);
    if ((c->op == RL_SEC_OP_CONTAINS || c->op == RL_SEC_OP_NCONTAINS) &&
        c->values[0].kind != RL_SEC_VSTR)
        return cfg_fail(ld, -EINVAL, "%s: the value of %s must be a string", what, op);
    return 0;
}

static int entry_policy(cfg_loader *ld, const yaml_node_t *e)
{
    static const char *const keys[] = {"policy", "groups", NULL};
    static const char *const pkeys[] = {"actions", "resources", "effect", "conditions", NULL};
    rl_config *c = ld->c;
    int rc = entry_keys_check(ld, e, keys);
    if (rc < 0)
        return rc;
    if (c->npolicies >= CFG_MAX_POLICIES)
        return cfg_fail(ld, -EINVAL, "more than %d security policies", CFG_MAX_POLICIES);
    rl_sec_policy *np = realloc(c->policies, (c->npolicies + 1) * sizeof *np);
    if (!np)
        return cfg_fail(ld, -ENOMEM, "out of memory");
    c->policies = np;
    rl_sec_policy *p = &np[c->npolicies++];
    memset(p, 0, sizeof *p);
    if ((rc = sec_ref(ld, "policy id", ld->entry, &p->id)) < 0)
        return rc;
    const yaml_node_t *pol = map_get(ld, e, "policy");
    if (!pol)
        return cfg_fail(ld, -EINVAL, "missing policy (actions, resources, effect)");
    if ((rc = map_check(ld, pol, "policy")) < 0)
        return rc;
    for (yaml_node_pair_t *q = pol->data.mapping.pairs.start; q < pol->data.mapping.pairs.top; q++)
        if (!key_in(scalar_text(node_at(ld, q->key)), pkeys))
            return cfg_fail(ld, -EINVAL, "unknown key '%s' in policy",
                            scalar_text(node_at(ld, q->key)));
    const yaml_node_t *n;
    if (!(n = map_get(ld, pol, "actions")) || is_null(n))
        return cfg_fail(ld, -EINVAL, "missing policy.actions");
    if ((rc = strlist_get(ld, n, "policy.actions", &p->actions, &p->nactions)) < 0)
        return rc;
    if (!(n = map_get(ld, pol, "resources")) || is_null(n))
        return cfg_fail(ld, -EINVAL, "missing policy.resources");
    if ((rc = strlist_get(ld, n, "policy.resources", &p->resources, &p->nresources)) < 0)
        return rc;
    const char *effect;
    if ((rc = literal_get(ld, map_get(ld, pol, "effect"), "policy.effect", &effect)) < 0)
        return rc;
    if (strcmp(effect, "allow") != 0 && strcmp(effect, "deny") != 0)
        return cfg_fail(ld, -EINVAL, "policy.effect '%s' is not allow or deny", effect);
    p->deny = strcmp(effect, "deny") == 0;
    if ((n = map_get(ld, pol, "conditions")) && !is_null(n)) {
        if (n->type != YAML_SEQUENCE_NODE)
            return cfg_fail(ld, -EINVAL, "policy.conditions must be a list");
        size_t cnt = (size_t)(n->data.sequence.items.top - n->data.sequence.items.start);
        if (cnt > CFG_MAX_CONDS)
            return cfg_fail(ld, -EINVAL, "policy.conditions has more than %d items", CFG_MAX_CONDS);
        if (cnt && !(p->conds = calloc(cnt, sizeof *p->conds)))
            return cfg_fail(ld, -ENOMEM, "out of memory");
        for (size_t i = 0; i < cnt; i++) {
            p->nconds++;
            if ((rc = sec_cond(ld, node_at(ld, n->data.sequence.items.start[i]), i,
                               &p->conds[i])) < 0)
                return rc;
        }
    }
    if ((n = map_get(ld, e, "groups")) && !is_null(n)) {
        if ((rc = strlist_get(ld, n, "groups", &p->groups, &p->ngroups)) < 0 ||
            (rc = sec_refs(ld, "group", p->groups, p->ngroups)) < 0)
            return rc;
    }
    return 0;
}

static int entry_scope(cfg_loader *ld, const yaml_node_t *e)
{
    static const char *const keys[] = {"policies", NULL};
    rl_config *c = ld->c;
    int rc = entry_keys_check(ld, e, keys);
    if (rc < 0)
        return rc;
    if (c->nscopes >= CFG_MAX_SCOPES)
        return cfg_fail(ld, -EINVAL, "more than %d security scopes", CFG_MAX_SCOPES);
    rl_sec_scope *ns = realloc(c->scopes, (c->nscopes + 1) * sizeof *ns);
    if (!ns)
        return cfg_fail(ld, -ENOMEM, "out of memory");
    c->scopes = ns;
    rl_sec_scope *s = &ns[c->nscopes++];
    memset(s, 0, sizeof *s);
    if ((rc = sec_ref(ld, "scope id", ld->entry, &s->id)) < 0)
        return rc;
    const yaml_node_t *n = map_get(ld, e, "policies");
    if (n && !is_null(n) &&
        ((rc = strlist_get(ld, n, "policies", &s->policies, &s->npolicies)) < 0 ||
         (rc = sec_refs(ld, "policies", s->policies, s->npolicies)) < 0))
        return rc;
    return 0;
}

static int entry_node(cfg_loader *ld, const yaml_node_t *e)
{
    if (ld->node_entry)
        return cfg_fail(ld, -EINVAL, "a second relay.node entry (the first is %s)", ld->node_entry);
    ld->node_entry = ld->entry;
    int rc = map_fields(ld, e, "relay.node", node_fields, entry_common_keys, NULL);
    if (rc == 0 && !ld->c->tls_cert != !ld->c->tls_key)
        return cfg_fail(ld, -EINVAL, "tls.cert and tls.key must be given together (only tls.%s is "
                                     "set)", ld->c->tls_cert ? "cert" : "key");
    return rc;
}

/* Entry kinds this node reads; a NULL handler accepts the kind (and any keys) and ignores it.
   Ignored entries still count as names that references (application_host...) may point to. */
static const struct {
    const char *kind;
    int (*read)(cfg_loader *ld, const yaml_node_t *e);
} entry_kinds[] = {
    {"env.storage.os", NULL},
    {"process.host", NULL},
    {"ns.dependency", entry_dependency},
    {"process.lua", entry_process_lua},
    {"library.lua", entry_library_lua},
    {"env.variable", entry_env_variable},
    {"function.lua", entry_function_lua},
    {"security.scope", entry_scope},
    {"security.policy", entry_policy},
    {"relay.node", entry_node},
};

static int read_entry(cfg_loader *ld, const yaml_node_t *e, size_t index)
{
    const char *name, *kind = NULL;
    char what[48];
    snprintf(what, sizeof what, "entry #%zu", index + 1);
    if (!e || e->type != YAML_MAPPING_NODE)
        return cfg_fail(ld, -EINVAL, "%s must be a map", what);
    /* The name first, so that every later error (repeated keys included) can name the entry. */
    const yaml_node_t *nn = NULL;
    for (yaml_node_pair_t *p = e->data.mapping.pairs.start; p < e->data.mapping.pairs.top; p++) {
        const yaml_node_t *k = node_at(ld, p->key);
        if (k && k->type == YAML_SCALAR_NODE && strcmp(scalar_text(k), "name") == 0 && !nn)
            nn = node_at(ld, p->value);
    }
    if (!nn || nn->type != YAML_SCALAR_NODE || is_null(nn))
        return cfg_fail(ld, -EINVAL, "%s: missing name", what);
    name = scalar_text(nn);
    if (!name_ok(name))
        return cfg_fail(ld, -EINVAL, "%s: name '%.*s' is not letters, digits, '.', '_' or '-' "
                                     "(at most %d)", what, CFG_MAX_NAME, name, CFG_MAX_NAME);
    ld->entry = name;
    int rc = map_check(ld, e, "the entry");
    if (rc < 0)
        return rc;
    if ((rc = literal_get(ld, map_get(ld, e, "kind"), "kind", &kind)) < 0)
        return rc;
    for (size_t i = 0; i < ld->nentries; i++)
        if (strcmp(ld->entries[i].name, name) == 0)
            return cfg_fail(ld, -EINVAL, "a second entry with this name");
    ld->entries[ld->nentries].name = name;
    ld->entries[ld->nentries].kind = kind;
    ld->nentries++;
    const yaml_node_t *lc = map_get(ld, e, "lifecycle");
    if (lc && !is_null(lc) && lc->type != YAML_MAPPING_NODE)
        return cfg_fail(ld, -EINVAL, "lifecycle must be a map");
    for (size_t i = 0; i < sizeof entry_kinds / sizeof entry_kinds[0]; i++) {
        if (strcmp(entry_kinds[i].kind, kind) == 0) {
            rc = entry_kinds[i].read ? entry_kinds[i].read(ld, e) : 0;
            ld->entry = NULL;
            return rc;
        }
    }
    return cfg_fail(ld, -EINVAL, "unknown kind '%s'", kind);
}

/* The kind of entry `ref` (namespace:name) names in this file, or NULL when it names an entry of
   this namespace that does not exist. *other is set when it names another namespace. */
static const char *ref_kind(cfg_loader *ld, const char *ref, int *other)
{
    const char *colon = strrchr(ref, ':');
    size_t nslen = strlen(ld->c->namespace_);
    *other = !colon || (size_t)(colon - ref) != nslen ||
             strncmp(ref, ld->c->namespace_, nslen) != 0;
    if (*other)
        return NULL;
    for (size_t i = 0; i < ld->nentries; i++)
        if (strcmp(ld->entries[i].name, colon + 1) == 0)
            return ld->entries[i].kind;
    return NULL;
}

/* Checks a reference: an entry of this namespace must exist with the kind wanted; one into
   another namespace cannot be checked from this file and is only logged. */
static int ref_check(cfg_loader *ld, const char *key, const char *ref, const char *want)
{
    int other;
    const char *kind = ref_kind(ld, ref, &other);
    if (other) {
        rl_warn(MOD, "%s: entry %s: %s %s is outside namespace %s; not checked", ld->path,
                ld->entry, key, ref, ld->c->namespace_);
        return 0;
    }
    if (!kind)
        return cfg_fail(ld, -EINVAL, "%s %s names no entry in this file", key, ref);
    if (strcmp(kind, want) != 0)
        return cfg_fail(ld, -EINVAL, "%s %s is of kind %s, not %s", key, ref, kind, want);
    return 0;
}

static int check_refs(cfg_loader *ld)
{
    rl_config *c = ld->c;
    int rc, other;
    ld->entry = ld->dep_entry;
    if ((rc = ref_check(ld, "application_host", c->application_host, "process.host")) < 0)
        return rc;
    if (c->env_storage && (rc = ref_check(ld, "env_storage", c->env_storage, "env.storage.os")) < 0)
        return rc;
    const char *kind = ref_kind(ld, c->user_security_scope, &other);
    if (kind && strcmp(kind, "security.scope") != 0)
        return cfg_fail(ld, -EINVAL, "user_security_scope %s is of kind %s, not security.scope",
                        c->user_security_scope, kind);
    int grouped = kind != NULL;
    for (size_t i = 0; i < c->npolicies; i++)
        for (size_t j = 0; j < c->policies[i].ngroups; j++)
            grouped |= strcmp(c->policies[i].groups[j], c->user_security_scope) == 0;
    if (!grouped)
        rl_warn(MOD, "%s: user_security_scope %s is no security.scope and no policy's group in "
                     "this file; user hubs run with no policies (security.can answers false, "
                     "sends to other users are refused)", ld->path, c->user_security_scope);
    for (size_t i = 0; i < c->nscopes; i++) {
        ld->entry = strchr(c->scopes[i].id, ':') + 1;
        for (size_t j = 0; j < c->scopes[i].npolicies; j++)
            if ((rc = ref_check(ld, "policies:", c->scopes[i].policies[j], "security.policy")) < 0)
                return rc;
    }
    for (size_t i = 0; i < c->npolicies; i++) {
        ld->entry = strchr(c->policies[i].id, ':') + 1;
        for (size_t j = 0; j < c->policies[i].ngroups; j++) {
            kind = ref_kind(ld, c->policies[i].groups[j], &other);
            if (kind && strcmp(kind, "security.scope") != 0)
                return cfg_fail(ld, -EINVAL, "group %s is of kind %s, not security.scope",
                                c->policies[i].groups[j], kind);
        }
    }
    for (size_t i = 0; i < c->nplugins; i++) {
        ld->entry = c->plugins[i].name;
        const char *host = c->plugins[i].default_host;
        if (host && (rc = ref_check(ld, "meta.default_host", host, "process.host")) < 0)
            return rc;
    }
    for (size_t i = 0; i < c->nenv_vars; i++) {
        rl_env_var *v = &c->env_vars[i];
        const char *k = ref_kind(ld, v->storage, &other);
        ld->entry = strrchr(v->id, ':') + 1;
        if (!other && !k)
            return cfg_fail(ld, -EINVAL, "storage %s names no entry in this file", v->storage);
        v->os = k && strcmp(k, "env.storage.os") == 0;
    }
    for (size_t i = 0; i < c->nplugins + c->nlua_entries; i++) {
        const rl_plugin_def *p = i < c->nplugins ? &c->plugins[i] : &c->lua_entries[i - c->nplugins];
        ld->entry = p->name;
        for (size_t j = 0; j < p->nimports; j++) {
            /* an import must be a library.lua entry of this file: the host compiles only those */
            const char *k = ref_kind(ld, p->import_ids[j], &other);
            if (!k || strcmp(k, "library.lua") != 0)
                return cfg_fail(ld, -EINVAL, "imports.%s: %s is not a library.lua entry of this "
                                             "file", p->import_names[j], p->import_ids[j]);
        }
    }
    ld->entry = NULL;
    return 0;
}

/* Longest prefix first so the router can take the first match; stable so that equal lengths
   keep the file's order (insertion sort: n is small and bounded). */
static void plugins_sort(rl_config *c)
{
    for (size_t i = 1; i < c->nplugins; i++) {
        rl_plugin_def t = c->plugins[i];
        size_t tl = strlen(t.prefix), j = i;
        for (; j > 0 && strlen(c->plugins[j - 1].prefix) < tl; j--)
            c->plugins[j] = c->plugins[j - 1];
        c->plugins[j] = t;
    }
}

/* Reads at most CFG_MAX_FILE_BYTES of path into a malloc'd buffer. */
static int read_file(cfg_loader *ld, char **out, size_t *len)
{
    FILE *f = fopen(ld->path, "rb");
    if (!f)
        return cfg_fail(ld, -errno, "cannot open: %s", strerror(errno));
    char *buf = malloc(CFG_MAX_FILE_BYTES + 1);
    if (!buf) {
        fclose(f);
        return cfg_fail(ld, -ENOMEM, "out of memory");
    }
    size_t n = fread(buf, 1, CFG_MAX_FILE_BYTES + 1, f);
    int bad = ferror(f);
    fclose(f);
    if (bad || n > CFG_MAX_FILE_BYTES) {
        free(buf);
        return bad ? cfg_fail(ld, -EIO, "read error")
                   : cfg_fail(ld, -EFBIG, "larger than %u bytes", CFG_MAX_FILE_BYTES);
    }
    buf[n] = '\0';
    *out = buf;
    *len = n;
    return 0;
}

static int yaml_fail(cfg_loader *ld, yaml_parser_t *ps)
{
    if (ps->error == YAML_MEMORY_ERROR)
        return cfg_fail(ld, -ENOMEM, "out of memory");
    return cfg_fail(ld, -EINVAL, "YAML error at line %zu column %zu: %s%s%s",
                    ps->problem_mark.line + 1, ps->problem_mark.column + 1,
                    ps->problem ? ps->problem : "syntax error", ps->context ? " " : "",
                    ps->context ? ps->context : "");
}

/* Parses the loaded document's top level into ld->c. */
static int read_document(cfg_loader *ld)
{
    rl_config *c = ld->c;
    yaml_node_t *root = yaml_document_get_root_node(&ld->doc);
    const char *ns = NULL;
    int rc;
    if (!root)
        return cfg_fail(ld, -EINVAL, "empty file (expected version, namespace, entries)");
    if ((rc = map_check(ld, root, "the top level")) < 0)
        return rc;
    static const char *const top_keys[] = {"version", "namespace", "entries", NULL};
    const yaml_node_pair_t *pairs = root->data.mapping.pairs.start;
    for (const yaml_node_pair_t *p = pairs; p < root->data.mapping.pairs.top; p++) {
        const char *key = scalar_text(node_at(ld, p->key));
        if (!key_in(key, top_keys))
            return cfg_fail(ld, -EINVAL, "unknown top-level key '%s'", key);
    }
    const yaml_node_t *ver = map_get(ld, root, "version");
    if (ver && ver->type != YAML_SCALAR_NODE)
        return cfg_fail(ld, -EINVAL, "version must be a string");
    if (ver && !key_in(scalar_text(ver), file_versions))
        return cfg_fail(ld, -EINVAL, "version '%s' is not supported (this node reads version "
                                     "\"1.0\")", scalar_text(ver));
    if ((rc = literal_get(ld, map_get(ld, root, "namespace"), "namespace", &ns)) < 0)
        return rc;
    if (!name_ok(ns))
        return cfg_fail(ld, -EINVAL, "namespace '%.*s' is not letters, digits, '.', '_' or '-'",
                        CFG_MAX_NAME, ns);
    free(c->namespace_);
    if (!(c->namespace_ = strdup(ns)))
        return cfg_fail(ld, -ENOMEM, "out of memory");

    const yaml_node_t *entries = map_get(ld, root, "entries");
    if (!entries || entries->type != YAML_SEQUENCE_NODE)
        return cfg_fail(ld, -EINVAL, "entries must be a list");
    size_t n = (size_t)(entries->data.sequence.items.top - entries->data.sequence.items.start);
    if (n > CFG_MAX_ENTRIES)
        return cfg_fail(ld, -EINVAL, "more than %d entries", CFG_MAX_ENTRIES);
    if (n && !(ld->entries = calloc(n, sizeof *ld->entries)))
        return cfg_fail(ld, -ENOMEM, "out of memory");
    for (size_t i = 0; i < n; i++)
        if ((rc = read_entry(ld, node_at(ld, entries->data.sequence.items.start[i]), i)) < 0)
            return rc;
    if (!ld->dep_entry)
        return cfg_fail(ld, -EINVAL, "no ns.dependency entry for component wippy/relay");
    if ((rc = check_refs(ld)) < 0)
        return rc;
    plugins_sort(c);
    char why[384];
    if ((rc = config_check(c, why, sizeof why)) < 0)
        return cfg_fail(ld, rc, "%s", why);
    return 0;
}

int rl_config_load(rl_config *c, const char *path, char *err, size_t errlen)
{
    cfg_loader ld;
    yaml_parser_t ps;
    char *text = NULL;
    size_t len = 0;
    int rc, have_parser = 0, have_doc = 0;

    memset(&ld, 0, sizeof ld);
    ld.c = c;
    ld.path = path;
    ld.err = err;
    ld.errlen = errlen;
    const char *slash = strrchr(path, '/');
    if (!slash)
        snprintf(ld.dir, sizeof ld.dir, ".");
    else if (slash == path)
        snprintf(ld.dir, sizeof ld.dir, "/");
    else if ((size_t)(slash - path) < sizeof ld.dir)
        snprintf(ld.dir, sizeof ld.dir, "%.*s", (int)(slash - path), path);
    else
        return cfg_fail(&ld, -EINVAL, "path too long");

    free(c->path);
    if (!(c->path = strdup(path)))
        return cfg_fail(&ld, -ENOMEM, "out of memory");
    if ((rc = read_file(&ld, &text, &len)) < 0)
        goto fail;
    if (!yaml_parser_initialize(&ps)) {
        rc = cfg_fail(&ld, -ENOMEM, "out of memory");
        goto fail;
    }
    have_parser = 1;
    yaml_parser_set_input_string(&ps, (const unsigned char *)text, len);
    if (!yaml_parser_load(&ps, &ld.doc)) {
        rc = yaml_fail(&ld, &ps);
        goto fail;
    }
    have_doc = 1;
    {
        yaml_document_t next;
        if (!yaml_parser_load(&ps, &next)) {
            rc = yaml_fail(&ld, &ps);
            goto fail;
        }
        int more = yaml_document_get_root_node(&next) != NULL;
        yaml_document_delete(&next);
        if (more) {
            rc = cfg_fail(&ld, -EINVAL, "more than one YAML document");
            goto fail;
        }
    }
    rc = read_document(&ld);
fail:
    if (have_doc)
        yaml_document_delete(&ld.doc);
    if (have_parser)
        yaml_parser_delete(&ps);
    free(ld.entries);
    free(text);
    return rc;
}
