"""The Lua scripts of the Redis limiter: each runs atomically in Redis, the same inequalities as ``gcra``."""

ACQUIRE_LUA = """
-- KEYS: 1 gcra hash {r, t}, 2 today's token counter, 3 concurrency slots (zset: member -> expiry)
-- ARGV: now_ms rpm tpm daily conc est day_end_ms slot slot_expiry_ms   (0 = unlimited)
local now = tonumber(ARGV[1])
local rpm = tonumber(ARGV[2]) local tpm = tonumber(ARGV[3])
local daily = tonumber(ARGV[4]) local conc = tonumber(ARGV[5])
local est = tonumber(ARGV[6]) local day_end = tonumber(ARGV[7])
local P = 60000 local EPS = 0.001
-- Times are stored relative to the key's origin 'o' (ms): absolute epoch milliseconds
-- (~2e12) would make a double's rounding accumulate over a burst.
local g = redis.call('HMGET', KEYS[1], 'o', 'r', 't')
local o = tonumber(g[1])
if o == nil then o = math.floor(now) redis.call('HSET', KEYS[1], 'o', string.format('%d', o)) end
local abs = now
now = now - o
local r = tonumber(g[2]) or now if r < now then r = now end
local t = tonumber(g[3]) or now if t < now then t = now end
local used = 0
if daily > 0 then used = tonumber(redis.call('GET', KEYS[2]) or '0') end
local inflight = 0
if conc > 0 then
  redis.call('ZREMRANGEBYSCORE', KEYS[3], '-inf', abs)
  inflight = redis.call('ZCARD', KEYS[3])
end
local nr = r local nt = t local ok = 1
if rpm > 0 then nr = r + P / rpm if nr - now > P + EPS then ok = 0 end end
if tpm > 0 then nt = t + est * P / tpm if nt - now > P + EPS then ok = 0 end end
if daily > 0 and used + est > daily then ok = 0 end
if conc > 0 and inflight >= conc then ok = 0 end
if ok == 1 then
  if rpm > 0 then redis.call('HSET', KEYS[1], 'r', string.format('%.17g', nr)) end
  if tpm > 0 then redis.call('HSET', KEYS[1], 't', string.format('%.17g', nt)) end
  redis.call('PEXPIRE', KEYS[1], math.ceil(math.max(nr, nt) - now) + 1000)
  if daily > 0 and est > 0 then
    redis.call('INCRBY', KEYS[2], est)
    redis.call('PEXPIREAT', KEYS[2], day_end + 3600000)
  end
  if conc > 0 then
    local exp = tonumber(ARGV[9])
    redis.call('ZADD', KEYS[3], exp, ARGV[8])
    redis.call('PEXPIRE', KEYS[3], math.ceil(exp - abs) + 60000)
  end
end
return {ok, string.format('%.17g', r - now), string.format('%.17g', t - now), used, inflight}
"""

SETTLE_LUA = """
-- KEYS: as acquire. ARGV: now_ms tpm daily delta_tokens day_end_ms slot('' = none)
local now = tonumber(ARGV[1]) local tpm = tonumber(ARGV[2]) local daily = tonumber(ARGV[3])
local delta = tonumber(ARGV[4]) local day_end = tonumber(ARGV[5])
if tpm > 0 and delta ~= 0 then
  local g = redis.call('HMGET', KEYS[1], 'o', 't')
  local o = tonumber(g[1])
  if o == nil then o = math.floor(now) redis.call('HSET', KEYS[1], 'o', string.format('%d', o)) end
  now = now - o
  local t = tonumber(g[2])
  if delta > 0 and (t == nil or t < now) then t = now end
  if t ~= nil then
    t = t + delta * 60000 / tpm
    redis.call('HSET', KEYS[1], 't', string.format('%.17g', t))
    if redis.call('PTTL', KEYS[1]) < t - now + 1000 then redis.call('PEXPIRE', KEYS[1], math.ceil(math.max(t - now, 0)) + 1000) end
  end
end
if daily > 0 and delta ~= 0 then
  if delta > 0 then
    redis.call('INCRBY', KEYS[2], delta)
    redis.call('PEXPIREAT', KEYS[2], day_end + 3600000)
  elseif redis.call('EXISTS', KEYS[2]) == 1 then
    if redis.call('INCRBY', KEYS[2], delta) < 0 then redis.call('SET', KEYS[2], 0, 'KEEPTTL') end
  end
end
if ARGV[6] ~= '' then redis.call('ZREM', KEYS[3], ARGV[6]) end
return 1
"""

REFRESH_LUA = """
-- KEYS[1]: a deployer's slot zset; ARGV[1]: milliseconds to add; ARGV[2..]: slots still held
for i = 2, #ARGV do
  if redis.call('ZSCORE', KEYS[1], ARGV[i]) then redis.call('ZINCRBY', KEYS[1], ARGV[1], ARGV[i]) end
end
redis.call('PEXPIRE', KEYS[1], 120000 + math.ceil(tonumber(ARGV[1])))
return 1
"""
CLAIM_LUA = """
-- A lease: give back what the last lease left (or charge its debt), then take up to a share.
-- KEYS: 1 gcra hash {o, r, t}, 2 today's token counter
-- ARGV: now_ms rpm tpm daily ret_requests ret_tokens ret_daily want_requests want_tokens min_tokens day_end_ms
-- (0 = unlimited; ret_tokens < 0 is a debt; want_requests 0 = give back only)
local now = tonumber(ARGV[1])
local rpm = tonumber(ARGV[2]) local tpm = tonumber(ARGV[3]) local daily = tonumber(ARGV[4])
local ret_r = tonumber(ARGV[5]) local ret_t = tonumber(ARGV[6]) local ret_d = tonumber(ARGV[7])
local want_r = tonumber(ARGV[8]) local want_t = tonumber(ARGV[9]) local min_t = tonumber(ARGV[10])
local day_end = tonumber(ARGV[11])
local P = 60000 local EPS = 0.001
local g = redis.call('HMGET', KEYS[1], 'o', 'r', 't')
local o = tonumber(g[1])
if o == nil then o = math.floor(now) redis.call('HSET', KEYS[1], 'o', string.format('%d', o)) end
now = now - o
local r = tonumber(g[2]) local t = tonumber(g[3])
if rpm > 0 and ret_r ~= 0 and r ~= nil then r = r - ret_r * P / rpm end
if tpm > 0 and ret_t ~= 0 then
  if ret_t < 0 and (t == nil or t < now) then t = now end
  if t ~= nil then t = t - ret_t * P / tpm end
end
if r == nil or r < now then r = now end
if t == nil or t < now then t = now end
local used = 0
if daily > 0 then
  used = tonumber(redis.call('GET', KEYS[2]) or '0')
  if ret_d ~= 0 then
    used = used - ret_d
    if used < 0 then used = 0 end
  end
end
local n = want_r local tok = want_t local ok = 1
if want_r <= 0 then
  ok = 0 n = 0 tok = 0
else
  if rpm > 0 then
    local room = math.floor((P + EPS - (r - now)) * rpm / P)
    if room < n then n = room end
  end
  if tpm > 0 then
    local room = math.floor((P + EPS - (t - now)) * tpm / P)
    if room < tok then tok = room end
  end
  if daily > 0 and daily - used < tok then tok = daily - used end
  if n < 1 or tok < min_t then ok = 0 n = 0 tok = 0 end
end
local r_wait = r - now local t_wait = t - now local used_before = used
if rpm > 0 then r = r + n * P / rpm redis.call('HSET', KEYS[1], 'r', string.format('%.17g', r)) end
if tpm > 0 then t = t + tok * P / tpm redis.call('HSET', KEYS[1], 't', string.format('%.17g', t)) end
redis.call('PEXPIRE', KEYS[1], math.ceil(math.max(r, t) - now) + 1000)
if daily > 0 and (ret_d ~= 0 or tok > 0) then
  redis.call('SET', KEYS[2], string.format('%d', used + tok), 'PXAT', string.format('%d', day_end + 3600000))
end
return {ok, string.format('%.17g', r_wait), string.format('%.17g', t_wait), used_before, n, tok}
"""
