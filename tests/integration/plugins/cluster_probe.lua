-- Test plugin for the cluster tests (prefix cl_):
--   where  -> {"type":"where","hub":<args.user_hub_pid>,"pid":<process.pid()>,"conn":<conn_pid>,
--              "user_id":...,"request_id":...}: which node and hub this instance runs in
--   n      -> {"t":"n","n":<the client's n>,"k":<how many n messages this instance got>,
--              "request_id":...}: a sequence echo (one reply per message)
--   rec    -> records the client's n without replying (checks the order itself)
--   report -> {"type":"report","count":..,"ooo":..,"first":..,"last":..,"k":..}: what rec saw
--             (ooo: messages whose n was not greater than the previous one)
--   bcast  -> sends topic "news" with the client's data to the user hub (broadcast to all of the
--             user's connections, on every node)
local function run(args)
    local inbox = process.inbox()
    local events = process.events()
    local k = 0
    local count, ooo, first, last = 0, 0, nil, nil
    while true do
        local r = channel.select({ inbox:case_receive(), events:case_receive() })
        if not r.ok then break end
        if r.channel == inbox then
            local msg = r.value
            local topic = msg:topic()
            local p = msg:payload():data()
            if type(p) == "table" and p.conn_pid then
                if topic == "n" then
                    k = k + 1
                    process.send(p.conn_pid, "ws.message", { t = "n", n = p.n, k = k, request_id = p.request_id })
                elseif topic == "rec" then
                    count = count + 1
                    if first == nil then first = p.n end
                    if last ~= nil and not (p.n > last) then ooo = ooo + 1 end
                    last = p.n
                elseif topic == "report" then
                    process.send(p.conn_pid, "ws.message", {
                        type = "report", count = count, ooo = ooo, first = first, last = last, k = k,
                        request_id = p.request_id,
                    })
                elseif topic == "where" then
                    process.send(p.conn_pid, "ws.message", {
                        type = "where", hub = args.user_hub_pid, pid = process.pid(), conn = p.conn_pid,
                        user_id = args.user_id, request_id = p.request_id,
                    })
                elseif topic == "bcast" then
                    process.send(args.user_hub_pid, "news", p.data)
                end
            end
        elseif r.channel == events then
            if r.value.kind == process.event.CANCEL then break end
        end
    end
end

return { run = run }
