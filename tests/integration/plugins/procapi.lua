-- Exercises process.exec (tests/integration/test_procapi.py): values, errors, a spawner's
-- :exec, no EXIT event for an exec'd child, and a caller that blocks while others go on.
local time = require("time")
local funcs = require("funcs")

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

-- funcs.async: futures of calls that block, an error, a raise, a cancel
local function async(conn)
    local r = {}
    local f1 = funcs.async("app:slow", 21)
    local f2 = funcs.new():with_context({a = 1}):async("app:slow", 1)
    r.pending = {f1:is_complete(), f1:result() == nil}
    local p, ok = f1:response():receive()
    if p == nil then
        process.send(conn, "pa_async", {failed = tostring(select(2, f1:result()))})
        return
    end
    r.a1 = {p:data(), ok, f1:is_complete(), f1:result():data(), f1:error() == nil}
    f2:channel():receive()
    r.a2 = f2:result():data()
    local fe = funcs.async("app:slow", -1)
    local none, okc = fe:response():receive()
    local _, e = fe:result()
    local ee, has = fe:error()
    r.fe = {none == nil, okc, e:kind(), e:message(), ee == e, has}
    local fr = funcs.async("app:slow", 13)
    fr:response():receive()
    r.fr = {select(2, fr:result()):kind(), select(2, fr:result()):message()}
    local fc = funcs.async("app:slow", 5)
    local c1 = fc:cancel()
    local c2 = fc:cancel()
    local _, ce = fc:result()
    local cv, cok = fc:response():receive()
    r.fc = {c1, c2, fc:is_canceled(), ce:kind(), cv == nil, cok}
    time.sleep("60ms") -- the canceled call ends; its result is dropped, the instance lives on
    r.call_blocks = {funcs.call("app:slow", 4)} -- funcs.call: the function may block too
    local _, me = funcs.async("app:nope")
    local _, ie = funcs.async("nope")
    r.errs = {me:kind(), ie:kind()}
    process.send(conn, "pa_async", r)
end

local function run(args)
    local inbox = process.inbox()
    while true do
        local msg = inbox:receive()
        local p = msg:payload():data()
        if msg:topic() == "go" then go(p.conn_pid) end
        if msg:topic() == "gated" then gated(p.conn_pid) end
        if msg:topic() == "async" then async(p.conn_pid) end
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
