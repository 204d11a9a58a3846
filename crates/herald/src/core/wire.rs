//! The wire a connection reads its pushes in: one of the Centrifugo formats, or the Pusher
//! Channels protocol. The hub encodes each publication at most once per wire present on a
//! channel, so Centrifugo and Pusher subscribers of one channel share one fan-out.

use herald_protocol::{Format, Publication};

/// The tag that carries a Pusher event's name on a publication.
pub const PUSHER_EVENT_TAG: &str = "event";

/// The event name a publication without the `event` tag reaches Pusher clients with.
pub const PUSHER_DEFAULT_EVENT: &str = "message";

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Wire {
    Json,
    Protobuf,
    /// Pusher Channels (protocol 7): one JSON event per WebSocket message.
    Pusher,
}

impl From<Format> for Wire {
    fn from(format: Format) -> Wire {
        match format {
            Format::Json => Wire::Json,
            Format::Protobuf => Wire::Protobuf,
        }
    }
}

impl Wire {
    pub const COUNT: usize = 3;

    pub fn index(self) -> usize {
        match self {
            Wire::Json => 0,
            Wire::Protobuf => 1,
            Wire::Pusher => 2,
        }
    }

    /// Stable name for the `connections` API and logs.
    pub fn name(self) -> &'static str {
        match self {
            Wire::Json => "json",
            Wire::Protobuf => "protobuf",
            Wire::Pusher => "pusher",
        }
    }

    /// The Centrifugo format, if this is one.
    pub fn format(self) -> Option<Format> {
        match self {
            Wire::Json => Some(Format::Json),
            Wire::Protobuf => Some(Format::Protobuf),
            Wire::Pusher => None,
        }
    }

    /// What separates two pushes merged into one window item (Pusher: nothing; its session sends
    /// each segment as a message of its own).
    pub fn separator(self) -> &'static [u8] {
        self.format().map_or(b"", Format::separator)
    }

    /// The push of one publication on `channel`.
    pub fn encode_publication(self, channel: &str, publication: &Publication) -> bytes::Bytes {
        match self.format() {
            Some(format) => format.encode_publication_push(channel, publication),
            None => bytes::Bytes::from(pusher_event(channel, publication)),
        }
    }
}

/// The Pusher name of a Herald channel: what follows the namespace (Pusher channel names hold no
/// `:`, so the first one ends the namespace).
pub fn pusher_channel(channel: &str) -> &str {
    channel.split_once(':').map_or(channel, |(_, name)| name)
}

/// A publication as a Pusher event: the event name from the tag `event` (`message` without
/// one), the data as a string (a JSON string's text, any other JSON as its text), and on presence
/// channels the sender of a client event as `user_id`.
pub fn pusher_event(channel: &str, publication: &Publication) -> String {
    let name = pusher_channel(channel);
    let event = pusher_event_name(publication);
    let text = pusher_data(publication);
    let user_id = publication
        .info
        .as_ref()
        .filter(|_| event.starts_with("client-") && name.starts_with("presence-"))
        .map(|info| info.user.as_str());
    herald_pusher::outgoing::event(event, name, Some(&text), user_id)
}

/// A publication's Pusher event name: its tag `event`, or `message`.
pub fn pusher_event_name(publication: &Publication) -> &str {
    publication
        .tags
        .get(PUSHER_EVENT_TAG)
        .map_or(PUSHER_DEFAULT_EVENT, String::as_str)
}

/// A publication's data as the string a Pusher event carries: a JSON string's text, any other
/// JSON as its text.
pub fn pusher_data(publication: &Publication) -> std::borrow::Cow<'_, str> {
    let raw = publication.data.get();
    if raw.starts_with('"') {
        serde_json::from_str::<String>(raw).map_or(raw.into(), Into::into)
    } else {
        raw.into()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::value::RawValue;

    fn publication(data: &str, event: Option<&str>, user: Option<&str>) -> Publication {
        Publication {
            data: RawValue::from_string(data.to_string()).unwrap(),
            info: user.map(|u| herald_protocol::ClientInfo {
                user: u.into(),
                client: "1.2".into(),
                conn_info: None,
                chan_info: None,
            }),
            offset: 3,
            tags: event
                .map(|e| [(PUSHER_EVENT_TAG.to_string(), e.to_string())].into())
                .unwrap_or_default(),
            time: 0,
        }
    }

    fn parsed(channel: &str, p: &Publication) -> serde_json::Value {
        serde_json::from_str(&pusher_event(channel, p)).unwrap()
    }

    #[test]
    fn events_carry_the_name_the_pusher_channel_and_data_as_a_string() {
        let e = parsed(
            "shop:orders",
            &publication(r#"{"id":7}"#, Some("order.created"), None),
        );
        assert_eq!(e["event"], "order.created");
        assert_eq!(e["channel"], "orders");
        assert_eq!(e["data"], r#"{"id":7}"#);
        assert!(e.get("user_id").is_none());
        // A JSON string is the text itself; no tag: `message`; no namespace: the name as it is.
        let e = parsed("news", &publication(r#""hi \"you\"""#, None, None));
        assert_eq!(
            (e["event"].as_str(), e["channel"].as_str()),
            (Some("message"), Some("news"))
        );
        assert_eq!(e["data"], "hi \"you\"");
    }

    #[test]
    fn client_events_on_presence_channels_name_their_sender() {
        let p = publication("{}", Some("client-typing"), Some("u1"));
        assert_eq!(parsed("shop:presence-room", &p)["user_id"], "u1");
        assert!(parsed("shop:private-room", &p).get("user_id").is_none());
        let server = publication("{}", Some("typing"), Some("u1"));
        assert!(parsed("shop:presence-room", &server)
            .get("user_id")
            .is_none());
    }

    #[test]
    fn wires_index_distinct_slots() {
        let all = [Wire::Json, Wire::Protobuf, Wire::Pusher];
        let mut seen: Vec<usize> = all.iter().map(|w| w.index()).collect();
        seen.dedup();
        assert_eq!(seen, [0, 1, 2]);
        assert_eq!(Wire::from(Format::Protobuf), Wire::Protobuf);
        assert_eq!(Wire::Pusher.separator(), b"");
    }
}
