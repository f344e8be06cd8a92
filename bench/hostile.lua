-- Bench plugin (prefix hostile_, bench/relay-bench-hostile.yaml): misbehaves in one way per
-- topic, for the "hostile" section of bench/bench.py. Not auto-started: the first message of a
-- hostile user starts it, the hub restarts it once after its first crash, then marks it failed;
-- bench/hostile_client.py then comes back as a new user. Topics:
--   loop    an endless loop behind pcall: ended by the instruction budget
--   bomb    a backtracking pattern (string.find of ("a*"):rep(40).."b") in a pcall loop: the
--           matcher's steps are charged to the budget, which ends it
--   memory  grows a table of 1 MiB strings, 8 MiB per resume (a 1 ms sleep between: the budget
--           is per resume), until the Lua memory cap ends it ("not enough memory")
--   swarm   spawns children up to plugin_max_children; each child (and the parent) runs 1 ms
--           tickers up to plugin_max_timers (or until the user's plugin_user_max_timers are
--           taken; one refused its first waits) and receives their ticks; nothing is ended
--           (refusals only); the parent ends, and its children with it, on hostile_stop (the
--           client sends it before it leaves, so that the next quiet round is quiet)
--   flood   sends its own user hub messages (each goes out to the user's connections) in an
--           endless loop: ended by the instruction budget
local time = require("time")

local function spin() while true do end end

local function tickers(inbox)
    local chans = {}
    while true do
        local ok, t = pcall(time.ticker, "1ms")
        if not ok then break end
        chans[#chans + 1] = t:channel()
    end
    if #chans == 0 then -- refused its first ticker (the user's timers are all taken): wait
        local _, ok = (inbox or process.inbox()):receive()
        return ok
    end
    while true do -- select takes at most 64 cases: one receive after the other
        for i = 1, #chans do chans[i]:receive() end
        if inbox then -- the parent ends (and its children with it) on hostile_stop
            local r = channel.select({ inbox:case_receive(), default = true })
            if r.channel == inbox then return true end
        end
    end
end

local attacks = {
    loop = function()
        while true do pcall(spin) end
    end,
    bomb = function()
        local s, p = ("a"):rep(40), ("a*"):rep(40) .. "b"
        while true do pcall(string.find, s, p) end
    end,
    memory = function()
        local keep, i = {}, 0
        while true do
            for _ = 1, 8 do
                i = i + 1
                keep[i] = ("m"):rep(1048576 - 16) .. i
            end
            time.sleep("1ms")
        end
    end,
    swarm = function(_, inbox)
        while process.spawn("app:hostile_plugin", "app:processes", { mode = "ticker" }) do end
        return tickers(inbox) -- true: the instance ends
    end,
    flood = function(args)
        local hub, body = args.user_hub_pid, { type = "hostile_flood", data = ("f"):rep(100) }
        while true do process.send(hub, "flood", body) end
    end,
}

local function run(args)
    local inbox = process.inbox()
    if type(args) == "table" and args.mode == "ticker" then
        return tickers()
    end
    while true do
        local msg, ok = inbox:receive()
        if not ok then break end
        local attack = attacks[msg:topic()]
        if attack and attack(args, inbox) then return end
    end
end

return { run = run }
