-- whale throttle: one decision for one task, atomically, on Redis's own clock.
--
-- The bucket holds `capacity` tokens. An admitted task takes one and holds it for `horizon` ms,
-- so at most `capacity` tasks are admitted in any window of `horizon` ms, and a token frees up
-- exactly `horizon` ms after it was taken. The log of taken tokens is a sorted set (member = task
-- digest, score = Redis time in ms when it was taken); it expires when the key goes idle.
--
-- Idempotent per task: the first decision for a task is remembered in its marker key (same hash
-- slot), and a second call for the same task returns it without touching the bucket, so a
-- redelivered task is never counted twice.
--
-- KEYS[1]  log     sorted set   whale:throttle:{<bucket>}:log
-- KEYS[2]  marker  string       whale:throttle:{<bucket>}:task:<task digest>
--                               'a' (admitted) or 't<retry_after_ms>' (throttled)
-- ARGV[1]  task digest (the log member)
-- ARGV[2]  capacity       tokens in the bucket (>= 1)
-- ARGV[3]  horizon        ms a token stays taken (>= 1)
-- ARGV[4]  admitted_ttl   ms an admission is remembered (>= horizon)
-- ARGV[5]  throttled_ttl  ms a refusal is remembered
-- Returns {admitted 1|0, retry_after_ms, repeated 1|0}.
local log, marker = KEYS[1], KEYS[2]

local earlier = redis.call('GET', marker)
if earlier then
  if earlier == 'a' then
    return {1, 0, 1}
  end
  return {0, tonumber(string.sub(earlier, 2)), 1}
end

local capacity = tonumber(ARGV[2])
local horizon = tonumber(ARGV[3])
local t = redis.call('TIME')
local now = tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)
-- A token taken at s is held during [s, s + horizon). The log is full when it has a
-- capacity-th newest entry; that entry's expiry is what lets the next task in (the log holds
-- more than capacity only if the rule's limit was lowered while tokens were taken). Expired
-- entries are trimmed only when the log is full: below capacity they keep no one out.
local gate = redis.call('ZRANGE', log, -capacity, -capacity, 'WITHSCORES')
if gate[2] then
  local retry = tonumber(gate[2]) + horizon - now
  if retry > 0 then
    redis.call('SET', marker, 't' .. retry, 'PX', ARGV[5])
    return {0, retry, 0}
  end
  redis.call('ZREMRANGEBYSCORE', log, '-inf', now - horizon)
end
redis.call('ZADD', log, now, ARGV[1])
redis.call('PEXPIRE', log, horizon)
redis.call('SET', marker, 'a', 'PX', ARGV[4])
return {1, 0, 0}
