/* The node's configuration: the spec's YAML entries file, environment storage, RELAY_* overrides. */
#ifndef RL_CONFIG_H
#define RL_CONFIG_H

#include <stddef.h>
#include <stdint.h>

typedef enum { RL_AUTH_JWT = 0, RL_AUTH_INSECURE = 1 } rl_auth_mode;

typedef struct rl_plugin_def {
    char *name;          /* entry name, e.g. "session_plugin" */
    char *id;            /* namespace:name, e.g. "app:session_plugin" (the welcome's process_id) */
    char *prefix;        /* meta.command_prefix, non-empty */
    int auto_start;      /* meta.auto_start */
    char *default_host;  /* meta.default_host or NULL */
    char *source_path;   /* source: file://X resolved against the config file's directory */
    char *method;        /* "run" by default */
    char **modules;      /* modules: [...] */
    size_t nmodules;
    int lua_kind;        /* RL_LUA_ENTRY_*: what kind of Lua entry this is */
    char **import_names; /* imports: {name: namespace:entry} of library.lua entries */
    char **import_ids;
    size_t nimports;
} rl_plugin_def;

/* Kinds of Lua entries (rl_plugin_def.lua_kind). */
enum { RL_LUA_ENTRY_PLUGIN = 0, RL_LUA_ENTRY_PROCESS, RL_LUA_ENTRY_LIBRARY, RL_LUA_ENTRY_FUNCTION };

/* An env.variable entry: what the env module may read (a name no variable declares is not
   readable, as on the platform). */
typedef struct rl_env_var {
    char *id;     /* namespace:name */
    char *name;   /* the public name (`variable`), or NULL: reachable by id only */
    char *key;    /* the OS variable read (env.storage.os): `variable`, else the entry name */
    char *deflt;  /* `default`, or NULL */
    char *storage; /* the storage entry (namespace:name) */
    int os;       /* the storage is env.storage.os (else no value but the default) */
} rl_env_var;

/* security.policy and security.scope entries (the platform's shape; docs/configuration.md). */
#define RL_SEC_OPS(X)                                                                            \
    X(EQ, "eq") X(NE, "ne") X(LT, "lt") X(GT, "gt") X(LTE, "lte") X(GTE, "gte") X(IN, "in")     \
    X(NIN, "nin") X(EXISTS, "exists") X(NEXISTS, "nexists") X(CONTAINS, "contains")             \
    X(NCONTAINS, "ncontains")
typedef enum {
#define RL_SEC_OP_ENUM(id, name) RL_SEC_OP_##id,
    RL_SEC_OPS(RL_SEC_OP_ENUM)
#undef RL_SEC_OP_ENUM
    RL_SEC_OP_COUNT
} rl_sec_op;

typedef enum { RL_SEC_VSTR = 1, RL_SEC_VNUM, RL_SEC_VBOOL } rl_sec_vkind;
typedef struct rl_sec_value {
    rl_sec_vkind kind;
    char *s;    /* the text as written (always set) */
    double num; /* RL_SEC_VNUM: the number; RL_SEC_VBOOL: 0 or 1 */
} rl_sec_value;

typedef struct rl_sec_cond {
    char *field;          /* actor.id, actor.meta.X, action, resource or meta.X */
    rl_sec_op op;
    rl_sec_value *values; /* one, or the list of in/nin; none for exists/nexists */
    size_t nvalues;
} rl_sec_cond;

typedef struct rl_sec_policy {
    char *id;       /* namespace:name */
    int deny;       /* effect: deny (else allow) */
    char **actions; /* patterns; '*' matches any run of bytes */
    size_t nactions;
    char **resources;
    size_t nresources;
    rl_sec_cond *conds; /* all must hold */
    size_t nconds;
    char **groups; /* scope ids (namespace:name) the policy belongs to */
    size_t ngroups;
} rl_sec_policy;

typedef struct rl_sec_scope {
    char *id;        /* namespace:name */
    char **policies; /* policy ids it lists (namespace:name) */
    size_t npolicies;
} rl_sec_scope;

typedef struct rl_config {
    char *path;      /* the file read (NULL for built-in defaults) */
    char *namespace_;

    /* ns.dependency wippy/relay parameters */
    char *application_host;
    char *env_storage;
    char *user_security_scope;
    int max_connections_per_user;          /* default 5 */
    int queue_multiplier;                  /* default 100 */
    uint64_t user_hub_inactivity_timeout_ms; /* default 7200 s */

    /* process.lua entries with meta.type relay.plugin, sorted by prefix length, longest first */
    rl_plugin_def *plugins;
    size_t nplugins;
    /* the other Lua entries: process.lua without meta.type relay.plugin (spawnable children),
       library.lua (imports) and function.lua (funcs.call), in the file's order */
    rl_plugin_def *lua_entries;
    size_t nlua_entries;
    rl_env_var *env_vars; /* env.variable entries, in the file's order */
    size_t nenv_vars;

    /* security.policy and security.scope entries, in file order */
    rl_sec_policy *policies;
    size_t npolicies;
    rl_sec_scope *scopes;
    size_t nscopes;

    /* relay.node entry (all optional) and overrides */
    char *listen_host;        /* default "127.0.0.1" */
    int listen_port;          /* default 8080 */
    char *ws_path;            /* default "/ws" */
    char *node_id;            /* default "n1" */
    char *redis_url;          /* NULL = standalone */
    char *redis_prefix;       /* default "relay:" */
    rl_auth_mode auth_mode;   /* default jwt */
    char *jwt_secret;         /* HS256 secret */
    char *jwt_issuer;         /* checked when set */
    char *jwt_audience;       /* checked when set */
    char *tls_cert;           /* tls.cert: absolute path of a readable PEM file; NULL = plain */
    char *tls_key;            /* tls.key: set exactly when tls_cert is */
    char **allowed_origins;   /* empty = any origin */
    size_t norigins;
    size_t max_message_bytes;      /* default 65536 */
    size_t max_outbound_bytes;     /* default 1 MiB per connection */
    uint64_t ping_interval_ms;     /* default 30000 */
    uint64_t ping_timeout_ms;      /* dead-peer timeout, default 60000 */
    uint64_t handshake_timeout_ms; /* default 10000 */
    uint64_t drain_timeout_ms;     /* default 10000 */
    uint64_t node_ttl_ms;          /* default 5000 */
    uint64_t lease_ttl_ms;         /* default 5000 */
    int console;                   /* serve the console page at / (default 0) */
    uint64_t lua_instruction_budget; /* per resume, default 10,000,000 */
    size_t lua_memory_limit;         /* bytes for the node's Lua state, default 256 MiB */
    size_t plugin_memory_limit;      /* bytes one instance holds (message bodies too), 16 MiB */
    size_t plugin_queue;             /* plugin mailbox size, default 1024 */
    size_t lua_result_max;      /* bytes of one string.rep/table.concat/gsub result, 16 MiB */
    size_t plugin_max_children; /* live children one instance spawned, default 64 */
    size_t plugin_max_timers;   /* live timers, tickers and sleeps of one instance, 256 */
    size_t plugin_max_channels; /* channels one instance made with channel.new, 10,000 */
    /* the same for all of one user's plugin instances on the node (its whole tree) */
    size_t plugin_user_max_processes; /* live instances, the hub's plugins too, default 256 */
    size_t plugin_user_max_timers;    /* live timers, tickers and sleeps, default 512 */
    size_t plugin_user_max_channels;  /* live channels made with channel.new, 20,000 */
    /* process groups (core/rl_pg.h, the plugins' pg module) */
    size_t pg_max_scopes;  /* pg scope handles one instance holds open, default 16 */
    size_t pg_max_groups;  /* joins one process (plugin or hub) holds, default 64 */
    size_t pg_max_members; /* joins one group holds on a node, default 10,000 */
    /* relay.node api: the server API (api/), off while api_host is NULL */
    char *api_host;                  /* api.listen */
    int api_port;
    char **api_keys;                 /* api.keys: bearer keys, usually ${VAR} from env storage */
    size_t napi_keys;
    size_t api_max_body;             /* api.max_body, default 1 MiB */
    uint64_t api_rate;               /* api.rate: requests/s per key, default 100; 0 = no limit */
    uint64_t api_burst;              /* api.burst, default 200 */
    uint64_t api_idempotency_ttl_ms; /* api.idempotency_ttl, default 10 min */
    char **api_cors_origins;         /* api.cors_origins: origins the API answers CORS for */
    size_t napi_cors_origins;
    int api_stream;                  /* api.stream: read <prefix>api (needs redis), default 0 */
    uint64_t api_stream_claim_after_ms; /* api.stream_claim_after, default 30 s */
    uint64_t api_stream_result_ttl_ms;  /* api.stream_result_ttl, default 1 h */
    uint64_t api_stream_maxlen;         /* api.stream_maxlen: ~entries per stream, 100,000 */
    /* relay.node http: the plugins' http module (plugins/rl_lua_http.c) */
    char **http_allow;               /* http.allow: URL patterns (rl_urlmatch.h); none = no access */
    size_t nhttp_allow;
    uint64_t http_timeout_ms;        /* http.timeout: default and longest per request, 10 s */
    size_t http_max_response;        /* http.max_response_bytes: body bytes, default 1 MiB */
    size_t http_max_request;         /* http.max_request_bytes: body bytes sent, default 1 MiB */
    size_t http_max_per_instance;    /* http.max_concurrent: in flight per instance, default 4 */
    size_t http_max_node;            /* http.max_concurrent_node: in flight per node, default 64 */
    /* relay.node connect_hook: ask the backend before a user joins (edge/rl_hook.c) */
    char *hook_url;                  /* connect_hook.url: off while NULL */
    uint64_t hook_timeout_ms;        /* connect_hook.timeout, default 2 s (and the handshake's) */
    char *hook_on_failure;           /* connect_hook.on_failure: "refuse" (NULL too) or "accept" */
    char **hook_headers;             /* connect_hook.pass_headers: request headers passed on */
    size_t nhook_headers;
    int redis_inflight_max;          /* admissions in flight to Redis per node (acquisitions:
                                        half), default 2048 */
} rl_config;

/* Fills c with the defaults above (no plugins). */
void rl_config_defaults(rl_config *c);
/* Reads the YAML file into c (already defaulted). On error returns negative and writes
   "FILE: entry NAME: reason" into err. Resolves plugin sources and tls.cert/tls.key, checks
   they are readable (their contents are checked by the gateway when it starts).
   Lua syntax is checked by the plugin host, not here. */
int rl_config_load(rl_config *c, const char *path, char *err, size_t errlen);
/* Applies RELAY_* environment overrides (RELAY_LISTEN, RELAY_NODE_ID, RELAY_REDIS_URL,
   RELAY_AUTH_MODE, RELAY_JWT_SECRET, RELAY_TLS_CERT, RELAY_TLS_KEY (paths relative to the working
   directory), RELAY_MAX_CONNECTIONS_PER_USER, RELAY_QUEUE_MULTIPLIER,
   RELAY_USER_HUB_INACTIVITY_TIMEOUT). Same error convention. */
int rl_config_apply_env(rl_config *c, char *err, size_t errlen);
/* "HOST:PORT" -> listen_host/listen_port. */
int rl_config_set_listen(rl_config *c, const char *hostport, char *err, size_t errlen);
/* Frees everything c owns. */
void rl_config_free(rl_config *c);

/* Parses "2s", "150ms", "7200s", "1m", "1h30m", "1.5s" into milliseconds; -EINVAL if bad. */
int rl_duration_parse(const char *s, uint64_t *ms);

#endif
