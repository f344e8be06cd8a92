-- Test plugin (prefix once_): "quit" answers {"type":"once_bye"} and returns from run (a normal
-- exit: status "stopped", restarted on next use); anything else answers {"type":"once_reply","n":k}
-- with k counting messages of this instance.
local function run(args)
    local inbox = process.inbox()
    local events = process.events()
    local n = 0
    while true do
        local r = channel.select({ inbox:case_receive(), events:case_receive() })
        if not r.ok then break end
        if r.channel == inbox then
            local msg = r.value
            local p = msg:payload():data()
            if type(p) == "table" and p.conn_pid then
                if msg:topic() == "quit" then
                    process.send(p.conn_pid, "ws.message", { type = "once_bye" })
                    return
                end
                n = n + 1
                process.send(p.conn_pid, "ws.message", { type = "once_reply", n = n })
            end
        elseif r.channel == events then
            if r.value.kind == process.event.CANCEL then break end
        end
    end
end

return { run = run }
