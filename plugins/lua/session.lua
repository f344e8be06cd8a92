local json = require("json")

-- Every client message gets an answer: a reply carrying its request_id, or, for a topic this
-- plugin does not know, an unknown_command error frame like the hub's own errors
-- ({"topic":"error","data":{"error":...,"message":...,"request_id":...}}).
local function handle_message(topic, payload)
    if topic == "get_state" then
        process.send(payload.conn_pid, "ws.message", json.encode({
            type = "session_state",
            request_id = payload.request_id,
            data = { status = "active" }
        }))
    else
        process.send(payload.conn_pid, "error", {
            error = "unknown_command",
            message = "Unknown session command: " .. tostring(payload.type),
            request_id = payload.request_id
        })
    end
end

local function run(args)
    local user_id = args.user_id
    local inbox = process.inbox()
    local events = process.events()

    while true do
        local result = channel.select({
            inbox:case_receive(),
            events:case_receive()
        })

        if not result.ok then break end

        if result.channel == inbox then
            local msg = result.value
            local topic = msg:topic()
            local payload = msg:payload():data()

            -- resume and shutdown come from the hub; a client's session_resume has a conn_pid
            if payload.conn_pid then
                handle_message(topic, payload)
            elseif topic == "resume" then
                -- first client connected
            elseif topic == "shutdown" then
                -- last client disconnected
            end
        elseif result.channel == events then
            local event = result.value
            if event.kind == process.event.CANCEL then
                break
            end
        end
    end
end

return { run = run }
