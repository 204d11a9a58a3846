//! Where a feed's messages come from: an upstream WebSocket, Redis pattern subscriptions, or
//! NATS subjects (wildcards allowed). Each yields (source name, payload) pairs one at a time, so a slow hub slows
//! the reader (and the upstream's own buffer limits apply) instead of queueing without bound.

use super::upstream::{self, UpstreamError};
use crate::config::{FeedConfig, FeedKind};
use futures_util::StreamExt;
use std::time::Duration;

/// One message: the name it arrived on (Redis channel, NATS subject, or the feed URL) and text.
pub struct SourceMessage {
    pub source: String,
    pub payload: String,
}

pub enum Source {
    WebSocket {
        url: String,
        conn: Box<upstream::Connection>,
    },
    Redis {
        sink: redis::aio::PubSubSink,
        stream: redis::aio::PubSubStream,
        heartbeat: tokio::time::Interval,
        timeout: Duration,
    },
    Nats {
        /// Held so the connection lives as long as the subscriptions.
        _client: async_nats::Client,
        subscribers: futures_util::stream::SelectAll<async_nats::Subscriber>,
    },
}

/// Messages a NATS subscription buffers before the client drops (NATS "slow consumer").
const NATS_SUBSCRIPTION_CAPACITY: usize = 8192;

fn redis_error(e: redis::RedisError) -> UpstreamError {
    UpstreamError::Socket(e.to_string())
}

/// Opens the feed's source and subscribes.
pub async fn open(cfg: &FeedConfig) -> Result<Source, UpstreamError> {
    match cfg.kind {
        FeedKind::Redis => {
            let client = redis::Client::open(cfg.url.as_str())
                .map_err(|e| UpstreamError::Url(e.to_string()))?;
            let pubsub = tokio::time::timeout(cfg.connect_timeout, client.get_async_pubsub())
                .await
                .map_err(|_| UpstreamError::ConnectTimeout(cfg.connect_timeout))?
                .map_err(|e| UpstreamError::Connect(e.to_string()))?;
            let (mut sink, stream) = pubsub.split();
            for pattern in &cfg.subscribe {
                tokio::time::timeout(cfg.connect_timeout, sink.psubscribe(pattern))
                    .await
                    .map_err(|_| UpstreamError::ConnectTimeout(cfg.connect_timeout))?
                    .map_err(redis_error)?;
            }
            let mut heartbeat = tokio::time::interval(cfg.heartbeat_interval);
            heartbeat.reset();
            Ok(Source::Redis {
                sink,
                stream,
                heartbeat,
                timeout: cfg.connect_timeout,
            })
        }
        FeedKind::Nats => {
            let client = async_nats::ConnectOptions::new()
                .connection_timeout(cfg.connect_timeout)
                .ping_interval(cfg.heartbeat_interval)
                .subscription_capacity(NATS_SUBSCRIPTION_CAPACITY)
                .connect(cfg.url.as_str())
                .await
                .map_err(|e| UpstreamError::Connect(e.to_string()))?;
            let mut subscribers = futures_util::stream::SelectAll::new();
            for subject in &cfg.subscribe {
                let sub = client
                    .subscribe(subject.clone())
                    .await
                    .map_err(|e| UpstreamError::Socket(e.to_string()))?;
                subscribers.push(sub);
            }
            // The server has the subscriptions once a flush round-trip completes.
            tokio::time::timeout(cfg.connect_timeout, client.flush())
                .await
                .map_err(|_| UpstreamError::ConnectTimeout(cfg.connect_timeout))?
                .map_err(|e| UpstreamError::Socket(e.to_string()))?;
            Ok(Source::Nats {
                _client: client,
                subscribers,
            })
        }
        FeedKind::Websocket => Ok(Source::WebSocket {
            url: cfg.url.clone(),
            conn: Box::new(upstream::connect(cfg).await?),
        }),
    }
}

impl Source {
    /// The next message. Quiet Redis subscriptions are normal: liveness there is a PING every
    /// `heartbeat_interval` that must be answered within `connect_timeout`.
    pub async fn next(&mut self) -> Result<SourceMessage, UpstreamError> {
        match self {
            Source::WebSocket { url, conn } => Ok(SourceMessage {
                source: url.clone(),
                payload: conn.next_text().await?,
            }),
            Source::Nats { subscribers, .. } => {
                // The NATS client reconnects and resubscribes by itself; this ends only when the
                // client gives up.
                let msg = subscribers.next().await.ok_or(UpstreamError::Closed)?;
                Ok(SourceMessage {
                    source: msg.subject.to_string(),
                    payload: String::from_utf8_lossy(&msg.payload).into_owned(),
                })
            }
            Source::Redis {
                sink,
                stream,
                heartbeat,
                timeout,
            } => loop {
                tokio::select! {
                    _ = heartbeat.tick() => {
                        // A subscribed RESP2 connection answers PING with ["pong", ""], not a
                        // status: any answer proves liveness (a String here failed every PING
                        // and dropped the connection each heartbeat).
                        tokio::time::timeout(*timeout, sink.ping::<redis::Value>())
                            .await
                            .map_err(|_| UpstreamError::Idle(*timeout))?
                            .map_err(redis_error)?;
                    }
                    msg = stream.next() => {
                        let msg = msg.ok_or(UpstreamError::Closed)?;
                        let payload = String::from_utf8_lossy(msg.get_payload_bytes()).into_owned();
                        return Ok(SourceMessage {
                            source: msg.get_channel_name().to_string(),
                            payload,
                        });
                    }
                }
            },
        }
    }

    pub async fn close(self) {
        // Redis and NATS subscriptions end when dropped.
        match self {
            Source::WebSocket { conn, .. } => conn.close().await,
            Source::Redis { .. } | Source::Nats { .. } => {}
        }
    }
}
