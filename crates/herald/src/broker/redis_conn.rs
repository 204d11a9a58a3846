//! The two shapes of Redis the Redis broker runs on, behind one command connection and one
//! subscriber, so the broker's logic (scripts, gap checks, presence) is written once:
//!
//! - a single Redis (`broker.kind = "redis"`): a multiplexed command connection and a RESP2
//!   pub/sub connection (`SUBSCRIBE`/`PUBLISH`);
//! - a Redis Cluster (`broker.kind = "redis_cluster"`): one cluster connection (RESP3) that routes
//!   each command to the shard owning its keys and carries sharded pub/sub
//!   (`SSUBSCRIBE`/`SPUBLISH`), so pub/sub traffic spreads over the shards instead of being copied
//!   to every node as classic cluster pub/sub is.

use futures_util::{stream, StreamExt};
use redis::aio::{ConnectionLike, ConnectionManager, MultiplexedConnection, PubSubSink};
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
            RedisConn::Cluster(conn) => conn.req_packed_command(cmd),
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
    /// A RESP2 pub/sub connection; messages come from its stream.
    Single(PubSubSink),
    /// The cluster connection; messages come through its push sender, and the subscriptions of a
    /// shard move with the shard's slots when the connection refreshes its slot map.
    Cluster(ClusterConnection),
}

impl Subscriber {
    pub async fn subscribe(&mut self, names: &[String]) -> RedisResult<()> {
        match self {
            Subscriber::Single(sink) => {
                for chunk in names.chunks(500) {
                    sink.subscribe(chunk).await?;
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
            Subscriber::Single(sink) => sink.unsubscribe(name).await,
            Subscriber::Cluster(conn) => conn.sunsubscribe(name).await,
        }
    }

    /// Probes the subscription connection itself (the command connection's probe covers a
    /// cluster, whose subscriptions share its connections).
    pub async fn ping(&mut self) -> RedisResult<()> {
        match self {
            Subscriber::Single(sink) => sink.ping::<Value>().await.map(|_| ()),
            Subscriber::Cluster(_) => Ok(()),
        }
    }
}

/// The pubsub channel name and payload of a sharded message push, or `None` for other pushes.
pub fn sharded_message(push: &redis::PushInfo) -> Option<(String, &[u8])> {
    if push.kind != redis::PushKind::SMessage {
        return None;
    }
    match push.data.as_slice() {
        [Value::BulkString(name), Value::BulkString(payload), ..] => {
            Some((String::from_utf8_lossy(name).into_owned(), payload))
        }
        _ => None,
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
