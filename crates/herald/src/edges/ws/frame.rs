//! RFC 6455 frames as the server reads and writes them: pure functions over bytes, so they are
//! tested and fuzzed directly (crates/herald/fuzz).

pub const OP_CONTINUATION: u8 = 0x0;
pub const OP_TEXT: u8 = 0x1;
pub const OP_BINARY: u8 = 0x2;
pub const OP_CLOSE: u8 = 0x8;
pub const OP_PING: u8 = 0x9;
pub const OP_PONG: u8 = 0xA;

/// Close codes of RFC 6455 that the framing layer itself sends.
pub const CLOSE_PROTOCOL_ERROR: u16 = 1002;
/// A data frame of the type the connection does not speak (binary on JSON, text on Protobuf).
pub const CLOSE_UNSUPPORTED_DATA: u16 = 1003;
pub const CLOSE_INVALID_PAYLOAD: u16 = 1007;
pub const CLOSE_TOO_BIG: u16 = 1009;

/// A framing violation: the connection must be closed with `code`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Violation {
    pub code: u16,
    pub reason: &'static str,
}

pub(super) const fn violation(code: u16, reason: &'static str) -> Violation {
    Violation { code, reason }
}

/// One parsed frame, payload already unmasked.
#[derive(Debug, PartialEq, Eq)]
pub struct Frame {
    pub fin: bool,
    pub opcode: u8,
    pub payload: Vec<u8>,
}

/// Parses one client frame from the start of `buf`. `Ok(None)`: more bytes are needed.
/// `max_payload` bounds a single frame (a message is bounded by the caller across fragments).
pub fn parse_frame(buf: &[u8], max_payload: usize) -> Result<Option<(Frame, usize)>, Violation> {
    let [b0, b1, ..] = *buf else { return Ok(None) };
    if b0 & 0x70 != 0 {
        return Err(violation(CLOSE_PROTOCOL_ERROR, "reserved bits set"));
    }
    let fin = b0 & 0x80 != 0;
    let opcode = b0 & 0x0f;
    if b1 & 0x80 == 0 {
        return Err(violation(
            CLOSE_PROTOCOL_ERROR,
            "client frames must be masked",
        ));
    }
    let (len, mut pos) = match b1 & 0x7f {
        126 => match buf.get(2..4) {
            Some(b) => (u64::from(u16::from_be_bytes([b[0], b[1]])), 4),
            None => return Ok(None),
        },
        127 => match buf.get(2..10) {
            Some(b) => {
                let mut eight = [0u8; 8];
                eight.copy_from_slice(b);
                (u64::from_be_bytes(eight), 10)
            }
            None => return Ok(None),
        },
        n => (u64::from(n), 2),
    };
    if opcode >= 0x8 {
        if !fin || len > 125 {
            return Err(violation(CLOSE_PROTOCOL_ERROR, "invalid control frame"));
        }
        if !matches!(opcode, OP_CLOSE | OP_PING | OP_PONG) {
            return Err(violation(CLOSE_PROTOCOL_ERROR, "unknown opcode"));
        }
    } else if opcode > OP_BINARY {
        return Err(violation(CLOSE_PROTOCOL_ERROR, "unknown opcode"));
    }
    if len > max_payload as u64 {
        return Err(violation(CLOSE_TOO_BIG, "message too big"));
    }
    let len = len as usize;
    let Some(mask) = buf.get(pos..pos + 4) else {
        return Ok(None);
    };
    let mask = [mask[0], mask[1], mask[2], mask[3]];
    pos += 4;
    let Some(data) = buf.get(pos..pos + len) else {
        return Ok(None);
    };
    let payload = data
        .iter()
        .enumerate()
        .map(|(i, b)| b ^ mask[i & 3])
        .collect();
    Ok(Some((
        Frame {
            fin,
            opcode,
            payload,
        },
        pos + len,
    )))
}

/// Whether a client may send `code` in a close frame (RFC 6455 §7.4): the codes defined for use
/// in frames (1004, 1005, 1006 and 1015 are not), the IANA-registered 1012-1014, and the ranges for
/// libraries and applications (3000-4999). Anything else is a protocol error.
pub fn valid_close_code(code: u16) -> bool {
    matches!(code, 1000..=1003 | 1007..=1014 | 3000..=4999)
}

/// Checks a client's close payload (RFC 6455 §5.5.1): empty, or a valid code followed by a UTF-8
/// reason. Returns the code, if any.
pub fn parse_close(payload: &[u8]) -> Result<Option<u16>, Violation> {
    match payload {
        [] => Ok(None),
        [_] => Err(violation(CLOSE_PROTOCOL_ERROR, "close payload of one byte")),
        [hi, lo, reason @ ..] => {
            let code = u16::from_be_bytes([*hi, *lo]);
            if !valid_close_code(code) {
                return Err(violation(CLOSE_PROTOCOL_ERROR, "invalid close code"));
            }
            if std::str::from_utf8(reason).is_err() {
                return Err(violation(
                    CLOSE_INVALID_PAYLOAD,
                    "close reason is not UTF-8",
                ));
            }
            Ok(Some(code))
        }
    }
}

/// Appends a close frame with `code` and `reason` (cut to fit a control frame).
pub(super) fn write_close(out: &mut Vec<u8>, code: u16, reason: &str) {
    let mut cut = reason.len().min(123);
    while !reason.is_char_boundary(cut) {
        cut -= 1;
    }
    let reason = &reason.as_bytes()[..cut];
    write_header(out, OP_CLOSE, 2 + reason.len());
    out.extend_from_slice(&code.to_be_bytes());
    out.extend_from_slice(reason);
}

/// Appends a server frame header (servers do not mask).
pub fn write_header(out: &mut Vec<u8>, opcode: u8, len: usize) {
    out.push(0x80 | opcode);
    if len < 126 {
        out.push(len as u8);
    } else if len <= u16::MAX as usize {
        out.push(126);
        out.extend_from_slice(&(len as u16).to_be_bytes());
    } else {
        out.push(127);
        out.extend_from_slice(&(len as u64).to_be_bytes());
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn client_frame(fin: bool, opcode: u8, payload: &[u8]) -> Vec<u8> {
        let mask = [0x12, 0x34, 0x56, 0x78];
        let mut out = vec![(if fin { 0x80 } else { 0 }) | opcode];
        let len = payload.len();
        if len < 126 {
            out.push(0x80 | len as u8);
        } else if len <= 65535 {
            out.push(0x80 | 126);
            out.extend_from_slice(&(len as u16).to_be_bytes());
        } else {
            out.push(0x80 | 127);
            out.extend_from_slice(&(len as u64).to_be_bytes());
        }
        out.extend_from_slice(&mask);
        out.extend(payload.iter().enumerate().map(|(i, b)| b ^ mask[i & 3]));
        out
    }

    #[test]
    fn parses_masked_frames_of_every_length_form() {
        for len in [0usize, 5, 125, 126, 1000, 65535, 65536, 70000] {
            let payload: Vec<u8> = (0..len).map(|i| (i % 251) as u8).collect();
            let bytes = client_frame(true, OP_TEXT, &payload);
            let (frame, used) = parse_frame(&bytes, 1 << 20).unwrap().unwrap();
            assert_eq!(used, bytes.len());
            assert_eq!(frame.payload, payload);
            assert!(frame.fin);
            for cut in [0, 1, bytes.len() / 2, bytes.len() - 1] {
                if cut < bytes.len() {
                    assert_eq!(
                        parse_frame(&bytes[..cut], 1 << 20).unwrap(),
                        None,
                        "len {len} cut {cut}"
                    );
                }
            }
        }
    }

    #[test]
    fn rejects_protocol_violations() {
        let mut unmasked = client_frame(true, OP_TEXT, b"hi");
        unmasked[1] &= 0x7f;
        assert_eq!(
            parse_frame(&unmasked, 100).unwrap_err().code,
            CLOSE_PROTOCOL_ERROR
        );
        let mut rsv = client_frame(true, OP_TEXT, b"hi");
        rsv[0] |= 0x40;
        assert_eq!(
            parse_frame(&rsv, 100).unwrap_err().code,
            CLOSE_PROTOCOL_ERROR
        );
        assert_eq!(
            parse_frame(&client_frame(true, 0x3, b""), 100)
                .unwrap_err()
                .code,
            CLOSE_PROTOCOL_ERROR
        );
        assert_eq!(
            parse_frame(&client_frame(false, OP_PING, b""), 100)
                .unwrap_err()
                .code,
            CLOSE_PROTOCOL_ERROR
        );
        assert_eq!(
            parse_frame(&client_frame(true, OP_PING, &[0; 126]), 1000)
                .unwrap_err()
                .code,
            CLOSE_PROTOCOL_ERROR
        );
        let big = client_frame(true, OP_TEXT, &[b'a'; 101]);
        assert_eq!(
            parse_frame(&big[..4], 100).unwrap_err().code,
            CLOSE_TOO_BIG,
            "rejected from the header alone"
        );
    }

    #[test]
    fn close_payloads_are_checked_per_rfc_6455() {
        let with_code = |code: u16, reason: &[u8]| {
            let mut payload = code.to_be_bytes().to_vec();
            payload.extend_from_slice(reason);
            parse_close(&payload)
        };
        assert_eq!(parse_close(b""), Ok(None));
        assert_eq!(parse_close(&[3]).unwrap_err().code, CLOSE_PROTOCOL_ERROR);
        for code in [
            0, 999, 1004, 1005, 1006, 1015, 1016, 1100, 2000, 2999, 5000, 65535,
        ] {
            assert_eq!(
                with_code(code, b"").unwrap_err().code,
                CLOSE_PROTOCOL_ERROR,
                "{code}"
            );
        }
        for code in [
            1000, 1001, 1002, 1003, 1007, 1008, 1011, 1012, 1014, 3000, 4999,
        ] {
            assert_eq!(
                with_code(code, "bye ✓".as_bytes()),
                Ok(Some(code)),
                "{code}"
            );
        }
        assert_eq!(
            with_code(1000, &[0xce, 0xba, 0xff]).unwrap_err().code,
            CLOSE_INVALID_PAYLOAD
        );
    }

    #[test]
    fn close_frames_cut_long_reasons_on_a_char_boundary() {
        let mut out = Vec::new();
        write_close(&mut out, 1000, &"é".repeat(100));
        assert_eq!(out[1] as usize, out.len() - 2, "short length form");
        assert!(out.len() - 2 <= 125, "fits a control frame");
        assert!(std::str::from_utf8(&out[4..]).is_ok());
    }

    #[test]
    fn server_headers_use_the_shortest_length_form() {
        for (len, expected) in [
            (5usize, 2usize),
            (125, 2),
            (126, 4),
            (65535, 4),
            (65536, 10),
        ] {
            let mut out = Vec::new();
            write_header(&mut out, OP_TEXT, len);
            assert_eq!(out.len(), expected);
            assert_eq!(out[0], 0x81);
        }
    }

    #[test]
    fn never_panics_on_arbitrary_bytes() {
        let mut state = 0x9e3779b97f4a7c15u64;
        for _ in 0..20_000 {
            state ^= state << 13;
            state ^= state >> 7;
            state ^= state << 17;
            let len = (state % 40) as usize;
            let bytes: Vec<u8> = (0..len).map(|i| (state >> (i % 8 * 8)) as u8).collect();
            let _ = parse_frame(&bytes, 64);
        }
    }
}
