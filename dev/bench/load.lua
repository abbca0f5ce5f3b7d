-- wrk script of `make bench`: requests spread round-robin over the pinned sessions.
-- Arguments (after --): kind ("status", "send" or "keyed": a send with an Idempotency-Key of
-- its own), sessions file (one id a line), api key.
-- Every request is built once, in init (a keyed one: its key added per request); done()
-- prints one RESULT line of JSON.

local requests, count, next_index = {}, 0, 0
local keyed, key_prefix, sent = false, "", 0

function init(args)
  local kind, file, key = args[1], args[2], args[3]
  keyed = kind == "keyed"
  if keyed then  -- every thread (a Lua state of its own) its own keys
    math.randomseed(os.time() + tonumber(tostring({}):match("0x(%x+)"), 16))
    key_prefix = string.format("bench-%08x-", math.random(0, 2147483646))
  end
  for sid in io.lines(file) do
    count = count + 1
    if kind == "status" then
      requests[count] = wrk.format(
        "GET", "/api/sessions/" .. sid .. "/status?api_key=" .. key, { ["X-Bench"] = "1" })
    else
      local body = '{"session_id":"' .. sid .. '","api_key":"' .. key
        .. '","recipient_phone":"6281100000000","message":"bench"}'
      local headers = {
        ["Content-Type"] = "application/json", ["X-Session-Id"] = sid, ["X-Bench"] = "1" }
      requests[count] = keyed and { headers = headers, body = body }
        or wrk.format("POST", "/api/messages/send", headers, body)
    end
  end
  next_index = math.random(count) - 1
end

function request()
  next_index = next_index % count + 1
  local built = requests[next_index]
  if keyed then
    sent = sent + 1
    built.headers["Idempotency-Key"] = key_prefix .. sent
    return wrk.format("POST", "/api/messages/send", built.headers, built.body)
  end
  return built
end

function done(summary, latency, _)
  local e = summary.errors
  io.write(string.format(
    'RESULT {"requests":%d,"duration_us":%d,"p50_us":%d,"p99_us":%d,'
      .. '"connect":%d,"read":%d,"write":%d,"status":%d,"timeout":%d}\n',
    summary.requests, summary.duration,
    math.floor(latency:percentile(50)), math.floor(latency:percentile(99)),
    e.connect, e.read, e.write, e.status, e.timeout))
end
