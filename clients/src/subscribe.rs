//! A transport-agnostic, resuming subscription.
//!
//! [`Subscription`] yields the envelopes of one or more channels over the
//! chosen [`Transport`], remembers each channel's [`Position`], and when the
//! connection breaks reconnects with that position (WebSocket `since`, SSE
//! `Last-Event-ID`, long-poll `cursor`), skipping any message it already
//! delivered. Consecutive failures are bounded (`max_retries`) with
//! exponential backoff and jitter; refusals (`bad_channel`, ...) end it at once.
//!
//! ```no_run
//! # async fn demo() -> clients::Result<()> {
//! use clients::{GatewayClient, SubscribeOptions, Transport};
//! let gw = GatewayClient::new("http://127.0.0.1:8080")?;
//! let mut sub = gw.subscribe(SubscribeOptions::new(Transport::Sse, ["files:alice"]))?;
//! loop {
//!     let env = sub.next_message().await?;
//!     println!("{} {} (resume from {:?})", env.offset, env.data, sub.position());
//! }
//! # }
//! ```

use std::{
    collections::VecDeque,
    fmt,
    str::FromStr,
    time::{Duration, Instant},
};

use crate::{
    client::GatewayClient,
    error::{Error, Result},
    protocol::{Envelope, MultiPosition, Position, ServerFrame, Subscribed},
    sse::SseStream,
    ws::WsClient,
};

/// A connection that stayed up this long resets the failure count when it breaks.
const STABLE_CONNECTION: Duration = Duration::from_secs(10);

/// How messages are received.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Transport {
    Ws,
    Sse,
    Poll,
}

impl FromStr for Transport {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, String> {
        match s.to_ascii_lowercase().as_str() {
            "ws" | "websocket" => Ok(Self::Ws),
            "sse" => Ok(Self::Sse),
            "poll" | "long-poll" | "longpoll" => Ok(Self::Poll),
            other => Err(format!("unknown transport {other:?} (ws, sse or poll)")),
        }
    }
}

impl fmt::Display for Transport {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Self::Ws => "ws",
            Self::Sse => "sse",
            Self::Poll => "poll",
        })
    }
}

/// What to subscribe to and how hard to try.
#[derive(Debug, Clone)]
pub struct SubscribeOptions {
    pub transport: Transport,
    /// At least one channel; positions are kept in this order.
    pub channels: Vec<String>,
    /// Start after this position (one per channel); `None`: from now.
    pub since: Option<MultiPosition>,
    /// Consecutive failed attempts tolerated before giving up.
    pub max_retries: u32,
    pub initial_backoff: Duration,
    pub max_backoff: Duration,
    /// The hold asked of each long-poll, seconds (0 = plain interval polling).
    pub poll_timeout_secs: u64,
    /// With `poll_timeout_secs == 0`: the pause after an empty answer.
    pub poll_interval: Duration,
}

impl SubscribeOptions {
    pub fn new<I, S>(transport: Transport, channels: I) -> Self
    where
        I: IntoIterator<Item = S>,
        S: Into<String>,
    {
        Self {
            transport,
            channels: channels.into_iter().map(Into::into).collect(),
            since: None,
            max_retries: 5,
            initial_backoff: Duration::from_millis(200),
            max_backoff: Duration::from_secs(10),
            poll_timeout_secs: crate::poll::DEFAULT_POLL_TIMEOUT_SECS,
            poll_interval: Duration::from_secs(1),
        }
    }

    pub fn since(mut self, since: MultiPosition) -> Self {
        self.since = Some(since);
        self
    }

    pub fn max_retries(mut self, n: u32) -> Self {
        self.max_retries = n;
        self
    }

    /// The backoff before retry `n` (1-based): exponential, capped, jittered to 50-100%.
    pub fn backoff(&self, n: u32) -> Duration {
        let exp = self
            .initial_backoff
            .saturating_mul(1u32 << n.saturating_sub(1).min(20));
        let d = exp.min(self.max_backoff);
        d / 2 + d.mul_f64(fastrand::f64() / 2.0)
    }
}

/// What a subscription yields.
#[derive(Debug, Clone, PartialEq)]
pub enum SubscriptionEvent {
    /// A message, never one delivered before on this subscription.
    Message(Envelope),
    /// A channel was (re)subscribed (WebSocket and SSE); `recovered: false`
    /// means the position asked for was lost and delivery continues from `offset`.
    Subscribed(Subscribed),
    /// A long-poll answered `recovered: false`: delivery continues from `cursor`.
    NotRecovered { cursor: String },
}

enum Queued {
    Event(SubscriptionEvent),
    Message(Envelope),
    Cursor(String),
}

/// A resuming subscription; see the module docs.
pub struct Subscription {
    client: GatewayClient,
    opts: SubscribeOptions,
    positions: Vec<Option<Position>>,
    queue: VecDeque<Queued>,
    ws: Option<WsClient>,
    ping_outstanding: bool,
    sse: Option<SseStream>,
    sse_last_id: String,
    sse_retry: Option<Duration>,
    poll_cursor: Option<String>,
    connected_at: Option<Instant>,
    failures: u32,
    delay: Option<Duration>,
    connects: u64,
}

impl GatewayClient {
    /// A subscription over `opts.transport`; it connects on the first
    /// [`Subscription::next`]. Fails if there is no channel or `since` names
    /// a different number of channels.
    pub fn subscribe(&self, opts: SubscribeOptions) -> Result<Subscription> {
        if opts.channels.is_empty() {
            return Err(Error::Protocol(
                "subscribe needs at least one channel".into(),
            ));
        }
        let positions = match &opts.since {
            None => vec![None; opts.channels.len()],
            Some(m) => {
                if m.len() != opts.channels.len() {
                    return Err(crate::protocol::PositionError::WrongCount {
                        got: m.len(),
                        want: opts.channels.len(),
                    }
                    .into());
                }
                m.0.iter().cloned().map(Some).collect()
            }
        };
        Ok(Subscription {
            client: self.clone(),
            opts,
            positions,
            queue: VecDeque::new(),
            ws: None,
            ping_outstanding: false,
            sse: None,
            sse_last_id: String::new(),
            sse_retry: None,
            poll_cursor: None,
            connected_at: None,
            failures: 0,
            delay: None,
            connects: 0,
        })
    }
}

impl Subscription {
    /// The next event. `Err` only when the gateway refused (e.g. `bad_channel`,
    /// an `error` frame), on a protocol violation, or after `max_retries`
    /// consecutive failures ([`Error::GaveUp`]).
    pub async fn next(&mut self) -> Result<SubscriptionEvent> {
        loop {
            while let Some(q) = self.queue.pop_front() {
                match q {
                    Queued::Event(SubscriptionEvent::Subscribed(s)) => {
                        if let Some(i) = self.index(&s.channel) {
                            self.positions[i] = Some(s.position());
                        }
                        return Ok(SubscriptionEvent::Subscribed(s));
                    }
                    Queued::Event(e @ SubscriptionEvent::NotRecovered { .. }) => {
                        // Whatever we held is void; take the cursor that follows.
                        self.positions.iter_mut().for_each(|p| *p = None);
                        return Ok(e);
                    }
                    Queued::Event(e) => return Ok(e),
                    Queued::Message(env) => {
                        if let Some(env) = self.accept(env) {
                            return Ok(SubscriptionEvent::Message(env));
                        }
                    }
                    Queued::Cursor(c) => self.apply_cursor(c),
                }
            }
            if let Err(e) = self.fill().await {
                self.on_failure(e).await?;
            }
        }
    }

    /// The next message, skipping the other events.
    pub async fn next_message(&mut self) -> Result<Envelope> {
        loop {
            if let SubscriptionEvent::Message(m) = self.next().await? {
                return Ok(m);
            }
        }
    }

    /// The position of everything delivered so far, once every channel's is
    /// known (after the first `subscribed`/poll answer, or from `since`).
    pub fn position(&self) -> Option<MultiPosition> {
        self.positions
            .iter()
            .cloned()
            .collect::<Option<Vec<_>>>()
            .map(MultiPosition)
    }

    /// One channel's position, if known.
    pub fn channel_position(&self, channel: &str) -> Option<&Position> {
        self.positions.get(self.index(channel)?)?.as_ref()
    }

    pub fn channels(&self) -> &[String] {
        &self.opts.channels
    }

    pub fn transport(&self) -> Transport {
        self.opts.transport
    }

    /// How many times a connection (or, for long-poll, nothing) was re-established.
    pub fn reconnects(&self) -> u64 {
        self.connects.saturating_sub(1)
    }

    /// Closes the connection (a WebSocket politely, bounded).
    pub async fn close(mut self) {
        if let Some(ws) = self.ws.take() {
            let _ = ws.close().await;
        }
    }

    fn index(&self, channel: &str) -> Option<usize> {
        self.opts.channels.iter().position(|c| c == channel)
    }

    /// Drops duplicates (already covered by the channel's position) and
    /// messages of channels we did not ask for; advances the position.
    fn accept(&mut self, env: Envelope) -> Option<Envelope> {
        let i = self.index(&env.channel)?;
        if let Some(p) = &self.positions[i] {
            if p.covers(&env.epoch, env.offset) {
                tracing::debug!(channel = %env.channel, offset = env.offset, "duplicate skipped");
                return None;
            }
        }
        self.positions[i] = Some(env.position());
        Some(env)
    }

    fn apply_cursor(&mut self, cursor: String) {
        match MultiPosition::parse_for(&cursor, self.opts.channels.len()) {
            Ok(m) => self.positions = m.0.into_iter().map(Some).collect(),
            Err(e) => tracing::warn!(%cursor, "cannot decode the long-poll cursor: {e}"),
        }
        self.poll_cursor = Some(cursor);
    }

    /// Reads once from the transport (connecting first if needed) into the queue.
    async fn fill(&mut self) -> Result<()> {
        if let Some(d) = self.delay.take() {
            tokio::time::sleep(d).await;
        }
        match self.opts.transport {
            Transport::Poll => self.poll_once().await,
            Transport::Ws => {
                if self.ws.is_none() {
                    self.open_ws().await?;
                }
                self.read_ws().await
            }
            Transport::Sse => {
                if self.sse.is_none() {
                    self.open_sse().await?;
                }
                self.read_sse().await
            }
        }
    }

    async fn open_ws(&mut self) -> Result<()> {
        self.connects += 1;
        let mut ws = self.client.ws::<&str>(&[]).await?;
        for (ch, pos) in self.opts.channels.iter().zip(&self.positions) {
            ws.subscribe(ch, pos.as_ref()).await?;
        }
        self.ws = Some(ws);
        self.ping_outstanding = false;
        self.connected_at = Some(Instant::now());
        Ok(())
    }

    async fn read_ws(&mut self) -> Result<()> {
        let Some(ws) = self.ws.as_mut() else {
            return Ok(());
        };
        match ws.recv().await {
            // Silence: make sure the connection is alive; a second silence is fatal.
            Err(Error::Timeout { .. }) if !self.ping_outstanding => {
                self.ping_outstanding = true;
                ws.ping().await
            }
            Err(e) => Err(e),
            Ok(None) => Err(Error::Closed),
            Ok(Some(frame)) => {
                self.ping_outstanding = false;
                if matches!(frame, ServerFrame::Pong) {
                    self.failures = 0;
                }
                self.handle_frame(frame)
            }
        }
    }

    async fn open_sse(&mut self) -> Result<()> {
        self.connects += 1;
        let resume = match self.position() {
            Some(m) => Some(m.to_string()),
            None if !self.sse_last_id.is_empty() => Some(self.sse_last_id.clone()),
            None => None,
        };
        let sse = self
            .client
            .sse(&self.opts.channels, resume.as_deref())
            .await?;
        self.sse = Some(sse);
        self.connected_at = Some(Instant::now());
        Ok(())
    }

    async fn read_sse(&mut self) -> Result<()> {
        let Some(sse) = self.sse.as_mut() else {
            return Ok(());
        };
        let next = sse.next_event().await;
        self.sse_retry = sse.retry().or(self.sse_retry);
        match next? {
            None => Err(Error::Closed),
            Some(ev) => {
                if !ev.id.is_empty() {
                    self.sse_last_id.clone_from(&ev.id);
                }
                self.handle_frame(ev.frame()?)
            }
        }
    }

    async fn poll_once(&mut self) -> Result<()> {
        if self.connects == 0 {
            self.connects = 1;
        }
        let cursor = self
            .poll_cursor
            .clone()
            .or_else(|| self.position().map(|m| m.to_string()));
        let hold = self.opts.poll_timeout_secs;
        let resp = self
            .client
            .poll(&self.opts.channels, cursor.as_deref(), Some(hold))
            .await?;
        self.failures = 0;
        let empty = resp.messages.is_empty();
        if !resp.recovered {
            self.queue
                .push_back(Queued::Event(SubscriptionEvent::NotRecovered {
                    cursor: resp.cursor.clone(),
                }));
        }
        self.queue
            .extend(resp.messages.into_iter().map(Queued::Message));
        self.queue.push_back(Queued::Cursor(resp.cursor));
        if empty && hold == 0 {
            self.delay = Some(self.opts.poll_interval);
        }
        Ok(())
    }

    fn handle_frame(&mut self, frame: ServerFrame) -> Result<()> {
        match frame {
            ServerFrame::Subscribed(s) => self
                .queue
                .push_back(Queued::Event(SubscriptionEvent::Subscribed(s))),
            ServerFrame::Message(env) => {
                self.failures = 0;
                self.queue.push_back(Queued::Message(env));
            }
            ServerFrame::Error(e) => return Err(Error::Gateway(e.into())),
            ServerFrame::Reconnect { delay_ms } => {
                tracing::debug!(delay_ms, "the gateway asked to reconnect");
                self.ws = None;
                self.sse = None;
                self.delay = Some(Duration::from_millis(delay_ms));
            }
            ServerFrame::Pong | ServerFrame::Unsubscribed { .. } | ServerFrame::Unknown(_) => {}
        }
        Ok(())
    }

    async fn on_failure(&mut self, e: Error) -> Result<()> {
        self.ws = None;
        self.sse = None;
        if !e.is_retryable() {
            return Err(e);
        }
        if self
            .connected_at
            .take()
            .is_some_and(|t| t.elapsed() >= STABLE_CONNECTION)
        {
            self.failures = 0;
        }
        self.failures += 1;
        if self.failures > self.opts.max_retries {
            return Err(Error::GaveUp {
                attempts: self.failures,
                last: Box::new(e),
            });
        }
        let mut wait = self.opts.backoff(self.failures);
        if let Some(hint) = self
            .sse_retry
            .filter(|_| self.opts.transport == Transport::Sse)
        {
            wait = wait.max(hint.min(self.opts.max_backoff));
        }
        tracing::debug!(transport = %self.opts.transport, attempt = self.failures, ?wait, "retrying after: {e}");
        tokio::time::sleep(wait).await;
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use serde_json::json;

    use super::*;

    fn env(channel: &str, epoch: &str, offset: u64) -> Envelope {
        serde_json::from_value(
            json!({"channel":channel,"epoch":epoch,"offset":offset,"time":0,"data":offset}),
        )
        .unwrap()
    }

    fn sub(channels: &[&str], since: Option<&str>) -> Subscription {
        let gw = GatewayClient::new("http://127.0.0.1:9").unwrap();
        let mut o = SubscribeOptions::new(Transport::Ws, channels.iter().copied());
        o.since = since.map(|s| MultiPosition::parse(s).unwrap());
        gw.subscribe(o).unwrap()
    }

    #[test]
    fn transports_parse_and_print() {
        for t in [Transport::Ws, Transport::Sse, Transport::Poll] {
            assert_eq!(t.to_string().parse::<Transport>().unwrap(), t);
        }
        assert!("carrier-pigeon".parse::<Transport>().is_err());
    }

    #[test]
    fn since_must_match_the_channels() {
        let gw = GatewayClient::new("http://127.0.0.1:9").unwrap();
        let o = SubscribeOptions::new(Transport::Sse, ["a", "b"])
            .since(MultiPosition::parse("e:1").unwrap());
        assert!(matches!(gw.subscribe(o), Err(Error::Position(_))));
        let none: [&str; 0] = [];
        assert!(gw
            .subscribe(SubscribeOptions::new(Transport::Sse, none))
            .is_err());
        let s = sub(&["a", "b"], Some("e:1,f:2"));
        assert_eq!(s.position().unwrap().to_string(), "e:1,f:2");
        assert_eq!(s.channel_position("b"), Some(&Position::new("f", 2)));
    }

    #[test]
    fn duplicates_and_foreign_channels_are_skipped_and_positions_advance() {
        let mut s = sub(&["a", "b"], None);
        assert!(s.position().is_none());
        assert!(s.accept(env("a", "e", 5)).is_some());
        assert!(s.accept(env("a", "e", 5)).is_none(), "same offset again");
        assert!(s.accept(env("a", "e", 4)).is_none(), "older offset");
        assert!(s.accept(env("zzz", "e", 9)).is_none(), "not ours");
        assert!(s.position().is_none(), "b still unknown");
        assert!(s.accept(env("b", "x", 1)).is_some());
        assert_eq!(s.position().unwrap().to_string(), "e:5,x:1");
        // A new epoch is a new history: accepted even with a lower offset.
        assert!(s.accept(env("a", "n", 1)).is_some());
        assert_eq!(s.position().unwrap().to_string(), "n:1,x:1");
        s.apply_cursor("n:3,x:7".into());
        assert_eq!(s.position().unwrap().to_string(), "n:3,x:7");
    }

    #[test]
    fn backoff_grows_and_is_capped() {
        let o = SubscribeOptions::new(Transport::Poll, ["a"]);
        for n in 1..40 {
            let d = o.backoff(n);
            let full = o
                .initial_backoff
                .saturating_mul(1 << (n - 1).min(20))
                .min(o.max_backoff);
            assert!(d >= full / 2 && d <= full, "{n}: {d:?} vs {full:?}");
        }
    }
}
