-- Test plugin (prefix counter_): "inc" answers {"type":"count","n":k,"user_id":...}; k is state of
-- this instance (module-level local: each instance runs the chunk afresh, so it starts at 0).
local count = 0

local function run(args)
    local inbox = process.inbox()
    local events = process.events()
    while true do
        local r = channel.select({ inbox:case_receive(), events:case_receive() })
        if not r.ok then break end
        if r.channel == inbox then
            local msg = r.value
            local p = msg:payload():data()
            if msg:topic() == "inc" then
                count = count + 1
                process.send(p.conn_pid, "ws.message", { type = "count", n = count, user_id = args.user_id })
            end
        elseif r.channel == events then
            if r.value.kind == process.event.CANCEL then break end
        end
    end
end

return { run = run }
