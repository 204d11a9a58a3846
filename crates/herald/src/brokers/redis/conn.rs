//! The two shapes of Redis the Redis broker runs on, behind one command connection and one
//! subscriber, so the broker's logic (scripts, gap checks, presence) is written once:
//!
//! - a single Redis (`broker.kind = "redis"`): a multiplexed command connection and a RESP3
//!   connection for pub/sub (`SUBSCRIBE`/`PUBLISH`), whose messages come through its push sender
//!   into a bounded queue (`inbox.rs`);
//! - a Redis Cluster (`broker.kind = "redis_cluster"`): one cluster connection (RESP3) that routes
//!   each command to the shard owning its keys and carries sharded pub/sub
//!   (`SSUBSCRIBE`/`SPUBLISH`), so pub/sub traffic spreads over the shards instead of being copied
//!   to every node as classic cluster pub/sub is.

use futures_util::{stream, StreamExt};
use redis::aio::{ConnectionLike, ConnectionManager, MultiplexedConnection};
use redis::cluster_async::ClusterConnection;
use redis::cluster_routing::{MultipleNodeRoutingInfo, ResponsePolicy, RoutingInfo};
use redis::{Cmd, Pipeline, RedisFuture, RedisResult, Value};

/// How many subscribe commands run at once when a cluster node subscribes many channels.
const SUBSCRIBE_CONCURRENCY: usize = 64;

/// A command connection to a single Redis or to a Redis Cluster.
#[derive(Clone)]
pub enum RedisConn {
    Single(MultiplexedConnection),
    /// A single Redis through a connection that reconnects by itself (leases).
    Managed(ConnectionManager),
    Cluster(ClusterConnection),
}

impl ConnectionLike for RedisConn {
    fn req_packed_command<'a>(&'a mut self, cmd: &'a Cmd) -> RedisFuture<'a, Value> {
        match self {
            RedisConn::Single(conn) => conn.req_packed_command(cmd),
            RedisConn::Managed(conn) => conn.req_packed_command(cmd),
            RedisConn::Cluster(conn) => Box::pin(eval_on_noscript(conn, cmd)),
        }
    }

    fn req_packed_commands<'a>(
        &'a mut self,
        pipeline: &'a Pipeline,
        offset: usize,
        count: usize,
    ) -> RedisFuture<'a, Vec<Value>> {
        match self {
            RedisConn::Single(conn) => conn.req_packed_commands(pipeline, offset, count),
            RedisConn::Managed(conn) => conn.req_packed_commands(pipeline, offset, count),
            RedisConn::Cluster(conn) => conn.req_packed_commands(pipeline, offset, count),
        }
    }

    fn get_db(&self) -> i64 {
        match self {
            RedisConn::Single(conn) => conn.get_db(),
            RedisConn::Managed(conn) => conn.get_db(),
            RedisConn::Cluster(conn) => conn.get_db(),
        }
    }
}

/// Runs `cmd` on a cluster; an `EVALSHA` of a script the shard does not have yet is sent again
/// as `EVAL` with the script's text, to the same shard (routed by the same keys). Left to the
/// redis crate, the script would be loaded with `SCRIPT LOAD` on every primary, which fails while
/// any one of them is lost and makes the connection reconnect to every node, dropping the
/// healthy shards' subscriptions.
async fn eval_on_noscript(conn: &mut ClusterConnection, cmd: &Cmd) -> RedisResult<Value> {
    let reply = conn.req_packed_command(cmd).await;
    let missing = match &reply {
        Err(e) => e.kind() == redis::ErrorKind::Server(redis::ServerErrorKind::NoScript),
        Ok(Value::ServerError(e)) => e.kind() == Some(redis::ServerErrorKind::NoScript),
        Ok(_) => false,
    };
    match missing.then(|| as_eval(cmd)).flatten() {
        Some(eval) => conn.req_packed_command(&eval).await,
        None => reply,
    }
}

/// `EVALSHA sha …` as `EVAL <text> …`, for the scripts this broker runs.
fn as_eval(cmd: &Cmd) -> Option<Cmd> {
    let mut args = cmd.args_iter().map(|arg| match arg {
        redis::Arg::Simple(bytes) => Some(bytes),
        _ => None,
    });
    let name = args.next()??;
    if !name.eq_ignore_ascii_case(b"EVALSHA") {
        return None;
    }
    let sha = std::str::from_utf8(args.next()??).ok()?;
    let text = super::scripts::text_of(sha)?;
    let mut eval = redis::cmd("EVAL");
    eval.arg(text);
    for arg in args {
        eval.arg(arg?);
    }
    Some(eval)
}

impl RedisConn {
    /// The publish command matching the subscriptions: sharded on a cluster.
    pub fn publish_command(&self) -> &'static str {
        match self {
            RedisConn::Single(_) | RedisConn::Managed(_) => "PUBLISH",
            RedisConn::Cluster(_) => "SPUBLISH",
        }
    }

    /// Pings every primary (a cluster) or the server, so a stalled shard is noticed even when
    /// the node sends it nothing.
    pub async fn ping_all(&mut self) -> RedisResult<()> {
        match self {
            RedisConn::Single(conn) => redis::cmd("PING").query_async(conn).await,
            RedisConn::Managed(conn) => redis::cmd("PING").query_async(conn).await,
            RedisConn::Cluster(conn) => {
                let routing = RoutingInfo::MultiNode((
                    MultipleNodeRoutingInfo::AllMasters,
                    Some(ResponsePolicy::AllSucceeded),
                ));
                conn.route_command(redis::cmd("PING"), routing)
                    .await
                    .map(|_| ())
            }
        }
    }
}

/// Where a node's pub/sub subscriptions live.
#[derive(Clone)]
pub enum Subscriber {
    /// A RESP3 connection of its own; messages come through its push sender.
    Single(MultiplexedConnection),
    /// The cluster connection; messages come through its push sender, and the subscriptions of a
    /// shard move with the shard's slots when the connection refreshes its slot map.
    Cluster(ClusterConnection),
}

impl Subscriber {
    pub async fn subscribe(&mut self, names: &[String]) -> RedisResult<()> {
        match self {
            Subscriber::Single(conn) => {
                for chunk in names.chunks(500) {
                    conn.subscribe(chunk).await?;
                }
                Ok(())
            }
            Subscriber::Cluster(conn) => {
                // One command per channel: channels of different slots live on different shards.
                let results: Vec<RedisResult<()>> = stream::iter(names.iter().cloned())
                    .map(|name| {
                        let mut conn = conn.clone();
                        async move { conn.ssubscribe(name).await }
                    })
                    .buffer_unordered(SUBSCRIBE_CONCURRENCY)
                    .collect()
                    .await;
                results.into_iter().collect()
            }
        }
    }

    pub async fn unsubscribe(&mut self, name: &str) -> RedisResult<()> {
        match self {
            Subscriber::Single(conn) => conn.unsubscribe(name).await,
            Subscriber::Cluster(conn) => conn.sunsubscribe(name).await,
        }
    }

    /// Probes the subscription connection itself (the command connection's probe covers a
    /// cluster, whose subscriptions share its connections).
    pub async fn ping(&mut self) -> RedisResult<()> {
        match self {
            Subscriber::Single(conn) => redis::cmd("PING")
                .query_async::<Value>(conn)
                .await
                .map(|_| ()),
            Subscriber::Cluster(_) => Ok(()),
        }
    }
}

/// The channel of a server-sent `sunsubscribe` push.
pub fn sharded_unsubscribe(push: &redis::PushInfo) -> Option<String> {
    if push.kind != redis::PushKind::SUnsubscribe {
        return None;
    }
    match push.data.first() {
        Some(Value::BulkString(name)) => Some(String::from_utf8_lossy(name).into_owned()),
        _ => None,
    }
}

/// Slots of a Redis Cluster.
const SLOTS: u16 = 16384;

/// The hash slot of a key, as Redis Cluster computes it: CRC16 (XMODEM) of the hash tag (the
/// text between the first `{` and the next `}`, when not empty), else of the whole key.
pub fn key_slot(key: &[u8]) -> u16 {
    let tagged = key.iter().position(|b| *b == b'{').and_then(|open| {
        let rest = &key[open + 1..];
        let close = rest.iter().position(|b| *b == b'}')?;
        (close > 0).then(|| &rest[..close])
    });
    crc16_xmodem(tagged.unwrap_or(key)) % SLOTS
}

fn crc16_xmodem(data: &[u8]) -> u16 {
    let mut crc: u16 = 0;
    for byte in data {
        crc ^= u16::from(*byte) << 8;
        for _ in 0..8 {
            crc = if crc & 0x8000 != 0 {
                (crc << 1) ^ 0x1021
            } else {
                crc << 1
            };
        }
    }
    crc
}

/// Slots `first..=last`, served by the primary at `primary` (`host:port`).
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord)]
pub struct SlotRange {
    pub first: u16,
    pub last: u16,
    pub primary: String,
}

/// The slot ranges of a `CLUSTER SLOTS` reply (sorted), or `None` when it is malformed. A
/// primary that failed keeps its slots in the reply until another node takes them over.
pub fn parse_cluster_slots(reply: &Value) -> Option<Vec<SlotRange>> {
    let Value::Array(ranges) = reply else {
        return None;
    };
    let mut out = Vec::with_capacity(ranges.len());
    for range in ranges {
        let Value::Array(fields) = range else {
            return None;
        };
        let (Some(Value::Int(first)), Some(Value::Int(last)), Some(Value::Array(primary))) =
            (fields.first(), fields.get(1), fields.get(2))
        else {
            return None;
        };
        let host = match primary.first() {
            Some(Value::BulkString(host)) => String::from_utf8_lossy(host).into_owned(),
            Some(Value::SimpleString(host)) => host.clone(),
            _ => return None,
        };
        let Some(Value::Int(port)) = primary.get(1) else {
            return None;
        };
        out.push(SlotRange {
            first: u16::try_from(*first).ok()?,
            last: u16::try_from(*last).ok()?,
            primary: format!("{host}:{port}"),
        });
    }
    out.sort();
    Some(out)
}

/// Gives the primaries a node announced without an endpoint (`?` or empty: the node was asked
/// to hide it, `cluster-preferred-endpoint-type unknown-endpoint`) the host the map came from,
/// as clients are told to do.
pub fn with_queried_host(mut ranges: Vec<SlotRange>, queried: &str) -> Vec<SlotRange> {
    let host = queried.rsplit_once(':').map_or(queried, |(host, _)| host);
    for range in &mut ranges {
        if let Some(port) = range
            .primary
            .strip_prefix("?:")
            .or_else(|| range.primary.strip_prefix(':'))
        {
            range.primary = format!("{host}:{port}");
        }
    }
    ranges
}

/// The cluster's slot map as the node behind `conn` sees it.
pub async fn cluster_slots(mut conn: impl ConnectionLike) -> RedisResult<Vec<SlotRange>> {
    let reply: Value = redis::cmd("CLUSTER")
        .arg("SLOTS")
        .query_async(&mut conn)
        .await?;
    parse_cluster_slots(&reply).ok_or_else(|| {
        redis::RedisError::from((redis::ErrorKind::Parse, "malformed CLUSTER SLOTS reply"))
    })
}

/// Whether the node behind `conn` serves its slots (`cluster_state:ok`; a node that just
/// restarted answers with the cluster down until it has rejoined).
pub async fn serves(mut conn: impl ConnectionLike) -> RedisResult<bool> {
    let text: String = redis::cmd("CLUSTER")
        .arg("INFO")
        .query_async(&mut conn)
        .await?;
    Ok(text.lines().any(|l| l.trim() == "cluster_state:ok"))
}

/// How to reach the cluster node at `address` (`host:port`) with the seed's settings (TLS,
/// credentials, protocol).
pub fn node_info(seed: &redis::ConnectionInfo, address: &str) -> Option<redis::ConnectionInfo> {
    let (host, port) = address.rsplit_once(':')?;
    let (host, port) = (host.to_string(), port.parse().ok()?);
    let addr = match seed.addr() {
        redis::ConnectionAddr::TcpTls {
            insecure,
            tls_params,
            ..
        } => redis::ConnectionAddr::TcpTls {
            host,
            port,
            insecure: *insecure,
            tls_params: tls_params.clone(),
        },
        _ => redis::ConnectionAddr::Tcp(host, port),
    };
    Some(seed.clone().set_addr(addr))
}

/// The `host:port` of a connection info, if it is a TCP one.
pub fn address_of(info: &redis::ConnectionInfo) -> Option<String> {
    match info.addr() {
        redis::ConnectionAddr::Tcp(host, port)
        | redis::ConnectionAddr::TcpTls { host, port, .. } => Some(format!("{host}:{port}")),
        _ => None,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn key_slots_match_redis_cluster() {
        // Values from `CLUSTER KEYSLOT` and the Redis Cluster specification.
        assert_eq!(crc16_xmodem(b"123456789"), 0x31C3);
        assert_eq!(key_slot(b"foo"), 12182);
        assert_eq!(key_slot(b"{user1000}.following"), key_slot(b"user1000"));
        // An empty tag does not count: the whole key is hashed.
        assert_eq!(key_slot(b"foo{}{bar}"), crc16_xmodem(b"foo{}{bar}") % SLOTS);
        assert_eq!(key_slot(b"foo{{bar}}zap"), key_slot(b"{bar"));
        assert_eq!(key_slot(b"foo{bar}{zap}"), key_slot(b"bar"));
    }

    #[test]
    fn cluster_slots_replies_parse_and_malformed_ones_are_refused() {
        let node = |port: i64| {
            Value::Array(vec![
                Value::BulkString(b"127.0.0.1".to_vec()),
                Value::Int(port),
                Value::BulkString(b"id".to_vec()),
            ])
        };
        let reply = Value::Array(vec![
            Value::Array(vec![Value::Int(5461), Value::Int(16383), node(7002)]),
            Value::Array(vec![
                Value::Int(0),
                Value::Int(5460),
                node(7001),
                node(7003),
            ]),
        ]);
        assert_eq!(
            parse_cluster_slots(&reply),
            Some(vec![
                SlotRange {
                    first: 0,
                    last: 5460,
                    primary: "127.0.0.1:7001".into()
                },
                SlotRange {
                    first: 5461,
                    last: 16383,
                    primary: "127.0.0.1:7002".into()
                },
            ])
        );
        assert_eq!(parse_cluster_slots(&Value::Nil), None);
        let bad = Value::Array(vec![Value::Array(vec![Value::Int(0)])]);
        assert_eq!(parse_cluster_slots(&bad), None);
        let negative = Value::Array(vec![Value::Array(vec![
            Value::Int(-1),
            Value::Int(5),
            node(1),
        ])]);
        assert_eq!(parse_cluster_slots(&negative), None);
        let hidden = vec![SlotRange {
            first: 0,
            last: 16383,
            primary: "?:7001".into(),
        }];
        assert_eq!(
            with_queried_host(hidden, "10.0.0.5:7002")[0].primary,
            "10.0.0.5:7001"
        );
    }
}
