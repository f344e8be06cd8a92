-- Exercises process.exec (tests/integration/test_procapi.py): values, errors, a spawner's
-- :exec, no EXIT event for an exec'd child, and a caller that blocks while others go on.
local time = require("time")

local CHILD <const> = "app:child"
local HOST <const> = "app:processes"

-- the events of the next `ms` milliseconds
local function events_for(ms)
    local events = process.events()
    local deadline = time.after(ms * time.MILLISECOND)
    local got = {}
    while true do
        local r = channel.select({events:case_receive(), deadline:case_receive()})
        if r.channel == deadline then return got end
        got[#got + 1] = r.value.kind
    end
end

local function go(conn)
    local r = {}
    r.value = process.exec(CHILD, HOST, "value", 2, {x = 3}, nil, "e")
    local v, err = process.exec(CHILD, HOST, "fail", 7)
    r.fail = {v == nil, err}
    v, err = process.exec(CHILD, HOST, "crash")
    r.crash = {v == nil, err}
    v, err = process.exec("app:nope", HOST)
    r.unknown = {v == nil, err}
    r.ctx = process.with_context({request_id = "req-9"}):with_message("hello", {a = 2})
        :exec(CHILD, HOST, "ctx")
    r.events = events_for(100) -- exec'd children give no EXIT on the events channel
    process.send(conn, "pa", r)
end

-- blocks in exec until the client says release (a task of this instance takes that message)
local function gated(conn)
    coroutine.spawn(function()
        local m = process.inbox():receive()
        if m:topic() == "kill" then error("killed while in exec", 0) end
        process.send(process.registry.lookup("gate"), "open", m:topic())
    end)
    process.send(conn, "pa_wait", {})
    local v = process.with_context({}):with_name("gate"):exec(CHILD, HOST, "wait")
    process.send(conn, "pa_done", {value = v})
end

local function run(args)
    local inbox = process.inbox()
    while true do
        local msg = inbox:receive()
        local p = msg:payload():data()
        if msg:topic() == "go" then go(p.conn_pid) end
        if msg:topic() == "gated" then gated(p.conn_pid) end
        if msg:topic() == "ping" then process.send(p.conn_pid, "pa_pong", {}) end
        if msg:topic() == "limit" then
            local a = process.spawn(CHILD, HOST, "wait")
            local b = process.spawn(CHILD, HOST, "wait")
            local v, err = process.exec(CHILD, HOST, "value", 1, {x = 1})
            process.terminate(a)
            process.terminate(b)
            process.send(p.conn_pid, "pa_limit", {v == nil, err})
        end
    end
end

return {run = run}
