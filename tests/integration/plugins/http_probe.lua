-- Test plugin (prefix http_): makes the HTTP request the client describes and answers
-- ws.message {"type":"http_result", request_id, resp, err} (resp: the response table, or a list
-- of them for a batch; err: the error, or the errors list).
--   call  {form = "request"|"table"|"get"|"post"|..."batch", method, url, opts, requests}
--   spawn_hang {url}: starts a child (http_child_plugin) that requests url, answers its pid
--   kill {pid}: terminates that child
--   whoami: args.user_id and args.user_metadata
local http = require("http_client")
local json = require("json")

local function call(p)
    local f = p.form or "request"
    if f == "table" then
        local t = p.opts or {}
        t.method, t.url = p.method, p.url
        return http.request(t)
    elseif f == "request" then
        return http.request(p.method, p.url, p.opts)
    elseif f == "batch" then
        return http.request_batch(p.requests)
    elseif f == "nul" then -- NUL bytes (a client's JSON cannot carry \u0000)
        local r1, e1 = http.get(p.url, { query = { q = "a\0b" } })
        local _, e2 = pcall(http.get, p.url, { headers = { ["X\0Y"] = "v" } })
        local _, e3 = pcall(http.get, p.url .. "\0x")
        return { path = r1 and json.decode(r1.body).path, e1 = e1, e2 = tostring(e2),
                 e3 = tostring(e3) }
    elseif f == "pcall" then
        local ok, a, b = pcall(http.request, p.method, p.url, p.opts)
        if not ok then return nil, "raised: " .. tostring(a) end
        return a, b
    else
        return http[f](p.url, p.opts)
    end
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
            if type(p) == "table" and p.conn_pid then
                if topic == "call" then
                    local ok, resp, err = pcall(call, p)
                    if not ok then resp, err = nil, "raised: " .. tostring(resp) end
                    if p.form == "batch" then -- arrays with holes: as maps "1", "2", ... for JSON
                        local function dense(t)
                            if type(t) ~= "table" then return t end
                            local m = {}
                            for i = 1, #p.requests do
                                if t[i] ~= nil then m[tostring(i)] = t[i] end
                            end
                            return m
                        end
                        resp, err = dense(resp), dense(err)
                    end
                    process.send(p.conn_pid, "ws.message",
                        { type = "http_result", request_id = p.request_id, resp = resp, err = err })
                elseif topic == "spawn_hang" then
                    local pid, err = process.spawn("app:http_child_plugin", "app:processes",
                                                   { url = p.url, conn = p.conn_pid })
                    process.send(p.conn_pid, "ws.message", { type = "spawned", pid = pid, err = err })
                elseif topic == "kill" then
                    local ok, err = process.terminate(p.pid)
                    process.send(p.conn_pid, "ws.message", { type = "killed", ok = ok, err = err })
                elseif topic == "whoami" then
                    process.send(p.conn_pid, "ws.message",
                        { type = "whoami", user_id = args.user_id, user_metadata = args.user_metadata })
                end
            end
        elseif r.channel == events then
            if r.value.kind == process.event.CANCEL then break end
        end
    end
end

return { run = run }
