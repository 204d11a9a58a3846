#![no_main]
//! A client binary WebSocket frame of length-delimited Protobuf commands, as the session decodes
//! it: errors are fine, panics and unbounded output are not.

use herald_protocol::protobuf::decode_frame;
use libfuzzer_sys::fuzz_target;

const MAX_COMMANDS: usize = 16;

fuzz_target!(|data: &[u8]| {
    if let Ok(commands) = decode_frame(data, MAX_COMMANDS) {
        assert!(!commands.is_empty() && commands.len() <= MAX_COMMANDS);
    }
});
