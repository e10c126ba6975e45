-- wrk script for `flashsale serve`: every request is a buy of SKU 1 by a random
-- buyer (1..BUYERS, default 10,000,000) with a fresh idempotency key, so the engine sees
-- a crowd of distinct buyers, some pressing more than once.
--   wrk -s benches/http/buy.lua http://127.0.0.1:8080
-- With TOKENS=FILE (one bearer token per line, for a server run with `--auth jwt`), each
-- request is a buyer's instead, the tokens taken in turn, and the body names no user.
local buyers = tonumber(os.getenv("BUYERS") or "10000000")
local sku = os.getenv("SKU") or "1"
local counter = 0
local thread_number = 0
local next_thread = 0

function setup(thread)
    next_thread = next_thread + 1
    thread:set("thread_number", next_thread)
end

local tokens = {}
local token_file = os.getenv("TOKENS")

function init(args)
    math.randomseed(os.time() + thread_number * 7919)
    if token_file then
        for line in io.lines(token_file) do
            tokens[#tokens + 1] = line
        end
    end
end

wrk.method = "POST"
wrk.headers["Content-Type"] = "application/json"
local path = "/sales/" .. sku .. "/buy"

function request()
    counter = counter + 1
    -- Keys are unique across wrk threads: the thread's number in the high digits.
    local key = thread_number * 1000000000000 + counter
    if #tokens > 0 then
        local token = tokens[(counter + thread_number) % #tokens + 1]
        local body = string.format('{"qty":1,"key":%d}', key)
        return wrk.format(nil, path, { ["Authorization"] = "Bearer " .. token }, body)
    end
    local user = math.random(1, buyers)
    local body = string.format('{"user":%d,"qty":1,"key":%d}', user, key)
    return wrk.format(nil, path, nil, body)
end
