-- Test plugin (prefix sec_): the security module and cross-user sends, driven by its client.
--   can {action, resource, meta}     -> {"type":"can", allowed}
--   send {user, topic, data}         -> process.send("user." .. user, topic, data):
--                                       {"type":"sent", ok, err}
--   scope {named, policy, actor_id, action, resource, meta}
--                                    -> {"type":"scope", ids, named_ids, named_err, eval,
--                                        policy_err, policy_eval, with_eval, without_eval,
--                                        contains, custom_eval, actor_id}
--   register {name}                  -> {"type":"registered", ok, err}
--   whoami                           -> {"type":"me", hub, plugin}
--   sendpid {pid, topic, data}       -> process.send(pid, topic, data): {"type":"sent", ok, err}
--   cansize {n}                      -> pcall(security.can, "read", ("x"):rep(n)):
--                                       {"type":"cansize", ok, err}
--   flood {user, n}                  -> n sends to user.<user> in one go:
--                                       {"type":"flooded", sent, errs = {err = count}}
--   undelivered                      -> {"type":"undelivered", count}: user.undelivered seen
-- (user.undelivered is counted, not forwarded)
-- A message from another user's process (no conn_pid) goes to this user's connections as
-- topic "sec.got" {topic, from, from_user, data}; so does user.undelivered.
local security = require("security")

local function ids(scope)
    local out = {}
    for _, p in ipairs(scope:policies()) do out[#out + 1] = p:id() end
    table.sort(out)
    return out
end

local function run(args)
    local undelivered = 0
    local inbox = process.inbox()
    local events = process.events()
    while true do
        local r = channel.select({ inbox:case_receive(), events:case_receive() })
        if not r.ok then break end
        if r.channel == inbox then
            local msg = r.value
            local topic, p = msg:topic(), msg:payload():data()
            local d = type(p) == "table" and type(p.data) == "table" and p.data or {}
            local function reply(t)
                t.request_id = p.request_id
                process.send(p.conn_pid, "ws.message", t)
            end
            if topic == "user.undelivered" and not msg:from() then
                undelivered = undelivered + 1
            elseif type(p) ~= "table" or not p.conn_pid then
                process.send(args.user_hub_pid, "sec.got", {
                    topic = topic, from = msg:from(), from_user = msg:from_user(), data = p })
            elseif topic == "can" then
                reply({ type = "can", allowed = security.can(d.action, d.resource, d.meta) })
            elseif topic == "send" then
                local ok, err = process.send("user." .. d.user, d.topic, d.data)
                reply({ type = "sent", ok = ok, err = err })
            elseif topic == "lookup_send" then -- the platform's way: the registry names the hub
                local to, lerr = process.registry.lookup("user." .. d.user)
                local ok, err = false, lerr
                if to then ok, err = process.send(to, d.topic, d.data) end
                reply({ type = "sent", ok = ok, err = err, to = to })
            elseif topic == "whoami" then
                reply({ type = "me", hub = args.user_hub_pid, plugin = process.pid() })
            elseif topic == "sendpid" then
                local ok, err = process.send(d.pid, d.topic, d.data)
                reply({ type = "sent", ok = ok, err = err })
            elseif topic == "cansize" then
                local ok, err = pcall(security.can, "read", ("x"):rep(d.n))
                reply({ type = "cansize", ok = ok, err = not ok and tostring(err) or nil })
            elseif topic == "flood" then
                local sent, errs = 0, {}
                for i = 1, d.n do
                    local ok, err = process.send("user." .. d.user, "news", i)
                    if ok then sent = sent + 1 else errs[err] = (errs[err] or 0) + 1 end
                end
                reply({ type = "flooded", sent = sent, errs = errs })
            elseif topic == "undelivered" then
                reply({ type = "undelivered", count = undelivered })
            elseif topic == "register" then
                local ok, err = process.registry.register(d.name)
                reply({ type = "registered", ok = ok and true or false, err = err })
            elseif topic == "scope" then
                local s = security.scope()
                local actor = d.actor_id and security.new_actor(d.actor_id, d.actor_meta or {})
                    or security.actor()
                local out = { type = "scope", ids = ids(s), actor_id = security.actor():id(),
                    eval = s:evaluate(actor, d.action, d.resource, d.meta) }
                local ns, nerr = security.named_scope(d.named or "app:none")
                out.named_ids = ns and ids(ns) or nil
                out.named_err = nerr
                local pol, perr = security.policy(d.policy or "app:none")
                out.policy_err = perr
                if pol then
                    out.policy_eval = pol:evaluate(actor, d.action, d.resource, d.meta)
                    local w = security.new_scope():with(pol)
                    out.with_eval = w:evaluate(actor, d.action, d.resource, d.meta)
                    out.contains = w:contains(pol:id())
                    out.without_eval = w:without(pol:id()):evaluate(actor, d.action, d.resource, d.meta)
                    out.custom_eval = security.new_scope({ pol, pol }):evaluate(actor, d.action,
                        d.resource, d.meta)
                end
                reply(out)
            end
        elseif r.value.kind == process.event.CANCEL then
            break
        end
    end
end

return { run = run }
