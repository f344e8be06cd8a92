-- Test plugin (prefix slow_): takes 200 ms per message, then answers {"type":"slow_done","request_id":...}.
local time = time or require("time")

local function run(args)
    local inbox = process.inbox()
    local events = process.events()
    while true do
        local r = channel.select({ inbox:case_receive(), events:case_receive() })
        if not r.ok then break end
        if r.channel == inbox then
            local msg = r.value
            local p = msg:payload():data()
            time.sleep("200ms")
            if type(p) == "table" and p.conn_pid then
                process.send(p.conn_pid, "ws.message", { type = "slow_done", request_id = p.request_id })
            end
        elseif r.channel == events then
            if r.value.kind == process.event.CANCEL then break end
        end
    end
end

return { run = run }
