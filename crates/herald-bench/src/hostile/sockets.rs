//! Hostile clients that hold a connection: ping flooders, history amplifiers, stalled
//! subscribers, slowloris, idle TCP, huge and invalid frames, silent device sockets, and clients
//! that probe many new channel names.

use super::hold::{hold, silent, Behaviour, Ctx};
use super::raw::{self, frame, huge_header, text, ws_open, Speaks};
use serde_json::json;
use std::sync::Arc;
use tokio::io::AsyncWriteExt;
use tokio::time::Instant;

/// Opens a WebSocket for `kind` and counts it; `None` (outcome recorded) when it was refused.
async fn open_ws(
    ctx: &Ctx,
    kind: &'static str,
    variant: Option<&str>,
) -> Option<tokio::net::TcpStream> {
    ctx.tally.opened(kind);
    // Every WebSocket kind here but the invalid frames stops reading.
    match ws_open(ctx.ws, ctx.index(), variant.is_none()).await {
        Ok(stream) => Some(stream),
        Err(outcome) => {
            let label = match variant {
                Some(v) => format!("{v}: {outcome}"),
                None => outcome,
            };
            ctx.tally.ended(kind, &label, None);
            None
        }
    }
}

async fn open_tcp(
    ctx: &Ctx,
    kind: &'static str,
    addr: std::net::SocketAddr,
) -> Option<tokio::net::TcpStream> {
    ctx.tally.opened(kind);
    match raw::tcp(addr, ctx.index()).await {
        Ok(stream) => Some(stream),
        Err(e) => {
            ctx.tally
                .ended(kind, &format!("connect error ({})", e.kind()), None);
            None
        }
    }
}

/// WebSocket pings (125-byte payloads, `per_second`) and never a read. `authenticated`: after a
/// valid `connect`.
pub async fn ping_flood(ctx: Arc<Ctx>, authenticated: bool, per_second: u64) {
    let kind = if authenticated {
        "ping_flood_authenticated"
    } else {
        "ping_flood_anonymous"
    };
    let opened = Instant::now();
    let Some(stream) = open_ws(&ctx, kind, None).await else {
        return;
    };
    let ping = frame(true, 0x9, &[b'p'; 125], true);
    let per_tick = (per_second / 10).max(1) as usize;
    let connect = text(&ctx.connect_command(1));
    let behaviour = Behaviour {
        speaks: Speaks::WebSocket,
        reads: false,
        more: |n: u64| {
            let mut bytes = if authenticated && n == 0 {
                connect.clone()
            } else {
                Vec::new()
            };
            for _ in 0..per_tick {
                bytes.extend_from_slice(&ping);
            }
            bytes
        },
        on_read: |_: &[u8]| {},
    };
    hold(&ctx, kind, None, stream, opened, behaviour).await;
}

/// `connect`, then `burst` pipelined `history` calls with no limit on the big channel (100 per
/// frame), then `per_second` more; never reads a reply.
pub async fn history_amplifier(ctx: Arc<Ctx>, burst: usize, per_second: u64) {
    let kind = "history_amplifier";
    let opened = Instant::now();
    let Some(stream) = open_ws(&ctx, kind, None).await else {
        return;
    };
    let mut id = 1u32;
    let mut next_frame = |count: usize| {
        let mut lines = Vec::with_capacity(count);
        for _ in 0..count {
            id += 1;
            lines.push(
                json!({"id": id, "history": {"channel": ctx.big_channel, "limit": -1}}).to_string(),
            );
        }
        text(&lines.join("\n"))
    };
    let mut first = text(&ctx.connect_command(1));
    for _ in 0..burst.div_ceil(100) {
        first.extend(next_frame(100));
    }
    let per_tick = (per_second / 10).max(1) as usize;
    let behaviour = Behaviour {
        speaks: Speaks::WebSocket,
        reads: false,
        more: |n: u64| {
            if n == 0 {
                std::mem::take(&mut first)
            } else {
                next_frame(per_tick)
            }
        },
        on_read: |_: &[u8]| {},
    };
    hold(&ctx, kind, None, stream, opened, behaviour).await;
}

/// `connect` and subscribe to the busy channel, then never read: the server must drop it as slow.
pub async fn stalled_subscriber(ctx: Arc<Ctx>) {
    let kind = "stalled_subscriber";
    let opened = Instant::now();
    let Some(mut stream) = open_ws(&ctx, kind, None).await else {
        return;
    };
    let hello = format!(
        "{}\n{}",
        ctx.connect_command(1),
        json!({"id": 2, "subscribe": {"channel": ctx.busy_channel}})
    );
    if stream.write_all(&text(&hello)).await.is_err() {
        ctx.tally.ended(kind, "reset before subscribing", None);
        return;
    }
    hold(&ctx, kind, None, stream, opened, silent(Speaks::WebSocket)).await;
}

/// An HTTP request head sent one byte every `every_ticks` ticks, never finished.
pub async fn slowloris(ctx: Arc<Ctx>, every_ticks: u64) {
    let kind = "slowloris";
    let opened = Instant::now();
    let Some(stream) = open_tcp(&ctx, kind, ctx.ws).await else {
        return;
    };
    let head = format!(
        "GET /connection/websocket HTTP/1.1\r\nHost: {}\r\nUpgrade: websocket\r\nConnection: Upgrade\r\nX-Padding: {}",
        ctx.ws,
        "a".repeat(4096)
    )
    .into_bytes();
    let behaviour = Behaviour {
        speaks: Speaks::Http,
        reads: true,
        more: |n: u64| {
            if n.is_multiple_of(every_ticks.max(1)) {
                head.get((n / every_ticks.max(1)) as usize)
                    .map(|b| vec![*b])
                    .unwrap_or_default()
            } else {
                Vec::new()
            }
        },
        on_read: |_: &[u8]| {},
    };
    hold(&ctx, kind, None, stream, opened, behaviour).await;
}

/// A TCP connection to the WebSocket port that never sends a byte.
pub async fn idle_tcp(ctx: Arc<Ctx>) {
    let kind = "idle_tcp";
    let opened = Instant::now();
    let Some(stream) = open_tcp(&ctx, kind, ctx.ws).await else {
        return;
    };
    let mut behaviour = silent(Speaks::Http);
    behaviour.reads = true;
    hold(&ctx, kind, None, stream, opened, behaviour).await;
}

/// A silent TCP connection to a device listener (no login, no data).
pub async fn device_silent(ctx: Arc<Ctx>, n: usize) {
    let kind = "device_silent";
    let Some(addr) = ctx.device_tcp.get(n % ctx.device_tcp.len().max(1)).copied() else {
        return;
    };
    let opened = Instant::now();
    let Some(stream) = open_tcp(&ctx, kind, addr).await else {
        return;
    };
    let mut behaviour = silent(Speaks::Raw);
    behaviour.reads = true;
    hold(&ctx, kind, None, stream, opened, behaviour).await;
}

/// After `connect`, a text frame whose header announces 1 GiB (far above any message limit),
/// followed by a trickle of its payload; never reads.
pub async fn huge_frame(ctx: Arc<Ctx>) {
    let kind = "huge_frame";
    let opened = Instant::now();
    let Some(stream) = open_ws(&ctx, kind, None).await else {
        return;
    };
    let mut first = text(&ctx.connect_command(1));
    first.extend(huge_header(1 << 30));
    let behaviour = Behaviour {
        speaks: Speaks::WebSocket,
        reads: false,
        more: |n: u64| {
            if n == 0 {
                std::mem::take(&mut first)
            } else {
                vec![b'x'; 100]
            }
        },
        on_read: |_: &[u8]| {},
    };
    hold(&ctx, kind, None, stream, opened, behaviour).await;
}

/// The invalid frames sent by [`bad_frame`], by name.
pub const BAD_FRAMES: &[&str] = &[
    "unmasked",
    "reserved_bits",
    "unknown_opcode",
    "fragmented_ping",
    "close_999",
    "close_1004",
    "close_1005",
    "close_1006",
    "close_1015",
    "close_1_byte",
    "close_bad_utf8",
    "ws_version_8",
];

fn bad_bytes(variant: &str) -> Vec<u8> {
    let close = |code: u16| frame(true, 0x8, &code.to_be_bytes(), true);
    match variant {
        "unmasked" => frame(true, 0x1, b"{}", false),
        "reserved_bits" => {
            let mut f = frame(true, 0x1, b"{}", true);
            f[0] |= 0x40;
            f
        }
        "unknown_opcode" => frame(true, 0x3, b"x", true),
        "fragmented_ping" => frame(false, 0x9, b"x", true),
        "close_1_byte" => frame(true, 0x8, &[0x03], true),
        "close_bad_utf8" => frame(true, 0x8, &[0x03, 0xe8, 0xff, 0xfe], true),
        other => close(
            other
                .strip_prefix("close_")
                .and_then(|c| c.parse().ok())
                .unwrap_or(1000),
        ),
    }
}

/// One invalid frame (or an unsupported `Sec-WebSocket-Version`), then waits for the server's
/// verdict without reading; the outcome is recorded per variant.
pub async fn bad_frame(ctx: Arc<Ctx>, n: usize) {
    let kind = "bad_frame";
    let variant = BAD_FRAMES[n % BAD_FRAMES.len()];
    let opened = Instant::now();
    if variant == "ws_version_8" {
        let Some(mut stream) = open_tcp(&ctx, kind, ctx.ws).await else {
            return;
        };
        let outcome = match stream
            .write_all(raw::upgrade_request(ctx.ws, 8).as_bytes())
            .await
        {
            Err(_) => "reset".to_string(),
            Ok(()) => match raw::read_head(&mut stream, std::time::Duration::from_secs(10)).await {
                Ok(head) => raw::refusal(&head).replace("refused ", ""),
                Err(e) => format!("no answer ({})", e.kind()),
            },
        };
        ctx.tally.ended(
            kind,
            &format!("{variant}: {outcome}"),
            Some(opened.elapsed()),
        );
        return;
    }
    let Some(stream) = open_ws(&ctx, kind, Some(variant)).await else {
        return;
    };
    let mut bytes = bad_bytes(variant);
    let behaviour = Behaviour {
        speaks: Speaks::WebSocket,
        reads: true,
        more: |_: u64| std::mem::take(&mut bytes),
        on_read: |_: &[u8]| {},
    };
    hold(&ctx, kind, Some(variant), stream, opened, behaviour).await;
}

/// After `connect`, per tick: `history` on a new name and a positioned, recovering `subscribe`
/// (then `unsubscribe`) on another, all in the big-history namespace; reads the replies and counts
/// the names and the error replies.
pub async fn new_channel_names(ctx: Arc<Ctx>, n: usize) {
    let kind = "new_channel_names";
    let opened = Instant::now();
    let Some(stream) = open_ws(&ctx, kind, None).await else {
        return;
    };
    let namespace = ctx
        .big_channel
        .split_once(':')
        .map(|(ns, _)| ns.to_string())
        .unwrap_or_default();
    let prefix = if namespace.is_empty() {
        format!("n{}-{n}", ctx.run_id)
    } else {
        format!("{namespace}:n{}-{n}", ctx.run_id)
    };
    let mut id = 1u32;
    let tally = &ctx.tally;
    let behaviour = Behaviour {
        speaks: Speaks::WebSocket,
        reads: true,
        more: |tick: u64| {
            if tick == 0 {
                return text(&ctx.connect_command(1));
            }
            let (h, s) = (format!("{prefix}-h{tick}"), format!("{prefix}-s{tick}"));
            id += 3;
            let lines = [
                json!({"id": id, "history": {"channel": h, "limit": 0}}),
                json!({"id": id + 1, "subscribe": {"channel": s, "recover": true,
                       "epoch": "hostile", "offset": 1}}),
                json!({"id": id + 2, "unsubscribe": {"channel": s}}),
            ];
            tally.count(kind, "names", 2);
            text(
                &lines
                    .iter()
                    .map(|l| l.to_string())
                    .collect::<Vec<_>>()
                    .join("\n"),
            )
        },
        on_read: |bytes: &[u8]| {
            let errors = memchr::memmem::find_iter(bytes, b"\"error\":").count() as u64;
            if errors > 0 {
                tally.count(kind, "error_replies", errors);
            }
        },
    };
    hold(&ctx, kind, None, stream, opened, behaviour).await;
}
