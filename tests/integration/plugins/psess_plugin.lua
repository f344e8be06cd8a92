-- The session plugin in the platform's shape (wippy.session's src/process/plugin.lua as
-- ../shared/notes/original-module.md section 6 describes it), written as a plugin for the
-- platform would be: type annotations, imports of library.lua entries ("consts", "sessions"),
-- session processes spawned linked and monitored with a context, uuid, the registry, env.
local time = require("time")
local uuid = require("uuid")
local logger = require("logger")
local env = require("env")
local consts = require("consts")
local sessions = require("sessions")

type Args = {user_id: string?, user_hub_pid: string, config: {[string]: any}}
type Payload = {conn_pid: string, request_id: string?, data: {[string]: any}?}

local log = logger:named("session_plugin")
local state = {user_id = nil :: string?, hub = nil :: string?, shutting_down = false}

local function send_error(p: Payload, code: string, message: string)
    process.send(p.conn_pid, "error", {error = code, message = message, request_id = p.request_id})
end

local function announce(topic: string, data: {[string]: any})
    process.send(state.hub :: string, topic, data)
end

local function spawn_session(request_id: string?): (any, string?)
    local ok, id = pcall(uuid.v4)
    if not ok or type(id) ~= "string" then
        return nil, consts.ERR.ID_GEN
    end
    if sessions.count() >= sessions.MAX then -- the least recently active one makes room
        local old = sessions.oldest()
        if old then
            old.status = "closing"
            process.send(old.pid, "finish_and_exit", {reason = "evicted"})
        end
    end
    local pid, err = process.with_context({session_id = id, user_id = state.user_id})
        :spawn_linked_monitored(consts.SESSION_PROCESS, consts.HOST, process.pid())
    if not pid then
        log:warn("session spawn failed", {error = tostring(err)})
        return nil, consts.ERR.SPAWN
    end
    local s = sessions.add(id, pid)
    announce(consts.TOPIC.OPENED, {session_id = id, active_session_ids = sessions.active_ids(),
                                   request_id = request_id})
    return s
end

local handlers: {[string]: (Payload) -> ()} = {}

function handlers.open(p: Payload)
    local data = p.data or {}
    if type(data.session_id) == "string" then -- reconnect to a known session
        local s = sessions.get(data.session_id)
        if s then
            sessions.touch(s)
            announce(consts.TOPIC.OPENED, {session_id = s.id,
                     active_session_ids = sessions.active_ids(), request_id = p.request_id})
            return
        end
    end
    local want = env.get("PSESS_START_TOKEN") or "start"
    if data.start_token ~= want then
        return send_error(p, consts.ERR.TOKEN_INVALID, "A valid start_token is required")
    end
    local s, code = spawn_session(p.request_id)
    if not s then
        send_error(p, code :: string, "The session could not be started")
    end
end

function handlers.close(p: Payload)
    local id = p.data and p.data.session_id
    if type(id) ~= "string" or id == "" then
        return send_error(p, consts.ERR.INVALID_SESSION_ID, "session_id is required")
    end
    local s = sessions.get(id)
    if not s then
        return send_error(p, consts.ERR.NOT_FOUND, "No session " .. id)
    end
    if sessions.count() <= 1 then
        return send_error(p, consts.ERR.LAST, "The last session is kept")
    end
    s.status = "closing"
    process.send(s.pid, "finish_and_exit", {reason = "closed"})
end

local function route(topic: string, p: Payload)
    local id = p.data and p.data.session_id
    local s
    if id ~= nil then
        s = sessions.get(id)
        if not s then
            return send_error(p, consts.ERR.NOT_FOUND, "No session " .. tostring(id))
        end
    else
        s = sessions.latest()
    end
    if not s then -- none yet: one is made for it
        local code
        s, code = spawn_session(p.request_id)
        if not s then
            return send_error(p, code :: string, "The session could not be started")
        end
    end
    sessions.touch(s)
    if topic == "message" then
        process.send(s.pid, "message", {conn_pid = p.conn_pid, data = p.data,
                                        request_id = p.request_id})
    else
        local cmd: {[string]: any} = {}
        for k, v in pairs(p.data or {}) do cmd[k] = v end
        cmd.conn_pid, cmd.request_id = p.conn_pid, p.request_id
        process.send(s.pid, "command", cmd)
    end
end

handlers.message = function(p: Payload) route("message", p) end
handlers.command = function(p: Payload) route("command", p) end

function handlers.shutdown(p: Payload) -- the last client left
    state.shutting_down = true
    log:info("shutdown: finishing sessions", {sessions = #sessions.active_ids()})
    for _, id in ipairs(sessions.active_ids()) do
        local s = sessions.get(id)
        if s then process.send(s.pid, "finish_and_exit", {reason = "shutdown"}) end
    end
end

function handlers.resume(p: Payload) -- the first client joined
    state.shutting_down = false
end

local function on_exit(ev: any)
    local s = sessions.by_pid(ev.from)
    if not s then return end
    local failed = ev.result.error ~= nil
    sessions.remove(s)
    log:info("session ended", {session_id = s.id, failed = tostring(failed), left = sessions.count()})
    local value = ev.result.value
    announce(consts.TOPIC.UPSTREAM_PREFIX .. s.id,
             {type = "update", session_id = s.id, status = failed and "failed" or "idle"})
    announce(consts.TOPIC.CLOSED, {session_id = s.id,
             reason = failed and tostring(ev.result.error) or (value and value.reason or "exited"),
             active_session_ids = sessions.active_ids()})
end

local function run(args: Args): any
    if not args or not args.user_id then
        return nil, "Missing required arguments: user_id"
    end
    state.user_id, state.hub = args.user_id, args.user_hub_pid
    process.set_options({trap_links = true})
    process.registry.register("session_plugin")
    local gc = time.ticker(consts.GC_INTERVAL)
    local inbox, events = process.inbox(), process.events()
    local prefix = consts.TOPIC.UPSTREAM_PREFIX
    while true do
        local r = channel.select({inbox:case_receive(), events:case_receive(),
                                  gc:channel():case_receive()})
        if r.channel == events then
            local ev = r.value
            if ev.kind == process.event.CANCEL then
                gc:stop()
                return {status = "cancelled"}
            elseif ev.kind == process.event.EXIT then
                on_exit(ev)
                if sessions.empty() then
                    gc:stop()
                    return {status = "shutdown", reason = "no_active_sessions"}
                end
            end
        elseif r.channel == inbox then
            local msg = r.value
            local topic: string, from: string? = msg:topic(), msg:from()
            if topic:sub(1, #prefix) == prefix then
                if from and sessions.by_pid(from) then -- only our sessions speak upstream
                    announce(topic, msg:payload():data())
                end
            elseif handlers[topic] then
                handlers[topic](msg:payload():data() or {})
            end
        end
    end
end

return {run = run}
