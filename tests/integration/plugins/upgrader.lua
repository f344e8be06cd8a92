local VERSION = 1
local OPT_IN = true
-- Test plugin for process.upgrade and OUTDATED (test_upgrade.py rewrites the two lines above).
-- With OPT_IN it sets upgradable and, on OUTDATED, upgrades to its entry's new code keeping its
-- state ({count, upgrades, sources}). Topics: "count" answers the state (and counts one),
-- "bad_id" / "bad_arg" / "in_task" answer process.upgrade's nil, err; "loop" upgrades forever;
-- "watch" starts a monitored child that upgrades to the entry p.to and forwards its EXIT.
local function run(state)
    if type(state) ~= "table" then state = {} end
    local count, upgrades = state.count or 0, state.upgrades or 0
    if state.loop then process.upgrade("", state) end
    if state.child_upgrade then -- a child: upgrades at once to the entry it was given
        process.upgrade(state.child_upgrade, { child_done = true, conn = state.conn, q = state.q })
    end
    if state.child_done then -- the child's second run: says who runs, then returns "done"
        local m = process.inbox():receive() -- queued before the upgrade: still there
        process.send(state.conn, "ws.message", { type = "child_up", pid = process.pid(),
            opt_in = OPT_IN, queued = m and m:topic() })
        return "done"
    end
    if OPT_IN then process.set_options({ upgradable = true }) end
    local inbox, events = process.inbox(), process.events()
    local outdated = false
    local watcher
    while true do
        local r = channel.select({ inbox:case_receive(), events:case_receive() })
        if not r.ok then break end
        if r.channel == events then
            local ev = r.value
            if ev.kind == process.event.CANCEL then break end
            if ev.kind == process.event.EXIT and watcher then
                process.send(watcher, "ws.message", { type = "exit", from = ev.from,
                    value = ev.result.value, error = ev.result.error })
            end
            if ev.kind == process.event.OUTDATED then
                outdated = true
                if OPT_IN then
                    process.upgrade("", { count = count, upgrades = upgrades + 1, sources = ev.sources })
                end
            end
        else
            local topic, p = r.value:topic(), r.value:payload():data()
            local function reply(t)
                t.type = topic
                process.send(p.conn_pid, "ws.message", t)
            end
            if topic == "count" then
                count = count + 1
                reply({ v = VERSION, n = count, pid = process.pid(), upgrades = upgrades,
                        sources = state.sources or {}, outdated = outdated,
                        upgradable = process.get_options().upgradable })
            elseif topic == "bad_id" then
                local a, err = process.upgrade("app:no_such_entry", 1)
                reply({ a = a == nil, err = err })
            elseif topic == "bad_arg" then
                local a, err = process.upgrade("", function() end)
                reply({ a = a == nil, err = err })
            elseif topic == "in_task" then
                coroutine.spawn(function()
                    local a, err = process.upgrade("")
                    reply({ a = a == nil, err = err })
                end)
            elseif topic == "watch" then -- a monitored child that upgrades to p.to
                watcher = p.conn_pid
                local pid = process.spawn_monitored("app:upg_plugin", "",
                    { child_upgrade = p.to, conn = p.conn_pid })
                process.send(pid, "queued", 1)
                reply({ child = pid })
            elseif topic == "loop" then
                process.upgrade("", { loop = true, count = count })
            end
        end
    end
end

return { run = run }
