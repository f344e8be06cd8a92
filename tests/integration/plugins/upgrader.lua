local VERSION = 1
local OPT_IN = true
-- Test plugin for process.upgrade and OUTDATED (test_upgrade.py rewrites the two lines above).
-- With OPT_IN it sets upgradable and, on OUTDATED, upgrades to its entry's new code keeping its
-- state ({count, upgrades, sources}). Topics: "count" answers the state (and counts one),
-- "bad_id" / "bad_arg" / "in_task" answer process.upgrade's nil, err; "loop" upgrades forever.
local function run(state)
    if type(state) ~= "table" then state = {} end
    local count, upgrades = state.count or 0, state.upgrades or 0
    if state.loop then process.upgrade("", state) end
    if OPT_IN then process.set_options({ upgradable = true }) end
    local inbox, events = process.inbox(), process.events()
    local outdated = false
    while true do
        local r = channel.select({ inbox:case_receive(), events:case_receive() })
        if not r.ok then break end
        if r.channel == events then
            local ev = r.value
            if ev.kind == process.event.CANCEL then break end
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
            elseif topic == "loop" then
                process.upgrade("", { loop = true, count = count })
            end
        end
    end
end

return { run = run }
