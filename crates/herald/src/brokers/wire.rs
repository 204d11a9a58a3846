//! What travels between nodes on a channel's pub/sub channel. A publication is serialized once by
//! the publishing node (JSON, without its offset); the store script frames it with the offset and
//! epoch it assigned, so the bytes in history and on the wire are the same payload.
//!
//! Frames: `P<offset> <epoch> <key length>\n<key><publication JSON>` (offset 0 and an empty epoch
//! for channels without history), `J<client info JSON>` (join), `L<client info JSON>` (leave).

use herald_protocol::{ClientInfo, Publication};

#[derive(Debug)]
pub enum Message {
    Publication {
        offset: u64,
        epoch: String,
        key: Option<String>,
        publication: Publication,
    },
    Join(ClientInfo),
    Leave(ClientInfo),
}

#[derive(Debug, thiserror::Error)]
pub enum WireError {
    #[error("malformed broker frame: {0}")]
    Malformed(&'static str),
    #[error("malformed broker frame: {0}")]
    Json(#[from] serde_json::Error),
}

/// The header of a publication frame as the store script writes it (keep the two in agreement).
pub fn publication_frame(offset: u64, epoch: &str, key: Option<&str>, payload: &[u8]) -> Vec<u8> {
    let key = key.unwrap_or("");
    let mut out = format!("P{offset} {epoch} {}\n{key}", key.len()).into_bytes();
    out.extend_from_slice(payload);
    out
}

pub fn join_frame(info: &ClientInfo) -> Vec<u8> {
    info_frame(b'J', info)
}

pub fn leave_frame(info: &ClientInfo) -> Vec<u8> {
    info_frame(b'L', info)
}

fn info_frame(kind: u8, info: &ClientInfo) -> Vec<u8> {
    let mut out = vec![kind];
    // Serializing a struct of strings and raw JSON cannot fail.
    out.extend_from_slice(&serde_json::to_vec(info).unwrap_or_default());
    out
}

pub fn decode(frame: &[u8]) -> Result<Message, WireError> {
    let (&kind, rest) = frame.split_first().ok_or(WireError::Malformed("empty"))?;
    match kind {
        b'J' => Ok(Message::Join(serde_json::from_slice(rest)?)),
        b'L' => Ok(Message::Leave(serde_json::from_slice(rest)?)),
        b'P' => {
            let newline = rest
                .iter()
                .position(|&b| b == b'\n')
                .ok_or(WireError::Malformed("no header end"))?;
            let header = std::str::from_utf8(&rest[..newline])
                .map_err(|_| WireError::Malformed("header is not UTF-8"))?;
            let mut parts = header.splitn(3, ' ');
            let offset = parts
                .next()
                .and_then(|s| s.parse::<u64>().ok())
                .ok_or(WireError::Malformed("offset"))?;
            let epoch = parts.next().ok_or(WireError::Malformed("epoch"))?;
            let key_len = parts
                .next()
                .and_then(|s| s.parse::<usize>().ok())
                .ok_or(WireError::Malformed("key length"))?;
            let body = &rest[newline + 1..];
            if body.len() < key_len {
                return Err(WireError::Malformed("key"));
            }
            let (key, payload) = body.split_at(key_len);
            let key =
                std::str::from_utf8(key).map_err(|_| WireError::Malformed("key is not UTF-8"))?;
            let mut publication: Publication = serde_json::from_slice(payload)?;
            publication.offset = offset;
            Ok(Message::Publication {
                offset,
                epoch: epoch.to_string(),
                key: (key_len > 0).then(|| key.to_string()),
                publication,
            })
        }
        _ => Err(WireError::Malformed("unknown kind")),
    }
}

/// A stored publication (history stream entry, latest-value hash): the payload with its offset.
pub fn stored(offset: u64, payload: &[u8]) -> Result<Publication, WireError> {
    let mut publication: Publication = serde_json::from_slice(payload)?;
    publication.offset = offset;
    Ok(publication)
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::value::RawValue;

    #[test]
    fn publication_frames_round_trip() {
        let publication = Publication {
            data: RawValue::from_string(r#"{"a":1}"#.into()).unwrap(),
            info: None,
            offset: 0,
            tags: Default::default(),
            time: 5,
        };
        let payload = serde_json::to_vec(&publication).unwrap();
        for (offset, epoch, key) in [(7, "abc", Some("k y\n")), (0, "", None)] {
            let frame = publication_frame(offset, epoch, key, &payload);
            match decode(&frame).unwrap() {
                Message::Publication {
                    offset: o,
                    epoch: e,
                    key: k,
                    publication: p,
                } => {
                    assert_eq!((o, e.as_str(), k.as_deref()), (offset, epoch, key));
                    assert_eq!(p.offset, offset);
                    assert_eq!(p.data.get(), r#"{"a":1}"#);
                }
                other => panic!("{other:?}"),
            }
        }
        assert!(decode(b"P1 e 9\nab").is_err());
        assert!(decode(b"").is_err());
        assert!(decode(b"X").is_err());
    }
}
