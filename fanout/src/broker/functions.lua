#!lua name=gw
-- The gateway's server-side functions, loaded by every gateway node at start
-- (FUNCTION LOAD REPLACE). They make a publish one atomic step: assign the
-- channel's next offset, append to its bounded history, remember the
-- idempotency id, and PUBLISH the finished envelope to the nodes.
--
-- Keys of channel C (all in C's hash slot, so Redis Cluster keeps them together):
--   gw:{C}:m  hash: e = epoch, o = newest offset
--   gw:{C}:h  stream: one entry per message, id OFFSET-0, fields e (envelope), t (ms)
--   gw:{C}:i  sorted set: idempotency id -> offset, trimmed with the history
--   gw:{C}:p  the pub/sub channel nodes subscribe to
--
-- The node that loaded the library last sets these bounds for everyone:
local HISTORY_SIZE = __HISTORY_SIZE__
local HISTORY_AGE_MS = __HISTORY_AGE_MS__
local MAX_DATA = __MAX_DATA__
local META_TTL_MS = __META_TTL_MS__

local function valid_channel(c)
  return #c > 0 and #c <= 255 and not string.find(c, '[^%w_%-%.:@/]')
end

local function valid_label(s)
  return #s <= 128 and not string.find(s, '%c')
end

-- Strict UTF-8 (no overlongs, no surrogates, nothing above U+10FFFF): every
-- client must be able to decode what is stored, or one bad publish would
-- poison the channel for everyone reading it.
local function valid_utf8(s)
  local i, n = 1, #s
  while i <= n do
    local _, last = string.find(s, '^[%z\1-\127]+', i)
    if last then
      i = last + 1
    else
      local c = string.byte(s, i)
      local len
      if c >= 194 and c <= 223 then len = 2
      elseif c >= 224 and c <= 239 then len = 3
      elseif c >= 240 and c <= 244 then len = 4
      else return false end
      local lo, hi = 128, 191
      if c == 224 then lo = 160 elseif c == 237 then hi = 159
      elseif c == 240 then lo = 144 elseif c == 244 then hi = 143 end
      local c2 = string.byte(s, i + 1) or 0
      if c2 < lo or c2 > hi then return false end
      for k = 2, len - 1 do
        local ck = string.byte(s, i + k) or 0
        if ck < 128 or ck > 191 then return false end
      end
      i = i + len
    end
  end
  return true
end

local function now_ms()
  local t = redis.call('TIME')
  return tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)
end

-- The channel's epoch, created on first use (or after its offsets were lost,
-- in which case any history left behind belongs to the old epoch and goes).
local function epoch_of(meta, hist, ids)
  local e = redis.call('HGET', meta, 'e')
  if not e then
    local t = redis.call('TIME')
    e = string.format('%x%05x', tonumber(t[1]), tonumber(t[2]))
    redis.call('DEL', hist, ids)
    redis.call('HSET', meta, 'e', e, 'o', 0)
    redis.call('PEXPIRE', meta, META_TTL_MS)
  end
  return e
end

-- FCALL gw_publish 1 CHANNEL DATA_JSON [ID [PUBLISHER]]  ->  {offset, epoch, duplicate}
local function publish(keys, args)
  local c = keys[1]
  local data, id, who = args[1], args[2] or '', args[3] or ''
  if not c or not valid_channel(c) then
    return redis.error_reply('ERR bad_channel channel name must be 1-255 bytes of A-Z a-z 0-9 _ - . : @ /')
  end
  if not data or #data > MAX_DATA then
    return redis.error_reply('ERR payload_too_large data is missing or over ' .. MAX_DATA .. ' bytes')
  end
  -- Strict numbers: no NaN, Infinity, hex, leading zeros or plus signs.
  cjson.decode_invalid_numbers(false)
  if not valid_utf8(data) or not pcall(cjson.decode, data) then
    return redis.error_reply('ERR bad_json data is not valid JSON')
  end
  if not valid_label(id) or not valid_label(who) then
    return redis.error_reply('ERR bad_id id and publisher must be at most 128 bytes without control characters')
  end

  local meta, hist, ids = 'gw:{' .. c .. '}:m', 'gw:{' .. c .. '}:h', 'gw:{' .. c .. '}:i'
  local e = epoch_of(meta, hist, ids)
  if id ~= '' then
    local prev = redis.call('ZSCORE', ids, id)
    if prev then
      return {tonumber(prev), e, 1}
    end
  end

  local o = redis.call('HINCRBY', meta, 'o', 1)
  local t = now_ms()
  local env = '{"type":"message","channel":"' .. c .. '","offset":' .. o .. ',"epoch":"' .. e ..
    '","time":' .. t
  if id ~= '' then env = env .. ',"id":' .. cjson.encode(id) end
  if who ~= '' then env = env .. ',"publisher":' .. cjson.encode(who) end
  env = env .. ',"data":' .. data .. '}'

  if HISTORY_SIZE > 0 then
    redis.call('XADD', hist, 'MAXLEN', HISTORY_SIZE, o .. '-0', 'e', env, 't', t)
    redis.call('PEXPIRE', hist, HISTORY_AGE_MS)
    if id ~= '' then
      redis.call('ZADD', ids, o, id)
      redis.call('PEXPIRE', ids, HISTORY_AGE_MS)
    end
    -- Ids live exactly as long as their messages stay in history.
    redis.call('ZREMRANGEBYSCORE', ids, '-inf', o - HISTORY_SIZE)
  end
  redis.call('PEXPIRE', meta, META_TTL_MS)
  redis.call('PUBLISH', 'gw:{' .. c .. '}:p', env)
  return {o, e, 0}
end

-- FCALL gw_read 1 CHANNEL [AFTER [LIMIT]]  ->  {epoch, top, covered, envelope...}
-- (registered read-only, so replicas and FCALL_RO may serve it too)
-- Without AFTER only the channel's state is returned. `covered` is 1 when the
-- envelopes are every message after AFTER.
local function read(keys, args)
  local c = keys[1]
  if not c or not valid_channel(c) then
    return redis.error_reply('ERR bad_channel channel name must be 1-255 bytes of A-Z a-z 0-9 _ - . : @ /')
  end
  local meta, hist = 'gw:{' .. c .. '}:m', 'gw:{' .. c .. '}:h'
  -- A channel never published to reads as the empty epoch '0', creating
  -- nothing: reading must not let a client fill Redis with keys.
  local e = redis.call('HGET', meta, 'e') or '0'
  local top = tonumber(redis.call('HGET', meta, 'o')) or 0
  local after = tonumber(args[1] or '')
  local out = {e, top, 1}
  if not after or after >= top then
    return out
  end

  local oldest = now_ms() - HISTORY_AGE_MS
  local limit = tonumber(args[2] or '')
  local entries
  if limit then
    entries = redis.call('XRANGE', hist, '(' .. after .. '-0', '+', 'COUNT', limit)
  else
    entries = redis.call('XRANGE', hist, '(' .. after .. '-0', '+')
  end
  local expect = after + 1
  for _, entry in ipairs(entries) do
    local offset = tonumber(string.match(entry[1], '^(%d+)'))
    local fields = entry[2]
    local env, t = fields[2], tonumber(fields[4])
    if t >= oldest then
      if offset ~= expect then
        out[3] = 0
      end
      expect = offset + 1
      out[#out + 1] = env
    end
  end
  -- A page cut short by LIMIT need not reach the newest offset.
  if expect ~= top + 1 and not (limit and #entries >= limit) then
    out[3] = 0
  end
  return out
end

redis.register_function('gw_publish', publish)
redis.register_function{function_name = 'gw_read', callback = read, flags = {'no-writes'}}
