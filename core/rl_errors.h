/* The client-visible error codes: one table, used by hubs, the gateway and metrics. */
#ifndef RL_ERRORS_H
#define RL_ERRORS_H

/* X(name, code string, WebSocket close code or 0 = stays open, default message) */
#define RL_ERRORS(X)                                                                              \
    X(MISSING_USER_ID, "missing_user_id", 1008, "User ID is required for connection")            \
    X(MAX_CONNECTIONS, "max_connections_reached", 1008, "Maximum connection limit reached")      \
    X(HUB_CREATION_FAILED, "hub_creation_failed", 1011, "Failed to create user hub")             \
    X(INVALID_JSON, "invalid_json", 0, "Failed to decode JSON message")                          \
    X(UNKNOWN_COMMAND, "unknown_command", 0, "Message type is required")                         \
    X(PLUGIN_NOT_FOUND, "plugin_not_found", 0, "No plugin found for command")                    \
    X(PLUGIN_FAILED, "plugin_failed", 0, "Plugin unavailable")                                   \
    X(MESSAGE_TOO_LARGE, "message_too_large", 1009, "Message exceeds max_message_bytes")         \
    X(OVERLOADED, "overloaded", 0, "Queue full, message not accepted")                           \
    X(SLOW_CONSUMER, "slow_consumer", 1008, "Outbound queue full: client does not read")         \
    X(UNAVAILABLE, "unavailable", 1013, "Node cannot accept connections right now")

typedef enum {
#define RL_ERR_ENUM(name, code, close, msg) RL_E_##name,
    RL_ERRORS(RL_ERR_ENUM)
#undef RL_ERR_ENUM
    RL_E_COUNT
} rl_err_code;

const char *rl_err_name(rl_err_code e);
int rl_err_close_code(rl_err_code e);
const char *rl_err_default_message(rl_err_code e);

/* Builds the payload {"error":code,"message":msg,"request_id":rid} (rid omitted when NULL;
   rid_json is raw JSON, e.g. "\"r1\"" or "42"). Returns a malloc'd string (caller frees) or NULL. */
char *rl_err_payload(rl_err_code e, const char *msg, const char *rid_json);

struct cJSON;
/* Sends `to` an "error" message from `from`, echoing the request_id of req (the client's parsed
   message, or NULL), and counts the code; an error that cannot be sent is counted as dropped. */
void rl_err_send(const char *from, const char *to, rl_err_code e, const char *msg,
                 const struct cJSON *req);

#endif
