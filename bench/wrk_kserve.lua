-- wrk script: POST one fixed KServe-v2 inference request (Triton's binary tensor extension) on every connection.
--
--   WRK_BODY=body.bin WRK_JSON_SIZE=123 wrk -t1 -c4 -d10s --latency -s bench/wrk_kserve.lua \
--       http://127.0.0.1:8000/v2/models/MODEL/infer
--
-- body.bin is the JSON header followed by the raw tensor bytes; WRK_JSON_SIZE is the header's length in bytes
-- (bench/loadtest_vs_wrk.py writes both with tritonclient's own request encoder, the bytes Locust's users send).
-- At the end one line "WRK_JSON {...}" carries the numbers in a machine-readable form.

local path = os.getenv("WRK_BODY")
local json_size = os.getenv("WRK_JSON_SIZE")
assert(path and json_size, "set WRK_BODY and WRK_JSON_SIZE")
local f = assert(io.open(path, "rb"))
wrk.method = "POST"
wrk.body = f:read("*a")
f:close()
wrk.headers["Content-Type"] = "application/octet-stream"
wrk.headers["Inference-Header-Content-Length"] = json_size

function done(summary, latency, requests)
  local e = summary.errors
  io.write(string.format(
    'WRK_JSON {"requests": %d, "duration_us": %d, "errors": %d, "mean_us": %.2f, "p50_us": %d, "p90_us": %d, ' ..
    '"p95_us": %d, "p99_us": %d, "max_us": %d}\n',
    summary.requests, summary.duration, e.connect + e.read + e.write + e.status + e.timeout, latency.mean,
    latency:percentile(50), latency:percentile(90), latency:percentile(95), latency:percentile(99), latency.max))
end
