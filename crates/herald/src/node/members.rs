//! Pusher's member webhooks: whether a presence join or leave changed a channel's users.

use super::Node;

impl Node {
    /// After a connection of `user` joined (`joined`) or left presence channel `channel`: tells
    /// the Pusher apps that want member webhooks when that made `user` a member (its first
    /// connection on the channel, across the cluster) or ended its membership (its last). Reads
    /// the presence store only when some app wants them.
    pub async fn announce_member(&self, channel: &str, user: &str, joined: bool) {
        if user.is_empty() || !self.hooks.pusher.wants_members(channel) {
            return;
        }
        let present = match self.presence.get(channel).await {
            Ok(present) => present,
            Err(e) => {
                tracing::warn!(%channel, error = %e, "presence not read for a member webhook");
                return;
            }
        };
        let connections = present.values().filter(|info| info.user == user).count();
        if (joined && connections == 1) || (!joined && connections == 0) {
            self.hooks.pusher.member(channel, user, joined);
        }
    }
}
