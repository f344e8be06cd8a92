-- Test plugin (prefix flood_): "go" with data {n=N, size=S} sends N raw frames of S bytes to the
-- connection, yielding now and then so the node's loop can write (and notice a slow consumer).
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
            if msg:topic() == "go" then
                local n = (p.data and p.data.n) or 100
                local size = (p.data and p.data.size) or 60000
                local big = string.rep("x", size)
                for i = 1, n do
                    process.send(p.conn_pid, "ws.message", big)
                    if i % 8 == 0 then time.sleep("2ms") end
                end
            end
        elseif r.channel == events then
            if r.value.kind == process.event.CANCEL then break end
        end
    end
end

return { run = run }
