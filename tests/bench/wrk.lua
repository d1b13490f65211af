-- One wrk script for every scenario of tests/bench/run.py, configured by the environment:
--   WRK_METHOD, WRK_BODY, WRK_CONTENT_TYPE, WRK_TOKEN (a bearer token);
--   WRK_IDS ("5,6,7"): each request goes to WRK_PATH_PREFIX .. one of these ids, at random.
-- At the end it prints one line, "WRK_JSON {...}", that run.py reads.

wrk.method = os.getenv("WRK_METHOD") or "GET"
local body = os.getenv("WRK_BODY")
if body and body ~= "" then
  wrk.body = body
end
local content_type = os.getenv("WRK_CONTENT_TYPE")
if content_type and content_type ~= "" then
  wrk.headers["Content-Type"] = content_type
end
local token = os.getenv("WRK_TOKEN")
if token and token ~= "" then
  wrk.headers["Authorization"] = "Bearer " .. token
end

local ids_text = os.getenv("WRK_IDS") or ""
if ids_text ~= "" then
  local prefix = os.getenv("WRK_PATH_PREFIX")
  local ids = {}
  for id in string.gmatch(ids_text, "%d+") do
    ids[#ids + 1] = id
  end
  local threads = 0

  function setup(thread)
    threads = threads + 1
    thread:set("seed", threads)
  end

  function init(args)
    math.randomseed(os.time() * 1000 + (seed or 0))
  end

  -- Defined only here: without a request() function wrk sends one prepared request, cheaper.
  function request()
    return wrk.format(nil, prefix .. ids[math.random(#ids)])
  end
end

function done(summary, latency, requests)
  local errors = summary.errors
  io.write(string.format(
    'WRK_JSON {"requests": %d, "duration_us": %d, "status_errors": %d, "connect_errors": %d, '
      .. '"read_errors": %d, "write_errors": %d, "timeouts": %d, "p50_us": %d, "p90_us": %d, '
      .. '"p99_us": %d, "max_us": %d, "mean_us": %.1f}\n',
    summary.requests, summary.duration, errors.status, errors.connect, errors.read, errors.write,
    errors.timeout, latency:percentile(50), latency:percentile(90), latency:percentile(99),
    latency.max, latency.mean
  ))
end
