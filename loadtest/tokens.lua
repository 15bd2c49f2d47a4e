-- wrk script: each request carries the bearer token of the next user, and the wrk threads
-- share the users out (thread k takes lines k, k+T, ...), so every user is distinct until the
-- list wraps around. Requests are formatted once in init: request() only hands one out.
-- args[1] - file of bearer tokens, one a line
-- args[2] - number of wrk threads (-t)
-- done() prints one JSON line of results.
local counter = 0

function setup(thread)
  thread:set("id", counter)
  counter = counter + 1
end

function init(args)
  local nthreads = tonumber(args[2])
  prepared = {}
  local i = 0
  for token in io.lines(args[1]) do
    if i % nthreads == id then
      prepared[#prepared + 1] = wrk.format("POST", nil, {["Authorization"] = "Bearer " .. token})
    end
    i = i + 1
  end
  n = 0
end

function request()
  n = n + 1
  if n > #prepared then n = 1 end
  return prepared[n]
end

function done(summary, latency, requests)
  local e = summary.errors
  io.write(string.format(
    '{"requests": %d, "duration_us": %d, "p50_us": %d, "p90_us": %d, "p99_us": %d, ' ..
    '"max_us": %d, "status_errors": %d, "connect": %d, "read": %d, "write": %d, "timeout": %d}\n',
    summary.requests, summary.duration, latency:percentile(50), latency:percentile(90),
    latency:percentile(99), latency.max, e.status, e.connect, e.read, e.write, e.timeout))
end
