-- A function.lua entry funcs.async runs (test_procapi.py): it blocks before answering.
local time = require("time")

local function main(x: number): (number?, any)
    time.sleep("20ms")
    if x < 0 then
        return nil, errors.new({message = "negative", kind = errors.INVALID})
    end
    if x == 13 then error("unlucky", 0) end
    return x * 2
end

return {main = main}
