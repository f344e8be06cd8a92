-- Test plugin (prefix sb_): probes the sandbox.
--   probe  -> {"type":"sb_probe", io, os_execute, debug, loadlib, dofile, loadfile, binary_load}
--   glob   -> increments the global G_count: {"type":"sb_glob","n":G_count}
--   poison -> tries to change shared library tables (string, json, the string metatable)
--   check  -> {"type":"sb_check","upper1":string.upper("a"),"upper2":("a"):upper(),"rep":string.rep("a",2)}
local json = require("json")

local function probe()
    local okd, dumped = pcall(function() return string.dump(function() return 1 end) end)
    local bin = false
    if okd and type(dumped) == "string" then
        local okl, f = pcall(load, dumped)
        bin = (okl and type(f) == "function") and true or false
    end
    return {
        type = "sb_probe",
        io = type(io),
        os_execute = (type(os) == "table") and type(os.execute) or "nil",
        debug = type(debug),
        loadlib = (type(package) == "table") and type(package.loadlib) or "nil",
        dofile = type(dofile),
        loadfile = type(loadfile),
        binary_load = bin,
    }
end

local function poison()
    local r = {}
    r.assign = pcall(function() string.upper = function() return "POISON" end end)
    r.rawset = pcall(function() rawset(string, "upper", function() return "POISON" end) end)
    r.meta = pcall(function() getmetatable("").__index.upper = function() return "POISON" end end)
    r.json = pcall(function() json.encode = function() return "POISON" end end)
    -- the tables behind the proxies, as pairs() and next() hand them out
    r.pairs_string = pcall(function() local _, t = pairs(string); t.upper = function() return "POISON" end end)
    r.pairs_json = pcall(function() local _, t = pairs(json); t.encode = function() return "POISON" end end)
    r.pairs_process = pcall(function() local _, t = pairs(process); t.send = function() return false end end)
    r.next_rawget = pcall(function() rawget(string, "upper").x = 1 end)
    r.type = "sb_poison"
    return r
end

local function run(args)
    local inbox = process.inbox()
    local events = process.events()
    while true do
        local r = channel.select({ inbox:case_receive(), events:case_receive() })
        if not r.ok then break end
        if r.channel == inbox then
            local msg = r.value
            local topic = msg:topic()
            local p = msg:payload():data()
            local out
            if topic == "probe" then
                out = probe()
            elseif topic == "glob" then
                G_count = (G_count or 0) + 1
                out = { type = "sb_glob", n = G_count }
            elseif topic == "poison" then
                out = poison()
            elseif topic == "check" then
                local ok1, u1 = pcall(function() return string.upper("a") end)
                local ok2, u2 = pcall(function() return ("a"):upper() end)
                local ok3, enc = pcall(function() return json.encode({ 1 }) end)
                out = { type = "sb_check", upper1 = tostring(u1), upper2 = tostring(u2), enc = tostring(enc) }
            end
            if out then process.send(p.conn_pid, "ws.message", out) end
        elseif r.channel == events then
            if r.value.kind == process.event.CANCEL then break end
        end
    end
end

return { run = run }
