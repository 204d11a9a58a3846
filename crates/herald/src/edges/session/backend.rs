//! The session's side of the backend hooks: asking the proxy, and turning its answers into session
//! state, command replies or a close. The wire format lives in `crate::hooks`.

use super::subscribe::SubscribeParams;
use super::{Close, Handled, Refusal, Session};
use crate::core::clock::unix_secs;
use crate::hooks::proxy::{Hook, Proxy};
use crate::hooks::wire::Identity;
use crate::hooks::{HookCtx, HookError, Outcome};
use herald_protocol::command::{ConnectRequest, RpcRequest, SendRequest, SubscribeRequest};
use herald_protocol::{Disconnect, ErrorCode, ReplyBody, RpcResult};
use serde_json::value::RawValue;
use std::time::{Duration, Instant};

/// Maps a backend answer to the session's outcomes: the result, an error reply for the command, or
/// a close. A failed call (down, slow, garbage, busy) is an error reply, never a close.
fn backend<T>(answer: Result<Outcome<T>, HookError>) -> Handled<T> {
    match answer {
        Ok(Outcome::Ok(result)) => Ok(result),
        Ok(Outcome::Error(error)) => Err(Refusal::Reply(error)),
        Ok(Outcome::Disconnect(code, reason)) => Err(Close::backend(code, reason).into()),
        Err(e) => Err(Refusal::Reply(e.reply_error())),
    }
}

/// How long a connection authenticated by the backend keeps going when the refresh hook fails.
const REFRESH_RETRY: Duration = Duration::from_secs(10);

impl Session {
    /// Asks the connect hook who a token-less client is. A failed call closes with 3004: without an
    /// identity there is no connection to keep, and 3004 makes SDKs reconnect with backoff.
    pub(super) async fn connect_by_backend(
        &mut self,
        proxy: &Proxy,
        req: &ConnectRequest,
        client_id: &str,
    ) -> Handled<Identity> {
        let ctx = HookCtx {
            client: client_id,
            user: "",
            meta: None,
            headers: &self.forwarded,
        };
        let answer = proxy
            .connect(&ctx, &req.name, &req.version, req.data.as_deref())
            .await;
        let identity = match answer {
            Err(e) => {
                return Err(Close {
                    reason: e.client_message().to_string(),
                    label: "backend error",
                    ..Disconnect::SERVER_ERROR.into()
                }
                .into())
            }
            Ok(outcome) => backend(Ok(outcome))?,
        };
        if identity.user.is_empty() && !self.node.config().client.allow_anonymous {
            return Err(Disconnect::INVALID_TOKEN.into());
        }
        self.backend_auth = true;
        Ok(identity)
    }

    /// Asks the subscribe hook; on success fills the subscription's info, data and expiry.
    pub(super) async fn subscribe_by_backend(
        &self,
        proxy: &Proxy,
        req: &SubscribeRequest,
        params: &mut SubscribeParams,
    ) -> Handled<()> {
        if self.subs.contains_key(&req.channel) {
            return Err(ErrorCode::AlreadySubscribed.into());
        }
        let answer = proxy
            .subscribe(&self.hook_ctx(), &req.channel, req.data.as_deref())
            .await;
        let granted = backend(answer)?;
        params.chan_info = granted.info;
        params.data = granted.data;
        params.expires_at = granted.expire_at;
        Ok(())
    }

    /// Asks the publish hook; on success `data` is what gets published, and the result says
    /// whether to keep it out of history.
    pub(super) async fn publish_by_backend(
        &self,
        proxy: &Proxy,
        channel: &str,
        data: &mut Box<RawValue>,
    ) -> Handled<bool> {
        let answer = proxy.publish(&self.hook_ctx(), channel, data).await;
        let allowed = backend(answer)?;
        if let Some(rewritten) = allowed.data {
            *data = rewritten;
        }
        Ok(allowed.skip_history)
    }

    /// `rpc` goes to the backend's rpc hook; without one it is not available (108).
    pub(super) async fn rpc(&mut self, req: RpcRequest) -> Handled {
        let Some(proxy) = self.node.hooks.proxy_for(Hook::Rpc) else {
            return Err(ErrorCode::NotAvailable.into());
        };
        let answer = proxy
            .rpc(&self.hook_ctx(), &req.method, req.data.as_deref())
            .await;
        let data = backend(answer)?;
        Ok(ReplyBody::Rpc(RpcResult { data }))
    }

    /// `send` goes to the backend's send hook without waiting; without one it is dropped.
    pub(super) fn send(&mut self, req: SendRequest) {
        if let Some(proxy) = self.node.hooks.proxy_for(Hook::Send) {
            proxy.send(&self.hook_ctx(), req.data.as_deref());
        }
    }

    /// A connection the backend authenticated reaches its expiry: ask the refresh hook whether it
    /// goes on. Expired (or no refresh hook): the timer closes it with 3005. A failed call keeps
    /// the connection for `REFRESH_RETRY` and asks again, so a backend outage does not drop everyone.
    pub(super) async fn refresh_by_backend(&mut self) -> Result<(), Close> {
        let due = self.expires_at.is_some_and(|at| Instant::now() >= at);
        let proxy = self.node.hooks.proxy_for(Hook::Refresh);
        let (true, true, Some(proxy)) = (due, self.backend_auth, proxy) else {
            return Ok(());
        };
        let answer = proxy.refresh(&self.hook_ctx()).await;
        let result = match answer {
            Err(_) => {
                self.expires_at = Some(Instant::now() + REFRESH_RETRY);
                return Ok(());
            }
            Ok(Outcome::Disconnect(code, reason)) => return Err(Close::backend(code, reason)),
            Ok(Outcome::Error(_)) => return Err(Disconnect::EXPIRED.into()),
            Ok(Outcome::Ok(result)) => result,
        };
        let now = unix_secs();
        // An expiry already past would wake the timer at once and ask again in a loop: expired.
        if result.expired || result.expire_at.is_some_and(|at| at <= now) {
            return Err(Disconnect::EXPIRED.into());
        }
        if let Some(info) = result.info {
            self.conn_info = Some(info);
        }
        self.expires_at = result
            .expire_at
            .map(|at| Instant::now() + Duration::from_secs((at - now).max(0) as u64));
        Ok(())
    }
}
