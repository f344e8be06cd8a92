-- Test plugin (prefix pg_): the pg module, driven by its client. Scopes are opened once per id
-- and kept in `scopes`. Every command answers {"type": <cmd>, ok, err, ...} with its request_id.
--   open {scope}                      -> ok, err, str (tostring of the scope)
--   join {scope, group | groups}      -> ok, err
--   leave {scope, group | groups}     -> ok, err
--   members {scope, group, local}     -> members (list), err
--   groups {scope, local}             -> groups (list), err
--   bcast {scope, group, topic, data, local, n} -> ok, err (n payloads when n is given)
--   release {scope}                   -> ok, then a join on it: err2, str
--   opens {scope, n}                  -> count of pg.open that worked, err of the first failure
--   joins {scope, prefix, n}          -> count of joins that worked, err of the first failure
--   subscribe {scope, group, user}    -> process.send(user_hub_pid or "user.<user>", "pg.subscribe")
--   unsubscribe {group}               -> process.send(user_hub_pid, "pg.unsubscribe")
--   whoami                            -> pid
--   die                               -> error("told to die")
-- A message without conn_pid (a group's send) goes to this user's connections as topic
-- "probe.got" {topic, from, from_user, data}.
local pg = require("pg")

local function run(args)
    local scopes = {}
    local inbox, events = process.inbox(), process.events()
    while true do
        local r = channel.select({ inbox:case_receive(), events:case_receive() })
        if not r.ok or (r.channel == events and r.value.kind == process.event.CANCEL) then break end
        local msg = r.value
        if r.channel == events then goto continue end
        local topic, p = msg:topic(), msg:payload():data()
        if type(p) ~= "table" or not p.conn_pid then
            process.send(args.user_hub_pid, "probe.got",
                { topic = topic, from = msg:from(), from_user = msg:from_user(), data = p })
        else
            local d = type(p.data) == "table" and p.data or {}
            local function reply(t)
                t.type, t.request_id = topic, p.request_id
                process.send(p.conn_pid, "ws.message", t)
            end
            local function scope(id)
                id = id or "app:pg"
                if not scopes[id] then
                    local s, err = pg.open(id)
                    if not s then return nil, err end
                    scopes[id] = s
                end
                return scopes[id]
            end
            if topic == "open" then
                local s, err = scope(d.scope)
                reply({ ok = s ~= nil, err = err, str = s and tostring(s) or nil })
            elseif topic == "join" or topic == "leave" then
                local s, err = scope(d.scope)
                local ok = false
                if s then ok, err = s[topic](s, d.groups or d.group) end
                reply({ ok = ok == true, err = err })
            elseif topic == "members" then
                local s, err = scope(d.scope)
                local m
                if s then
                    if d["local"] then m, err = s:get_local_members(d.group)
                    else m, err = s:get_members(d.group) end
                end
                reply({ members = m, err = err })
            elseif topic == "groups" then
                local s, err = scope(d.scope)
                local g
                if s then
                    if d["local"] then g, err = s:which_local_groups() else g, err = s:which_groups() end
                end
                if g then table.sort(g) end
                reply({ groups = g, err = err })
            elseif topic == "bcast" then
                local s, err = scope(d.scope)
                local ok = false
                if s then
                    local f = d["local"] and s.broadcast_local or s.broadcast
                    if d.n then
                        local vals = {}
                        for i = 1, d.n do vals[i] = i end
                        ok, err = f(s, d.group, d.topic, table.unpack(vals))
                    else
                        ok, err = f(s, d.group, d.topic, d.data)
                    end
                end
                reply({ ok = ok == true, err = err })
            elseif topic == "release" then
                local s = scope(d.scope)
                local ok = s:release()
                local again = s:release()
                local j, err2 = s:join("room.x")
                scopes[d.scope or "app:pg"] = nil
                reply({ ok = ok and again, joined = j, err2 = err2, str = tostring(s) })
            elseif topic == "opens" then
                local count, first = 0, nil
                for _ = 1, d.n do
                    local s, err = pg.open(d.scope or "app:pg")
                    if s then
                        count = count + 1
                        scopes[#scopes + 1] = s
                        scopes[d.scope or "app:pg"] = scopes[d.scope or "app:pg"] or s
                    elseif not first then first = err end
                end
                reply({ count = count, err = first })
            elseif topic == "joins" then
                local s, err = scope(d.scope)
                local count, first = 0, err
                for i = 1, d.n do
                    local ok, jerr = s:join(d.prefix .. i)
                    if ok then count = count + 1 elseif not first then first = jerr end
                end
                reply({ count = count, err = first })
            elseif topic == "subscribe" or topic == "unsubscribe" then
                local to = d.user and ("user." .. d.user) or args.user_hub_pid
                local ok, err = process.send(to, "pg." .. topic, { scope = d.scope, group = d.group })
                reply({ ok = ok, err = err })
            elseif topic == "whoami" then
                reply({ pid = process.pid() })
            elseif topic == "die" then
                error("told to die")
            end
        end
        ::continue::
    end
end

return { run = run }
