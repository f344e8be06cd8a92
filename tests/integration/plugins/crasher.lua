-- Test plugin (prefix crash_): "crash" raises an error; "ping" answers {"type":"pong","n":k}
-- where k counts pings seen by this instance (1 again after a restart).
local json = require("json")

local function run(args)
    local inbox = process.inbox()
    local events = process.events()
    local pings = 0
    while true do
        local r = channel.select({ inbox:case_receive(), events:case_receive() })
        if not r.ok then break end
        if r.channel == inbox then
            local msg = r.value
            local topic = msg:topic()
            local p = msg:payload():data()
            if topic == "crash" then
                error("boom")
            elseif topic == "ping" then
                pings = pings + 1
                process.send(p.conn_pid, "ws.message", { type = "pong", n = pings, request_id = p.request_id })
            end
        elseif r.channel == events then
            if r.value.kind == process.event.CANCEL then break end
        end
    end
end

return { run = run }
