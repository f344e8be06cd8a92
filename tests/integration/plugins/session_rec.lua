-- Test plugin (prefix session_): records the lifecycle topics it gets (resume/shutdown) and
-- reports them on "events" as the frame {"type":"session_events","events":[...],"user_id":...}.
local json = require("json")

local function run(args)
    local inbox = process.inbox()
    local events = process.events()
    local seen = {}
    while true do
        local r = channel.select({ inbox:case_receive(), events:case_receive() })
        if not r.ok then break end
        if r.channel == inbox then
            local msg = r.value
            local topic = msg:topic()
            local p = msg:payload():data()
            if topic == "resume" or topic == "shutdown" then
                seen[#seen + 1] = topic
            elseif topic == "events" then
                process.send(p.conn_pid, "ws.message", {
                    type = "session_events", events = seen, count = #seen, user_id = args.user_id,
                    request_id = p.request_id,
                })
            elseif type(p) == "table" and p.conn_pid then
                process.send(p.conn_pid, "ws.message", { type = "session_other", topic = topic })
            end
        elseif r.channel == events then
            if r.value.kind == process.event.CANCEL then break end
        end
    end
end

return { run = run }
