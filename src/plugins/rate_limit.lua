-- One rate-limit decision, atomic on the Redis server, timed by its clock.
-- KEYS[1]: the key's base (hash-tagged: every key below shares its slot).
-- ARGV: algorithm (tb lb fw sl sc), a (burst or limit), b (interval or window, µs),
-- and for `store: hybrid` a count n: n requests a node let through since its
-- last sync, counted unconditionally (tb fw sc only); the state after is returned.
-- Returns {allowed, now_us, x, y}: the state seen before this request
-- (tb/lb: the theoretical arrival time; fw: the window's count;
-- sc: the window's count and the previous one's; sl: the count in the span
-- and the oldest timestamp).
local t = redis.call('TIME')
local now = tonumber(t[1]) * 1000000 + tonumber(t[2])
local alg, a, b = ARGV[1], tonumber(ARGV[2]), tonumber(ARGV[3])
local n = tonumber(ARGV[4] or 0)
local function ms(us) return math.ceil(us / 1000) + 1000 end

if n > 0 then
  if alg == 'tb' then
    local tat = tonumber(redis.call('GET', KEYS[1]) or now)
    if tat < now then tat = now end
    tat = tat + n * b
    redis.call('SET', KEYS[1], string.format('%d', tat), 'PX', ms(tat - now))
    return {1, now, tat, 0}
  end
  local start = now - (now % b)
  local k = KEYS[1] .. ':' .. string.format('%d', start)
  local cur = redis.call('INCRBY', k, n)
  redis.call('PEXPIRE', k, ms(2 * b))
  local prev = tonumber(redis.call('GET', KEYS[1] .. ':' .. string.format('%d', start - b)) or 0)
  return {1, now, cur, prev}
end

if alg == 'tb' or alg == 'lb' then
  local tat = tonumber(redis.call('GET', KEYS[1]) or now)
  if tat < now then tat = now end
  local allowed
  if alg == 'tb' then
    allowed = (tat + b) - now <= a * b
  else
    allowed = math.ceil((tat - now) / b) <= a
  end
  if allowed then
    redis.call('SET', KEYS[1], string.format('%d', tat + b), 'PX', ms(tat + b - now))
    return {1, now, tat, 0}
  end
  return {0, now, tat, 0}
elseif alg == 'fw' then
  local k = KEYS[1] .. ':' .. string.format('%d', now - (now % b))
  local count = tonumber(redis.call('GET', k) or 0)
  if count >= a then return {0, now, count, 0} end
  redis.call('INCR', k)
  redis.call('PEXPIRE', k, ms(b))
  return {1, now, count, 0}
elseif alg == 'sl' then
  redis.call('ZREMRANGEBYSCORE', KEYS[1], '-inf', string.format('%d', now - b))
  local count = redis.call('ZCARD', KEYS[1])
  if count >= a then
    local oldest = redis.call('ZRANGE', KEYS[1], 0, 0, 'WITHSCORES')
    return {0, now, count, tonumber(oldest[2])}
  end
  local seq = redis.call('INCR', KEYS[1] .. ':seq')
  redis.call('ZADD', KEYS[1], string.format('%d', now), string.format('%d:%d', now, seq))
  redis.call('PEXPIRE', KEYS[1], ms(b))
  redis.call('PEXPIRE', KEYS[1] .. ':seq', ms(b))
  return {1, now, count, 0}
else
  local start = now - (now % b)
  local k = KEYS[1] .. ':' .. string.format('%d', start)
  local cur = tonumber(redis.call('GET', k) or 0)
  local prev = tonumber(redis.call('GET', KEYS[1] .. ':' .. string.format('%d', start - b)) or 0)
  local weighted = math.floor(prev * (b - (now - start)) / b) + cur
  if weighted >= a then return {0, now, cur, prev} end
  redis.call('INCR', k)
  redis.call('PEXPIRE', k, ms(2 * b))
  return {1, now, cur, prev}
end
