-- process.lua without meta.type relay.plugin: one session. The session plugin spawns it linked
-- and monitored, with the context {session_id, user_id} and its own pid as the argument; it
-- talks upstream with topics "session:<id>" and "session:<id>:message:<mid>".
local ctx = require("ctx")
local uuid = require("uuid")

type Upstream = {type: string, session_id: string, [string]: any}

local function run(plugin_pid: string): any
    local session_id: string? = ctx.get("session_id")
    local user_id: string? = ctx.get("user_id")
    if not session_id then
        return nil, "no session_id in the context"
    end
    local sid = session_id :: string
    process.registry.register("session." .. sid)

    local function up(topic: string, data: Upstream)
        process.send(plugin_pid, topic, data)
    end

    up("session:" .. sid, {type = "update", session_id = sid, status = "active", user_id = user_id})
    local inbox, events = process.inbox(), process.events()
    while true do
        local r = channel.select({inbox:case_receive(), events:case_receive()})
        if not r.ok then break end
        if r.channel == events then
            if r.value.kind == process.event.CANCEL then
                return {status = "cancelled", reason = r.value.reason}
            end
        else
            local msg = r.value
            local topic: string = msg:topic()
            if msg:from() == plugin_pid then
                local p = msg:payload():data()
                if topic == "message" then
                    local mid: string = uuid.v7()
                    local text = p.data and p.data.text
                    up("session:" .. sid .. ":message:" .. mid,
                       {type = "message", session_id = sid, message_id = mid,
                        text = "echo: " .. tostring(text), request_id = p.request_id})
                elseif topic == "command" then
                    if p.op == "crash" then
                        error("session crashed on command", 0)
                    end
                    up("session:" .. sid, {type = "command", session_id = sid, op = p.op,
                                           request_id = p.request_id})
                elseif topic == "finish_and_exit" then
                    return {status = "finished", reason = p.reason}
                end
            end
        end
    end
end

return {run = run}
