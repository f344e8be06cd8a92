/* relay-node: command line, start-up, signals and the ordered shutdown of one node. */
#include <errno.h>
#include <getopt.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>
#include <uv.h>

#include "rl_api.h"
#include "rl_api_stream.h"
#include "rl_central.h"
#include "rl_cluster.h"
#include "rl_placement_redis.h"
#include "rl_config.h"
#include "rl_gateway.h"
#include "rl_http_client.h"
#include "rl_hub.h"
#include "rl_json.h"
#include "rl_jwt.h"
#include "rl_log.h"
#include "rl_lua.h"
#include "rl_pg.h"
#include "rl_pg_redis.h"
#include "rl_security.h"
#include "rl_metrics.h"
#include "rl_spawn.h"
#include "rl_proc.h"
#include "rl_version.h"


static struct {
    uv_loop_t loop;
    rl_config cfg;
    uv_signal_t sigterm, sigint, sighup;
    uv_timer_t drain;
    uint64_t drain_deadline;
    int draining;
} app;

static void usage(FILE *out)
{
    fprintf(out,
            "usage: relay-node -c FILE [--check] [--listen HOST:PORT] [--node-id ID] [--redis URL]\n"
            "       relay-node token --sub ID [--ttl 1h] [--meta JSON] -c FILE\n"
            "  -c, --config FILE   YAML config (the spec's entries format)\n"
            "      --check         validate the config and the plugin sources, then exit\n"
            "      --listen H:P    listen address (RELAY_LISTEN)\n"
            "      --node-id ID    node id (RELAY_NODE_ID)\n"
            "      --redis URL     redis://host:port[/db] or redis+sentinel://h1:p1,h2:p2/master:\n"
            "                      join a cluster (RELAY_REDIS_URL)\n"
            "  -V, --version       print the version\n"
            "  token               print an HS256 token for user ID signed with the config's\n"
            "                      auth.secret (or RELAY_JWT_SECRET), valid for --ttl (default 1h)\n"
            "                      with --meta (a JSON object) as its meta claim\n");
}

#define TOKEN_MAX_TTL_MS (366ULL * 24 * 3600 * 1000)

/* `relay-node token`: mints what the gateway accepts (sub, iat, exp, meta, and iss/aud when the
   config checks them), so that nobody writes a minter of their own. Exit 0, 1 (config, secret)
   or 2 (usage). */
static int token_main(int argc, char **argv)
{
    static const struct option opts[] = {
        {"config", required_argument, NULL, 'c'}, {"sub", required_argument, NULL, 's'},
        {"ttl", required_argument, NULL, 't'},    {"meta", required_argument, NULL, 'm'},
        {"help", no_argument, NULL, 'h'},         {NULL, 0, NULL, 0},
    };
    const char *path = NULL, *sub = NULL, *ttl = "1h", *meta = NULL;
    int c;
    while ((c = getopt_long(argc, argv, "c:h", opts, NULL)) != -1) {
        switch (c) {
        case 'c': path = optarg; break;
        case 's': sub = optarg; break;
        case 't': ttl = optarg; break;
        case 'm': meta = optarg; break;
        case 'h': usage(stdout); return 0;
        default: usage(stderr); return 2;
        }
    }
    uint64_t ttl_ms;
    if (!path || !sub || optind != argc) {
        usage(stderr);
        return 2;
    }
    if (!*sub) {
        fprintf(stderr, "relay-node token: --sub must not be empty\n");
        return 2;
    }
    if (rl_duration_parse(ttl, &ttl_ms) < 0 || ttl_ms < 1000 || ttl_ms > TOKEN_MAX_TTL_MS) {
        fprintf(stderr, "relay-node token: --ttl '%s' is not a duration from 1s to 366 days\n", ttl);
        return 2;
    }
    cJSON *meta_v = NULL;
    if (meta && (!(meta_v = rl_json_parse(meta, strlen(meta))) || !cJSON_IsObject(meta_v))) {
        fprintf(stderr, "relay-node token: --meta is not a JSON object\n");
        cJSON_Delete(meta_v);
        return 2;
    }
    char err[512];
    int status = 1;
    rl_config_defaults(&app.cfg);
    cJSON *claims = cJSON_CreateObject();
    char *json = NULL, *tok = NULL;
    if (rl_config_load(&app.cfg, path, err, sizeof err) < 0 ||
        rl_config_apply_env(&app.cfg, err, sizeof err) < 0) {
        fprintf(stderr, "relay-node: %s\n", err);
        goto out;
    }
    if (!app.cfg.jwt_secret || !app.cfg.jwt_secret[0]) {
        fprintf(stderr, "relay-node token: %s: no secret (relay.node auth.secret or "
                        "RELAY_JWT_SECRET)\n", path);
        goto out;
    }
    if (app.cfg.auth_mode != RL_AUTH_JWT)
        fprintf(stderr, "relay-node token: warning: %s is in insecure mode; the node will not "
                        "read this token\n", path);
    double now = (double)time(NULL), exp = now + (double)((ttl_ms + 999) / 1000);
    if (!claims || !cJSON_AddStringToObject(claims, "sub", sub) ||
        !cJSON_AddNumberToObject(claims, "iat", now) || !cJSON_AddNumberToObject(claims, "exp", exp) ||
        (app.cfg.jwt_issuer && !cJSON_AddStringToObject(claims, "iss", app.cfg.jwt_issuer)) ||
        (app.cfg.jwt_audience && !cJSON_AddStringToObject(claims, "aud", app.cfg.jwt_audience))) {
        fprintf(stderr, "relay-node token: out of memory\n");
        goto out;
    }
    if (meta_v) {
        cJSON_AddItemToObject(claims, "meta", meta_v);
        meta_v = NULL;
    }
    if (!(json = cJSON_PrintUnformatted(claims)) ||
        !(tok = rl_jwt_sign_hs256(json, app.cfg.jwt_secret, strlen(app.cfg.jwt_secret)))) {
        fprintf(stderr, "relay-node token: cannot sign the token\n");
        goto out;
    }
    printf("%s\n", tok);
    status = 0;
out:
    free(tok);
    cJSON_free(json);
    cJSON_Delete(claims);
    cJSON_Delete(meta_v);
    rl_config_free(&app.cfg);
    return status;
}

static void stop_loop_handles(void)
{
    uv_close((uv_handle_t *)&app.sigterm, NULL);
    uv_close((uv_handle_t *)&app.sigint, NULL);
    uv_close((uv_handle_t *)&app.sighup, NULL);
    /* libuv restored the default dispositions: a late signal must not kill the process while
       it finishes its shutdown. */
    signal(SIGTERM, SIG_IGN);
    signal(SIGINT, SIG_IGN);
    signal(SIGHUP, SIG_IGN);
    uv_close((uv_handle_t *)&app.drain, NULL);
}

/* Polls the drain: done when every client is gone or the deadline passed. */
static void drain_tick(uv_timer_t *t)
{
    size_t left = rl_gateway_conn_count();
    if (left > 0 && rl_now_ms() < app.drain_deadline)
        return;
    if (left > 0)
        rl_warn("node", "drain timeout: %zu connections still open", left);
    uv_timer_stop(t);
    rl_api_stream_stop();
    rl_api_stop();
    rl_central_stop();
    rl_pg_redis_stop();
    rl_cluster_stop();
    rl_lua_close();
    rl_gateway_stop();
    rl_hc_stop(); /* after both of its users: what is left in flight is cancelled */
    stop_loop_handles();
}

static void on_signal(uv_signal_t *s, int signum)
{
    (void)s;
    if (signum == SIGHUP) {
        char err[512];
        if (rl_lua_reload(err, sizeof err) == 0)
            rl_info("node", "SIGHUP: plugin sources reloaded; new plugin processes run them");
        else
            rl_error("node", "SIGHUP: reload failed, keeping the running code: %s", err);
        return;
    }
    if (app.draining) {
        rl_warn("node", "second signal: stopping now");
        app.drain_deadline = 0;
        return;
    }
    app.draining = 1;
    rl_info("node", "%s: draining (timeout %llu ms)", signum == SIGTERM ? "SIGTERM" : "SIGINT",
            (unsigned long long)app.cfg.drain_timeout_ms);
    app.drain_deadline = rl_now_ms() + app.cfg.drain_timeout_ms;
    rl_central_drain();
    rl_gateway_close_all(1001, "going away");
    uv_timer_start(&app.drain, drain_tick, 0, 20);
}

/* A start that fails after the gateway's turn: the layers started so far stop, the loop runs
   until their handles are closed, then the gateway's second destroy (stack.md, shutdown). */
static void stop_started_layers(void)
{
    rl_central_stop();
    rl_pg_redis_stop();
    rl_cluster_stop();
    rl_lua_close();
    rl_gateway_stop();
    rl_hc_stop();
    uv_run(&app.loop, UV_RUN_DEFAULT);
    rl_gateway_free();
}

int main(int argc, char **argv)
{
    static const struct option opts[] = {
        {"config", required_argument, NULL, 'c'}, {"check", no_argument, NULL, 'k'},
        {"listen", required_argument, NULL, 'l'}, {"node-id", required_argument, NULL, 'n'},
        {"redis", required_argument, NULL, 'r'},  {"version", no_argument, NULL, 'V'},
        {"help", no_argument, NULL, 'h'},         {NULL, 0, NULL, 0},
    };
    if (argc > 1 && strcmp(argv[1], "token") == 0)
        return token_main(argc - 1, argv + 1);
    const char *path = NULL, *listen = NULL, *node_id = NULL, *redis = NULL;
    int check = 0, c;
    while ((c = getopt_long(argc, argv, "c:Vh", opts, NULL)) != -1) {
        switch (c) {
        case 'c': path = optarg; break;
        case 'k': check = 1; break;
        case 'l': listen = optarg; break;
        case 'n': node_id = optarg; break;
        case 'r': redis = optarg; break;
        case 'V': printf("relay-node %s\n", RL_VERSION); return 0;
        case 'h': usage(stdout); return 0;
        default: usage(stderr); return 2;
        }
    }
    if (!path || optind != argc) {
        usage(stderr);
        return 2;
    }
    signal(SIGPIPE, SIG_IGN);
    const char *lvl = getenv("RELAY_LOG_LEVEL");
    rl_log_level level;
    if (lvl && rl_log_level_parse(lvl, &level) == 0)
        rl_log_set_level(level);

    char err[512];
    rl_config_defaults(&app.cfg);
    if (rl_config_load(&app.cfg, path, err, sizeof err) < 0 ||
        rl_config_apply_env(&app.cfg, err, sizeof err) < 0 ||
        (listen && rl_config_set_listen(&app.cfg, listen, err, sizeof err) < 0)) {
        fprintf(stderr, "relay-node: %s\n", err);
        rl_config_free(&app.cfg);
        return 1;
    }
    if (node_id) {
        free(app.cfg.node_id);
        app.cfg.node_id = strdup(node_id);
    }
    if (redis) {
        free(app.cfg.redis_url);
        app.cfg.redis_url = strdup(redis);
    }
    if (app.cfg.auth_mode == RL_AUTH_JWT && (!app.cfg.jwt_secret || !app.cfg.jwt_secret[0])) {
        fprintf(stderr, "relay-node: %s: auth mode jwt needs a secret (relay.node auth.secret or "
                        "RELAY_JWT_SECRET); refusing to start\n", path);
        rl_config_free(&app.cfg);
        return 1;
    }

    uv_loop_init(&app.loop);
    int rc = rl_node_init(&app.loop, app.cfg.node_id);
    if (rc < 0) {
        fprintf(stderr, "relay-node: %s: invalid node id '%s' (letters, digits, _ and -)\n", path,
                app.cfg.node_id);
        rl_config_free(&app.cfg);
        return 1;
    }
    int status = 0;
    if (rl_sec_init(&app.cfg) < 0) {
        fprintf(stderr, "relay-node: %s: security policies: out of memory\n", path);
        status = 1;
        goto out_node;
    }
    if (rl_pg_start(app.cfg.pg_max_groups, app.cfg.pg_max_members) < 0) {
        fprintf(stderr, "relay-node: process groups: out of memory\n");
        status = 1;
        goto out_node;
    }
    if (rl_lua_init(&app.cfg, err, sizeof err) < 0) {
        fprintf(stderr, "relay-node: %s\n", err);
        status = 1;
        goto out_node;
    }
    if (check) {
        if (rl_gateway_check_listen(&app.cfg, err, sizeof err) < 0 ||
            rl_gateway_check_tls(&app.cfg, err, sizeof err) < 0) {
            fprintf(stderr, "relay-node: %s: %s\n", path, err);
            status = 1;
            goto out_lua;
        }
        printf("%s: ok (%zu plugins)\n", path, app.cfg.nplugins);
        goto out_lua;
    }
    if (app.cfg.redis_url && rl_cluster_start(&app.cfg, err, sizeof err) < 0) {
        fprintf(stderr, "relay-node: %s: redis: %s\n", path, err);
        status = 1;
        goto out_lua;
    }
    if (rl_cluster_enabled())
        rl_pg_redis_start(&app.cfg); /* process groups across the nodes */
    if (app.cfg.auth_mode == RL_AUTH_INSECURE)
        rl_warn("node", "auth mode insecure: any client can claim any user_id (development only)");
    /* Placement: local counts standalone; the user's lease and exact counts in Redis in a cluster. */
    rl_central_set_placement(rl_cluster_enabled() ? rl_placement_redis() : rl_placement_local());
    if ((rc = rl_central_start(&app.cfg)) < 0) {
        fprintf(stderr, "relay-node: cannot start the central hub (%d)\n", rc);
        rl_pg_redis_stop();
        rl_cluster_stop();
        status = 1;
        goto out_lua;
    }
    /* The wiring: hubs start plugins through the plugin host, connections join through the
       central hub, /metrics shows the hubs' and the central's gauges. */
    rl_spawner_set(rl_lua_spawn);
    rl_sec_set_locate(rl_central_locate); /* process.send to "user.<id>": the API's look-up */
    rl_gateway_set_central(rl_central_pid());
    rl_metrics_add_source(rl_central_metrics);
    rl_metrics_add_source(rl_hub_metrics);
    rl_metrics_add_source(rl_lua_metrics);
    rl_metrics_add_source(rl_hc_metrics);
    if (rl_gateway_start(&app.loop, &app.cfg, err, sizeof err) < 0) {
        fprintf(stderr, "relay-node: %s\n", err);
        stop_started_layers();
        status = 1;
        goto out_node;
    }
    /* The server API: its own listener beside the gateway's; requests find users' hubs through
       the central hub (and Redis), the node list through the cluster. */
    if (app.cfg.api_host || app.cfg.api_stream) {
        if (rl_cluster_enabled())
            rl_api_set_users_fn(rl_api_cluster_users);
        rc = rl_api_start(&app.cfg, rl_central_locate, rl_cluster_enabled() ? rl_cluster_nodes : NULL);
        if (rc < 0)
            snprintf(err, sizeof err, "cannot start (%d)", rc);
        else if (app.cfg.api_host)
            rc = rl_gateway_add_listener("api", app.cfg.api_host, app.cfg.api_port,
                                         rl_api_protocols(), err, sizeof err);
        if (rc == 0 && app.cfg.api_stream)
            rc = rl_api_stream_start(&app.cfg, err, sizeof err);
        if (rc < 0) {
            fprintf(stderr, "relay-node: api: %s\n", err);
            rl_api_stream_stop();
            rl_api_stop();
            stop_started_layers();
            status = 1;
            goto out_node;
        }
        rl_metrics_add_source(rl_api_metrics);
        if (app.cfg.api_host)
            rl_info("node", "server API listening on %s:%d (%zu keys)", app.cfg.api_host,
                    app.cfg.api_port, app.cfg.napi_keys);
        if (app.cfg.api_stream) {
            rl_metrics_add_source(rl_api_stream_metrics);
            rl_info("node", "server API reading the Redis stream %sapi", app.cfg.redis_prefix);
        }
    }
    uv_signal_init(&app.loop, &app.sigterm);
    uv_signal_init(&app.loop, &app.sigint);
    uv_signal_init(&app.loop, &app.sighup);
    uv_timer_init(&app.loop, &app.drain);
    if (rl_cluster_enabled()) { /* admission, /readyz and relay_redis_up follow the round trip */
        rl_gateway_set_ready_fn(rl_cluster_ready);
        rl_metrics_set_redis(rl_cluster_ready);
    }
    uv_signal_start(&app.sigterm, on_signal, SIGTERM);
    uv_signal_start(&app.sigint, on_signal, SIGINT);
    uv_signal_start(&app.sighup, on_signal, SIGHUP);
    rl_info("node", "relay-node %s node %s.%s listening on %s:%d%s (%zu plugins, auth %s, %s)",
            RL_VERSION, rl_node_id(), rl_node_incarnation(), app.cfg.listen_host,
            app.cfg.listen_port, app.cfg.ws_path, app.cfg.nplugins,
            app.cfg.auth_mode == RL_AUTH_JWT ? "jwt" : "insecure",
            app.cfg.redis_url ? "cluster" : "standalone");
    uv_run(&app.loop, UV_RUN_DEFAULT);
    rl_gateway_free();
    rl_info("node", "stopped");
    goto out_node;

out_lua:
    rl_lua_close();
out_node:
    rl_pg_stop();
    rl_sec_close();
    rl_node_close();
    uv_run(&app.loop, UV_RUN_DEFAULT);
    if (uv_loop_close(&app.loop) != 0)
        rl_warn("node", "loop closed with handles left");
    rl_config_free(&app.cfg);
    return status;
}
