/* The client-visible error codes: one table, used by hubs, the gateway and metrics. */
#ifndef RL_ERRORS_H
#define RL_ERRORS_H

#include <stddef.h>

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
    X(UNAVAILABLE, "unavailable", 1013, "Node cannot accept connections right now")            \
    X(CONNECT_DENIED, "connect_denied", 1008, "Connection refused by the application")

typedef enum {
#define RL_ERR_ENUM(name, code, close, msg) RL_E_##name,
    RL_ERRORS(RL_ERR_ENUM)
#undef RL_ERR_ENUM
    RL_E_COUNT
} rl_err_code;

const char *rl_err_name(rl_err_code e);
int rl_err_close_code(rl_err_code e);
const char *rl_err_default_message(rl_err_code e);

/* Writes the error data {"error":code,"message":msg,"request_id":rid} into out (cap bytes;
   msg NULL = the default message; rid[0..rid_len) is the raw JSON of the client's request_id,
   omitted when rid_len is 0). Returns the length it needs, like snprintf. */
size_t rl_err_format(char *out, size_t cap, rl_err_code e, const char *msg, const char *rid,
                     size_t rid_len);

struct rl_msg;
/* The "error" message with that data (counts the code); NULL on OOM. */
struct rl_msg *rl_err_msg(rl_err_code e, const char *msg, const char *rid, size_t rid_len);

struct rl_proc;
/* Sends `to` an "error" message from `from` (NULL = the system) with the data above, and counts
   the code; an error that cannot be sent is counted as dropped. */
void rl_err_send(struct rl_proc *from, const char *to, rl_err_code e, const char *msg,
                 const char *rid, size_t rid_len);

#endif
