//! The endpoints of the Pusher HTTP API, once the request's signature is verified: triggers
//! publish into the app's namespace, channel queries read the hub and the presence store.

use super::{events, short, Refusal};
use crate::brokers::Control;
use crate::config::PusherApp;
use crate::node::Node;
use herald_pusher::api::{
    self as wire, ApiLimits, BatchResponse, CachedEvent, ChannelAttributes, ChannelResponse,
    ChannelsResponse, InfoAttributes, Route, TriggerEvent, TriggerResponse, UserEntry,
    UsersResponse,
};
use herald_pusher::channel::ChannelName;
use herald_pusher::http_auth::parse_query;
use std::collections::{BTreeMap, BTreeSet};

pub(super) async fn handle(
    node: &Node,
    app: &PusherApp,
    route: Route,
    query: &str,
    body: &[u8],
) -> Result<Vec<u8>, Refusal> {
    let limits = ApiLimits {
        max_data_bytes: node.config().pusher.max_event_bytes,
        ..ApiLimits::default()
    };
    match route {
        Route::Trigger { .. } => {
            let event = wire::parse_trigger(body, &limits).map_err(bad_body)?;
            let attributes = trigger(node, app, &event).await?;
            json(&TriggerResponse {
                channels: (!event.info.is_empty()).then_some(attributes),
            })
        }
        Route::BatchTrigger { .. } => {
            let batch = wire::parse_batch(body, &limits).map_err(bad_body)?;
            let mut answers = Vec::with_capacity(batch.len());
            for event in &batch {
                let attributes = trigger(node, app, event).await?;
                answers.push(attributes.into_values().next().unwrap_or_default());
            }
            let asked = batch.iter().any(|event| !event.info.is_empty());
            json(&BatchResponse {
                batch: asked.then_some(answers),
            })
        }
        Route::Channels { .. } => channels(node, app, query).await,
        Route::Channel { channel, .. } => channel_info(node, app, &channel, query).await,
        Route::ChannelUsers { channel, .. } => users(node, app, &channel).await,
        Route::TerminateUserConnections { user_id, .. } => {
            terminate(node, &user_id).await?;
            Ok(b"{}".to_vec())
        }
    }
}

/// Publishes `event` to each of its channels, in order; answers the attributes its `info` asks
/// for, by Pusher channel name.
async fn trigger(
    node: &Node,
    app: &PusherApp,
    event: &TriggerEvent,
) -> Result<BTreeMap<String, ChannelAttributes>, Refusal> {
    let data = events::publication_data(&event.data);
    let tags = events::publication_tags(&event.name);
    // `socket_id` leaves that Pusher connection out: the hub skips the connection a
    // publication names as its sender.
    let sender = event
        .socket_id
        .as_ref()
        .map(|id| herald_protocol::ClientInfo {
            user: String::new(),
            client: id.as_str().to_string(),
            conn_info: None,
            chan_info: None,
        });
    let mut attributes = BTreeMap::new();
    for channel in &event.channels {
        let herald = app.herald_channel(channel.as_str());
        node.publish(
            &herald,
            data.clone(),
            sender.clone(),
            tags.clone(),
            "pusher",
        )
        .await
        .map_err(|e| {
            let status = match e {
                crate::node::PublishError::TooLarge { .. } => 413,
                crate::node::PublishError::Refused(_) => 400,
            };
            Refusal::new(
                status,
                "pusher publish",
                format!("channel {:?}: {e}", channel.as_str()),
            )
        })?;
        if !event.info.is_empty() {
            let subscribers = node.hub.subscriber_count(&herald);
            let counts = counts(node, &herald, channel, subscribers, &event.info).await?;
            attributes.insert(channel.as_str().to_string(), counts);
        }
    }
    Ok(attributes)
}

/// `GET /apps/<id>/channels`: the app's occupied channels, optionally by prefix.
async fn channels(node: &Node, app: &PusherApp, query: &str) -> Result<Vec<u8>, Refusal> {
    let params = parse_query(query);
    let prefix = param(&params, "filter_by_prefix");
    let info = InfoAttributes::parse(param(&params, "info").unwrap_or("")).map_err(bad_query)?;
    wire::check_channels_query(&info, prefix).map_err(bad_query)?;
    let mut channels = BTreeMap::new();
    // Only the app's namespace is listed (without one: every channel, filtered below).
    let pattern = match app.namespace.as_str() {
        "" => String::new(),
        ns => format!("{ns}:*"),
    };
    for (herald, subscribers) in node.hub.channels(&pattern) {
        let Some(name) = app.pusher_channel(&herald) else {
            continue;
        };
        if prefix.is_some_and(|p| !name.starts_with(p)) {
            continue;
        }
        // A Herald channel this app could not have named is not listed.
        let Ok(channel) = ChannelName::parse(name) else {
            continue;
        };
        let attributes = counts(node, &herald, &channel, subscribers, &info).await?;
        channels.insert(name.to_string(), attributes);
    }
    json(&ChannelsResponse { channels })
}

/// `GET /apps/<id>/channels/<channel>`.
async fn channel_info(
    node: &Node,
    app: &PusherApp,
    name: &str,
    query: &str,
) -> Result<Vec<u8>, Refusal> {
    let channel = channel_name(name)?;
    let params = parse_query(query);
    let info = InfoAttributes::parse(param(&params, "info").unwrap_or("")).map_err(bad_query)?;
    wire::check_channel_query(&info, &channel).map_err(bad_query)?;
    let herald = app.herald_channel(name);
    let subscribers = node.hub.subscriber_count(&herald);
    let attributes = counts(node, &herald, &channel, subscribers, &info).await?;
    let cache = if info.cache {
        Some(cached_event(node, &herald).await?)
    } else {
        None
    };
    json(&ChannelResponse {
        occupied: subscribers > 0,
        user_count: attributes.user_count,
        subscription_count: attributes.subscription_count,
        cache,
    })
}

/// What a cache channel holds: its last event, with the seconds its history keeps it still.
async fn cached_event(node: &Node, herald: &str) -> Result<Option<CachedEvent>, Refusal> {
    let Some(last) = super::cache::last_event(node, herald)
        .await
        .map_err(unavailable)?
    else {
        return Ok(None);
    };
    let ttl = node
        .namespaces
        .resolve(herald)
        .map_or(0, |ns| ns.history_ttl.as_millis() as i64);
    let left_ms = last.time + ttl - crate::core::clock::unix_millis();
    Ok(Some(CachedEvent {
        event: Some(crate::core::wire::pusher_event_name(&last).to_string()),
        data: crate::core::wire::pusher_data(&last).into_owned(),
        ttl: u64::try_from(left_ms / 1000).unwrap_or(0),
    }))
}

/// `GET /apps/<id>/channels/<presence channel>/users`: each user once.
async fn users(node: &Node, app: &PusherApp, name: &str) -> Result<Vec<u8>, Refusal> {
    let channel = channel_name(name)?;
    wire::check_users_query(&channel).map_err(bad_query)?;
    let members = node
        .presence
        .get(&app.herald_channel(name))
        .await
        .map_err(unavailable)?;
    let ids: BTreeSet<String> = members.into_values().map(|info| info.user).collect();
    json(&UsersResponse {
        users: ids.into_iter().map(|id| UserEntry { id }).collect(),
    })
}

/// `POST /apps/<id>/users/<user>/terminate_connections`: every connection of the user, on every
/// node, is closed without reconnecting.
async fn terminate(node: &Node, user: &str) -> Result<(), Refusal> {
    if user.is_empty() {
        return Err(Refusal::new(400, "pusher request", "user id is empty"));
    }
    let ending = herald_protocol::Disconnect::FORCE_NO_RECONNECT;
    node.broker
        .publish_control(Control::Disconnect {
            user: user.to_string(),
            client: None,
            code: ending.code,
            reason: ending.reason.to_string(),
        })
        .await
        .map_err(unavailable)
}

/// The attributes `info` asks for: `subscription_count` is `subscribers`, this node's
/// subscribers of the channel (`herald`, its Herald name), `user_count` the distinct users of a
/// presence channel (all nodes, from the presence store).
async fn counts(
    node: &Node,
    herald: &str,
    channel: &ChannelName,
    subscribers: usize,
    info: &InfoAttributes,
) -> Result<ChannelAttributes, Refusal> {
    let users = if info.user_count && channel.is_presence() {
        let (_, users) = node.presence.stats(herald).await.map_err(unavailable)?;
        u64::from(users)
    } else {
        0
    };
    Ok(info.attributes(channel, users, subscribers as u64))
}

fn channel_name(name: &str) -> Result<ChannelName, Refusal> {
    ChannelName::parse(name).map_err(|e| {
        Refusal::new(
            400,
            "pusher request",
            format!("channel name {:?}: {e}", short(name)),
        )
    })
}

fn param<'a>(params: &'a [(String, String)], name: &str) -> Option<&'a str> {
    params
        .iter()
        .find(|(key, _)| key == name)
        .map(|(_, value)| value.as_str())
}

fn bad_body(e: wire::ApiError) -> Refusal {
    let reason = if e.status() == 413 {
        "pusher body"
    } else {
        "pusher request"
    };
    Refusal::new(e.status(), reason, e.to_string())
}

fn bad_query(e: wire::ApiError) -> Refusal {
    Refusal::new(e.status(), "pusher request", e.to_string())
}

fn unavailable(e: crate::brokers::BrokerError) -> Refusal {
    Refusal::new(503, "pusher broker", format!("broker unavailable: {e}"))
}

fn json(value: &impl serde::Serialize) -> Result<Vec<u8>, Refusal> {
    serde_json::to_vec(value)
        .map_err(|e| Refusal::new(500, "pusher answer", format!("could not encode: {e}")))
}
