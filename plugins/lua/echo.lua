-- Echo plugin (prefix echo_): answers every message that names a connection with
-- {"type":"echo_pong","request_id":...,"data":...}; stops on CANCEL.
local function run(args)
    local inbox = process.inbox()
    local events = process.events()
    while true do
        local result = channel.select({ inbox:case_receive(), events:case_receive() })
        if not result.ok then break end
        if result.channel == inbox then
            local payload = result.value:payload():data()
            if type(payload) == "table" and payload.conn_pid then
                process.send(payload.conn_pid, "ws.message", {
                    type = "echo_pong",
                    request_id = payload.request_id,
                    data = payload.data,
                })
            end
        elseif result.value.kind == process.event.CANCEL then
            break
        end
    end
end

return { run = run }
