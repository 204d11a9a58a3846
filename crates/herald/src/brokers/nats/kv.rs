//! The NATS broker's JetStream KV buckets: presence (`<channel>.<client>` keys) and the node
//! registry (`<uid>` keys). Entries expire by the bucket's `max_age`; owners rewrite theirs.

use super::subjects::encode_token;
use crate::brokers::{unavailable, BrokerError};
use crate::config::BrokerConfig;
use async_nats::jetstream::{self, kv};
use bytes::Bytes;
use futures_util::StreamExt;
use std::future::Future;
use std::time::Duration;

/// Keys: base64url tokens joined by a dot (valid KV key characters whatever the channel name).
pub fn presence_key(channel: &str, client: &str) -> String {
    format!("{}.{}", encode_token(channel), encode_token(client))
}

/// The key filter of one channel's presence entries.
pub fn presence_channel_filter(channel: &str) -> String {
    format!("{}.*", encode_token(channel))
}

#[derive(Clone)]
pub struct Buckets {
    pub presence: kv::Store,
    pub nodes: kv::Store,
}

async fn timed<T, E: std::fmt::Display>(
    timeout: Duration,
    fut: impl Future<Output = Result<T, E>>,
) -> Result<T, BrokerError> {
    match tokio::time::timeout(timeout, fut).await {
        Ok(result) => result.map_err(unavailable),
        Err(_) => Err(unavailable("NATS JetStream request timed out")),
    }
}

/// Finds a bucket, creating it when missing. A bucket that exists keeps its own settings.
/// `max_age` zero: entries never expire (the lease bucket).
pub(super) async fn open_bucket(
    client: &async_nats::Client,
    js: &jetstream::Context,
    name: &str,
    max_age: Duration,
    timeout: Duration,
) -> Result<kv::Store, BrokerError> {
    if let Ok(Ok(store)) = tokio::time::timeout(timeout, js.get_key_value(name)).await {
        return Ok(store);
    }
    create_bucket_stream(client, name, max_age, timeout).await?;
    timed(timeout, js.get_key_value(name))
        .await
        .map_err(|e| unavailable(format!("KV bucket {name:?}: {e}")))
}

/// Creates a bucket's stream with a plain JetStream API request. async-nats's own
/// `create_key_value` first reads the account info, whose reply from 2.9 servers it cannot parse;
/// the stream request and reply are stable across server versions. The settings are those of a
/// KV bucket with one value per key.
async fn create_bucket_stream(
    client: &async_nats::Client,
    name: &str,
    max_age: Duration,
    timeout: Duration,
) -> Result<(), BrokerError> {
    let nanos = |d: Duration| d.as_nanos().min(i64::MAX as u128) as i64;
    let config = serde_json::json!({
        "name": format!("KV_{name}"),
        "subjects": [format!("$KV.{name}.>")],
        "retention": "limits",
        "max_consumers": -1,
        "max_msgs": -1,
        "max_bytes": -1,
        "max_msg_size": -1,
        "max_age": nanos(max_age),
        "max_msgs_per_subject": 1,
        "discard": "new",
        "storage": "file",
        "num_replicas": 1,
        "duplicate_window": nanos(max_age.min(Duration::from_secs(120))),
        "allow_rollup_hdrs": true,
        "deny_delete": true,
        "allow_direct": true,
    });
    let subject = format!("$JS.API.STREAM.CREATE.KV_{name}");
    let payload = Bytes::from(config.to_string());
    let reply = timed(timeout, client.request(subject, payload)).await?;
    let reply: serde_json::Value = serde_json::from_slice(&reply.payload).map_err(unavailable)?;
    match reply.get("error") {
        None => Ok(()),
        // 10058: the stream exists already (another node created it meanwhile).
        Some(error) if error["err_code"] == 10058 => Ok(()),
        Some(error) => Err(unavailable(format!("creating KV bucket {name:?}: {error}"))),
    }
}

impl Buckets {
    pub async fn open(
        client: &async_nats::Client,
        config: &BrokerConfig,
    ) -> Result<Buckets, BrokerError> {
        let js = jetstream::new(client.clone());
        let timeout = config.command_timeout;
        Ok(Buckets {
            presence: open_bucket(
                client,
                &js,
                &config.nats_presence_bucket,
                config.presence_ttl,
                timeout,
            )
            .await?,
            nodes: open_bucket(
                client,
                &js,
                &config.nats_nodes_bucket,
                config.node_announce_interval * 3,
                timeout,
            )
            .await?,
        })
    }

    pub async fn put(
        &self,
        store: &kv::Store,
        key: &str,
        value: Bytes,
        timeout: Duration,
    ) -> Result<(), BrokerError> {
        timed(timeout, store.put(key, value)).await.map(|_| ())
    }

    pub async fn delete(
        &self,
        store: &kv::Store,
        key: &str,
        timeout: Duration,
    ) -> Result<(), BrokerError> {
        timed(timeout, store.delete(key)).await
    }

    /// The live values of every key matching `filter` (every key when `None`). The stream's
    /// subject list names the keys (tombstones included); each key's entry is then read and
    /// deleted ones are skipped.
    pub async fn values(
        &self,
        store: &kv::Store,
        filter: Option<&str>,
        timeout: Duration,
    ) -> Result<Vec<(String, Bytes)>, BrokerError> {
        let subject_filter = format!("{}{}", store.prefix, filter.unwrap_or(">"));
        let subjects: Vec<String> = timed(timeout, async {
            let mut info = store.stream.info_with_subjects(subject_filter).await?;
            let mut subjects = Vec::new();
            while let Some(item) = info.next().await {
                let (subject, _) = item?;
                subjects.push(subject);
            }
            Ok::<_, async_nats::Error>(subjects)
        })
        .await?;
        let mut out = Vec::with_capacity(subjects.len());
        for subject in subjects {
            let Some(key) = subject.strip_prefix(store.prefix.as_str()) else {
                continue;
            };
            let entry = timed(timeout, store.entry(key)).await?;
            if let Some(entry) = entry {
                if entry.operation == kv::Operation::Put {
                    out.push((key.to_string(), entry.value));
                }
            }
        }
        Ok(out)
    }
}
