-- wrk script for W1-W3: POST $WRK_BODY (JSON) to the URL's path; at the end print one line
-- "WRKJSON {...}" for bench.wrk. Same requests as ../shared/bench/wrk_post.lua.
-- No response() callback on purpose: with one, wrk copies every body (1 MiB in W3) into Lua.
wrk.method = "POST"
wrk.body = os.getenv("WRK_BODY") or '{"args": ["true"], "timeout": 3}'
wrk.headers["Content-Type"] = "application/json"
-- $WRK_AUTH, when set, is the Authorization header (a cluster's instances want a token).
if os.getenv("WRK_AUTH") then wrk.headers["Authorization"] = os.getenv("WRK_AUTH") end

function done(summary, latency, requests)
  local e = summary.errors
  io.write(string.format(
    'WRKJSON {"requests": %d, "duration_us": %d, "connect": %d, "read": %d, "write": %d, '
    .. '"timeout": %d, "status": %d, "p50_us": %d, "p99_us": %d, "max_us": %d}\n',
    summary.requests, summary.duration, e.connect, e.read, e.write, e.timeout, e.status,
    latency:percentile(50), latency:percentile(99), latency.max))
end
