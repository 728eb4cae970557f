-- wrk script for benches/load/run: every request carries `X-API-Key: <key>`.
--
-- Environment (read in each wrk thread):
--   KG_KEYS   file with one key per line (valid keys, or garbage strings)
--   KG_MODE   `random` (default): a key chosen uniformly at random per request
--             `index`: walk KG_INDEX (0-based line numbers into KG_KEYS, e.g. Zipf samples):
--                      thread t of KG_THREADS walks its own slice of the file, starting
--                      KG_SKIP lines into it (to continue where an earlier run stopped),
--                      and wraps around at the end of its slice (counted in done())
--   KG_INDEX  file with one index per line (mode `index`)
--   KG_OUT    where done() writes the run's figures as one JSON object
--
-- Each key's request is formatted once, on first use, and kept: after that request() costs
-- a random number and a table lookup, the same for every target.

local counter = 0
local threads = {}

function setup(thread)
   counter = counter + 1
   thread:set("tid", counter)
   threads[counter] = thread
end

local keys, reqs, n, order, m
local mode = "random"
pos, wrapped = 0, 0 -- globals, so done() can read them through thread:get()

function init(args)
   mode = os.getenv("KG_MODE") or "random"
   math.randomseed(os.time() * 1000 + (tid or 0) * 7919)
   for _ = 1, 10 do math.random() end
   keys, reqs, n = {}, {}, 0
   local path = os.getenv("KG_KEYS") or error("KG_KEYS is not set")
   for line in io.lines(path) do
      if #line > 0 then
         n = n + 1
         keys[n] = line
      end
   end
   if n == 0 then error("no keys in " .. path) end
   if mode == "index" then
      local path = os.getenv("KG_INDEX") or error("KG_INDEX is not set")
      local threads = tonumber(os.getenv("KG_THREADS") or "1")
      local total = 0
      for _ in io.lines(path) do total = total + 1 end
      local per = math.floor(total / threads)
      local first, last = (tid - 1) * per + 1, tid * per
      order, m = {}, 0
      local i = 0
      for line in io.lines(path) do
         i = i + 1
         if i > last then break end
         if i >= first then
            m = m + 1
            order[m] = tonumber(line) + 1
         end
      end
      if m == 0 then error("empty slice of KG_INDEX") end
      pos = tonumber(os.getenv("KG_SKIP") or "0") % m
   end
end

local function formatted(i)
   local r = reqs[i]
   if not r then
      r = wrk.format(nil, nil, { ["X-API-Key"] = keys[i] })
      reqs[i] = r
   end
   return r
end

function request()
   if mode == "index" then
      pos = pos + 1
      if pos > m then
         pos = 1
         wrapped = (wrapped or 0) + 1
      end
      return formatted(order[pos])
   end
   return formatted(math.random(n))
end

function done(summary, latency, requests)
   local out = os.getenv("KG_OUT")
   if not out then return end
   local e = summary.errors
   -- index mode: the furthest position reached in a slice, and how often a slice wrapped
   local furthest, wraps = 0, 0
   for _, t in ipairs(threads) do
      furthest = math.max(furthest, t:get("pos") or 0)
      wraps = wraps + (t:get("wrapped") or 0)
   end
   local f = assert(io.open(out, "w"))
   f:write(string.format(
      '{"requests":%d,"duration_us":%d,"bytes":%d,"connect":%d,"read":%d,"write":%d,' ..
      '"status":%d,"timeout":%d,"p50":%d,"p90":%d,"p99":%d,"p999":%d,"max":%d,"mean":%.1f,' ..
      '"index_furthest":%d,"index_wraps":%d}\n',
      summary.requests, summary.duration, summary.bytes, e.connect, e.read, e.write,
      e.status, e.timeout, latency:percentile(50), latency:percentile(90),
      latency:percentile(99), latency:percentile(99.9), latency.max, latency.mean,
      furthest, wraps))
   f:close()
end
