//! Lua scripts of the Redis broker. Each runs atomically in Redis, which is what makes offsets
//! unique and gap-free across nodes: the offset is assigned, stored and published in one step, so
//! every node sees a channel's publications on pub/sub in offset order.

/// The epoch of a channel that has no stream (no meta hash): what reads answer, and what the
/// channel's first publication starts the stream with, so a client that subscribed before it
/// recovers the stream exactly. Deterministic without any per-channel state: a hash of the Redis
/// server's `run_id` (a restarted or failed-over server, which may have lost streams, answers
/// other epochs) and of the current `history_meta_ttl` period in Redis time. A stream that
/// expired was idle for a whole period, so the channel's next stream falls in a later one: two
/// lives of a channel never share an epoch. (A removal writes a fresh random epoch instead.)
macro_rules! absent_epoch_fn {
    () => {
        r#"
local function absent_epoch(ttl)
  local t = redis.call('TIME')
  local now = tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)
  local period = math.floor(now / math.max(tonumber(ttl), 1))
  local run_id = string.match(redis.call('INFO', 'server'), 'run_id:(%w+)') or ''
  return string.sub(redis.sha1hex(run_id .. ':' .. string.format('%d', period)), 1, 12)
end
"#
    };
}

/// KEYS: stream, meta, latest-key zset, latest-value hash.
/// ARGV: pub/sub channel, payload, history size, history ttl ms, meta ttl ms, conflation key ('' for
/// none), max keys, publish command (`PUBLISH`, or `SPUBLISH` on a cluster: the pub/sub channel
/// carries the keys' hash tag, so it stays in the script's slot).
/// The meta hash holds the epoch (`e`) and the last offset (`o`); when it is gone (expired,
/// Redis lost its data) the stream starts under the channel's absent epoch and old items are
/// dropped. This script is the only one that creates a stream.
/// Returns {offset, epoch}.
pub const PUBLISH: &str = concat!(
    absent_epoch_fn!(),
    r#"
local epoch = redis.call('HGET', KEYS[2], 'e')
if not epoch then
  epoch = absent_epoch(ARGV[5])
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
redis.call(ARGV[8], ARGV[1], 'P' .. offset .. ' ' .. epoch .. ' ' .. string.len(key) .. '\n' .. key .. ARGV[2])
return {offset, epoch}
"#
);

/// Shared prologue of the read scripts: the stream's epoch and offset, or — for a channel without
/// a stream — its absent epoch and offset 0. Reads write nothing: a flood of reads of new names
/// leaves no keys behind. KEYS[meta_index] is the meta hash; ARGV[1] meta ttl ms.
macro_rules! position_prologue {
    ($meta:literal) => {
        concat!(
            absent_epoch_fn!(),
            "local meta = KEYS[",
            $meta,
            "]\n",
            r#"
local epoch = redis.call('HGET', meta, 'e')
local offset = '0'
if epoch then
  offset = redis.call('HGET', meta, 'o') or '0'
else
  epoch = absent_epoch(ARGV[1])
end
local out = {epoch, tostring(offset)}
"#
        )
    };
}

/// KEYS: stream, meta. ARGV: meta ttl ms, since offset ('' for the whole history), '1' to read
/// entries ('0' for the position only), the most entries to read ('' for all).
/// Returns {epoch, offset, id1, payload1, id2, payload2, ...}.
pub const HISTORY: &str = concat!(
    "local stream = KEYS[1]\n",
    position_prologue!("2"),
    r#"
if ARGV[3] == '1' then
  local from = '-'
  if ARGV[2] ~= '' then from = string.format('%d-0', tonumber(ARGV[2]) + 1) end
  local entries
  if ARGV[4] ~= '' then
    entries = redis.call('XRANGE', stream, from, '+', 'COUNT', tonumber(ARGV[4]))
  else
    entries = redis.call('XRANGE', stream, from, '+')
  end
  for _, e in ipairs(entries) do
    out[#out + 1] = e[1]
    out[#out + 1] = e[2][2]
  end
end
return out
"#
);

/// KEYS: meta, latest-key zset, latest-value hash. ARGV: meta ttl ms.
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

/// KEYS: stream, meta, latest-key zset, latest-value hash. ARGV: meta ttl ms, new epoch.
/// Forgets a channel's publications. A stream that existed starts again at offset 0 under a fresh
/// random epoch (kept `meta ttl`), so positions of the removed stream never recover into the next
/// one; a channel without a stream stays without one.
pub const REMOVE: &str = r#"
redis.call('DEL', KEYS[1], KEYS[3], KEYS[4])
if redis.call('EXISTS', KEYS[2]) == 1 then
  redis.call('DEL', KEYS[2])
  redis.call('HSET', KEYS[2], 'e', ARGV[2], 'o', 0)
  redis.call('PEXPIRE', KEYS[2], ARGV[1])
end
return 1
"#;

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

/// The broker's scripts, hashed once.
pub(super) struct Scripts {
    pub(super) publish: redis::Script,
    pub(super) history: redis::Script,
    pub(super) latest: redis::Script,
    pub(super) remove: redis::Script,
    pub(super) touch: redis::Script,
    pub(super) live: redis::Script,
}

impl Scripts {
    pub(super) fn new() -> Scripts {
        Scripts {
            publish: redis::Script::new(PUBLISH),
            history: redis::Script::new(HISTORY),
            latest: redis::Script::new(LATEST),
            remove: redis::Script::new(REMOVE),
            touch: redis::Script::new(TOUCH),
            live: redis::Script::new(LIVE),
        }
    }
}

/// The text of the script whose SHA1 is `sha` (as `EVALSHA` names it), for sending it as `EVAL`
/// to a shard that does not have it yet (see `conn`).
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
