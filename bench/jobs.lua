-- wrk script for J1: submit a job (POST /jobs, body $WRK_BODY), then poll GET /jobs/<id> until
-- its "state" is no longer "running". One finished job is one operation.
--
-- wrk runs one Lua state per thread, shared by that thread's connections, and request() does
-- not say which connection asks. So polls wait in a per-thread FIFO: whichever connection asks
-- next takes the oldest poll (at once, no sleep), or else submits a new job. Each connection
-- has one request in flight, and each job at most one. Job latency runs from the 202 to the
-- response that shows the end state (the POST's own time is in wrk's per-request latency).
-- At the end prints one line "WRKJSON {...}" for bench.wrk.

local ffi = require("ffi") -- wrk embeds LuaJIT; os.clock() is CPU time, os.time() whole seconds
ffi.cdef [[
typedef struct { long tv_sec; long tv_nsec; } bench_timespec;
int clock_gettime(int clock_id, bench_timespec *tp);
]]
local ts = ffi.new("bench_timespec")
local function now_us()
  ffi.C.clock_gettime(1, ts) -- CLOCK_MONOTONIC
  return tonumber(ts.tv_sec) * 1000000 + math.floor(tonumber(ts.tv_nsec) / 1000)
end

local job_body = os.getenv("WRK_BODY") or '{"args": ["true"], "timeout": 3}'
local post_headers = { ["Content-Type"] = "application/json" }
local threads = {}

function setup(thread)
  table.insert(threads, thread)
end

function init(args)
  -- globals, so that done() can read them with thread:get()
  jobs, failed, posts, polls, unexpected = 0, 0, 0, 0, 0
  latencies = {}
  queue, first, last = {}, 1, 0
  accepted = {} -- job id -> time its 202 arrived
end

local function enqueue(id)
  last = last + 1
  queue[last] = id
end

function request()
  if first <= last then
    local id = queue[first]
    queue[first] = nil
    first = first + 1
    polls = polls + 1
    return wrk.format("GET", "/jobs/" .. id)
  end
  posts = posts + 1
  return wrk.format("POST", "/jobs", post_headers, job_body)
end

function response(status, headers, body)
  if status == 202 then
    local loc = headers["Location"] or headers["location"] or ""
    local id = loc:match("/jobs/([^/?#]+)$") or body:match('"id"%s*:%s*"([^"]+)"')
    if id then
      accepted[id] = now_us()
      enqueue(id)
    else
      unexpected = unexpected + 1
    end
    return
  end
  local id = body:match('"id"%s*:%s*"([^"]+)"')
  local state = body:match('"state"%s*:%s*"([^"]+)"')
  if status ~= 200 or not id or not state or not accepted[id] then
    unexpected = unexpected + 1 -- that job is dropped; its connection submits a new one
  elseif state == "running" then
    enqueue(id)
  else
    jobs = jobs + 1
    latencies[#latencies + 1] = now_us() - accepted[id]
    accepted[id] = nil
    if state ~= "exited" or body:match('"status"%s*:%s*(-?%d+)') ~= "0" then
      failed = failed + 1
    end
  end
end

local function percentile(sorted, p)
  if #sorted == 0 then return 0 end
  return sorted[math.max(1, math.ceil(#sorted * p / 100))]
end

function done(summary, latency, requests)
  local all = {}
  local n = { jobs = 0, failed = 0, posts = 0, polls = 0, unexpected = 0 }
  for _, t in ipairs(threads) do
    for k in pairs(n) do n[k] = n[k] + t:get(k) end
    for _, v in ipairs(t:get("latencies")) do all[#all + 1] = v end
  end
  table.sort(all)
  local e = summary.errors
  io.write(string.format(
    'WRKJSON {"requests": %d, "duration_us": %d, "connect": %d, "read": %d, "write": %d, '
    .. '"timeout": %d, "status": %d, "p50_us": %d, "p99_us": %d, "max_us": %d, '
    .. '"jobs": %d, "failed": %d, "posts": %d, "polls": %d, "unexpected": %d, '
    .. '"job_p50_us": %d, "job_p99_us": %d}\n',
    summary.requests, summary.duration, e.connect, e.read, e.write, e.timeout, e.status,
    latency:percentile(50), latency:percentile(99), latency.max,
    n.jobs, n.failed, n.posts, n.polls, n.unexpected, percentile(all, 50), percentile(all, 99)))
end
