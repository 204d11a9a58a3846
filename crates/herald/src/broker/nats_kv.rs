//! The NATS broker's JetStream KV buckets: presence (`<channel>.<client>` keys) and the node
//! registry (`<uid>` keys). Entries expire by the bucket's `max_age`; owners rewrite theirs.

use super::nats::encode_token;
use super::BrokerError;
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

fn unavailable(e: impl std::fmt::Display) -> BrokerError {
    BrokerError::Unavailable(e.to_string())
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
async fn open_bucket(
    js: &jetstream::Context,
    name: &str,
    max_age: Duration,
    timeout: Duration,
) -> Result<kv::Store, BrokerError> {
    if let Ok(Ok(store)) = tokio::time::timeout(timeout, js.get_key_value(name)).await {
        return Ok(store);
    }
    let config = kv::Config {
        bucket: name.to_string(),
        history: 1,
        max_age,
        ..Default::default()
    };
    match timed(timeout, js.create_key_value(config)).await {
        Ok(store) => Ok(store),
        // Another node may have created it meanwhile.
        Err(e) => timed(timeout, js.get_key_value(name))
            .await
            .map_err(|_| unavailable(format!("KV bucket {name:?}: {e}"))),
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
                &js,
                &config.nats_presence_bucket,
                config.presence_ttl,
                timeout,
            )
            .await?,
            nodes: open_bucket(
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
