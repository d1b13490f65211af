-- Mixed read/write load for test_gunicorn_conf.py::test_wrk_mixed_load_all_2xx_and_flat_memory
-- and test_cluster.py. Per ten requests: 3 list, 2 create, 1 patch, 1 read one, 1 who-am-I,
-- 1 health, 1 greeting.
-- WRK_TOKEN: a bearer token; WRK_TODO_ID: a todo of that user (patched and read); WRK_TAG
-- (default "load"): the first word of every created todo's text.
-- done() prints one line, "WRK_RESULT {json}", with the counts the tests check; "created" is
-- the number of 201 answers, so of todos the service says it stored.

local token = os.getenv("WRK_TOKEN")
local todo_id = os.getenv("WRK_TODO_ID")
local tag = os.getenv("WRK_TAG") or "load"
local auth = { ["Authorization"] = "Bearer " .. token }
local json_auth = { ["Authorization"] = "Bearer " .. token, ["Content-Type"] = "application/json" }
local threads = {}

function setup(thread)
    thread:set("id", #threads + 1)
    table.insert(threads, thread)
end

function init(args)
    sent = 0
    non2xx = 0
    created = 0
    statuses = ""
end

function request()
    sent = sent + 1
    local pick = sent % 10
    if pick < 3 then
        return wrk.format("GET", "/api/todos/?limit=10", auth)
    elseif pick < 5 then
        return wrk.format("POST", "/api/todos/", json_auth, '{"text": "' .. tag .. " " .. id .. "-" .. sent .. '"}')
    elseif pick == 5 then
        local completed = (sent % 20 < 10) and "true" or "false"
        return wrk.format("PATCH", "/api/todos/" .. todo_id, json_auth, '{"completed": ' .. completed .. "}")
    elseif pick == 6 then
        return wrk.format("GET", "/api/todos/" .. todo_id, auth)
    elseif pick == 7 then
        return wrk.format("GET", "/api/auth/me", auth)
    elseif pick == 8 then
        return wrk.format("GET", "/health")
    end
    return wrk.format("GET", "/")
end

function response(status, headers, body)
    if status == 201 then
        created = created + 1
    end
    if status < 200 or status > 299 then
        non2xx = non2xx + 1
        if #statuses < 200 then
            statuses = statuses .. status .. " "
        end
    end
end

function done(summary, latency, requests)
    local bad = 0
    local stored = 0
    local seen = ""
    for _, thread in ipairs(threads) do
        bad = bad + thread:get("non2xx")
        stored = stored + thread:get("created")
        seen = seen .. thread:get("statuses")
    end
    local errors = summary.errors
    io.write(string.format(
        'WRK_RESULT {"requests": %d, "non2xx": %d, "created": %d, "statuses": "%s", "connect": %d, "read": %d, '
            .. '"write": %d, "timeout": %d, "p50_ms": %.1f, "p99_ms": %.1f, "max_ms": %.1f, "seconds": %.1f}\n',
        summary.requests, bad, stored, seen, errors.connect, errors.read, errors.write, errors.timeout,
        latency:percentile(50) / 1000, latency:percentile(99) / 1000, latency.max / 1000,
        summary.duration / 1e6
    ))
end
