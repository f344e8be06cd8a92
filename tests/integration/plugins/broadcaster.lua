-- Test plugin (prefix bc_): "send" sends topic "news" with the client's data to the user hub,
-- which broadcasts it to all of this user's connections.
local function run(args)
    local inbox = process.inbox()
    local events = process.events()
    while true do
        local r = channel.select({ inbox:case_receive(), events:case_receive() })
        if not r.ok then break end
        if r.channel == inbox then
            local msg = r.value
            local p = msg:payload():data()
            if msg:topic() == "send" then
                process.send(args.user_hub_pid, "news", p.data)
            end
        elseif r.channel == events then
            if r.value.kind == process.event.CANCEL then break end
        end
    end
end

return { run = run }
