-- Test plugin (spawned by http_probe.lua): requests args.url, then tells args.conn what it got.
local http = require("http_client")

local function run(args)
    local resp, err = http.get(args.url)
    process.send(args.conn, "ws.message",
        { type = "child_done", status = resp and resp.status_code, err = err })
end

return { run = run }
