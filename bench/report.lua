-- wrk script: counts the answers of each thread and prints one JSON line at the end.
-- Run with as many threads as connections (-t N -c N) and each thread is one
-- connection, so the per-thread counts show whether every connection made progress.

local threads = {}

function setup(thread)
  table.insert(threads, thread)
end

function init(args)
  answered = 0
  bad = 0
end

function response(status, headers, body)
  answered = answered + 1
  if status >= 400 then
    bad = bad + 1
  end
end

function done(summary, latency, requests)
  local per = {}
  for _, thread in ipairs(threads) do
    table.insert(per, thread:get("answered"))
  end
  local errors = summary.errors
  io.write(string.format(
    '{"requests":%d,"duration_us":%d,"connect":%d,"read":%d,"write":%d,"status":%d,"timeout":%d,' ..
    '"p50_us":%d,"p99_us":%d,"max_us":%d,"per_connection":[%s]}\n',
    summary.requests, summary.duration, errors.connect, errors.read, errors.write,
    errors.status, errors.timeout, latency:percentile(50), latency:percentile(99), latency.max,
    table.concat(per, ",")))
end
