//! The publishing side as chat and live commentary work: a client on a WebSocket publishes into
//! the channel it is subscribed to, keeping a window of publications in flight. A publication
//! counts as done when it comes back to the publisher, so Herald (the `publish` command) and the
//! peers (a `pub:` text frame) are paced the same way, by the server's own fan-out.
//!
//! A Pusher server does not send a client event back to its sender, so for Pusher a second
//! subscribed connection, the watcher, tells when a publication is back: the publisher sends
//! client events (`client-bench`) on the `private-` channel and counts them at the watcher.

use crate::net::now_micros;
use crate::publish::payload;
use crate::stats::{scan, Stamp};
use crate::wsclient::{self, Spec, Target, Ws};
use anyhow::bail;
use futures_util::{SinkExt, StreamExt};
use serde_json::json;
use std::time::{Duration, Instant};
use tokio_websockets::Message;

/// Source address number for the publisher (subscribers count up from 0).
const PUBLISHER_SOURCE: usize = 99;
/// Source address number for the Pusher watcher.
const WATCHER_SOURCE: usize = 98;

pub struct ClientPublisher {
    ws: Ws,
    /// Pusher: the connection that sees the publications come back.
    watcher: Option<Ws>,
    target: Target,
    channel: String,
    next_id: u64,
    ages: Vec<u64>,
}

impl ClientPublisher {
    /// Connects and subscribes like a subscriber of `spec` (Herald) or joins the broadcast (peers).
    /// With `watcher` (always for Pusher), publications count as back when a second subscribed
    /// connection receives them, not the publisher: a server may serve the publisher's own
    /// connection first (Herald writes the echo from the publishing task), so its echo says
    /// little about how far the fan-out is.
    pub async fn connect(spec: &Spec, watcher: bool) -> anyhow::Result<Self> {
        if spec.target == Target::Socketio {
            bail!("client publishing is not implemented for the socket.io peer");
        }
        let ws = wsclient::open(PUBLISHER_SOURCE, spec).await?;
        let watcher = if watcher || spec.target == Target::Pusher {
            Some(wsclient::open(WATCHER_SOURCE, spec).await?)
        } else {
            None
        };
        Ok(ClientPublisher {
            ws,
            watcher,
            target: spec.target,
            channel: spec.channels.first().cloned().unwrap_or_default(),
            next_id: 1_000,
            ages: Vec::new(),
        })
    }

    /// Publishes at most `rate` per second for `duration` with at most `window` not yet back;
    /// returns how many were sent.
    pub async fn run(
        &mut self,
        rate: u64,
        window: usize,
        duration: Duration,
        size: usize,
    ) -> anyhow::Result<u64> {
        let mut tick = tokio::time::interval(Duration::from_secs_f64(1.0 / rate.max(1) as f64));
        tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Burst);
        let target = (rate as f64 * duration.as_secs_f64()).round() as u64;
        let end = Instant::now() + duration;
        let (mut published, mut in_flight) = (0u64, 0usize);
        while published < target && Instant::now() < end {
            tokio::select! {
                _ = tick.tick(), if in_flight < window => {
                    self.send(size).await?;
                    published += 1;
                    in_flight += 1;
                }
                message = self.ws.next() => {
                    let Some(message) = message else { bail!("publisher closed by the server") };
                    let back = self.receive(message?).await?;
                    if self.watcher.is_none() {
                        in_flight = in_flight.saturating_sub(back);
                    }
                }
                message = next_of(&mut self.watcher) => {
                    let Some(message) = message else { bail!("watcher closed by the server") };
                    let back = self.watched(message?).await?;
                    in_flight = in_flight.saturating_sub(back);
                }
                // Nothing came back for a long time: the server lost them; start a new window.
                _ = tokio::time::sleep(Duration::from_secs(1)), if in_flight >= window => in_flight = 0,
            }
        }
        Ok(published)
    }

    async fn send(&mut self, size: usize) -> anyhow::Result<()> {
        let data = payload(size, None);
        let text = match self.target {
            Target::Herald => {
                self.next_id += 1;
                json!({"id": self.next_id, "publish": {"channel": self.channel, "data": data}})
                    .to_string()
            }
            Target::Pusher => crate::pusher::client_event(&self.channel, &data),
            _ => format!("pub:{data}"),
        };
        self.ws.send(Message::text(text)).await?;
        Ok(())
    }

    /// Answers a heartbeat; returns how many of our publications the frame brings back.
    async fn receive(&mut self, message: Message) -> anyhow::Result<usize> {
        let payload = message.as_payload();
        if self.target == Target::Herald && &payload[..] == b"{}" {
            self.ws.send(Message::text("{}")).await?;
            return Ok(0);
        }
        if self.target == Target::Pusher {
            if let Some(pong) = crate::pusher::heartbeat_reply(payload) {
                self.ws.send(pong).await?;
                return Ok(0);
            }
            if let Some(error) = crate::pusher::error(payload) {
                bail!("client event refused: {error:.200}");
            }
        }
        if let Some(text) = message.as_text() {
            if text.contains("\"error\"") {
                bail!("publish refused: {text:.200}");
            }
        }
        self.ages.clear();
        Ok(scan(
            message.as_payload(),
            Stamp::Micros,
            now_micros(),
            &mut self.ages,
        ) as usize)
    }

    /// The Pusher watcher's frame: answers a ping; returns how many publications it brings.
    async fn watched(&mut self, message: Message) -> anyhow::Result<usize> {
        let Some(watcher) = self.watcher.as_mut() else {
            return Ok(0);
        };
        let payload = message.as_payload();
        if let Some(pong) = crate::pusher::heartbeat_reply(payload) {
            watcher.send(pong).await?;
            return Ok(0);
        }
        self.ages.clear();
        Ok(scan(payload, Stamp::Micros, now_micros(), &mut self.ages) as usize)
    }
}

/// The next message of an optional connection; never ready without one.
async fn next_of(ws: &mut Option<Ws>) -> Option<Result<Message, tokio_websockets::Error>> {
    match ws {
        Some(ws) => ws.next().await,
        None => std::future::pending().await,
    }
}
