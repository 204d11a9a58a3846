//! The supervisor owns the connections: connect, resubscribe, prove no gaps, listen; on any
//! failure start over with backoff. Readiness is true only while listening on a fully
//! resubscribed connection.

use super::cluster::Shards;
use super::conn::{RedisConn, Subscriber};
use super::inbox::{self, Inbox, Received};
use super::Inner;
use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::Duration;

/// What [`connect`] opens: the command connection, the subscriber, and what its subscriptions
/// receive.
type Connected = (RedisConn, Subscriber, Inbox);

/// Connects to the first address that answers (single Redis) or to the cluster.
async fn connect(inner: &Arc<Inner>, generation: u64) -> Result<Connected, String> {
    if let Some(seeds) = &inner.cluster {
        return connect_cluster(inner, seeds, generation).await;
    }
    let mut errors = Vec::new();
    for client in &inner.clients {
        let timeout = inner.config.connect_timeout;
        let (queue, inbox) = tokio::sync::mpsc::channel(inner.config.max_queued_messages);
        let on_push = push_handler(inner, generation, queue, false);
        let attempt = async {
            let conn = client.get_multiplexed_async_connection().await?;
            // Pub/sub on a RESP3 connection of its own: its messages arrive through the push
            // sender, into the bounded queue, instead of a stream the crate buffers without bound.
            let info = client.get_connection_info().clone();
            let settings = info
                .redis_settings()
                .clone()
                .set_protocol(redis::ProtocolVersion::RESP3);
            let subscriber = redis::Client::open(info.set_redis_settings(settings))?
                .get_multiplexed_async_connection_with_config(
                    &redis::AsyncConnectionConfig::new()
                        .set_connection_timeout(Some(timeout))
                        .set_response_timeout(Some(inner.config.command_timeout))
                        .set_push_sender(on_push),
                )
                .await?;
            redis::RedisResult::Ok((conn, subscriber))
        };
        match tokio::time::timeout(timeout, attempt).await {
            Ok(Ok((conn, subscriber))) => {
                return Ok((
                    RedisConn::Single(conn),
                    Subscriber::Single(subscriber),
                    Inbox(inbox),
                ));
            }
            Ok(Err(e)) => errors.push(e.to_string()),
            Err(_) => errors.push(format!("connect timed out after {timeout:?}")),
        }
    }
    Err(errors.join("; "))
}

/// What a connection's push sender does with each push: messages (and the loss of the
/// connection, behind what it read before) are queued for the connection's reader
/// (`inbox.rs`); a cluster's other pushes are handled as they arrive (the confirmation of our own
/// `SUNSUBSCRIBE`, handled after a later resubscription of the channel, would look like its slot
/// moving away).
///
/// A full queue means the reader fell behind by a whole queue: the connection is given up (what
/// it still reads is not delivered) and the reconnect's gap check tells the subscribers to
/// recover, instead of the queue growing without bound. A send also fails once the connection's
/// reader is gone: the node gave the connection up.
fn push_handler(
    inner: &Arc<Inner>,
    generation: u64,
    queue: tokio::sync::mpsc::Sender<Received>,
    cluster: bool,
) -> impl Fn(redis::PushInfo) -> Result<(), std::convert::Infallible> + Send + Sync + 'static {
    let weak = Arc::downgrade(inner);
    move |push: redis::PushInfo| {
        use tokio::sync::mpsc::error::TrySendError;
        let sent = match push.kind {
            redis::PushKind::SMessage | redis::PushKind::Message => {
                match redis::Msg::from_push_info(push) {
                    Some(msg) => queue.try_send(Received::Message(msg)),
                    None => Ok(()),
                }
            }
            redis::PushKind::Disconnection if cluster => {
                queue.try_send(Received::ShardConnectionLost)
            }
            redis::PushKind::Disconnection => queue.try_send(Received::Closed),
            _ if cluster => {
                if let Some(inner) = weak.upgrade() {
                    inner.on_cluster_push(generation, &push);
                }
                Ok(())
            }
            // Subscription confirmations of the single Redis: nothing to do.
            _ => Ok(()),
        };
        if let Err(TrySendError::Full(_)) = sent {
            if let Some(inner) = weak.upgrade() {
                inner.fail(
                    generation,
                    "the pub/sub queue is full: the reader fell behind",
                );
            }
        }
        Ok(())
    }
}

/// A cluster connection. Its sharded messages, and the loss of a shard connection behind the
/// messages that connection read, are queued for the connection's reader ([`push_handler`]).
async fn connect_cluster(
    inner: &Arc<Inner>,
    seeds: &[String],
    generation: u64,
) -> Result<Connected, String> {
    let (queue, inbox) = tokio::sync::mpsc::channel(inner.config.max_queued_messages);
    let on_push = push_handler(inner, generation, queue, true);
    let client = redis::cluster::ClusterClientBuilder::new(seeds.iter().map(String::as_str))
        .use_protocol(redis::ProtocolVersion::RESP3)
        .connection_timeout(inner.config.connect_timeout)
        .response_timeout(inner.config.command_timeout)
        .retries(2)
        .push_sender(on_push)
        .build()
        .map_err(|e| format!("broker.redis_addresses: {e}"))?;
    let timeout = inner.config.connect_timeout * 2;
    match tokio::time::timeout(timeout, client.get_async_connection()).await {
        Ok(Ok(conn)) => Ok((
            RedisConn::Cluster(conn.clone()),
            Subscriber::Cluster(conn),
            Inbox(inbox),
        )),
        Ok(Err(e)) => Err(e.to_string()),
        Err(_) => Err(format!("cluster connect timed out after {timeout:?}")),
    }
}

/// Owns the connections: connect, resubscribe, prove no gaps, listen; on any failure start over
/// with backoff. Readiness is true only while listening on a fully resubscribed connection.
pub(super) async fn supervise(inner: Arc<Inner>) {
    let mut delay = Duration::from_millis(50);
    let mut reconnect = false;
    loop {
        if inner.stop.is_cancelled() {
            return;
        }
        let generation = inner.generation.fetch_add(1, Ordering::SeqCst) + 1;
        match connect(&inner, generation).await {
            Ok((conn, sink, stream)) => {
                delay = Duration::from_millis(50);
                inner.disconnected.store(false, Ordering::SeqCst);
                *inner.conn.lock() = Some((generation, conn));
                *inner.sink.lock() = Some(sink.clone());
                if reconnect {
                    if let Some(metrics) = inner.metrics.get() {
                        metrics.broker_reconnects.inc();
                    }
                }
                let reason = serve(&inner, sink, stream).await;
                inner.ready.store(false, Ordering::SeqCst);
                inner.conn.lock().take();
                inner.sink.lock().take();
                inner.subscribed.lock().clear();
                inner.control_subscribed.store(false, Ordering::SeqCst);
                // The next connection learns the slot map (and what is lost) afresh.
                *inner.shards.lock() = Shards::default();
                inner.probe_conns.lock().clear();
                inner.count_shards();
                if let Some(metrics) = inner.metrics.get() {
                    metrics.broker_ready.set(0);
                }
                if inner.stop.is_cancelled() {
                    return;
                }
                tracing::warn!(%reason, "redis broker: disconnected, reconnecting");
            }
            Err(e) => tracing::warn!(error = %e, "redis broker: cannot connect"),
        }
        reconnect = true;
        let jitter = Duration::from_millis(rand::random::<u64>() % 50);
        tokio::select! {
            _ = inner.stop.cancelled() => return,
            _ = tokio::time::sleep(delay + jitter) => {}
        }
        delay = (delay * 2).min(inner.config.max_reconnect_delay);
    }
}

/// One connection's life. Returns why it ended.
async fn serve(inner: &Arc<Inner>, mut sink: Subscriber, inbox: Inbox) -> String {
    let timeout = inner.config.command_timeout;
    // A cluster's shards are learned first: the channels of a lost one are not subscribed (their
    // subscribers are told) until it returns, and every other channel works meanwhile.
    let cluster = match inner.conn() {
        Ok((_, RedisConn::Cluster(conn))) => Some(conn),
        Ok(_) => None,
        Err(_) => return "connection dropped".into(),
    };
    if cluster.is_some() {
        if let Err(reason) = inner.probe_shards().await {
            return reason;
        }
    }
    // Resubscribe under the subscribe lock, so no subscribe or unsubscribe interleaves.
    let channels = {
        let _ops = inner.subscribe_ops.lock().await;
        let (channels, lost): (Vec<String>, Vec<String>) = inner
            .handler()
            .map(|h| h.local_channels())
            .unwrap_or_default()
            .into_iter()
            .partition(|c| inner.shard_available(c).is_ok());
        let mut names: Vec<String> = channels.iter().map(|c| inner.keys.pubsub(c)).collect();
        let control = inner.key_available(&inner.keys.control()).is_ok();
        if control {
            names.push(inner.keys.control());
        }
        // Every channel is subscribed before the set says so: a cluster's push handler takes a
        // `sunsubscribe` for a channel in the set as its slot moving away.
        let bound = timeout * (1 + names.len() as u32 / 500);
        match tokio::time::timeout(bound, sink.subscribe(&names)).await {
            Ok(Ok(())) => {}
            Ok(Err(e)) => return format!("resubscribe failed: {e}"),
            Err(_) => return "resubscribe timed out".into(),
        }
        inner.subscribed.lock().extend(channels.iter().cloned());
        inner.control_subscribed.store(control, Ordering::SeqCst);
        for channel in &lost {
            inner.report_gap(channel);
        }
        channels
    };
    // Publications arriving from here on queue in the inbox until the check is done (its reader
    // starts once the connection is ready), and the check's order (subscribe, then read
    // positions) means none can fall between the two.
    if let Err(e) = inner.check_gaps(&channels).await {
        return format!("gap check failed: {e}");
    }
    // Presence written before the outage may be gone (Redis restarted empty): write it again.
    if let Err(e) = inner.refresh_presence().await {
        return format!("presence refresh failed: {e}");
    }
    inner.count_shards();
    inner.ready.store(true, Ordering::SeqCst);
    if let Some(metrics) = inner.metrics.get() {
        metrics.broker_ready.set(1);
    }
    tracing::info!(channels = channels.len(), "redis broker: ready");
    let mut reader = tokio::spawn(inbox::read(inner.clone(), inbox));
    tokio::select! {
        read = &mut reader => read.unwrap_or_else(|e| format!("pub/sub reader failed: {e}")),
        reason = listen(inner, sink, cluster.is_some()) => {
            // Nothing this connection reads is delivered once the next one is being set up.
            reader.abort();
            let _ = reader.await;
            reason
        }
    }
}

/// Watches a ready connection (its reader delivers meanwhile) until it fails. Returns why.
async fn listen(inner: &Arc<Inner>, mut sink: Subscriber, cluster: bool) -> String {
    let timeout = inner.config.command_timeout;
    let health = Duration::from_millis(500).min(timeout);
    let mut health_tick = tokio::time::interval(health);
    let mut presence_tick = tokio::time::interval(inner.config.presence_ttl / 3);
    presence_tick.tick().await;
    loop {
        tokio::select! {
            _ = inner.stop.cancelled() => return "stopped".into(),
            _ = inner.failed.notified() => {
                // A wake-up left over from the previous connection's failure is not ours.
                if inner.conn.lock().is_none() {
                    return "a command failed".into();
                }
            }
            _ = inner.probe.notified(), if cluster => {
                if let Err(reason) = inner.probe_shards().await {
                    return reason;
                }
            }
            _ = health_tick.tick() => {
                // A stalled shard answers nothing: every primary is probed on its own, so a
                // node finds out within the command timeout even when it has no traffic.
                if cluster {
                    if let Err(reason) = inner.probe_shards().await {
                        return reason;
                    }
                    continue;
                }
                // A stalled Redis (or network) answers nothing: both connections are probed, so
                // a node finds out within the command timeout even when it has no traffic.
                let Ok((_, mut conn)) = inner.conn() else { return "connection dropped".into() };
                let probe = async {
                    let a = conn.ping_all().await;
                    let b = sink.ping().await;
                    a.and(b)
                };
                match tokio::time::timeout(timeout, probe).await {
                    Ok(Ok(_)) => {}
                    Ok(Err(e)) => return format!("ping failed: {e}"),
                    Err(_) => return "ping timed out".into(),
                }
            }
            _ = presence_tick.tick() => {
                if let Err(e) = inner.refresh_presence().await {
                    // On a cluster the probe tells a lost shard from a lost connection.
                    if !cluster {
                        return format!("presence refresh failed: {e}");
                    }
                    tracing::debug!(error = %e, "redis broker: presence refresh failed");
                }
            }
        }
    }
}
