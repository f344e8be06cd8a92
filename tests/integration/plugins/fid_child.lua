-- A plain process.lua entry (no meta.type relay.plugin) that plugins spawn.
local ctx = require("ctx")

local function run(mode: string, b: number?, c: {x: number}?, d: any, e: string?): any
    if mode == "value" then
        return {sum = b + c.x, d_nil = d == nil, e = e}
    elseif mode == "fail" then
        return nil, "child failed: " .. tostring(b)
    elseif mode == "crash" then
        error("boom", 0)
    elseif mode == "ctx" then
        local m = process.inbox():receive()
        local missing, err = ctx.get("absent")
        return {request_id = ctx.get("request_id"), all = ctx.all(), topic = m:topic(),
                payload = m:payload():data(), missing = err and err:kind()}
    elseif mode == "wait" then
        process.inbox():receive()
        return "woke"
    end
    return "ok"
end

return {run = run}
