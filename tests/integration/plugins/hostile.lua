-- Test plugin (prefix hostile_): each topic attacks the sandbox from inside the plugin.
--   bomb     -> a catastrophic pattern in a pcall loop (the budget must end the instance)
--   catch    -> infinite loops behind pcall, a plugin coroutine, a sort comparator, __tostring
--   trim     -> {"type":"hostile_trim","len":#trimmed,"ms":elapsed} for the common trim idiom
--   ping     -> {"type":"hostile_pong","n":k} (k counts pings of this instance)
--   hog      -> allocates until its memory cap ends it (plugin_memory_limit)
--   hoard    -> keeps every message it receives from then on (their bodies count in its memory)
--   swarm    -> spawns children and tickers until refused:
--               {"type":"hostile_swarm","children":n,"cerr":...,"tickers":m,"terr":...}
local function spin() while true do end end

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

local function run(args)
    local inbox = process.inbox()
    local n = 0
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
        elseif topic == "ping" then
            n = n + 1
            process.send(p.conn_pid, "ws.message", { type = "hostile_pong", n = n })
        end
    end
end

return { run = run }
