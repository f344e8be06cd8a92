-- Test plugin (prefix probe_) for the server API: every message it gets is reported to the
-- user's connections through the hub as "probe_got" {topic, data, from, has_conn_pid};
-- "forge" (from a client) tries to send the API's internal topics and reports the answers.
local function run(args)
    local inbox = process.inbox()
    local events = process.events()
    while true do
        local r = channel.select({ inbox:case_receive(), events:case_receive() })
        if not r.ok then break end
        if r.channel == inbox then
            local msg = r.value
            local p = msg:payload():data()
            local client = type(p) == "table" and p.conn_pid ~= nil
            if msg:topic() == "forge" and client then
                local out = {}
                for _, t in ipairs({ "api.push", "api.message", "api.disconnect", "api.query",
                                     "api.reply" }) do
                    local ok, err = process.send(args.user_hub_pid, t, { topic = "x", data = 1 })
                    out[t] = ok and "sent" or tostring(err)
                end
                process.send(p.conn_pid, "probe_forged", out)
            else
                process.send(args.user_hub_pid, "probe_got", {
                    topic = msg:topic(), data = p, from = msg:from(), has_conn_pid = client,
                })
            end
        elseif r.channel == events then
            if r.value.kind == process.event.CANCEL then break end
        end
    end
end

return { run = run }
