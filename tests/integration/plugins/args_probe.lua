-- run(args) looked at in one way per user (the first look makes user_metadata and user_hub_pid,
-- rl_lua.c push_hub_args): the message's topic names the way; the answer is what it saw.
local json = require("json")

local function keys_of(iter, t)
    local ks = {}
    for k in iter(t) do ks[#ks + 1] = k end
    table.sort(ks)
    return ks
end

local function look(how, args)
    if how == "pairs" then
        return { keys = keys_of(pairs, args) }
    elseif how == "next" then
        local ks, k = {}, next(args)
        while k ~= nil do ks[#ks + 1] = k; k = next(args, k) end
        table.sort(ks)
        return { keys = ks }
    elseif how == "rawget" then
        return { meta = rawget(args, "user_metadata"), hub = type(rawget(args, "user_hub_pid")) }
    elseif how == "json" then
        local d = json.decode(json.encode(args))
        return { keys = keys_of(pairs, d), meta = d.user_metadata, hub = type(d.user_hub_pid) }
    elseif how == "getmetatable" then
        return { mt = getmetatable(args) == nil, meta = rawget(args, "user_metadata") }
    elseif how == "setmetatable" then
        setmetatable(args, { __index = function() return "dflt" end })
        return { meta = args.user_metadata, other = args.nothing, keys = keys_of(pairs, args) }
    elseif how == "own_first" then
        args.user_metadata = "mine"
        return { meta = args.user_metadata, hub = type(args.user_hub_pid) }
    else -- args_index
        return { meta = args.user_metadata, hub = type(args.user_hub_pid), id = args.user_id,
                 again = args.user_metadata == args.user_metadata, keys = keys_of(pairs, args) }
    end
end

local function run(args)
    local inbox, events = process.inbox(), process.events()
    while true do
        local r = channel.select({ inbox:case_receive(), events:case_receive() })
        if not r.ok then break end
        if r.channel == inbox then
            local p = r.value:payload():data()
            if p.conn_pid then
                local ok, seen = pcall(look, r.value:topic(), args)
                process.send(p.conn_pid, "ws.message",
                             { type = "seen", how = r.value:topic(), ok = ok, seen = ok and seen or tostring(seen) })
            end
        elseif r.value.kind == process.event.CANCEL then
            break
        end
    end
end

return { run = run }
