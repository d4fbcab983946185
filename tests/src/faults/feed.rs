//! A subscriber that survives faults: it reconnects with its position after
//! every failure and keeps a record of everything the gateway told it.
//!
//! A [`Feed`] runs as its own task. Each *session* is one connection (for
//! long-poll: one run of polls to one node): WebSocket `subscribe` with
//! `since`, SSE with `Last-Event-ID`, long-poll with `cursor`. When a session
//! ends for any reason but [`Feed::stop`], the feed moves to the next node of
//! its list and opens a new session from the position after the last message
//! (or verdict) it took, after [`RECONNECT_PAUSE`]. It never deduplicates or
//! reorders: the [`Record`] is what came over the wire, for
//! [`crate::faults::tally`] to judge.

use std::sync::{Arc, Mutex};
use std::time::Duration;

use anyhow::{anyhow, Context, Result};
use futures::{SinkExt, StreamExt};
use reqwest::Url;
use serde_json::{json, Value};
use tokio::sync::watch;
use tokio::task::JoinHandle;
use tokio::time::Instant;
use tokio_tungstenite::tungstenite::Message;

use crate::envelope::Position;
use crate::http::{parse_poll_answer, Http};
use crate::sse::SseClient;
use crate::subscriber::Transport;
use crate::wait::{eventually, STEP_TIMEOUT, TEST_TIMEOUT};

/// The pause before a new session: short, so a fault costs little delivery
/// time, yet no busy loop against a node that refuses.
const RECONNECT_PAUSE: Duration = Duration::from_millis(50);

/// The most sessions one feed opens: far more than any test's faults need,
/// so a feed that fails on every attempt ends instead of spinning.
const MAX_SESSIONS: usize = 2000;

/// How long a WebSocket session waits for any frame before it counts the
/// connection as dead and reconnects (the gateway pings every 25 s by
/// default, and the tests publish far more often).
const WS_SILENCE: Duration = Duration::from_secs(15);

/// What a feed subscribes to, where, and from which position.
#[derive(Debug, Clone)]
pub struct FeedOptions {
    pub transport: Transport,
    pub channel: String,
    /// Base URLs (`http://127.0.0.1:PORT`) tried in turn: the first for the
    /// first session, the next one after each session ends.
    pub nodes: Vec<String>,
    /// The position to start after; `None` is "from now".
    pub from: Option<String>,
    /// The hold of each long-poll, in seconds.
    pub poll_hold: u64,
}

impl FeedOptions {
    /// A feed of `channel` over `transport` on `nodes`, live from now.
    pub fn new(transport: Transport, channel: &str, nodes: &[String]) -> Self {
        Self {
            transport,
            channel: channel.to_owned(),
            nodes: nodes.to_vec(),
            from: None,
            poll_hold: 5,
        }
    }

    /// Starts after `position` instead of from now.
    pub fn from(mut self, position: impl Into<String>) -> Self {
        self.from = Some(position.into());
        self
    }

    /// Each long-poll holds `seconds`.
    pub fn poll_hold(mut self, seconds: u64) -> Self {
        self.poll_hold = seconds;
        self
    }
}

/// A `recovered` verdict: the `subscribed` frame or event of a session (and
/// any later one, mid-stream), or a long-poll answer.
#[derive(Debug, Clone)]
pub struct Verdict {
    /// Where delivery continues.
    pub position: Position,
    pub recovered: bool,
    /// Whether it came in the middle of a session rather than at its start.
    pub mid_stream: bool,
    /// How many messages the feed had received before it.
    pub after_messages: usize,
    /// The node that gave it.
    pub node: String,
}

/// How one session ended.
#[derive(Debug, Clone)]
pub enum SessionEnd {
    /// [`Feed::stop`] ended it.
    Stopped,
    /// No connection, or the gateway refused the subscription (a WebSocket
    /// `error` frame, an SSE answer other than a stream).
    Refused(String),
    /// The gateway closed the WebSocket: the close code (`None` when the
    /// stream ended without a close frame) and the `reconnect` advice frames
    /// that came first.
    WsClosed {
        code: Option<u16>,
        advice: Vec<Value>,
    },
    /// The WebSocket broke: a reset, a protocol error, or silence.
    WsBroken(String),
    /// The gateway ended the event stream. `retry_last` is the `retry:` hint
    /// that came after every event, if one did; `error` is a final `error`
    /// event (a transient refusal such as `unavailable`).
    SseEnded {
        retry_last: Option<u64>,
        error: Option<Value>,
    },
    /// The event stream broke or went silent.
    SseBroken(String),
    /// A long-poll failed: its status (when there was an answer) and text.
    PollFailed { status: Option<u16>, detail: String },
}

/// One session of a feed.
#[derive(Debug, Clone)]
pub struct Session {
    pub node: String,
    /// The position it resumed from.
    pub from: Option<String>,
    pub opened: Instant,
    pub ended: Instant,
    /// Messages received in it.
    pub messages: usize,
    pub end: SessionEnd,
}

/// Everything a feed saw, in arrival order.
#[derive(Debug, Clone, Default)]
pub struct Record {
    /// Every message envelope, as received (duplicates included).
    pub messages: Vec<Value>,
    pub verdicts: Vec<Verdict>,
    pub sessions: Vec<Session>,
    /// Frames or events no promise covers (for failure messages).
    pub unexpected: Vec<String>,
}

impl Record {
    /// The verdicts that said `recovered: false`.
    pub fn unrecovered(&self) -> Vec<&Verdict> {
        self.verdicts.iter().filter(|v| !v.recovered).collect()
    }
}

/// A running feed; aborted when dropped.
pub struct Feed {
    transport: Transport,
    record: Arc<Mutex<Record>>,
    stop: watch::Sender<bool>,
    task: Option<JoinHandle<()>>,
}

impl Feed {
    /// Starts the feed's task; it connects at once.
    pub fn start(opts: FeedOptions) -> Self {
        let record = Arc::new(Mutex::new(Record::default()));
        let (stop, stopped) = watch::channel(false);
        let transport = opts.transport;
        let task = tokio::spawn(run(opts, record.clone(), stopped));
        Feed {
            transport,
            record,
            stop,
            task: Some(task),
        }
    }

    pub fn transport(&self) -> Transport {
        self.transport
    }

    /// A copy of the record so far.
    pub fn record(&self) -> Record {
        self.record.lock().map(|r| r.clone()).unwrap_or_default()
    }

    /// Messages received so far.
    pub fn received(&self) -> usize {
        self.record.lock().map(|r| r.messages.len()).unwrap_or(0)
    }

    /// Waits until the first session has its verdict: from then on nothing
    /// published is missed.
    pub async fn wait_subscribed(&self) -> Result<Verdict> {
        let what = format!("{} feed subscribed", self.transport);
        eventually(&what, STEP_TIMEOUT, || async {
            Ok(self.record().verdicts.first().cloned())
        })
        .await
        .with_context(|| format!("{:?}", self.record().sessions))
    }

    /// Waits until `n` messages have arrived.
    pub async fn wait_for(&self, n: usize, deadline: Duration) -> Result<()> {
        let what = format!("{} feed received {n} messages", self.transport);
        eventually(&what, deadline, || async {
            Ok((self.received() >= n).then_some(()))
        })
        .await
        .with_context(|| {
            let record = self.record();
            format!(
                "got {} messages; last sessions {:?}",
                record.messages.len(),
                &record.sessions[record.sessions.len().saturating_sub(5)..]
            )
        })
    }

    /// Ends the current session and the task; returns the record.
    pub async fn stop(mut self) -> Result<Record> {
        let _ = self.stop.send(true);
        if let Some(task) = self.task.take() {
            tokio::time::timeout(STEP_TIMEOUT, task)
                .await
                .map_err(|_| anyhow!("{} feed did not stop in time", self.transport))?
                .context("feed task")?;
        }
        Ok(self.record())
    }
}

impl Drop for Feed {
    fn drop(&mut self) {
        if let Some(task) = self.task.take() {
            task.abort();
        }
    }
}

/// Where a feed stands between sessions.
struct State {
    opts: FeedOptions,
    record: Arc<Mutex<Record>>,
    /// The resume position: after the last message or verdict taken.
    position: Option<String>,
}

impl State {
    fn note(&self, f: impl FnOnce(&mut Record)) {
        if let Ok(mut record) = self.record.lock() {
            f(&mut record);
        }
    }

    fn received(&self) -> usize {
        self.record.lock().map(|r| r.messages.len()).unwrap_or(0)
    }

    fn verdict(&mut self, node: &str, frame: &Value, mid_stream: bool) -> Result<()> {
        let position = Position::of_subscribed(frame)?;
        let recovered = frame["recovered"]
            .as_bool()
            .with_context(|| format!("verdict without a recovered bool: {frame}"))?;
        let after_messages = self.received();
        self.note(|r| {
            r.verdicts.push(Verdict {
                position,
                recovered,
                mid_stream,
                after_messages,
                node: node.to_owned(),
            })
        });
        Ok(())
    }
}

async fn run(opts: FeedOptions, record: Arc<Mutex<Record>>, mut stop: watch::Receiver<bool>) {
    let give_up = Instant::now() + TEST_TIMEOUT;
    let mut state = State {
        position: opts.from.clone(),
        opts,
        record,
    };
    // Session `n` goes to node `n` of the list, round the list.
    for node_index in 0..MAX_SESSIONS {
        if *stop.borrow() || Instant::now() >= give_up {
            return;
        }
        let node = state.opts.nodes[node_index % state.opts.nodes.len()].clone();
        let from = state.position.clone();
        let opened = Instant::now();
        let before = state.received();

        let end = match state.opts.transport {
            Transport::Ws => ws_session(&mut state, &node, &mut stop).await,
            Transport::Sse => sse_session(&mut state, &node, &mut stop).await,
            Transport::Poll => poll_session(&mut state, &node, &mut stop).await,
        };
        let stopped = matches!(end, SessionEnd::Stopped);
        let messages = state.received() - before;
        state.note(|r| {
            r.sessions.push(Session {
                node,
                from,
                opened,
                ended: Instant::now(),
                messages,
                end,
            })
        });
        if stopped {
            return;
        }

        tokio::select! {
            _ = stop.changed() => {}
            _ = tokio::time::sleep(RECONNECT_PAUSE) => {}
        }
    }
}

/// Whether `stop` says to end (or its sender is gone).
async fn stopped(stop: &mut watch::Receiver<bool>) {
    loop {
        if *stop.borrow() || stop.changed().await.is_err() {
            return;
        }
    }
}

async fn ws_session(state: &mut State, node: &str, stop: &mut watch::Receiver<bool>) -> SessionEnd {
    let url = format!("{}/v1/ws", node.replacen("http://", "ws://", 1));
    let connecting = tokio::time::timeout(STEP_TIMEOUT, tokio_tungstenite::connect_async(&url));
    let mut ws = match connecting.await {
        Ok(Ok((ws, _))) => ws,
        Ok(Err(e)) => return SessionEnd::Refused(format!("connect {url}: {e}")),
        Err(_) => return SessionEnd::Refused(format!("connect {url}: timed out")),
    };
    let mut op = json!({ "op": "subscribe", "channel": state.opts.channel });
    if let Some(since) = &state.position {
        op["since"] = json!(since);
    }
    let sending = tokio::time::timeout(STEP_TIMEOUT, ws.send(Message::text(op.to_string())));
    if !matches!(sending.await, Ok(Ok(()))) {
        return SessionEnd::WsBroken("sending subscribe failed".into());
    }

    let mut subscribed = false;
    let mut advice = Vec::new();
    loop {
        let next = tokio::select! {
            _ = stopped(stop) => {
                let _ = tokio::time::timeout(STEP_TIMEOUT, ws.close(None)).await;
                return SessionEnd::Stopped;
            }
            next = tokio::time::timeout(WS_SILENCE, ws.next()) => next,
        };
        let message = match next {
            Err(_) => return SessionEnd::WsBroken(format!("silent for {WS_SILENCE:?}")),
            Ok(None) => return SessionEnd::WsClosed { code: None, advice },
            Ok(Some(Err(e))) => return SessionEnd::WsBroken(e.to_string()),
            Ok(Some(Ok(message))) => message,
        };
        let text = match message {
            Message::Text(text) => text,
            Message::Close(frame) => {
                let code = frame.map(|f| u16::from(f.code));
                return SessionEnd::WsClosed { code, advice };
            }
            _ => continue,
        };
        let Ok(frame) = serde_json::from_str::<Value>(text.as_str()) else {
            state.note(|r| {
                r.unexpected
                    .push(format!("ws non-JSON {:?}", text.as_str()))
            });
            continue;
        };
        match frame["type"].as_str() {
            Some("message") => {
                if let Ok(position) = Position::of_message(&frame) {
                    state.position = Some(position.to_string());
                }
                state.note(|r| r.messages.push(frame));
            }
            Some("subscribed") => {
                if let Err(e) = state.verdict(node, &frame, subscribed) {
                    state.note(|r| r.unexpected.push(format!("ws {e:#}")));
                }
                if let Ok(position) = Position::of_subscribed(&frame) {
                    state.position = Some(position.to_string());
                }
                subscribed = true;
            }
            Some("reconnect") => advice.push(frame),
            Some("error") => return SessionEnd::Refused(frame.to_string()),
            _ => state.note(|r| r.unexpected.push(format!("ws frame {frame}"))),
        }
    }
}

async fn sse_session(
    state: &mut State,
    node: &str,
    stop: &mut watch::Receiver<bool>,
) -> SessionEnd {
    let url = match Url::parse(&format!("{node}/v1/sse")) {
        Ok(mut url) => {
            url.query_pairs_mut()
                .append_pair("channel", &state.opts.channel);
            url
        }
        Err(e) => return SessionEnd::Refused(e.to_string()),
    };
    let last_event_id = state.position.clone();
    let mut sse = match SseClient::connect(url, last_event_id.as_deref()).await {
        Ok(sse) => sse,
        Err(e) => return SessionEnd::Refused(format!("{e:#}")),
    };

    let mut subscribed = false;
    let mut error = None;
    loop {
        let next = tokio::select! {
            _ = stopped(stop) => return SessionEnd::Stopped,
            next = sse.next_event_or_end() => next,
        };
        let event = match next {
            Ok(Some(event)) => event,
            Ok(None) => {
                let retry_last = sse
                    .retries()
                    .last()
                    .filter(|(_, before)| *before == sse.dispatched())
                    .map(|(ms, _)| *ms);
                return SessionEnd::SseEnded { retry_last, error };
            }
            Err(e) => return SessionEnd::SseBroken(format!("{e:#}")),
        };
        let Ok(data) = event.json() else {
            state.note(|r| r.unexpected.push(format!("sse non-JSON {event:?}")));
            continue;
        };
        match event.event.as_str() {
            "message" => {
                if event.id.is_none() {
                    state.note(|r| {
                        r.unexpected
                            .push(format!("sse message without id {event:?}"))
                    });
                }
                state.position = event.id.clone().or(state.position.take());
                state.note(|r| r.messages.push(data));
            }
            "subscribed" => {
                if let Err(e) = state.verdict(node, &data, subscribed) {
                    state.note(|r| r.unexpected.push(format!("sse {e:#}")));
                }
                state.position = event.id.clone().or(state.position.take());
                subscribed = true;
            }
            "error" => error = Some(data),
            _ => state.note(|r| r.unexpected.push(format!("sse event {event:?}"))),
        }
    }
}

async fn poll_session(
    state: &mut State,
    node: &str,
    stop: &mut watch::Receiver<bool>,
) -> SessionEnd {
    let http = Http::new(node);
    let channel = state.opts.channel.clone();
    let mut first = true;
    loop {
        // Without a position the first poll only learns where "now" is.
        let hold = if state.position.is_none() {
            0
        } else {
            state.opts.poll_hold
        };
        let url = match http.poll_url(&[&channel], state.position.as_deref(), hold) {
            Ok(url) => url,
            Err(e) => return SessionEnd::Refused(format!("{e:#}")),
        };
        let answer = tokio::select! {
            _ = stopped(stop) => return SessionEnd::Stopped,
            answer = http.get_url(url, Duration::from_secs(hold)) => answer,
        };
        let text = match answer {
            Ok((200, text)) => text,
            Ok((status, text)) => {
                return SessionEnd::PollFailed {
                    status: Some(status),
                    detail: text,
                }
            }
            Err(e) => {
                return SessionEnd::PollFailed {
                    status: None,
                    detail: format!("{e:#}"),
                }
            }
        };
        let answer = match parse_poll_answer(&text) {
            Ok(answer) => answer,
            Err(e) => {
                state.note(|r| r.unexpected.push(format!("poll {e:#}")));
                return SessionEnd::PollFailed {
                    status: Some(200),
                    detail: text,
                };
            }
        };

        if first || !answer.recovered {
            // A verdict at the position the answer started from: the cursor
            // when no message came, else right before the first message.
            let start = match answer.messages.first() {
                Some(m) => m["offset"].as_u64().unwrap_or(1).saturating_sub(1),
                None => Position::parse(&answer.cursor).map_or(0, |p| p.offset),
            };
            let epoch = Position::parse(&answer.cursor)
                .map(|p| p.epoch)
                .unwrap_or_default();
            let frame = json!({"epoch": epoch, "offset": start, "recovered": answer.recovered});
            if let Err(e) = state.verdict(node, &frame, !first) {
                state.note(|r| r.unexpected.push(format!("poll {e:#}")));
            }
        }
        first = false;
        state.position = Some(answer.cursor.clone());
        state.note(|r| r.messages.extend(answer.messages));
    }
}
