-- library.lua (imported as "consts"): the session plugin's constants, as the platform's
-- session module keeps them in src/consts.lua.
type ErrorCode = "token_invalid" | "invalid_session_id" | "session_not_found"
    | "session_spawn_error" | "session_id_gen_error" | "last_session"

local consts = {
    SESSION_PROCESS = "app:psess_session",
    HOST = "app:processes",
    MAX_SESSIONS_PER_USER = 3,
    GC_INTERVAL = "300s",
    TOPIC = {
        OPENED = "session.opened",
        CLOSED = "session.closed",
        UPSTREAM_PREFIX = "session:",
    },
    ERR = {
        TOKEN_INVALID = "token_invalid" :: ErrorCode,
        INVALID_SESSION_ID = "invalid_session_id" :: ErrorCode,
        NOT_FOUND = "session_not_found" :: ErrorCode,
        SPAWN = "session_spawn_error" :: ErrorCode,
        ID_GEN = "session_id_gen_error" :: ErrorCode,
        LAST = "last_session" :: ErrorCode,
    },
}

return consts
