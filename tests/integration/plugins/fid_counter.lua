-- A library.lua entry: module-level state is per importing instance.
local n: integer = 0
local M = {}

function M.bump(): integer
    n = n + 1
    return n
end

return M
