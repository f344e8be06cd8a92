-- library.lua (imported as "sessions"): the plugin's bookkeeping of its session processes. Its
-- state is per instance (every user's plugin has its own table).
local consts = require("consts")

type Session = {id: string, pid: string, last_active: integer, status: string}

local sessions: {[string]: Session} = {}
local by_pid: {[string]: string} = {}
local clock: integer = 0

local M = {}

function M.add(id: string, pid: string): Session
    clock = clock + 1
    local s: Session = {id = id, pid = pid, last_active = clock, status = "active"}
    sessions[id] = s
    by_pid[pid] = id
    return s
end

function M.get(id: string): Session?
    return sessions[id]
end

function M.by_pid(pid: string): Session?
    local id = by_pid[pid]
    return id and sessions[id] or nil
end

function M.touch(s: Session)
    clock = clock + 1
    s.last_active = clock
end

function M.remove(s: Session)
    sessions[s.id] = nil
    by_pid[s.pid] = nil
end

function M.active_ids(): {string}
    local ids: {string} = {}
    for id, s in pairs(sessions) do
        if s.status == "active" then ids[#ids + 1] = id end
    end
    table.sort(ids)
    return ids
end

function M.empty(): boolean
    return next(sessions) == nil
end

function M.count(): integer
    return #M.active_ids()
end

-- the most recently active session, or nil
function M.latest(): Session?
    local best: Session? = nil
    for _, s in pairs(sessions) do
        if s.status == "active" and (best == nil or s.last_active > (best!).last_active) then
            best = s
        end
    end
    return best
end

-- the least recently active session (evicted past MAX_SESSIONS_PER_USER)
function M.oldest(): Session?
    local worst: Session? = nil
    for _, s in pairs(sessions) do
        if s.status == "active" and (worst == nil or s.last_active < (worst!).last_active) then
            worst = s
        end
    end
    return worst
end

M.MAX = consts.MAX_SESSIONS_PER_USER

return M
