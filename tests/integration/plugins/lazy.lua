-- Test plugin (prefix lazy_, auto_start false): answers {"type":"lazy_reply","topic":...}.
local function run(args)
    local inbox = process.inbox()
    local events = process.events()
    while true do
        local r = channel.select({ inbox:case_receive(), events:case_receive() })
        if not r.ok then break end
        if r.channel == inbox then
            local msg = r.value
            local p = msg:payload():data()
            if type(p) == "table" and p.conn_pid then
                process.send(p.conn_pid, "ws.message", { type = "lazy_reply", topic = msg:topic() })
            end
        elseif r.channel == events then
            if r.value.kind == process.event.CANCEL then break end
        end
    end
end

return { run = run }
