//! Channel authorization and user sign-in tokens.
//!
//! The app server (not Herald) signs; Herald checks. A token is `<app key>:<hex signature>`, the
//! signature an HMAC-SHA256 keyed by the app secret over:
//!
//! | what | string signed |
//! | --- | --- |
//! | private / encrypted channel | `<socket_id>:<channel>` |
//! | presence channel | `<socket_id>:<channel>:<channel_data>` |
//! | presence channel, signed-in user, no `channel_data` | `<socket_id>:<channel>` |
//! | `pusher:signin` | `<socket_id>::user::<user_data>` |
//!
//! `channel_data` and `user_data` are signed exactly as the client forwards them (strings), so
//! they are checked byte for byte and parsed only afterwards. The signature comparison runs in
//! constant time.

use crate::codes::ErrorCode;
use crate::sign::{hmac_sha256_hex, verify_hmac_sha256_hex};

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum AuthError {
    #[error("auth is missing")]
    Missing,
    #[error("auth must be <app key>:<signature>")]
    Malformed,
    #[error("auth names a key that is not this app's")]
    WrongKey,
    #[error("auth signature is not valid for this socket id and channel or user data")]
    InvalidSignature,
}

impl AuthError {
    /// The code of the `pusher:error` a refused subscription or sign-in owes the client.
    pub fn code(&self) -> ErrorCode {
        ErrorCode::Unauthorized
    }
}

/// The string a channel authorization signs.
pub fn channel_string_to_sign(
    socket_id: &str,
    channel: &str,
    channel_data: Option<&str>,
) -> String {
    match channel_data {
        Some(data) => format!("{socket_id}:{channel}:{data}"),
        None => format!("{socket_id}:{channel}"),
    }
}

/// The hex signature of a channel authorization.
pub fn channel_signature(
    secret: &str,
    socket_id: &str,
    channel: &str,
    channel_data: Option<&str>,
) -> String {
    let message = channel_string_to_sign(socket_id, channel, channel_data);
    hmac_sha256_hex(secret.as_bytes(), message.as_bytes())
}

/// The `auth` value an app server returns for a channel: `<key>:<signature>`.
pub fn channel_auth(
    key: &str,
    secret: &str,
    socket_id: &str,
    channel: &str,
    channel_data: Option<&str>,
) -> String {
    format!(
        "{key}:{}",
        channel_signature(secret, socket_id, channel, channel_data)
    )
}

/// Checks the `auth` of a `pusher:subscribe`. `channel_data` is the string the client sent, if
/// any; an empty `auth` counts as missing (pusher-js sends `""` for public channels).
pub fn verify_channel_auth(
    key: &str,
    secret: &str,
    socket_id: &str,
    channel: &str,
    channel_data: Option<&str>,
    auth: Option<&str>,
) -> Result<(), AuthError> {
    let signature = split_token(key, auth)?;
    let message = channel_string_to_sign(socket_id, channel, channel_data);
    check(secret, &message, signature)
}

/// The string a user sign-in signs.
pub fn user_string_to_sign(socket_id: &str, user_data: &str) -> String {
    format!("{socket_id}::user::{user_data}")
}

/// The `auth` value an app server returns for a sign-in: `<key>:<signature>`.
pub fn user_auth(key: &str, secret: &str, socket_id: &str, user_data: &str) -> String {
    let message = user_string_to_sign(socket_id, user_data);
    format!(
        "{key}:{}",
        hmac_sha256_hex(secret.as_bytes(), message.as_bytes())
    )
}

/// Checks the `auth` of a `pusher:signin` against the `user_data` string the client sent.
pub fn verify_user_auth(
    key: &str,
    secret: &str,
    socket_id: &str,
    user_data: &str,
    auth: Option<&str>,
) -> Result<(), AuthError> {
    let signature = split_token(key, auth)?;
    check(
        secret,
        &user_string_to_sign(socket_id, user_data),
        signature,
    )
}

fn split_token<'a>(key: &str, auth: Option<&'a str>) -> Result<&'a str, AuthError> {
    let auth = auth.filter(|a| !a.is_empty()).ok_or(AuthError::Missing)?;
    // Keys never hold a colon, so the last one separates the signature.
    let (given_key, signature) = auth.rsplit_once(':').ok_or(AuthError::Malformed)?;
    if given_key != key {
        return Err(AuthError::WrongKey);
    }
    Ok(signature)
}

fn check(secret: &str, message: &str, signature: &str) -> Result<(), AuthError> {
    if verify_hmac_sha256_hex(secret.as_bytes(), message.as_bytes(), signature) {
        Ok(())
    } else {
        Err(AuthError::InvalidSignature)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    // Credentials of the worked examples in Pusher's "Authentication and authorization
    // signatures" reference.
    const KEY: &str = "278d425bdf160c739803";
    const SECRET: &str = "7ad3773142a6692b25b8";

    #[test]
    fn private_channel_worked_example() {
        assert_eq!(
            channel_string_to_sign("1234.1234", "private-foobar", None),
            "1234.1234:private-foobar"
        );
        let auth = channel_auth(KEY, SECRET, "1234.1234", "private-foobar", None);
        assert_eq!(
            auth,
            "278d425bdf160c739803:58df8b0c36d6982b82c3ecf6b4662e34fe8c25bba48f5369f135bf843651c3a4"
        );
        assert_eq!(
            verify_channel_auth(
                KEY,
                SECRET,
                "1234.1234",
                "private-foobar",
                None,
                Some(&auth)
            ),
            Ok(())
        );
    }

    #[test]
    fn presence_channel_worked_example() {
        // The published signature was computed over the user name "Mr. Pusher"; the page's
        // prose was later renamed to "Mr. Channels" without recomputing it (server SDK test
        // suites still use "Mr. Pusher" with this same signature).
        let channel_data = r#"{"user_id":10,"user_info":{"name":"Mr. Pusher"}}"#;
        let auth = channel_auth(
            KEY,
            SECRET,
            "1234.1234",
            "presence-foobar",
            Some(channel_data),
        );
        assert_eq!(
            auth,
            "278d425bdf160c739803:afaed3695da2ffd16931f457e338e6c9f2921fa133ce7dac49f529792be6304c"
        );
        assert_eq!(
            verify_channel_auth(
                KEY,
                SECRET,
                "1234.1234",
                "presence-foobar",
                Some(channel_data),
                Some(&auth)
            ),
            Ok(())
        );
        // Any change to the channel data breaks the signature.
        let renamed = r#"{"user_id":10,"user_info":{"name":"Mr. Channels"}}"#;
        assert_eq!(
            verify_channel_auth(
                KEY,
                SECRET,
                "1234.1234",
                "presence-foobar",
                Some(renamed),
                Some(&auth)
            ),
            Err(AuthError::InvalidSignature)
        );
    }

    #[test]
    fn user_sign_in_matches_the_node_sdk() {
        // pusher-http-node's authenticateUser test: key "1234", secret "tofu".
        let auth = user_auth("1234", "tofu", "123.456", r#"{"id":"45678"}"#);
        assert_eq!(
            auth,
            "1234:f4b1fdeea7c93e32648c7230e32b172057c5623cace6cfce791c6e7035e0babd"
        );
        assert_eq!(
            verify_user_auth("1234", "tofu", "123.456", r#"{"id":"45678"}"#, Some(&auth)),
            Ok(())
        );
        assert_eq!(
            verify_user_auth("1234", "tofu", "123.457", r#"{"id":"45678"}"#, Some(&auth)),
            Err(AuthError::InvalidSignature)
        );
    }

    #[test]
    fn refusals_say_why() {
        let ok = channel_auth(KEY, SECRET, "1.2", "private-a", None);
        let verify =
            |auth: Option<&str>| verify_channel_auth(KEY, SECRET, "1.2", "private-a", None, auth);
        assert_eq!(verify(None), Err(AuthError::Missing));
        assert_eq!(verify(Some("")), Err(AuthError::Missing));
        assert_eq!(verify(Some("no-colon")), Err(AuthError::Malformed));
        let other_key = ok.replacen(KEY, "otherkey", 1);
        assert_eq!(verify(Some(&other_key)), Err(AuthError::WrongKey));
        assert_eq!(
            verify(Some(&format!("{KEY}:00"))),
            Err(AuthError::InvalidSignature)
        );
        // Same token, other socket or channel: refused.
        assert_eq!(
            verify_channel_auth(KEY, SECRET, "1.3", "private-a", None, Some(&ok)),
            Err(AuthError::InvalidSignature)
        );
        assert_eq!(
            verify_channel_auth(KEY, SECRET, "1.2", "private-b", None, Some(&ok)),
            Err(AuthError::InvalidSignature)
        );
        assert_eq!(AuthError::Malformed.code(), ErrorCode::Unauthorized);
    }
}
