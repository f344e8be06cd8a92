-- Chat plugin (prefix chat_): rooms of users across the cluster, through cross-user sends.
--
-- A room lives in the chat plugin of the user who hosts it: its member list is that one
-- process's state, the only copy, so there is nothing to keep in step. A room is named by its
-- host and its name. Members' plugins forward what their clients ask to the host's hub
-- (process.send("user." .. host, "chat_member_*", ...)); the hub hands a topic that matches
-- this plugin's prefix to the host's chat plugin, which reads the sender's user from
-- msg:from_user() (set by the runtime, never by the payload) and fans the room's events out to
-- every member with process.send("user." .. member, "chat.*", ...); a user hub writes such a
-- topic to all of that user's connections as {"topic":"chat.message","data":{...}}.
-- Every send to another user needs process.send allowed on user.<id> by the sender's security
-- scope: a refused one answers the client {"type":"chat_error","error":"permission denied"}.
--
-- Client -> plugin (data fields):
--   chat_join  {room, host?}        host defaults to yourself (you host the room then)
--   chat_leave {room, host?}
--   chat_say   {room, host?, text}
-- Client <- its hub: chat.joined {room, host, user} (who came; the newcomer's own one also has
--   members, the sorted member list), chat.left {room, host, user},
--   chat.message {room, host, user, text}, chat.error {room, host, error}
-- Client <- its plugin: {"type":"chat_ok"|"chat_error", request_id, error?}
-- Membership is lost when the host's hub ends (no connection for user_hub_inactivity_timeout).

local MAX_ROOMS = 100      -- rooms one user hosts
local MAX_MEMBERS = 1000   -- members of one room
local MAX_TEXT = 4096      -- bytes of one message
local MAX_NAME = 64        -- bytes of a room or user name in a request

local function run(args)
    local me = args.user_id
    local rooms = {} -- name -> {members = {user = true}, n = count}  (rooms this user hosts)
    local inbox = process.inbox()
    local events = process.events()

    local function member_list(room)
        local l = {}
        for u in pairs(room.members) do l[#l + 1] = u end
        table.sort(l)
        return l
    end

    local function to_user(user, topic, data)
        return process.send("user." .. user, topic, data)
    end

    local function fan_out(name, room, topic, data)
        for u in pairs(room.members) do to_user(u, topic, data) end
    end

    -- the host's side: user (from the runtime) asks for op on room `name`
    local function host(op, user, name, text)
        local room = rooms[name]
        local function refuse(err)
            to_user(user, "chat.error", { room = name, host = me, error = err })
        end
        if op == "join" then
            if not room then
                local n = 0
                for _ in pairs(rooms) do n = n + 1 end
                if n >= MAX_ROOMS then return refuse("too many rooms") end
                room = { members = {}, n = 0 }
                rooms[name] = room
            end
            if not room.members[user] then
                if room.n >= MAX_MEMBERS then return refuse("room is full") end
                -- the others hear who came; only the newcomer gets the member list (a join
                -- costs one small frame per member, not the whole list each)
                fan_out(name, room, "chat.joined", { room = name, host = me, user = user })
                room.members[user] = true
                room.n = room.n + 1
            end
            to_user(user, "chat.joined",
                { room = name, host = me, user = user, members = member_list(room) })
        elseif op == "leave" then
            if not (room and room.members[user]) then return refuse("not a member") end
            room.members[user] = nil
            room.n = room.n - 1
            local ev = { room = name, host = me, user = user }
            fan_out(name, room, "chat.left", ev)
            to_user(user, "chat.left", ev)
            if room.n == 0 then rooms[name] = nil end
        elseif op == "say" then
            if not (room and room.members[user]) then return refuse("not a member") end
            fan_out(name, room, "chat.message", { room = name, host = me, user = user, text = text })
        end
    end

    local function valid_name(s)
        return type(s) == "string" and #s > 0 and #s <= MAX_NAME
    end

    -- a client of this user asks for op: handled here when this user hosts the room, else
    -- forwarded to the host's hub
    local function client(op, p)
        local d = type(p.data) == "table" and p.data or {}
        local function answer(err)
            process.send(p.conn_pid, "ws.message",
                { type = err and "chat_error" or "chat_ok", request_id = p.request_id, error = err })
        end
        local room, h = d.room, d.host or me
        if not valid_name(room) or not valid_name(h) then
            return answer("room and host must be strings of 1 to " .. MAX_NAME .. " bytes")
        end
        local text = d.text
        if op == "say" and (type(text) ~= "string" or #text > MAX_TEXT) then
            return answer("text must be a string of at most " .. MAX_TEXT .. " bytes")
        end
        if h == me then
            host(op, me, room, text)
            return answer(nil)
        end
        local ok, err = process.send("user." .. h, "chat_member_" .. op, { room = room, text = text })
        answer(not ok and err or nil)
    end

    while true do
        local r = channel.select({ inbox:case_receive(), events:case_receive() })
        if not r.ok then break end
        if r.channel == inbox then
            local msg = r.value
            local topic, p = msg:topic(), msg:payload():data()
            if type(p) ~= "table" then p = {} end
            local op = topic:match("^member_(%a+)$")
            if p.conn_pid and (topic == "join" or topic == "leave" or topic == "say") then
                client(topic, p)
            elseif op and not p.conn_pid and msg:from_user() and valid_name(p.room) then
                -- from another user's plugin (or this user's own): the runtime names the user
                local text = p.text
                if op ~= "say" or (type(text) == "string" and #text <= MAX_TEXT) then
                    host(op, msg:from_user(), p.room, text)
                end
            elseif topic == "user.undelivered" and not msg:from() then
                -- a forward to a host whose hub was gone (found out after the send returned)
                local u = type(p.user) == "string" and p.user or "?"
                process.send("user." .. me, "chat.error",
                    { host = u, error = tostring(p.error) })
            elseif p.conn_pid then
                process.send(p.conn_pid, "ws.message",
                    { type = "chat_error", request_id = p.request_id, error = "unknown command" })
            end
        elseif r.value.kind == process.event.CANCEL then
            break
        end
    end
end

return { run = run }
