//! Pure decoders and reply encoders for GPS tracker protocols.
//!
//! No I/O, no async, no clock: a connection handler feeds bytes in and gets frames, normalized
//! [`Position`]s and the reply bytes it owes the device. Every function is total over arbitrary
//! input (no panics, bounds-checked reads, bounded frame lengths) so the crate can be fuzzed
//! directly (`fuzz/`, see the crate README).
//!
//! # Protocols
//!
//! | module | protocol | transport | framing | device id from |
//! | --- | --- | --- | --- | --- |
//! | [`gt06`] | GT06 / Concox binary, `78 78` and `79 79` frames, CRC-16/X-25 | TCP | [`gt06::frame`] | login frame (0x01) |
//! | [`teltonika`] | Teltonika codec 8 / 8E / 16 data, 12 / 13 / 14 command responses, CRC-16/IBM | TCP, UDP | [`teltonika::frame`] | IMEI handshake; UDP: every datagram |
//! | [`h02`] | H02 / Sinotrack `*HQ,...#` text and `$` binary | TCP | [`h02::frame`] | every frame |
//! | [`osmand`] | OsmAnd / Traccar Client HTTP, query and JSON forms | HTTP | the HTTP server | every request |
//! | [`jsonl`] | Herald JSON lines (one object per line, documented in the module) | TCP | [`jsonl::frame`] | every line |
//!
//! Module docs give the exact frame layouts, which message types are decoded, and the reply rules.
//!
//! The device side lives in [`sim`]: pure encoders producing the frames a real tracker sends for
//! each protocol (GT06 login/heartbeat/location, H02 `V1`, Teltonika IMEI handshake and codec
//! 8/8E packets, OsmAnd query and JSON, JSON lines) from a [`sim::Fix`], and a deterministic
//! [`sim::Route`] generator, for simulators and load tests. Every encoder round-trips through the
//! decoders above (the precision each protocol keeps is tabled in the module docs).
//!
//! # Use
//!
//! ```
//! use herald_devices::{gt06, FrameStatus, SessionState, MessageKind};
//!
//! let mut session = SessionState::new(); // one per connection
//! session.now_ms = 1_700_000_000_000;     // the caller's clock, for replies carrying time
//! let mut buf: Vec<u8> = vec![
//!     0x78, 0x78, 0x0d, 0x01, 0x01, 0x23, 0x45, 0x67, 0x89, 0x01, 0x23, 0x45,
//!     0x00, 0x01, 0x8c, 0xdd, 0x0d, 0x0a,
//! ];
//! loop {
//!     match gt06::frame(&buf) {
//!         Ok(FrameStatus::Complete(n)) => {
//!             let frame: Vec<u8> = buf.drain(..n).collect();
//!             let decoded = gt06::decode(&frame, &mut session).unwrap();
//!             assert_eq!(decoded.kind, MessageKind::Login);
//!             assert_eq!(decoded.device_id.as_deref(), Some("123456789012345"));
//!             // write decoded.reply to the socket, publish decoded.positions ...
//!             assert!(decoded.reply.is_some());
//!         }
//!         Ok(FrameStatus::Skip(n)) => { buf.drain(..n); }
//!         Ok(FrameStatus::NeedMore) => break, // read more bytes
//!         Err(_too_long) => break,            // close the connection
//!     }
//! }
//! ```
//!
//! # Normalized output
//!
//! [`Decoded`] holds the [`MessageKind`] (login, heartbeat, location, alarm, status,
//! command result, other), the device id when the frame itself identifies the device, zero or more
//! [`Position`]s, frame-level attributes for data that came without a fix, the reply bytes, and the
//! checksum verdict. [`Position`] fields: `device_id` (IMEI), `time_ms` (unix ms UTC), `latitude`
//! / `longitude` (WGS84 degrees, always in range), `speed_kmh`, `course` (0..=360), `altitude_m`,
//! `valid`, `satellites`, `accuracy_m` and `attributes` with Traccar-style names (`ignition`,
//! `battery` (V), `batteryLevel` (%), `power` (V), `odometer` (m), `alarm`, `event`, `status`,
//! `rssi`, `iccid`, `driverUniqueId`, `result`, `in<N>`/`out<N>`/`adc<N>`/`temp<N>`, `io<N>`).
//! Units are converted: knots (H02, OsmAnd query) and m/s (OsmAnd JSON) become km/h.
//!
//! # What "accepted" means
//!
//! * **GT06**: a frame with a valid header; with [`CrcPolicy::Lenient`] (default) a checksum
//!   mismatch is accepted and flagged `crc_ok: Some(false)`, with [`CrcPolicy::Strict`] it is
//!   [`DecodeError::Crc`] and no reply is owed. Non-login frames need a prior login in the
//!   session ([`DecodeError::Unidentified`]). Accepted frames owe the `78 78 05 <type> <serial>
//!   <crc> 0d 0a` acknowledgement (see [`gt06`] for the exceptions).
//! * **Teltonika**: an IMEI handshake of ASCII digits is accepted with `01` (a handler rejecting an
//!   unknown device sends [`teltonika::IMEI_REJECT`]); an AVL packet is accepted when every record
//!   parses and both record counts agree, and owes the record count as a u32. Checksum policy as
//!   for GT06. Records with impossible coordinates are acknowledged but dropped
//!   (`droppedRecords`). Codec 12/13/14 frames are command results and owe nothing.
//! * **H02**: any well-formed sentence; positions when it carries coordinates. `V1` owes the
//!   `V4` time reply, heartbeats owe an echo.
//! * **OsmAnd**: a request with a device id and, if present, valid coordinates → HTTP 200;
//!   anything else → 400 ([`osmand::http_status`]).
//! * **JSON lines**: an object with `id`, `lat`, `lon` in range and well-typed optional fields.
//!
//! # CRC policy and the captures
//!
//! Traccar never verifies checksums, and real captures include frames whose CRC does not match
//! (firmware bugs, wrong length bytes). The transport is TCP, so a mismatch means a buggy device,
//! not corruption; rejecting would lose data from devices that work with Traccar. Hence the
//! default is [`CrcPolicy::Lenient`]; deployments that prefer to drop such frames (and have the
//! device retransmit) set [`CrcPolicy::Strict`]. The tests assert both behaviours for every sample.

#![forbid(unsafe_code)]

pub mod gt06;
pub mod h02;
pub mod jsonl;
pub mod osmand;
pub mod sim;
pub mod teltonika;
mod types;
mod util;

pub use types::*;
pub use util::{crc16_ibm, crc16_x25};
