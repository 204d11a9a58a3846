//! Lua scripts of the Redis broker. Each runs atomically in Redis, which is what makes offsets
//! unique and gap-free across nodes: the offset is assigned, stored and published in one step, so
//! every node sees a channel's publications on pub/sub in offset order.

/// KEYS: stream, meta, latest-key zset, latest-value hash.
/// ARGV: pub/sub channel, payload, history size, history ttl ms, meta ttl ms, conflation key ('' for
/// none), max keys, epoch to use if the stream has none, publish command (`PUBLISH`, or
/// `SPUBLISH` on a cluster: the pub/sub channel carries the keys' hash tag, so it stays in the
/// script's slot).
/// The meta hash holds the epoch (`e`) and the last offset (`o`); when it is gone (expired,
/// removed, Redis lost its data) the stream restarts under the new epoch and old items are dropped.
/// Returns {offset, epoch}.
pub const PUBLISH: &str = r#"
local epoch = redis.call('HGET', KEYS[2], 'e')
if not epoch then
  epoch = ARGV[8]
  redis.call('HSET', KEYS[2], 'e', epoch)
  redis.call('DEL', KEYS[1], KEYS[3], KEYS[4])
end
local offset = redis.call('HINCRBY', KEYS[2], 'o', 1)
redis.call('PEXPIRE', KEYS[2], ARGV[5])
redis.call('XADD', KEYS[1], 'MAXLEN', ARGV[3], offset .. '-0', 'd', ARGV[2])
redis.call('PEXPIRE', KEYS[1], ARGV[4])
local key = ARGV[6]
local max_keys = tonumber(ARGV[7])
if key ~= '' and max_keys > 0 then
  redis.call('ZADD', KEYS[3], offset, key)
  redis.call('HSET', KEYS[4], key, ARGV[2])
  local extra = redis.call('ZCARD', KEYS[3]) - max_keys
  if extra > 0 then
    local old = redis.call('ZRANGE', KEYS[3], 0, extra - 1)
    redis.call('ZREMRANGEBYRANK', KEYS[3], 0, extra - 1)
    redis.call('HDEL', KEYS[4], unpack(old))
  end
  redis.call('PEXPIRE', KEYS[3], ARGV[5])
  redis.call('PEXPIRE', KEYS[4], ARGV[5])
end
redis.call(ARGV[9], ARGV[1], 'P' .. offset .. ' ' .. epoch .. ' ' .. string.len(key) .. '\n' .. key .. ARGV[2])
return {offset, epoch}
"#;

/// Shared prologue: the stream's epoch and offset, creating the meta (offset 0, new epoch) when
/// missing, as the memory history does, so a positioned subscriber always gets an epoch.
/// KEYS[meta_index] is the meta hash; ARGV[1] meta ttl ms, ARGV[2] new epoch.
macro_rules! position_prologue {
    ($meta:literal) => {
        concat!(
            "local meta = KEYS[",
            $meta,
            "]\n",
            r#"
local epoch = redis.call('HGET', meta, 'e')
if not epoch then
  epoch = ARGV[2]
  redis.call('HSET', meta, 'e', epoch, 'o', 0)
  redis.call('PEXPIRE', meta, ARGV[1])
end
local offset = redis.call('HGET', meta, 'o') or '0'
local out = {epoch, tostring(offset)}
"#
        )
    };
}

/// KEYS: stream, meta. ARGV: meta ttl ms, new epoch, since offset ('' for the whole history),
/// '1' to read entries ('0' for the position only).
/// Returns {epoch, offset, id1, payload1, id2, payload2, ...}.
pub const HISTORY: &str = concat!(
    "local stream = KEYS[1]\n",
    position_prologue!("2"),
    r#"
if ARGV[4] == '1' then
  local from = '-'
  if ARGV[3] ~= '' then from = string.format('%d-0', tonumber(ARGV[3]) + 1) end
  local entries = redis.call('XRANGE', stream, from, '+')
  for _, e in ipairs(entries) do
    out[#out + 1] = e[1]
    out[#out + 1] = e[2][2]
  end
end
return out
"#
);

/// KEYS: meta, latest-key zset, latest-value hash. ARGV: meta ttl ms, new epoch.
/// Returns {epoch, offset, offset1, payload1, ...} oldest first.
pub const LATEST: &str = concat!(
    position_prologue!("1"),
    r#"
local keys = redis.call('ZRANGE', KEYS[2], 0, -1, 'WITHSCORES')
for i = 1, #keys, 2 do
  local payload = redis.call('HGET', KEYS[3], keys[i])
  if payload then
    out[#out + 1] = keys[i + 1]
    out[#out + 1] = payload
  end
end
return out
"#
);

/// Entries with a per-member expiry: a zset (member → expiry in Redis time, ms) beside a hash
/// (member → value). Used for presence (per channel) and the node registry. Expiry uses Redis's
/// clock so nodes with skewed clocks agree.
/// KEYS: (zset, hash) pairs. ARGV: ttl ms, then (member, value) pairs.
pub const TOUCH: &str = r#"
local t = redis.call('TIME')
local now = tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)
local ttl = tonumber(ARGV[1])
for i = 1, #KEYS, 2 do
  redis.call('ZADD', KEYS[i], now + ttl, ARGV[i + 1])
  redis.call('HSET', KEYS[i + 1], ARGV[i + 1], ARGV[i + 2])
  redis.call('PEXPIRE', KEYS[i], ttl)
  redis.call('PEXPIRE', KEYS[i + 1], ttl)
end
return #KEYS
"#;

/// KEYS: zset, hash. Drops expired members, returns the rest as {member, value, ...}.
pub const LIVE: &str = r#"
local t = redis.call('TIME')
local now = tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)
local expired = redis.call('ZRANGEBYSCORE', KEYS[1], '-inf', now)
for i = 1, #expired, 1000 do
  redis.call('HDEL', KEYS[2], unpack(expired, i, math.min(i + 999, #expired)))
end
if #expired > 0 then
  redis.call('ZREMRANGEBYSCORE', KEYS[1], '-inf', now)
end
return redis.call('HGETALL', KEYS[2])
"#;

/// The text of the script whose SHA1 is `sha` (as `EVALSHA` names it), for sending it as `EVAL`
/// to a shard that does not have it yet (see `redis_conn`).
pub fn text_of(sha: &str) -> Option<&'static str> {
    static BY_SHA: std::sync::OnceLock<Vec<(String, &'static str)>> = std::sync::OnceLock::new();
    BY_SHA
        .get_or_init(|| {
            [PUBLISH, HISTORY, LATEST, TOUCH, LIVE]
                .into_iter()
                .map(|text| (redis::Script::new(text).get_hash().to_string(), text))
                .collect()
        })
        .iter()
        .find(|(hash, _)| hash.eq_ignore_ascii_case(sha))
        .map(|(_, text)| *text)
}

#[cfg(test)]
mod script_text_tests {
    #[test]
    fn every_script_is_found_by_its_sha() {
        for text in [
            super::PUBLISH,
            super::HISTORY,
            super::LATEST,
            super::TOUCH,
            super::LIVE,
        ] {
            let sha = redis::Script::new(text).get_hash().to_string();
            assert_eq!(super::text_of(&sha), Some(text));
        }
        assert_eq!(super::text_of("0000"), None);
    }
}
