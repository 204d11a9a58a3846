//! The transports besides WebSocket, as Centrifugo serves them: bidirectional emulation over HTTP
//! streaming and SSE (commands after the connect arrive as separate `/emulation` requests, on any
//! node), and the unidirectional HTTP streaming and SSE endpoints. `framing` is pure; `conn` is
//! the session's side of one stream; `requests` reads what the endpoints are sent.

pub mod conn;
pub mod framing;
pub mod requests;

pub use conn::{ChannelBody, StreamConn};
pub use framing::Framing;
