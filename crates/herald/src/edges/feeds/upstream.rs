//! One connection to an upstream WebSocket: connect, send the subscribe messages, then read text
//! messages, keeping the connection alive with pings and giving up when it goes idle.

use crate::config::FeedConfig;
use futures_util::{SinkExt, StreamExt};
use std::time::Duration;
use tokio::net::TcpStream;
use tokio_websockets::{ClientBuilder, MaybeTlsStream, Message, WebSocketStream};

#[derive(Debug, thiserror::Error)]
pub enum UpstreamError {
    #[error("connect timed out after {0:?}")]
    ConnectTimeout(Duration),
    #[error("connect failed: {0}")]
    Connect(String),
    #[error("no message for {0:?}")]
    Idle(Duration),
    #[error("upstream closed the connection")]
    Closed,
    #[error("websocket error: {0}")]
    Socket(String),
    #[error("invalid url: {0}")]
    Url(String),
}

/// An open upstream connection.
pub struct Connection {
    ws: WebSocketStream<MaybeTlsStream<TcpStream>>,
    heartbeat: tokio::time::Interval,
    idle_timeout: Duration,
}

/// Connects and sends the feed's subscribe messages.
pub async fn connect(cfg: &FeedConfig) -> Result<Connection, UpstreamError> {
    let uri: http::Uri = cfg
        .url
        .parse()
        .map_err(|e: http::uri::InvalidUri| UpstreamError::Url(e.to_string()))?;
    let ws_config = tokio_websockets::Config::default().frame_size(64 * 1024);
    let limits = tokio_websockets::Limits::default().max_payload_len(Some(cfg.max_message_bytes));
    let builder = ClientBuilder::from_uri(uri)
        .config(ws_config)
        .limits(limits);
    let (mut ws, _response) = tokio::time::timeout(cfg.connect_timeout, builder.connect())
        .await
        .map_err(|_| UpstreamError::ConnectTimeout(cfg.connect_timeout))?
        .map_err(|e| UpstreamError::Connect(e.to_string()))?;
    for text in &cfg.send {
        ws.send(Message::text(text.clone()))
            .await
            .map_err(|e| UpstreamError::Socket(e.to_string()))?;
    }
    let mut heartbeat = tokio::time::interval(cfg.heartbeat_interval);
    heartbeat.reset();
    Ok(Connection {
        ws,
        heartbeat,
        idle_timeout: cfg.idle_timeout,
    })
}

impl Connection {
    /// The next text message; sends heartbeats while waiting. Binary messages are skipped.
    pub async fn next_text(&mut self) -> Result<String, UpstreamError> {
        let idle = tokio::time::sleep(self.idle_timeout);
        tokio::pin!(idle);
        loop {
            let next = tokio::select! {
                _ = &mut idle => return Err(UpstreamError::Idle(self.idle_timeout)),
                _ = self.heartbeat.tick() => {
                    self.ws
                        .send(Message::ping(bytes::Bytes::new()))
                        .await
                        .map_err(|e| UpstreamError::Socket(e.to_string()))?;
                    continue;
                }
                next = self.ws.next() => next,
            };
            let message = match next {
                None => return Err(UpstreamError::Closed),
                Some(Err(e)) => return Err(UpstreamError::Socket(e.to_string())),
                Some(Ok(m)) => m,
            };
            if message.is_close() {
                return Err(UpstreamError::Closed);
            }
            if let Some(text) = message.as_text() {
                return Ok(text.to_string());
            }
        }
    }

    pub async fn close(mut self) {
        let _ = tokio::time::timeout(Duration::from_secs(1), self.ws.close()).await;
    }
}
