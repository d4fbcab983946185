//! One subscriber connection inside a worker: open it on the chosen
//! transport, speak the target's dialect (gateway README protocol or Nchan),
//! account every receipt exactly, and reconnect with its position after
//! churn or a drop so resume is exercised rather than counted as loss.
//!
//! The receive path is our own small code rather than the `clients` crate's
//! typed clients (`WsClient`, `SseStream`, poll): a subscriber must cost the
//! generator a few KiB and parse only the three numbers it needs (see
//! `payload`) instead of a `serde_json::Value` per message, and it must also
//! speak Nchan. Frames are scanned for the stamp; gateway control frames
//! (`subscribed`, `error`) are recognised by their `type`. Resume uses the
//! `clients` protocol types: `Position`, `MultiPosition` and `ClientOp`.

use std::{
    cell::RefCell,
    collections::BTreeMap,
    net::{IpAddr, SocketAddr},
    rc::Rc,
    time::{Duration, Instant},
};

use anyhow::{anyhow, bail, Context};
use bytes::BytesMut;
use futures::{SinkExt, StreamExt};
use hdrhistogram::Histogram;
use serde::Deserialize;
use tokio::{
    net::TcpStream,
    sync::{Notify, Semaphore},
};
use tokio_tungstenite::{
    tungstenite::{client::IntoClientRequest, protocol::WebSocketConfig, Message},
    WebSocketStream,
};
use tokio_util::sync::CancellationToken;

use crate::{
    http::{self, BodyMode, Chunked, HttpConn, SseParser},
    payload::{self, Stamp},
    scenario::{channel_name, TargetKind, Transport},
    track::{Receipt, Tally, Tracker},
};

/// Longest time from starting a connect to being subscribed on every
/// channel; past it the attempt counts as failed and is retried.
const OPEN_TIMEOUT: Duration = Duration::from_secs(15);

/// Connect attempts before a subscriber that never connected gives up.
const MAX_OPEN_ATTEMPTS: u32 = 3;

/// Pause before reconnecting after an unexpected drop.
const DROP_BACKOFF: Duration = Duration::from_millis(200);

/// Extra wait beyond the long-poll hold time before a poll is abandoned.
const POLL_GRACE: Duration = Duration::from_secs(10);

/// WebSocket read buffer per connection. tungstenite's default is 128 KiB,
/// which at 15k connections would be 1.9 GiB of generator memory; frames here
/// are small, and the buffer grows for a larger one.
const WS_READ_BUFFER: usize = 4096;

/// Subprotocol under which Nchan prefixes each WebSocket frame with its
/// message id, needed to resume a WebSocket after churn.
const NCHAN_WS_META: &str = "ws+meta.nchan";

/// Settings every subscriber of a worker shares.
#[derive(Debug)]
pub struct SubConfig {
    /// Transport used.
    pub transport: Transport,
    /// Dialect spoken.
    pub kind: TargetKind,
    /// Nodes; subscriber `i` uses `addrs[i % len]`.
    pub addrs: Vec<SocketAddr>,
    /// Channel name prefix of this run.
    pub prefix: String,
    /// Source address client sockets bind to.
    pub source: Option<IpAddr>,
    /// Interval between polls for `poll`.
    pub poll_interval: Duration,
    /// Hold time asked of long-polls, seconds.
    pub longpoll_timeout_s: u64,
    /// Base delay before a churned subscriber reconnects.
    pub churn_reconnect: Duration,
    /// Use Nchan's `ws+meta.nchan` framing (message ids on WebSocket frames).
    pub nchan_ws_meta: bool,
}

/// Counters and histograms of one worker, shared by its subscribers (the
/// worker is single-threaded, so a `RefCell` is enough).
#[derive(Debug)]
pub struct Shared {
    /// Publish-to-receive latency, microseconds.
    pub latency: Histogram<u64>,
    /// Time from starting to connect until subscribed, microseconds.
    pub connect: Histogram<u64>,
    /// Subscribers that connected at least once.
    pub connected: u64,
    /// Subscribers that never connected.
    pub failed: u64,
    /// Subscribers currently open (connected and not reconnecting).
    pub open: u64,
    /// Every message receipt, duplicates included.
    pub received: u64,
    /// Distinct receipts.
    pub unique: u64,
    /// Reconnects after churn.
    pub reconnects: u64,
    /// Unexpected disconnects after having connected.
    pub drops: u64,
    /// Resumes the server said it could not honour (`recovered: false`).
    pub resume_failures: u64,
    /// Bytes read from sockets.
    pub bytes_read: u64,
    /// Errors by kind.
    pub errors: BTreeMap<String, u64>,
    /// Unix microseconds of the first and last receipt.
    pub first_receipt_us: u64,
    /// See `first_receipt_us`.
    pub last_receipt_us: u64,
    /// Exact per-subscriber accounting, summed as subscribers finish.
    pub tally: Tally,
}

impl Shared {
    /// Empty counters.
    pub fn new() -> Shared {
        let histogram = || {
            // Three significant digits from 1 µs to 10 minutes.
            Histogram::new_with_bounds(1, 600_000_000, 3)
                .expect("constant histogram bounds are valid")
        };
        Shared {
            latency: histogram(),
            connect: histogram(),
            connected: 0,
            failed: 0,
            open: 0,
            received: 0,
            unique: 0,
            reconnects: 0,
            drops: 0,
            resume_failures: 0,
            bytes_read: 0,
            errors: BTreeMap::new(),
            first_receipt_us: 0,
            last_receipt_us: 0,
            tally: Tally::default(),
        }
    }

    fn error(&mut self, kind: &str) {
        *self.errors.entry(kind.to_string()).or_default() += 1;
    }
}

/// What every subscriber task of a worker holds a reference to.
pub struct Ctx {
    /// Shared settings.
    pub cfg: SubConfig,
    /// Shared counters.
    pub shared: RefCell<Shared>,
    /// Ends every subscriber at the end of the run.
    pub cancel: CancellationToken,
    /// Per local subscriber: notified to drop and reconnect (churn).
    pub churn: Vec<Notify>,
    /// Handshakes in flight at once.
    pub connect_gate: Semaphore,
    /// Last sequence published per channel, known once publishing stopped.
    pub expected: RefCell<Option<Vec<u64>>>,
    /// Per local subscriber: whether it ever connected (only those count
    /// towards the messages the worker waits for).
    pub connected_flags: RefCell<Vec<bool>>,
}

/// How a session ended.
enum End {
    /// The run is over.
    Cancelled,
    /// Churn asked for a reconnect.
    Churned,
    /// The connection failed or closed.
    Dropped(anyhow::Error),
}

/// A subscriber's position, kept so a reconnect resumes where it left off.
#[derive(Debug, Default)]
struct Position {
    /// Gateway: per held channel, the last position known.
    channels: Vec<Option<clients::Position>>,
    /// Nchan: the last message id seen (SSE `id:`, WebSocket meta `id:`).
    last_id: Option<String>,
    /// Gateway long-poll cursor.
    cursor: Option<String>,
    /// Nchan long-poll `Last-Modified` and `Etag` of the last answer.
    nchan_poll: Option<(String, String)>,
}

/// An open connection, ready to pump.
enum Conn {
    Ws(Box<WebSocketStream<TcpStream>>),
    Sse {
        http: HttpConn,
        mode: BodyMode,
        chunked: Chunked,
        body: BytesMut,
        parser: SseParser,
    },
    Poll(HttpConn),
}

/// One subscriber.
pub struct Subscriber {
    /// Index among all subscribers of the run.
    index: usize,
    /// Index among this worker's subscribers.
    local: usize,
    /// Channel indices held.
    channels: Vec<u32>,
    /// Exact accounting.
    tracker: Tracker,
    /// Resume position.
    pos: Position,
    /// Whether it ever connected.
    connected: bool,
}

impl Subscriber {
    /// A subscriber that will hold `channels`.
    pub fn new(index: usize, local: usize, channels: Vec<u32>) -> Subscriber {
        Subscriber {
            index,
            local,
            tracker: Tracker::new(&channels),
            pos: Position {
                channels: vec![None; channels.len()],
                ..Position::default()
            },
            channels,
            connected: false,
        }
    }

    /// Connect, receive until the run is cancelled, reconnect as needed;
    /// returns the messages it lost against `ctx.expected` (receipts are
    /// tallied in `Shared::tally` as they happen) and whether it received
    /// anything.
    pub async fn run(mut self, ctx: Rc<Ctx>) -> (u64, bool) {
        let mut attempts = 0;
        let started = Instant::now();

        loop {
            let opened = {
                let _permit = if self.connected {
                    None
                } else {
                    match ctx.connect_gate.acquire().await {
                        Ok(p) => Some(p),
                        Err(_) => break,
                    }
                };
                tokio::select! {
                    biased;
                    _ = ctx.cancel.cancelled() => break,
                    r = tokio::time::timeout(OPEN_TIMEOUT, self.open(&ctx)) => {
                        r.map_err(|_| anyhow!("open timed out")).and_then(|r| r)
                    }
                }
            };

            let conn = match opened {
                Ok(conn) => conn,
                Err(e) => {
                    ctx.shared.borrow_mut().error(&error_kind(&e));
                    if !self.connected {
                        attempts += 1;
                        if attempts >= MAX_OPEN_ATTEMPTS {
                            ctx.shared.borrow_mut().failed += 1;
                            break;
                        }
                    }
                    if !pause(&ctx, DROP_BACKOFF * attempts.max(1)).await {
                        break;
                    }
                    continue;
                }
            };

            if !self.connected {
                self.connected = true;
                if let Some(flag) = ctx.connected_flags.borrow_mut().get_mut(self.local) {
                    *flag = true;
                }
                let mut shared = ctx.shared.borrow_mut();
                shared.connected += 1;
                let us = started.elapsed().as_micros() as u64;
                let _ = shared.connect.record(us.max(1));
            }
            ctx.shared.borrow_mut().open += 1;

            let end = self.pump(&ctx, conn).await;
            ctx.shared.borrow_mut().open -= 1;

            match end {
                End::Cancelled => break,
                End::Churned => {
                    ctx.shared.borrow_mut().reconnects += 1;
                    let base = ctx.cfg.churn_reconnect.as_millis() as u64;
                    let delay = Duration::from_millis(base + fastrand::u64(0..=base));
                    if !pause(&ctx, delay).await {
                        break;
                    }
                }
                End::Dropped(e) => {
                    {
                        let mut shared = ctx.shared.borrow_mut();
                        shared.drops += 1;
                        shared.error(&error_kind(&e));
                    }
                    if !pause(&ctx, DROP_BACKOFF).await {
                        break;
                    }
                }
            }
        }

        let expected = ctx.expected.borrow();
        let expected = expected.as_deref().unwrap_or(&[]);
        let lost = if self.connected {
            self.tracker.lost(expected)
        } else {
            0
        };
        (lost, self.tracker.received_any())
    }

    fn addr(&self, ctx: &Ctx) -> SocketAddr {
        ctx.cfg.addrs[self.index % ctx.cfg.addrs.len()]
    }

    fn name(&self, ctx: &Ctx, at: usize) -> String {
        channel_name(&ctx.cfg.prefix, self.channels[at])
    }

    /// Open the connection and wait until it is subscribed everywhere.
    async fn open(&mut self, ctx: &Ctx) -> anyhow::Result<Conn> {
        let addr = self.addr(ctx);
        let stream = http::connect(addr, ctx.cfg.source)
            .await
            .context("connect")?;
        match (ctx.cfg.transport, ctx.cfg.kind) {
            (Transport::Ws, TargetKind::Gateway) => self.open_gateway_ws(ctx, addr, stream).await,
            (Transport::Ws, TargetKind::Nchan) => self.open_nchan_ws(ctx, addr, stream).await,
            (Transport::Sse, _) => self.open_sse(ctx, addr, stream).await,
            (Transport::Longpoll | Transport::Poll, TargetKind::Gateway) => {
                let mut http = HttpConn::new(stream);
                if self.pos.cursor.is_none() {
                    // A zero-wait poll fixes "now" before publishing starts.
                    self.gateway_poll(ctx, &mut http, 0).await?;
                }
                Ok(Conn::Poll(http))
            }
            (Transport::Longpoll | Transport::Poll, TargetKind::Nchan) => {
                Ok(Conn::Poll(HttpConn::new(stream)))
            }
        }
    }

    async fn open_gateway_ws(
        &mut self,
        ctx: &Ctx,
        addr: SocketAddr,
        stream: TcpStream,
    ) -> anyhow::Result<Conn> {
        let resume = self.pos.channels.iter().any(Option::is_some);
        let url = if resume {
            format!("ws://{addr}/v1/ws")
        } else {
            let query: Vec<String> = (0..self.channels.len())
                .map(|i| format!("channel={}", self.name(ctx, i)))
                .collect();
            format!("ws://{addr}/v1/ws?{}", query.join("&"))
        };
        let config = WebSocketConfig::default()
            .read_buffer_size(WS_READ_BUFFER)
            .write_buffer_size(0);
        let (mut ws, _) =
            tokio_tungstenite::client_async_with_config(url, stream, Some(config)).await?;

        if resume {
            for i in 0..self.channels.len() {
                let op =
                    clients::ClientOp::subscribe(self.name(ctx, i), self.pos.channels[i].clone());
                ws.send(Message::text(op.to_json())).await?;
            }
        }

        let mut subscribed = 0;
        while subscribed < self.channels.len() {
            let Some(msg) = ws.next().await else {
                bail!("closed before subscribed");
            };
            let data = match msg? {
                Message::Text(t) => t.as_bytes().to_vec(),
                Message::Binary(b) => b.to_vec(),
                _ => continue,
            };
            ctx.shared.borrow_mut().bytes_read += data.len() as u64;
            if self.on_gateway_frame(ctx, &data)? {
                subscribed += 1;
            }
        }
        Ok(Conn::Ws(Box::new(ws)))
    }

    async fn open_nchan_ws(
        &mut self,
        ctx: &Ctx,
        addr: SocketAddr,
        stream: TcpStream,
    ) -> anyhow::Result<Conn> {
        let ids: Vec<String> = (0..self.channels.len())
            .map(|i| self.name(ctx, i))
            .collect();
        let mut url = format!("ws://{addr}/sub?id={}", ids.join(","));
        if let Some(id) = &self.pos.last_id {
            url.push_str("&last_event_id=");
            url.push_str(&percent_encode(id));
        }
        let mut request = url.into_client_request()?;
        if ctx.cfg.nchan_ws_meta {
            request
                .headers_mut()
                .insert("Sec-WebSocket-Protocol", NCHAN_WS_META.parse()?);
        }
        let config = WebSocketConfig::default()
            .read_buffer_size(WS_READ_BUFFER)
            .write_buffer_size(0);
        let (ws, _) =
            tokio_tungstenite::client_async_with_config(request, stream, Some(config)).await?;
        Ok(Conn::Ws(Box::new(ws)))
    }

    async fn open_sse(
        &mut self,
        ctx: &Ctx,
        addr: SocketAddr,
        stream: TcpStream,
    ) -> anyhow::Result<Conn> {
        let path = match ctx.cfg.kind {
            TargetKind::Gateway => {
                let query: Vec<String> = (0..self.channels.len())
                    .map(|i| format!("channel={}", self.name(ctx, i)))
                    .collect();
                format!("/v1/sse?{}", query.join("&"))
            }
            TargetKind::Nchan => {
                let ids: Vec<String> = (0..self.channels.len())
                    .map(|i| self.name(ctx, i))
                    .collect();
                format!("/sub?id={}", ids.join(","))
            }
        };
        let last_id = match ctx.cfg.kind {
            TargetKind::Gateway => self.gateway_position(),
            TargetKind::Nchan => self.pos.last_id.clone(),
        };
        let mut request = format!(
            "GET {path} HTTP/1.1\r\nHost: {addr}\r\nAccept: text/event-stream\r\nCache-Control: no-cache\r\n"
        );
        if let Some(id) = last_id {
            request.push_str(&format!("Last-Event-ID: {id}\r\n"));
        }
        request.push_str("\r\n");

        let mut http = HttpConn::new(stream);
        http.send(request.as_bytes()).await?;
        let head = http.read_head().await?;
        if head.status != 200 {
            bail!("sse status {}", head.status);
        }
        let mut conn = Conn::Sse {
            http,
            mode: head.body,
            chunked: Chunked::default(),
            body: BytesMut::new(),
            parser: SseParser::default(),
        };

        // The gateway names each channel in a `subscribed` event first.
        if ctx.cfg.kind == TargetKind::Gateway {
            let mut subscribed = 0;
            while subscribed < self.channels.len() {
                subscribed += self.sse_step(ctx, &mut conn).await?;
            }
        }
        Ok(conn)
    }

    /// The gateway multi-channel position of this subscriber, when it knows
    /// one for every channel.
    fn gateway_position(&self) -> Option<String> {
        let parts: Option<Vec<clients::Position>> = self.pos.channels.iter().cloned().collect();
        parts.map(|p| clients::MultiPosition(p).to_string())
    }

    /// Read one piece of an SSE stream and handle its events; returns how
    /// many `subscribed` events it held.
    async fn sse_step(&mut self, ctx: &Ctx, conn: &mut Conn) -> anyhow::Result<usize> {
        let Conn::Sse {
            http,
            mode,
            chunked,
            body,
            parser,
        } = conn
        else {
            bail!("not an sse connection");
        };
        if !http.read_stream(*mode, chunked, body).await? {
            bail!("sse stream ended");
        }
        ctx.shared.borrow_mut().bytes_read += http.take_read();

        let mut subscribed = 0;
        let mut failure = None;
        parser.feed(body, |event| match ctx.cfg.kind {
            TargetKind::Gateway => match self.on_gateway_frame(ctx, event.data) {
                Ok(is_subscribed) => subscribed += usize::from(is_subscribed),
                Err(e) => failure = Some(e),
            },
            // Nchan sends messages as unnamed events; named ones (pings when
            // configured) carry no payload.
            TargetKind::Nchan if event.event.is_empty() || event.event == b"message" => {
                self.on_payload(ctx, event.data)
            }
            TargetKind::Nchan => {}
        });
        // A new stream starts without an id: keep the old one until it
        // names a newer one.
        if ctx.cfg.kind == TargetKind::Nchan && parser.last_id.is_some() {
            self.pos.last_id.clone_from(&parser.last_id);
        }
        match failure {
            Some(e) => Err(e),
            None => Ok(subscribed),
        }
    }

    /// Receive until cancelled, churned or dropped.
    async fn pump(&mut self, ctx: &Ctx, mut conn: Conn) -> End {
        // Made once and polled again each turn: making them per message
        // showed in the generator's profile.
        let cancelled = ctx.cancel.cancelled();
        tokio::pin!(cancelled);
        let churned = ctx.churn[self.local].notified();
        tokio::pin!(churned);
        loop {
            let step = async {
                match &mut conn {
                    Conn::Ws(ws) => self.ws_step(ctx, ws).await,
                    Conn::Poll(http) => self.poll_step(ctx, http).await,
                    sse @ Conn::Sse { .. } => self.sse_step(ctx, sse).await.map(|_| ()),
                }
            };
            tokio::select! {
                biased;
                _ = &mut cancelled => return End::Cancelled,
                _ = &mut churned => return End::Churned,
                r = step => if let Err(e) = r { return End::Dropped(e) },
            }
        }
    }

    async fn ws_step(
        &mut self,
        ctx: &Ctx,
        ws: &mut WebSocketStream<TcpStream>,
    ) -> anyhow::Result<()> {
        let Some(msg) = ws.next().await else {
            bail!("websocket closed");
        };
        match msg? {
            Message::Text(t) => self.on_ws_frame(ctx, t.as_bytes()),
            Message::Binary(b) => self.on_ws_frame(ctx, &b),
            Message::Close(_) => bail!("websocket closed by server"),
            _ => Ok(()),
        }
    }

    fn on_ws_frame(&mut self, ctx: &Ctx, frame: &[u8]) -> anyhow::Result<()> {
        ctx.shared.borrow_mut().bytes_read += frame.len() as u64;
        match ctx.cfg.kind {
            TargetKind::Gateway => self.on_gateway_frame(ctx, frame).map(|_| ()),
            TargetKind::Nchan if ctx.cfg.nchan_ws_meta => {
                // "id: ID\ncontent-type: ...\n\nBODY"
                let split = memchr::memmem::find(frame, b"\n\n");
                let (meta, body) = match split {
                    Some(at) => (&frame[..at], &frame[at + 2..]),
                    None => (&b""[..], frame),
                };
                for line in meta.split(|b| *b == b'\n') {
                    if let Some(id) = line.strip_prefix(b"id: ") {
                        self.pos.last_id = Some(String::from_utf8_lossy(id).into_owned());
                    }
                }
                self.on_payload(ctx, body);
                Ok(())
            }
            TargetKind::Nchan => {
                self.on_payload(ctx, frame);
                Ok(())
            }
        }
    }

    /// Handle a gateway JSON frame (WebSocket frame or SSE data); returns
    /// true for a `subscribed` frame.
    fn on_gateway_frame(&mut self, ctx: &Ctx, frame: &[u8]) -> anyhow::Result<bool> {
        if let Some(stamp) = payload::scan(frame) {
            self.note_gateway_position(frame, stamp.ch);
            self.on_stamp(ctx, stamp);
            return Ok(false);
        }
        let kind = payload::string_after(frame, b"\"type\":\"").unwrap_or(b"");
        match kind {
            b"subscribed" => {
                let recovered = memchr::memmem::find(frame, b"\"recovered\":false").is_none();
                let had_position = self.pos.channels.iter().any(Option::is_some);
                if !recovered && had_position {
                    ctx.shared.borrow_mut().resume_failures += 1;
                }
                let ch = payload::string_after(frame, b"\"channel\":\"").and_then(channel_index);
                if let Some(ch) = ch {
                    // Known position only if none newer was seen.
                    let at = self.channels.iter().position(|c| *c == ch);
                    let epoch = payload::string_after(frame, b"\"epoch\":\"");
                    let offset = payload::number_after(frame, b"\"offset\":");
                    if let (Some(at), Some(epoch), Some(offset)) = (at, epoch, offset) {
                        let stale = match &self.pos.channels[at] {
                            Some(p) => p.epoch.as_bytes() == epoch && p.offset >= offset,
                            None => false,
                        };
                        if !stale {
                            self.pos.channels[at] = Some(clients::Position::new(
                                String::from_utf8_lossy(epoch),
                                offset,
                            ));
                        }
                    }
                }
                Ok(true)
            }
            b"error" => {
                let code = payload::string_after(frame, b"\"code\":\"").unwrap_or(b"unknown");
                bail!("gateway error {}", String::from_utf8_lossy(code))
            }
            _ => Ok(false),
        }
    }

    /// Remember the (epoch, offset) of a gateway envelope for resume.
    fn note_gateway_position(&mut self, frame: &[u8], ch: u32) {
        let Some(at) = self.channels.iter().position(|c| *c == ch) else {
            return;
        };
        let (Some(offset), Some(epoch)) = (
            payload::number_at(frame, &payload::FIND_OFFSET),
            payload::string_at(frame, &payload::FIND_EPOCH),
        ) else {
            return;
        };
        match &mut self.pos.channels[at] {
            Some(p) if p.epoch.as_bytes() == epoch => p.offset = p.offset.max(offset),
            slot => {
                *slot = Some(clients::Position::new(
                    String::from_utf8_lossy(epoch),
                    offset,
                ))
            }
        }
    }

    /// A bare payload (Nchan message body).
    fn on_payload(&mut self, ctx: &Ctx, body: &[u8]) {
        match payload::scan(body) {
            Some(stamp) => self.on_stamp(ctx, stamp),
            None => ctx.shared.borrow_mut().error("unparsable message"),
        }
    }

    /// Account one receipt.
    fn on_stamp(&mut self, ctx: &Ctx, stamp: Stamp) {
        let now = payload::now_us();
        let receipt = self.tracker.record(stamp.ch, stamp.seq);
        let mut shared = ctx.shared.borrow_mut();
        shared.received += 1;
        match receipt {
            Receipt::Fresh => {
                shared.unique += 1;
                shared.tally.unique += 1;
            }
            Receipt::Reordered => {
                shared.unique += 1;
                shared.tally.unique += 1;
                shared.tally.reordered += 1;
            }
            Receipt::Duplicate => shared.tally.duplicates += 1,
            Receipt::Foreign => shared.tally.foreign += 1,
        }
        let _ = shared.latency.record(now.saturating_sub(stamp.t_us).max(1));
        if shared.first_receipt_us == 0 {
            shared.first_receipt_us = now;
        }
        shared.last_receipt_us = now;
    }

    /// One poll (long or interval) and its messages.
    async fn poll_step(&mut self, ctx: &Ctx, http: &mut HttpConn) -> anyhow::Result<()> {
        let interval = ctx.cfg.transport == Transport::Poll;
        match ctx.cfg.kind {
            TargetKind::Gateway => {
                let timeout = if interval {
                    0
                } else {
                    ctx.cfg.longpoll_timeout_s
                };
                self.gateway_poll(ctx, http, timeout).await?;
            }
            TargetKind::Nchan => self.nchan_poll(ctx, http, interval).await?,
        }
        if interval {
            tokio::time::sleep(ctx.cfg.poll_interval).await;
        }
        Ok(())
    }

    async fn gateway_poll(
        &mut self,
        ctx: &Ctx,
        http: &mut HttpConn,
        timeout_s: u64,
    ) -> anyhow::Result<()> {
        let addr = self.addr(ctx);
        let mut path = String::from("/v1/poll?");
        for i in 0..self.channels.len() {
            path.push_str("channel=");
            path.push_str(&self.name(ctx, i));
            path.push('&');
        }
        if let Some(cursor) = &self.pos.cursor {
            path.push_str("cursor=");
            path.push_str(&percent_encode(cursor));
            path.push('&');
        }
        path.push_str(&format!("timeout={timeout_s}"));
        let request = format!("GET {path} HTTP/1.1\r\nHost: {addr}\r\n\r\n");

        let limit = Duration::from_secs(timeout_s) + POLL_GRACE;
        let body = tokio::time::timeout(limit, async {
            http.send(request.as_bytes()).await?;
            let head = http.read_head().await?;
            let body = http.read_body(head.body).await?;
            if head.status != 200 {
                bail!("poll status {}", head.status);
            }
            Ok(body)
        })
        .await
        .map_err(|_| anyhow!("poll timed out"))??;
        ctx.shared.borrow_mut().bytes_read += http.take_read();

        #[derive(Deserialize)]
        struct Answer<'a> {
            #[serde(borrow)]
            messages: Vec<&'a serde_json::value::RawValue>,
            cursor: String,
            #[serde(default = "yes")]
            recovered: bool,
        }
        fn yes() -> bool {
            true
        }
        let answer: Answer<'_> = serde_json::from_slice(&body).context("poll answer")?;
        if !answer.recovered && self.pos.cursor.is_some() {
            ctx.shared.borrow_mut().resume_failures += 1;
        }
        for message in &answer.messages {
            self.on_gateway_frame(ctx, message.get().as_bytes())?;
        }
        self.pos.cursor = Some(answer.cursor);
        Ok(())
    }

    async fn nchan_poll(
        &mut self,
        ctx: &Ctx,
        http: &mut HttpConn,
        interval: bool,
    ) -> anyhow::Result<()> {
        let addr = self.addr(ctx);
        let ids: Vec<String> = (0..self.channels.len())
            .map(|i| self.name(ctx, i))
            .collect();
        let location = if interval { "/poll" } else { "/sub" };
        let mut request = format!(
            "GET {location}?id={} HTTP/1.1\r\nHost: {addr}\r\n",
            ids.join(",")
        );
        if let Some((modified, etag)) = &self.pos.nchan_poll {
            request.push_str(&format!(
                "If-Modified-Since: {modified}\r\nIf-None-Match: {etag}\r\n"
            ));
        }
        request.push_str("\r\n");

        // Nchan holds a long-poll for up to its nchan_subscriber_timeout (60 s).
        let limit = Duration::from_secs(60) + POLL_GRACE;
        let (head, body) = tokio::time::timeout(limit, async {
            http.send(request.as_bytes()).await?;
            let head = http.read_head().await?;
            let body = http.read_body(head.body).await?;
            anyhow::Ok((head, body))
        })
        .await
        .map_err(|_| anyhow!("poll timed out"))??;
        ctx.shared.borrow_mut().bytes_read += http.take_read();

        match head.status {
            200 => {
                if let (Some(modified), Some(etag)) =
                    (head.header("last-modified"), head.header("etag"))
                {
                    self.pos.nchan_poll = Some((modified.to_string(), etag.to_string()));
                }
                let boundary = head
                    .header("content-type")
                    .filter(|t| t.starts_with("multipart/mixed"))
                    .and_then(|t| t.split_once("boundary="))
                    .map(|(_, b)| b.trim_matches('"').to_string());
                match boundary {
                    Some(boundary) => {
                        for part in multipart_bodies(&body, boundary.as_bytes()) {
                            self.on_payload(ctx, part);
                        }
                    }
                    None => self.on_payload(ctx, &body),
                }
                Ok(())
            }
            304 | 408 => Ok(()),
            other => bail!("nchan poll status {other}"),
        }
    }
}

/// The bodies of a `multipart/mixed` answer (Nchan sends several messages
/// per long-poll answer this way).
fn multipart_bodies<'a>(body: &'a [u8], boundary: &[u8]) -> Vec<&'a [u8]> {
    let mut delimiter = b"--".to_vec();
    delimiter.extend_from_slice(boundary);
    let mut parts = Vec::new();
    let mut rest = body;
    while let Some(at) = memchr::memmem::find(rest, &delimiter) {
        let part = &rest[..at];
        rest = &rest[at + delimiter.len()..];
        if let Some(split) = memchr::memmem::find(part, b"\r\n\r\n") {
            let content = &part[split + 4..];
            parts.push(content.strip_suffix(b"\r\n").unwrap_or(content));
        }
        if rest.starts_with(b"--") {
            break;
        }
    }
    parts
}

/// Sleep unless the run is cancelled first; false when cancelled.
async fn pause(ctx: &Ctx, delay: Duration) -> bool {
    tokio::select! {
        _ = ctx.cancel.cancelled() => false,
        _ = tokio::time::sleep(delay) => true,
    }
}

/// The channel index at the end of a channel name (`prefix:INDEX`).
fn channel_index(name: &[u8]) -> Option<u32> {
    let at = name.iter().rposition(|b| *b == b':')?;
    std::str::from_utf8(&name[at + 1..]).ok()?.parse().ok()
}

/// Percent-encode the few characters positions and ids may hold that are
/// not safe in a query string.
fn percent_encode(value: &str) -> String {
    let mut out = String::with_capacity(value.len());
    for b in value.bytes() {
        if b.is_ascii_alphanumeric() || b"-_.~:".contains(&b) {
            out.push(b as char);
        } else {
            out.push_str(&format!("%{b:02X}"));
        }
    }
    out
}

/// A short label for an error, for the error table.
fn error_kind(e: &anyhow::Error) -> String {
    let text = e.to_string();
    let mut label: String = text.chars().take(60).collect();
    if let Some(io) = e.downcast_ref::<std::io::Error>() {
        label = format!("io: {:?}", io.kind());
    }
    label
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn channel_index_is_the_last_segment() {
        assert_eq!(channel_index(b"lt-abc:17"), Some(17));
        assert_eq!(channel_index(b"nope"), None);
    }

    #[test]
    fn multipart_answers_split_into_messages() {
        let body = b"--XY\r\nContent-Type: a\r\n\r\n{\"m\":2}\r\n--XY\r\nContent-Type: a\r\n\r\n{\"m\":3}\r\n--XY--\r\n";
        let parts = multipart_bodies(body, b"XY");
        assert_eq!(parts, vec![&b"{\"m\":2}"[..], &b"{\"m\":3}"[..]]);
    }

    #[test]
    fn positions_are_query_safe() {
        assert_eq!(percent_encode("k3:1,q8:4"), "k3:1%2Cq8:4");
        assert_eq!(percent_encode("1796396734:[0],-"), "1796396734:%5B0%5D%2C-");
    }
}
