//! From a decoded command to its handler, and from the handler's outcome to the reply: the command
//! rate limit and the connect-first rule apply to every command here.

use super::{Close, Handled, Refusal, Session};
use crate::core::metrics::MethodLabel;
use bytes::Bytes;
use herald_protocol::{Disconnect, ErrorCode, Method, ReplyBody, ReplyError};
use std::time::Instant;

/// A client that rejects this many commands in a row for rate is disconnected.
const MAX_RATE_REJECTIONS: u32 = 100;

impl Session {
    pub(super) async fn handle_command(&mut self, id: u32, method: Method) -> Result<(), Close> {
        let name = method.name();
        if matches!(method, Method::Pong) {
            return Ok(());
        }
        self.node.metrics.command(name);
        if self.handle.is_none() && !matches!(method, Method::Connect(_)) {
            return Err(Disconnect::BAD_REQUEST.into());
        }
        if !self.bucket.take(Instant::now()) {
            self.rate_rejections += 1;
            if self.rate_rejections >= MAX_RATE_REJECTIONS {
                return Err(Disconnect::TOO_MANY_REQUESTS.into());
            }
            self.reply_error(id, name, ErrorCode::TooManyRequests.into());
            return Ok(());
        }
        self.rate_rejections = 0;
        let handled: Handled = match method {
            Method::Pong => return Ok(()),
            Method::Connect(req) => self.connect(req).await,
            Method::Subscribe(req) => self.subscribe(req).await,
            Method::Unsubscribe(req) => self.unsubscribe(req).await,
            Method::Publish(req) => self.publish(req).await,
            Method::Presence(req) => self.presence(req).await,
            Method::PresenceStats(req) => self.presence_stats(req).await,
            Method::History(req) => self.history(req).await,
            Method::Ping => Ok(ReplyBody::Ping),
            Method::Send(req) => {
                self.send(req);
                return Ok(());
            }
            Method::Rpc(req) => self.rpc(req).await,
            Method::Refresh(req) => self.refresh(req),
            Method::SubRefresh(req) => self.sub_refresh(req),
            Method::Unknown => Err(ErrorCode::MethodNotFound.into()),
            Method::Invalid { field, .. } => Err(Method::invalid_error(field).into()),
        };
        match handled {
            Ok(body) => self.reply(id, &body),
            Err(Refusal::Reply(error)) => self.reply_error(id, name, error),
            Err(Refusal::Close(close)) => return Err(close),
        }
        Ok(())
    }

    /// Queues the reply to command `id` (none for id 0: the client expects no reply).
    fn reply(&mut self, id: u32, body: &ReplyBody) {
        if id == 0 {
            return;
        }
        let mut out = Vec::new();
        self.format.encode_reply(id, body, &mut out);
        self.queue(Bytes::from(out));
    }

    fn reply_error(&mut self, id: u32, method: &'static str, error: ReplyError) {
        self.node
            .metrics
            .command_errors
            .get_or_create(&MethodLabel { method })
            .inc();
        self.reply(id, &ReplyBody::Error(error));
    }
}
