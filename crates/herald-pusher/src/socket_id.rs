//! Socket ids: two decimal numbers joined by a dot (`123.456`), as every Pusher SDK checks with
//! `^\d+\.\d+$`. The server hands one to each connection in `pusher:connection_established`; the
//! client echoes it to the app server, which signs it into channel and user authorizations, and
//! the HTTP API takes it back as `socket_id` to exclude that connection from a trigger.

use std::fmt;

use rand::Rng;
use serde::{Deserialize, Serialize};

/// Digits allowed on each side of the dot: enough for two `u64`s, and a bound on what a request
/// may make the server hold.
const MAX_PART_DIGITS: usize = 20;

#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(try_from = "String", into = "String")]
pub struct SocketId(String);

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("invalid socket id {0:?}: expected two numbers joined by a dot, like 123.456")]
pub struct SocketIdError(pub String);

impl SocketId {
    pub fn parse(s: &str) -> Result<Self, SocketIdError> {
        let valid = s
            .split_once('.')
            .is_some_and(|(a, b)| digits(a) && digits(b));
        if valid {
            Ok(SocketId(s.to_owned()))
        } else {
            // Keep the error small whatever the input.
            Err(SocketIdError(s.chars().take(48).collect()))
        }
    }

    /// A socket id from two numbers, for servers that derive ids from a node id and a counter.
    pub fn from_parts(high: u64, low: u64) -> Self {
        SocketId(format!("{high}.{low}"))
    }

    /// A random socket id (two random 32-bit halves, like the ids Pusher hands out).
    pub fn random<R: Rng + ?Sized>(rng: &mut R) -> Self {
        let high: u32 = rng.random();
        let low: u32 = rng.random();
        SocketId::from_parts(u64::from(high), u64::from(low))
    }

    pub fn as_str(&self) -> &str {
        &self.0
    }
}

fn digits(part: &str) -> bool {
    !part.is_empty() && part.len() <= MAX_PART_DIGITS && part.bytes().all(|b| b.is_ascii_digit())
}

impl fmt::Display for SocketId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

impl AsRef<str> for SocketId {
    fn as_ref(&self) -> &str {
        &self.0
    }
}

impl TryFrom<String> for SocketId {
    type Error = SocketIdError;

    fn try_from(s: String) -> Result<Self, Self::Error> {
        SocketId::parse(&s)
    }
}

impl From<SocketId> for String {
    fn from(id: SocketId) -> String {
        id.0
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn accepts_the_documented_form() {
        assert_eq!(
            SocketId::parse("1234.1234").expect("valid").as_str(),
            "1234.1234"
        );
        assert!(SocketId::parse("0.0").is_ok());
    }

    #[test]
    fn refuses_everything_else() {
        for bad in [
            "",
            "1234",
            ".1",
            "1.",
            "1.2.3",
            "a.1",
            "1.a",
            " 1.2",
            "1.2\n",
            "-1.2",
            "1,2",
            "123456789012345678901.1",
        ] {
            assert!(SocketId::parse(bad).is_err(), "{bad:?}");
        }
        let long = "9".repeat(1000);
        let err = SocketId::parse(&long).unwrap_err();
        assert!(err.0.len() <= 48);
    }

    #[test]
    fn generated_ids_are_valid_and_differ() {
        let mut rng = rand::rng();
        let a = SocketId::random(&mut rng);
        let b = SocketId::random(&mut rng);
        assert!(SocketId::parse(a.as_str()).is_ok());
        assert_ne!(a, b);
        assert_eq!(SocketId::from_parts(7, 42).as_str(), "7.42");
    }
}
