-- Exercises the platform's API as a plugin written for it would (tests/integration/test_fidelity.py):
-- type annotations, an imported library, spawned plain processes with every argument, exit
-- values, links, with_context, errors, env, funcs.
local json = require("json")
local time = require("time")
local env = require("env")
local funcs = require("funcs")
local counter = require("counter")

type Report = {[string]: any}
type Kinds = {string}

-- every event from `pid` within `ms` milliseconds, by kind
local function events_from(pid: string, ms: integer): {[string]: any}
    local events = process.events()
    local deadline = time.after(ms * time.MILLISECOND)
    local got: {[string]: any} = {}
    while true do
        local r = channel.select({events:case_receive(), deadline:case_receive()})
        if r.channel == deadline then return got end
        local ev = r.value
        if ev.from == pid then
            got[ev.kind] = ev
        end
    end
end

local function kinds(got: {[string]: any}): Kinds
    local k: Kinds = {}
    for kind, _ in pairs(got) do k[#k + 1] = kind end
    table.sort(k)
    return k
end

local function go(args: {config: any}, conn: string)
    local r: Report = {}
    local c = args.config
    r.cfg = {mqs = c.message_queue_size, gc = c.gc_check_interval, hb = c.heartbeat_interval,
             host = c.user_hub_host}
    r.bump1 = counter.bump()
    r.bump2 = require("counter").bump()

    local CHILD <const> = "app:child"
    local pid = process.spawn_monitored(CHILD, "app:processes", "value", 2, {x = 3}, nil, "e")
    local got = events_from(pid, 300)
    r.value = got[process.event.EXIT] and got[process.event.EXIT].result.value

    pid = process.spawn_monitored(CHILD, "app:processes", "fail", 7)
    got = events_from(pid, 300)
    r.fail_err = got[process.event.EXIT] and got[process.event.EXIT].result.error

    pid = process.spawn_linked(CHILD, "app:processes", "crash")
    got = events_from(pid, 300)
    r.linked_crash = kinds(got)
    r.linked_crash_err = got[process.event.LINK_DOWN] and got[process.event.LINK_DOWN].result.error

    pid = process.spawn_linked(CHILD, "app:processes", "value", 1, {x = 1})
    r.linked_ok = kinds(events_from(pid, 300))

    pid = process.spawn_linked(CHILD, "app:processes", "wait")
    process.unlink(pid)
    process.terminate(pid)
    r.unlinked = kinds(events_from(pid, 300))

    local sp = process.with_context({request_id = "req-1"}):with_message("hello", {a = 1})
    pid = sp:with_context({tenant = "t"}):spawn_monitored(CHILD, "app:processes", "ctx")
    got = events_from(pid, 300)
    r.ctx = got[process.event.EXIT] and got[process.event.EXIT].result.value

    local e = errors.new({message = "nope", kind = errors.NOT_FOUND, retryable = false,
                          details = {id = 1}})
    local w = errors.wrap(e, "loading")
    r.err = {kind = e:kind(), msg = e:message(), retry = e:retryable(), id = e:details().id,
             is = errors.is(e, errors.NOT_FOUND), isnt = errors.is(e, errors.INVALID),
             str = tostring(e), wrapped = w:message(), wkind = w:kind(),
             simple = errors.new("s"):kind(), stack = type(e:stack()) == "string"}

    r.env = env.get("FID_VAR")
    local hv, he = env.get("HOME")
    r.env_home = hv == nil and he:kind()
    r.env_default = env.get("FID_DEFAULT")
    local ok, se = env.set("FID_VAR", "x")
    r.env_set = not ok and se:kind()

    r.f = funcs.call("app:double", 21)
    local _, fe = funcs.call("app:double", -1)
    r.f_err = fe and fe:kind()
    local _, me = funcs.call("app:nope")
    r.f_missing = me and me:kind()

    local data: any = {name = "cast"}
    r.cast = (data :: Report).name
    process.send(conn, "fid", r)
end

local function run(args)
    local inbox = process.inbox()
    while true do
        local msg = inbox:receive()
        local p = msg:payload():data()
        if msg:topic() == "go" then go(args, p.conn_pid) end
    end
end

return {run = run}
