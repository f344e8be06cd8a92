-- A function.lua entry funcs.call runs.
local function main(x: number): (number?, any)
    if x < 0 then
        return nil, errors.new({message = "negative", kind = errors.INVALID})
    end
    return x * 2
end

return {main = main}
