-- wrk script for bench/run.py: POST a JSON hit body with a different page on each request
-- (or, for a counts, stats or top path, GET it), count 200 and non-2xx answers, and print one
-- machine-readable summary line.
-- Arguments (after `--`): path, number of pages.

local path = "/"
local npages = 1000
counter = 0   -- globals, so done() can read them from each thread with thread:get()
ok = 0
non2xx = 0
run_id = ""
local reads = false  -- a counts, stats or top path: GET it as it is
local threads = {}

function setup(thread)
  table.insert(threads, thread)
end

function init(args)
  path = args[1] or path
  reads = string.find(path, "/counts", 1, true) ~= nil
    or string.find(path, "/stats", 1, true) ~= nil
    or string.find(path, "/top?", 1, true) ~= nil
  npages = tonumber(args[2] or npages)
  math.randomseed(os.time())
  run_id = tostring(os.time()) .. "-" .. tostring(math.random(1, 1000000000))
  counter = math.random(0, npages - 1)
  wrk.headers["Content-Type"] = "application/json"
  -- A browser's agent (wrk's own would be fine too, but the bot check then never runs).
  wrk.headers["User-Agent"] = "Mozilla/5.0 (X11; Linux x86_64) AppleWebKit/537.36 (KHTML, like Gecko) Chrome/131.0 Safari/537.36"
end

function request()
  if reads then
    return wrk.format("GET", path)
  end
  counter = counter + 1
  -- A new visitor each time: every hit passes the dedupe check (and writes its mark).
  local body = '{"page":"news/article-' .. (counter % npages) .. '","visitor":"v' .. run_id .. '-' .. counter .. '"}'
  return wrk.format("POST", path, nil, body)
end

function response(status, headers, body)
  if status == 200 then
    ok = ok + 1
  end
  if status < 200 or status > 299 then
    non2xx = non2xx + 1
  end
end

function done(summary, latency, requests)
  local ok_total, non2xx_total = 0, 0
  for _, thread in ipairs(threads) do
    ok_total = ok_total + thread:get("ok")
    non2xx_total = non2xx_total + thread:get("non2xx")
  end
  local e = summary.errors
  io.write(string.format(
    'WRKJSON {"requests":%d,"duration_us":%d,"p50_us":%d,"p99_us":%d,"max_us":%d,' ..
    '"ok":%d,"non2xx":%d,"err_connect":%d,"err_read":%d,"err_write":%d,"err_timeout":%d}\n',
    summary.requests, summary.duration, latency:percentile(50), latency:percentile(99),
    latency.max, ok_total, non2xx_total, e.connect, e.read, e.write, e.timeout))
end
