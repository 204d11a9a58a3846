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
            // A unidirectional client cannot read an error reply: it gets the disconnect
            // Centrifugo gives for it at once, instead of waiting for connect_timeout.
            Err(Refusal::Reply(error)) if name == "connect" && self.conn.unidirectional() => {
                return Err(uni_connect_refusal(error.code).into());
            }
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

/// The disconnect that ends a unidirectional connection whose connect is refused with error `code`
/// (Centrifugo's mapping; any other error is a server error).
fn uni_connect_refusal(code: u32) -> Disconnect {
    const TOKEN_EXPIRED: u32 = ErrorCode::TokenExpired as u32;
    const EXPIRED: u32 = ErrorCode::Expired as u32;
    const TOO_MANY: u32 = ErrorCode::TooManyRequests as u32;
    const DENIED: u32 = ErrorCode::PermissionDenied as u32;
    match code {
        TOKEN_EXPIRED | EXPIRED => Disconnect::EXPIRED,
        TOO_MANY => Disconnect::TOO_MANY_REQUESTS,
        DENIED => Disconnect::PERMISSION_DENIED,
        _ => Disconnect::SERVER_ERROR,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn unidirectional_connect_errors_become_centrifugos_disconnects() {
        assert_eq!(uni_connect_refusal(109), Disconnect::EXPIRED);
        assert_eq!(uni_connect_refusal(110), Disconnect::EXPIRED);
        assert_eq!(uni_connect_refusal(111), Disconnect::TOO_MANY_REQUESTS);
        assert_eq!(uni_connect_refusal(103), Disconnect::PERMISSION_DENIED);
        assert_eq!(uni_connect_refusal(100), Disconnect::SERVER_ERROR);
    }
}
