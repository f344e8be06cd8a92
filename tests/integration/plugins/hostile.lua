-- Test plugin (prefix hostile_): each topic attacks the sandbox from inside the plugin.
--   bomb     -> a catastrophic pattern in a pcall loop (the budget must end the instance)
--   catch    -> infinite loops behind pcall, a plugin coroutine, a sort comparator, __tostring
--   trim     -> {"type":"hostile_trim","len":#trimmed,"ms":elapsed} for the common trim idiom
--   ping     -> {"type":"hostile_pong","n":k} (k counts pings of this instance)
--   hog      -> allocates until its memory cap ends it (plugin_memory_limit)
--   churn    -> makes p.mb MiB of garbage (64 KiB strings it drops) in one run, then
--               {"type":"hostile_churned","len":...}: over any cap in all, never holding much
--   hoard    -> keeps every message it receives from then on (their bodies count in its memory)
--   swarm    -> spawns children and tickers until refused:
--               {"type":"hostile_swarm","children":n,"cerr":...,"tickers":m,"terr":...}
--   stretch  -> {"type":"hostile_stretch","ticks":k}: the ticks of a 1 ms ticker in 300 ms while
--               the user holds p.hold other timers
--   deep     -> a chain of children, each spawning the next, until refused; the last one sends
--               {"type":"hostile_deep","depth":d,"err":...} (the per-user process bound)
--   take     -> {"type":"hostile_take","who":"root"|"child","tickers":t,"terr":...,
--               "chans":c,"cerr":...}: the root takes `tickers` tickers and `chans` channels
--               and reports, then a child takes tickers and channels until refused and reports
--               (the per-user timer and channel bounds); both keep what they took
local function spin() while true do end end
local held -- what the take topic keeps

local attacks = {
    bomb = function()
        while true do pcall(string.find, ("a"):rep(40), ("a*"):rep(40) .. "b") end
    end,
    hog = function()
        local t = {}
        for i = 1, 1e9 do t[i] = ("x"):rep(1000) .. i end
    end,
    hoard = function()
        local kept, inbox = {}, process.inbox()
        while true do kept[#kept + 1] = inbox:receive() end
    end,
    catch = function()
        local t = setmetatable({}, { __tostring = function() while true do pcall(spin) end end })
        while true do
            pcall(coroutine.wrap(function() while true do pcall(spin) end end))
            pcall(table.sort, { 3, 1, 2 }, function() spin() end)
            pcall(tostring, t)
        end
    end,
}

-- Takes up to `max` tickers and channels (until refused when max is nil); keeps them in keep.
local function take(conn, who, max, keep)
    local time = require("time")
    local r = { type = "hostile_take", who = who, tickers = 0, chans = 0 }
    while not max or r.tickers < max.tickers do
        local ok, t = pcall(time.ticker, "1s")
        if not ok then r.terr = t; break end
        r.tickers = r.tickers + 1; keep[#keep + 1] = t
    end
    while not max or r.chans < max.chans do
        local ok, c = pcall(channel.new, 1)
        if not ok then r.cerr = c; break end
        r.chans = r.chans + 1; keep[#keep + 1] = c
    end
    process.send(conn, "ws.message", r)
end

local function hold(inbox)
    while true do
        local _, ok = inbox:receive()
        if not ok then return end
    end
end

local function run(args)
    local inbox = process.inbox()
    local n = 0
    if type(args) == "table" and args.mode == "deep" then
        local pid, e = process.spawn("app:hostile_plugin", "app:processes",
            { mode = "deep", conn = args.conn, depth = args.depth + 1 })
        if not pid then
            process.send(args.conn, "ws.message", { type = "hostile_deep", depth = args.depth, err = e })
        end
        return hold(inbox)
    elseif type(args) == "table" and args.mode == "take" then
        local keep = {}
        take(args.conn, "child", nil, keep)
        return hold(inbox)
    end
    while true do
        local msg, ok = inbox:receive()
        if not ok then break end
        local topic = msg:topic()
        local p = msg:payload():data()
        if attacks[topic] then
            attacks[topic]()
        elseif topic == "trim" then
            local t0 = os.clock()
            local s = p.data:match("^%s*(.-)%s*$")
            process.send(p.conn_pid, "ws.message",
                { type = "hostile_trim", len = #s, ms = (os.clock() - t0) * 1000 })
        elseif topic == "swarm" then
            local time = require("time")
            local c, cerr = 0, nil
            while true do
                local pid, e = process.spawn("app:hostile_plugin", "app:processes", {})
                if not pid then cerr = e; break end
                c = c + 1
            end
            local t, ok, terr, keep = 0, true, nil, {}
            while ok do
                ok, terr = pcall(time.ticker, "1ms")
                if ok then t = t + 1; keep[t] = terr end
            end
            process.send(p.conn_pid, "ws.message",
                { type = "hostile_swarm", children = c, cerr = cerr, tickers = t, terr = terr })
        elseif topic == "deep" then
            local pid, e = process.spawn("app:hostile_plugin", "app:processes",
                { mode = "deep", conn = p.conn_pid, depth = 1 })
            if not pid then
                process.send(p.conn_pid, "ws.message", { type = "hostile_deep", depth = 0, err = e })
            end
        elseif topic == "take" then
            held = held or {}
            take(p.conn_pid, "root", { tickers = p.tickers, chans = p.chans }, held)
            process.spawn("app:hostile_plugin", "app:processes", { mode = "take", conn = p.conn_pid })
        elseif topic == "stretch" then -- holds p.hold tickers, then counts a 1 ms ticker's ticks
            local time, keep = require("time"), {}
            for i = 1, p.hold do keep[i] = time.ticker("10s") end
            local t, ticks, t0 = time.ticker("1ms"), 0, os.clock()
            local deadline = time.after("300ms")
            while true do
                local r = channel.select({ t:channel():case_receive(), deadline:case_receive() })
                if r.channel == deadline then break end
                ticks = ticks + 1
            end
            t:stop()
            for i = 1, p.hold do keep[i]:stop() end
            process.send(p.conn_pid, "ws.message", { type = "hostile_stretch", ticks = ticks })
        elseif topic == "churn" then -- p.mb MiB of garbage in 64 KiB strings, in one run
            local last
            for i = 1, p.mb * 16 do last = ("c"):rep(65536 - 16) .. i end
            process.send(p.conn_pid, "ws.message", { type = "hostile_churned", len = #last })
        elseif topic == "ping" then
            n = n + 1
            process.send(p.conn_pid, "ws.message", { type = "hostile_pong", n = n })
        end
    end
end

return { run = run }
