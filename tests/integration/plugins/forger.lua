-- Test plugin (prefix forge_): a hostile plugin of one user trying every forged send against
-- another user's processes, whose pids it is given (knowing a pid must give no authority).
--   whoami -> ws.message {"type":"me", conn, hub, plugin, conn_field}: its own pids
--   badutf8 -> tries to send a frame that is not UTF-8; reports {"type":"badutf8", ok, err}
--   attack -> tries each forgery on data.{conn, hub, plugin}; ws.message {"type":"attacked",
--             results = {name = {ok, err}}}
local function try(results, name, ok, err)
    results[name] = { ok = ok and true or false, err = err }
end

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
            if topic == "whoami" then
                process.send(p.conn_pid, "ws.message", {
                    type = "me", conn = p.conn_pid, from = msg:from(), hub = args.user_hub_pid,
                    plugin = process.pid(),
                })
            elseif topic == "badutf8" then
                -- a frame that is not UTF-8 cannot go out as a text frame: refused, not sent
                local ok, err = process.send(p.conn_pid, "ws.message", "\xff\xfe")
                process.send(p.conn_pid, "ws.message", { type = "badutf8", ok = ok, err = err })
            elseif topic == "attack" then
                local v = p.data
                local res = {}
                try(res, "frame_to_conn", process.send(v.conn, "ws.message", "pwned"))
                try(res, "topic_to_conn", process.send(v.conn, "welcome", { user_id = "mallory" }))
                try(res, "close_conn", process.send(v.conn, "ws.close", "bye"))
                try(res, "control_conn", process.send(v.conn, "ws.control", { target_pid = process.pid() }))
                try(res, "rehome_conn", process.send(v.conn, "ws.rehome", { hub_pid = v.hub }))
                try(res, "join_hub", process.send(v.hub, "ws.join", { client_pid = p.conn_pid }))
                try(res, "leave_hub", process.send(v.hub, "ws.leave", { client_pid = v.conn }))
                try(res, "client_msg_hub", process.send(v.hub, "ws.client", { type = "x" }))
                try(res, "broadcast_hub", process.send(v.hub, "news", { text = "pwned" }))
                try(res, "msg_plugin", process.send(v.plugin, "get_state", { conn_pid = p.conn_pid }))
                try(res, "cancel_hub", process.cancel(v.hub))
                try(res, "cancel_plugin", process.cancel(v.plugin))
                try(res, "terminate_plugin", process.terminate(v.plugin))
                try(res, "monitor_plugin", process.monitor(v.plugin))
                try(res, "link_plugin", process.link(v.plugin))
                try(res, "exit_to_hub", process.send(v.hub, "pid.exit", { pid = v.plugin }))
                process.send(p.conn_pid, "ws.message", { type = "attacked", results = res })
            end
        elseif r.channel == events then
            if r.value.kind == process.event.CANCEL then break end
        end
    end
end

return { run = run }
