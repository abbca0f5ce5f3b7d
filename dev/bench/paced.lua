-- wrk script of `make bench` at a fixed rate: load.lua plus a delay() that gives each request
-- the next slot of a fixed schedule (open loop: a slow answer does not push later slots
-- back). wrk has no rate option (wrk2 is not in Debian); its timers count whole
-- milliseconds, so sends jitter by up to 1 ms while the rate holds. Latency is timed from
-- the actual send. A fourth argument: requests per second for this thread.

dofile("load.lua")

local ffi = require("ffi")
ffi.cdef([[
typedef struct { long tv_sec; long tv_nsec; } bench_timespec;
int clock_gettime(int clock_id, bench_timespec *tp);
]])
local CLOCK_MONOTONIC = 1
local now = ffi.new("bench_timespec")

local function now_ms()
  ffi.C.clock_gettime(CLOCK_MONOTONIC, now)
  return tonumber(now.tv_sec) * 1000 + tonumber(now.tv_nsec) / 1e6
end

local load_init = init
local interval, next_slot

function init(args)
  load_init(args)
  interval = 1000 / tonumber(args[4])
end

function delay()
  local t = now_ms()
  next_slot = (next_slot or t) + interval
  return math.max(0, math.floor(next_slot - t + 0.5))
end
