-- Test plugin (prefix run_): "spin" loops forever (the instruction budget must stop it); "eat"
-- allocates without bound (the memory limit must stop it); "ping" answers {"type":"pong","n":k}.
local function run(args)
    local inbox = process.inbox()
    local events = process.events()
    local n = 0
    while true do
        local r = channel.select({ inbox:case_receive(), events:case_receive() })
        if not r.ok then break end
        if r.channel == inbox then
            local msg = r.value
            local topic = msg:topic()
            local p = msg:payload():data()
            if topic == "spin" then
                local x = 0
                while true do x = x + 1 end
            elseif topic == "eat" then
                local t = {}
                local i = 0
                while true do
                    i = i + 1
                    t[i] = string.rep("m", 4096) .. i
                end
            elseif topic == "ping" then
                n = n + 1
                process.send(p.conn_pid, "ws.message", { type = "pong", n = n })
            end
        elseif r.channel == events then
            if r.value.kind == process.event.CANCEL then break end
        end
    end
end

return { run = run }
