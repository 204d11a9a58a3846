//! The user data an app server signs: a presence subscription's `channel_data` and a sign-in's
//! `user_data`, both JSON objects sent as strings.
//!
//! * `channel_data`: `{"user_id": <string or integer>, "user_info": <any, optional>}`. Pusher's
//!   own auth example uses the integer `10`, so integers are accepted and kept as their decimal
//!   text: pusher-js keys members by the id as an object key, where `10` and `"10"` are the same.
//! * `user_data`: `{"id": <non-empty string>, "user_info": <optional>, "watchlist": [ids],
//!   ...}`. pusher-js drops a sign-in whose `id` is not a non-empty string, so only strings are
//!   accepted here. A watchlist longer than [`MAX_WATCHLIST`] keeps its first entries and owes the
//!   client a 4302 `pusher:error`.
//!
//! Pusher's documented presence limits are [`MAX_USER_ID_LEN`] characters per user id (enforced
//! here), [`MAX_USER_INFO_BYTES`] per user object and 100 members per channel (both left to the
//! server, which may configure them).

use serde_json::{Map, Value};

/// Longest user id, in characters.
pub const MAX_USER_ID_LEN: usize = 128;
/// Pusher's limit on a presence member's serialized `user_info`.
pub const MAX_USER_INFO_BYTES: usize = 1024;
/// Pusher's limit on a sign-in watchlist.
pub const MAX_WATCHLIST: usize = 100;

/// One member of a presence channel.
#[derive(Debug, Clone, PartialEq)]
pub struct PresenceMember {
    pub user_id: String,
    pub user_info: Option<Value>,
}

/// A signed-in user.
#[derive(Debug, Clone, PartialEq)]
pub struct UserData {
    pub id: String,
    pub user_info: Option<Value>,
    /// At most [`MAX_WATCHLIST`] user ids.
    pub watchlist: Vec<String>,
    /// The watchlist sent was longer and was cut to its first [`MAX_WATCHLIST`] ids.
    pub watchlist_truncated: bool,
}

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum UserDataError {
    #[error("{field} is not valid JSON: {reason}")]
    NotJson { field: &'static str, reason: String },
    #[error("{field} must be a JSON object")]
    NotObject { field: &'static str },
    #[error("{field} has no {key}")]
    MissingId {
        field: &'static str,
        key: &'static str,
    },
    #[error("{field}.{key} {reason}")]
    BadId {
        field: &'static str,
        key: &'static str,
        reason: &'static str,
    },
    #[error("{field}.watchlist must be an array of user ids")]
    BadWatchlist { field: &'static str },
}

impl PresenceMember {
    /// Reads the `channel_data` string of a presence subscription.
    pub fn from_channel_data(channel_data: &str) -> Result<Self, UserDataError> {
        const FIELD: &str = "channel_data";
        let mut object = parse_object(FIELD, channel_data)?;
        let id = object.remove("user_id").ok_or(UserDataError::MissingId {
            field: FIELD,
            key: "user_id",
        })?;
        let user_id = id_text(FIELD, "user_id", &id, true)?;
        Ok(PresenceMember {
            user_id,
            user_info: object.remove("user_info").filter(|v| !v.is_null()),
        })
    }

    /// Bytes of `user_info` once serialized, to hold against [`MAX_USER_INFO_BYTES`].
    pub fn user_info_len(&self) -> usize {
        self.user_info.as_ref().map_or(0, |v| v.to_string().len())
    }
}

impl UserData {
    /// Reads the `user_data` string of a `pusher:signin`.
    pub fn parse(user_data: &str) -> Result<Self, UserDataError> {
        const FIELD: &str = "user_data";
        let mut object = parse_object(FIELD, user_data)?;
        let id = object.remove("id").ok_or(UserDataError::MissingId {
            field: FIELD,
            key: "id",
        })?;
        let id = id_text(FIELD, "id", &id, false)?;
        let (watchlist, watchlist_truncated) = match object.remove("watchlist") {
            None | Some(Value::Null) => (Vec::new(), false),
            Some(Value::Array(items)) => {
                let truncated = items.len() > MAX_WATCHLIST;
                let ids = items
                    .iter()
                    .take(MAX_WATCHLIST)
                    .map(|item| id_text(FIELD, "watchlist", item, true))
                    .collect::<Result<Vec<_>, _>>()
                    .map_err(|_| UserDataError::BadWatchlist { field: FIELD })?;
                (ids, truncated)
            }
            Some(_) => return Err(UserDataError::BadWatchlist { field: FIELD }),
        };
        Ok(UserData {
            id,
            user_info: object.remove("user_info").filter(|v| !v.is_null()),
            watchlist,
            watchlist_truncated,
        })
    }

    /// The member this user becomes on a presence channel it joins without `channel_data`
    /// (pusher-js then relies on the signed-in user).
    pub fn presence_member(&self) -> PresenceMember {
        PresenceMember {
            user_id: self.id.clone(),
            user_info: self.user_info.clone(),
        }
    }
}

fn parse_object(field: &'static str, text: &str) -> Result<Map<String, Value>, UserDataError> {
    match serde_json::from_str::<Value>(text) {
        Ok(Value::Object(object)) => Ok(object),
        Ok(_) => Err(UserDataError::NotObject { field }),
        Err(e) => Err(UserDataError::NotJson {
            field,
            reason: e.to_string(),
        }),
    }
}

fn id_text(
    field: &'static str,
    key: &'static str,
    value: &Value,
    integers: bool,
) -> Result<String, UserDataError> {
    let bad = |reason| UserDataError::BadId { field, key, reason };
    let text = match value {
        Value::String(s) => s.clone(),
        Value::Number(n) if integers && (n.is_i64() || n.is_u64()) => n.to_string(),
        _ if integers => return Err(bad("must be a string or an integer")),
        _ => return Err(bad("must be a string")),
    };
    if text.is_empty() {
        return Err(bad("is empty"));
    }
    if text.chars().count() > MAX_USER_ID_LEN {
        return Err(bad("is longer than 128 characters"));
    }
    Ok(text)
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn reads_the_documented_presence_channel_data() {
        // From Pusher's auth-signatures reference: an integer user id.
        let m = PresenceMember::from_channel_data(
            r#"{"user_id":10,"user_info":{"name":"Mr. Channels"}}"#,
        )
        .expect("valid");
        assert_eq!(m.user_id, "10");
        assert_eq!(m.user_info, Some(json!({"name": "Mr. Channels"})));
        assert_eq!(m.user_info_len(), r#"{"name":"Mr. Channels"}"#.len());

        let m = PresenceMember::from_channel_data(r#"{"user_id":"abc"}"#).expect("valid");
        assert_eq!((m.user_id.as_str(), m.user_info), ("abc", None));
    }

    #[test]
    fn refuses_bad_channel_data() {
        let err = |s: &str| PresenceMember::from_channel_data(s).unwrap_err();
        assert!(matches!(err("{"), UserDataError::NotJson { .. }));
        assert!(matches!(err("[]"), UserDataError::NotObject { .. }));
        assert!(matches!(
            err("{}"),
            UserDataError::MissingId { key: "user_id", .. }
        ));
        assert!(matches!(
            err(r#"{"user_id":""}"#),
            UserDataError::BadId { .. }
        ));
        assert!(matches!(
            err(r#"{"user_id":1.5}"#),
            UserDataError::BadId { .. }
        ));
        assert!(matches!(
            err(r#"{"user_id":{"a":1}}"#),
            UserDataError::BadId { .. }
        ));
        let long = format!(r#"{{"user_id":"{}"}}"#, "x".repeat(129));
        assert!(matches!(err(&long), UserDataError::BadId { .. }));
        assert_eq!(
            err(r#"{"user_id":null}"#).to_string(),
            "channel_data.user_id must be a string or an integer"
        );
    }

    #[test]
    fn reads_sign_in_user_data() {
        let u =
            UserData::parse(r#"{"id":"45678","user_info":{"name":"Ann"},"watchlist":["1","2"]}"#)
                .expect("valid");
        assert_eq!(u.id, "45678");
        assert_eq!(u.watchlist, ["1", "2"]);
        assert!(!u.watchlist_truncated);
        assert_eq!(
            u.presence_member(),
            PresenceMember {
                user_id: "45678".into(),
                user_info: Some(json!({"name": "Ann"}))
            }
        );
    }

    #[test]
    fn sign_in_ids_must_be_strings() {
        // pusher-js drops a sign-in whose id is not a non-empty string.
        assert!(matches!(
            UserData::parse(r#"{"id":10}"#),
            Err(UserDataError::BadId { key: "id", .. })
        ));
        assert!(matches!(
            UserData::parse(r#"{"user_id":"10"}"#),
            Err(UserDataError::MissingId { key: "id", .. })
        ));
        assert!(matches!(
            UserData::parse(r#"{"id":"1","watchlist":"2"}"#),
            Err(UserDataError::BadWatchlist { .. })
        ));
    }

    #[test]
    fn long_watchlists_keep_their_first_hundred() {
        let ids: Vec<String> = (0..150).map(|i| i.to_string()).collect();
        let text = json!({"id": "me", "watchlist": ids}).to_string();
        let u = UserData::parse(&text).expect("valid");
        assert_eq!(u.watchlist.len(), 100);
        assert_eq!(u.watchlist[99], "99");
        assert!(u.watchlist_truncated);
    }
}
