-- Test plugin (prefix echo_): replies to conn_pid with what it got.
--   default   -> ws.message {"topic": <topic>, "payload": <full payload>}
--   raw       -> ws.message "hello raw" (a string goes out as is)
--   custom    -> topic "custom_topic" to conn_pid (wrapped by the node as {"topic","data"})
--   bye       -> ws.close "bye now"
--   whoami    -> ws.message {"type":"whoami", user_id, user_metadata, has_hub_pid}
local json = require("json")

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
            if type(p) == "table" and p.conn_pid then
                if topic == "raw" then
                    process.send(p.conn_pid, "ws.message", "hello raw")
                elseif topic == "custom" then
                    process.send(p.conn_pid, "custom_topic", { x = 1, s = "two" })
                elseif topic == "bye" then
                    process.send(p.conn_pid, "ws.close", "bye now")
                elseif topic == "whoami" then
                    process.send(p.conn_pid, "ws.message", {
                        type = "whoami",
                        user_id = args.user_id,
                        user_metadata = args.user_metadata,
                        has_hub_pid = args.user_hub_pid ~= nil,
                    })
                else
                    process.send(p.conn_pid, "ws.message", { topic = topic, payload = p })
                end
            end
        elseif r.channel == events then
            if r.value.kind == process.event.CANCEL then break end
        end
    end
end

return { run = run }
