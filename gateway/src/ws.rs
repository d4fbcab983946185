//! The WebSocket transport: `GET /v1/ws`, JSON text frames both ways.
//!
//! One task per connection selects over three things: frames from the client
//! (operations), events from its [`fanout::Subscriber`], and one ping timer
//! that also detects a silent peer. Writes coalesce every event ready at that
//! moment into one flush, and a write that cannot proceed while the queue
//! overflows ends the connection as a slow consumer.

use std::time::Duration;

use axum::{
    extract::{
        ws::{
            rejection::WebSocketUpgradeRejection, CloseFrame, Message, Utf8Bytes, WebSocket,
            WebSocketUpgrade,
        },
        RawQuery, State,
    },
    response::Response,
    Extension,
};
use fanout::{Channel, Event, MultiPosition, Position, SubscribeError, Subscriber};
use futures::SinkExt;
use serde::Deserialize;
use serde_json::json;
use tokio::time::{timeout, Instant};

use crate::{
    app::{subscribed_json, App, ConnInfo, Gauge, Query},
    codes::{Close, ErrorCode},
    error::ApiError,
};

/// The encoding slot of a message's WebSocket text frame, built once per message.
const WS_SLOT: usize = 0;

/// Most events written between two flushes, so one busy connection cannot
/// hold its task for long.
const MAX_BATCH: usize = 64;

/// Batches of queued events flushed to a client when the node drains; with
/// [`MAX_BATCH`] this covers a default-sized queue.
const FLUSH_BATCHES: usize = 16;

/// How long the gateway waits for its close frame to be written.
const CLOSE_WAIT: Duration = Duration::from_secs(1);

/// Upgrades to a WebSocket after checking the channels named in the query.
pub async fn handler(
    State(app): State<App>,
    RawQuery(raw): RawQuery,
    Extension(conn): Extension<ConnInfo>,
    upgrade: Result<WebSocketUpgrade, WebSocketUpgradeRejection>,
) -> Result<Response, ApiError> {
    let upgrade = upgrade.map_err(refuse_upgrade)?;
    if app.shutdown.is_cancelled() {
        return Err(ApiError::plain(ErrorCode::ShuttingDown));
    }
    let query = Query::parse(raw.as_deref());
    let channels = query.channels(app.config.max_channels)?;
    // A malformed `since` is not refused: those channels resume with `recovered: false`.
    let since = query
        .get("since")
        .map(|s| MultiPosition::parse(s, channels.len()).ok());

    let max = app.config.ws_max_message;
    let upgrade = upgrade
        .read_buffer_size(1024)
        .write_buffer_size(8 * 1024)
        .max_message_size(max)
        .max_frame_size(max);
    Ok(upgrade.on_upgrade(move |socket| async move {
        let _task = app.tracker.token();
        let _gauge = Gauge::up(app.clone(), |m| &m.ws);
        tracing::info!(transport = "ws", peer = %conn.peer, "open");
        let mut session = Session {
            sub: app.hub.subscriber(),
            app: app.clone(),
            socket,
        };
        let why = session.run(channels, since).await;
        tracing::info!(transport = "ws", peer = %conn.peer, reason = why, "close");
    }))
}

/// A request that is not a usable WebSocket upgrade, answered from the code table.
fn refuse_upgrade(rejection: WebSocketUpgradeRejection) -> ApiError {
    match rejection {
        WebSocketUpgradeRejection::InvalidWebSocketVersionHeader(_) => {
            ApiError::plain(ErrorCode::UpgradeRequired)
        }
        other => ApiError::new(
            ErrorCode::NotUpgrade,
            format!("{}: {other}", ErrorCode::NotUpgrade.info().reason),
        ),
    }
}

/// A client operation, decoded loosely so each mistake gets its own error code.
#[derive(Deserialize)]
struct RawOp {
    op: Option<String>,
    channel: Option<String>,
    since: Option<String>,
}

/// A client operation, checked.
#[derive(Debug, PartialEq, Eq)]
pub enum ClientOp {
    /// `since` is `Some(Err(()))` for a malformed position: the subscribe still
    /// happens, from now, answered with `recovered: false`.
    Subscribe {
        channel: Channel,
        since: Option<Result<Position, ()>>,
    },
    Unsubscribe {
        channel: Channel,
    },
    Ping,
}

/// Why a client frame was refused; answered with an `error` frame.
#[derive(Debug, PartialEq, Eq)]
pub struct OpError {
    pub code: ErrorCode,
    pub reason: String,
    pub channel: Option<String>,
}

impl OpError {
    fn new(code: ErrorCode, reason: impl Into<String>, channel: Option<&str>) -> Self {
        Self {
            code,
            reason: reason.into(),
            channel: channel.map(str::to_owned),
        }
    }
}

/// Decodes one client text frame.
pub fn parse_op(text: &str) -> Result<ClientOp, OpError> {
    let op: RawOp = serde_json::from_str(text)
        .map_err(|e| OpError::new(ErrorCode::BadJson, e.to_string(), None))?;
    let channel = |what: &str| -> Result<Channel, OpError> {
        let name = op.channel.as_deref().ok_or_else(|| {
            OpError::new(
                ErrorCode::BadRequest,
                format!("{what} needs a channel"),
                None,
            )
        })?;
        Channel::new(name)
            .map_err(|e| OpError::new(ErrorCode::BadChannel, e.to_string(), Some(name)))
    };
    match op.op.as_deref() {
        Some("subscribe") => {
            let channel = channel("subscribe")?;
            let since = op
                .since
                .as_deref()
                .map(|s| Position::parse(s).map_err(|_| ()));
            Ok(ClientOp::Subscribe { channel, since })
        }
        Some("unsubscribe") => Ok(ClientOp::Unsubscribe {
            channel: channel("unsubscribe")?,
        }),
        Some("ping") => Ok(ClientOp::Ping),
        _ => Err(OpError::new(
            ErrorCode::UnknownOp,
            ErrorCode::UnknownOp.info().reason,
            None,
        )),
    }
}

struct Session {
    app: App,
    socket: WebSocket,
    sub: Subscriber,
}

impl Session {
    /// Serves the connection until it ends; returns why it ended, for the log.
    async fn run(
        &mut self,
        channels: Vec<Channel>,
        since: Option<Option<MultiPosition>>,
    ) -> &'static str {
        for (i, ch) in channels.into_iter().enumerate() {
            let pos = match &since {
                None => None,
                Some(Some(m)) => m.0.get(i).cloned().map(Ok),
                Some(None) => Some(Err(())),
            };
            if Box::pin(self.subscribe(ch, pos)).await.is_err() {
                return "write failed";
            }
        }

        let cfg = &self.app.config;
        let (ping_every, idle_limit) = (cfg.ws_ping(), cfg.ws_idle_timeout());
        let mut ping = tokio::time::interval_at(Instant::now() + ping_every, ping_every);
        let mut last_heard = Instant::now();
        let shutdown = self.app.shutdown.clone();
        loop {
            tokio::select! {
                biased;
                _ = shutdown.cancelled() => {
                    // Flush what is already queued so the client's position is as
                    // far on as it can be; it resumes from there on another node.
                    for _ in 0..FLUSH_BATCHES {
                        match self.sub.try_next() {
                            Ok(Some(ev)) => {
                                if Box::pin(self.write_events(ev, CLOSE_WAIT)).await.is_err() {
                                    break;
                                }
                            }
                            _ => break,
                        }
                    }
                    let delay = self.app.reconnect_delay().as_millis() as u64;
                    let advice = json!({"type": "reconnect", "delay_ms": delay}).to_string();
                    let _ = timeout(CLOSE_WAIT, self.socket.send(Message::Text(advice.into()))).await;
                    Box::pin(self.close(Close::GoingAway)).await;
                    return "drain";
                }
                frame = self.socket.recv() => {
                    last_heard = Instant::now();
                    match frame {
                        None => return "peer closed",
                        Some(Ok(Message::Text(text))) => {
                            if Box::pin(self.on_text(&text)).await.is_err() {
                                return "write failed";
                            }
                        }
                        Some(Ok(Message::Binary(_))) => {
                            Box::pin(self.close(Close::UnsupportedData)).await;
                            return "binary frame";
                        }
                        Some(Ok(Message::Ping(_))) => {
                            // The pong is queued by the library; send it now, not with the next message.
                            if timeout(idle_limit, self.socket.flush()).await.is_err() {
                                return "write timeout";
                            }
                        }
                        Some(Ok(Message::Pong(_))) => {}
                        Some(Ok(Message::Close(_))) => {
                            // The library has queued its answering close frame
                            // (1002 for an invalid code); put it on the wire.
                            let _ = timeout(CLOSE_WAIT, self.socket.flush()).await;
                            return "peer closed";
                        }
                        Some(Err(e)) => {
                            let close = classify(e);
                            if let Some(close) = close {
                                self.close(close).await;
                            }
                            return "protocol error";
                        }
                    }
                }
                ev = self.sub.next() => {
                    let Ok(ev) = ev else {
                        Box::pin(self.close(Close::SlowConsumer)).await;
                        return "slow consumer";
                    };
                    match Box::pin(self.write_events(ev, idle_limit)).await {
                        Ok(()) => {}
                        Err(why) => return why,
                    }
                }
                _ = ping.tick() => {
                    if last_heard.elapsed() > idle_limit {
                        Box::pin(self.close(Close::PingTimeout)).await;
                        return "ping timeout";
                    }
                    if timeout(idle_limit, self.socket.send(Message::Ping(Default::default()))).await.is_err() {
                        return "write timeout";
                    }
                }
            }
        }
    }

    /// Writes `first` and every event ready after it, then flushes once.
    async fn write_events(&mut self, first: Event, wait: Duration) -> Result<(), &'static str> {
        let mut frames = vec![frame(&first)];
        while frames.len() < MAX_BATCH {
            match self.sub.try_next() {
                Ok(Some(ev)) => frames.push(frame(&ev)),
                Ok(None) => break,
                Err(_) => break, // reported by the next `next()`
            }
        }
        let socket = &mut self.socket;
        let write = async {
            for f in frames {
                socket.feed(f).await?;
            }
            socket.flush().await
        };
        tokio::select! {
            r = timeout(wait, write) => match r {
                Ok(Ok(())) => Ok(()),
                Ok(Err(_)) => Err("write failed"),
                Err(_) => Err("write timeout"),
            },
            _ = self.sub.lagged() => {
                Err("slow consumer")
            }
        }
    }

    async fn on_text(&mut self, text: &str) -> Result<(), axum::Error> {
        match parse_op(text) {
            Err(e) => self.error(e.code, &e.reason, e.channel.as_deref()).await,
            Ok(ClientOp::Subscribe { channel, since }) => self.subscribe(channel, since).await,
            Ok(ClientOp::Unsubscribe { channel }) => {
                if !self.sub.unsubscribe(&channel) {
                    let reason = ErrorCode::NotSubscribed.info().reason;
                    return self
                        .error(ErrorCode::NotSubscribed, reason, Some(channel.as_str()))
                        .await;
                }
                let frame =
                    json!({"type": "unsubscribed", "channel": channel.as_str()}).to_string();
                self.send(frame).await
            }
            Ok(ClientOp::Ping) => self.send(r#"{"type":"pong"}"#.to_string()).await,
        }
    }

    /// Subscribes and answers with `subscribed` or an error frame. A malformed
    /// position (`Err`) resumes from now with `recovered: false`.
    async fn subscribe(
        &mut self,
        channel: Channel,
        since: Option<Result<Position, ()>>,
    ) -> Result<(), axum::Error> {
        let malformed = matches!(since, Some(Err(())));
        let since = since.and_then(Result::ok);
        match self.sub.subscribe(channel.clone(), since.as_ref()).await {
            Ok(mut s) => {
                s.recovered &= !malformed;
                self.send(subscribed_json(&s)).await
            }
            Err(e) => {
                let (code, reason) = match &e {
                    SubscribeError::AlreadySubscribed => {
                        (ErrorCode::AlreadySubscribed, e.to_string())
                    }
                    SubscribeError::TooManyChannels(_) => {
                        (ErrorCode::TooManyChannels, e.to_string())
                    }
                    // A fault of ours or the broker's: logged here, the table's words for the client.
                    SubscribeError::Broker(cause) => {
                        tracing::warn!(%cause, "ws subscribe failed");
                        let code = ErrorCode::Unavailable;
                        (code, code.info().reason.to_owned())
                    }
                };
                self.error(code, &reason, Some(channel.as_str())).await
            }
        }
    }

    async fn error(
        &mut self,
        code: ErrorCode,
        reason: &str,
        channel: Option<&str>,
    ) -> Result<(), axum::Error> {
        let mut frame = json!({"type": "error", "code": code.info().code, "reason": reason});
        if let Some(ch) = channel {
            frame["channel"] = ch.into();
        }
        self.send(frame.to_string()).await
    }

    async fn send(&mut self, text: String) -> Result<(), axum::Error> {
        let limit = self.app.config.ws_idle_timeout();
        match timeout(limit, self.socket.send(Message::Text(text.into()))).await {
            Ok(r) => r,
            Err(_) => Err(axum::Error::new("write timeout")),
        }
    }

    /// Sends one close frame from the table (bounded wait; the peer may be gone).
    async fn close(&mut self, close: Close) {
        let frame = CloseFrame {
            code: close.code(),
            reason: Utf8Bytes::from_static(close.reason()),
        };
        let _ = timeout(CLOSE_WAIT, self.socket.send(Message::Close(Some(frame)))).await;
    }
}

/// A subscriber event as a text frame; message frames are shared by every connection.
fn frame(ev: &Event) -> Message {
    match ev {
        Event::Message(m) => {
            let text = m.encoded(WS_SLOT, |m| {
                Utf8Bytes::try_from(m.envelope().clone())
                    .unwrap_or_else(|_| Utf8Bytes::from(m.envelope_str()))
            });
            Message::Text(
                text.cloned()
                    .unwrap_or_else(|| Utf8Bytes::from(m.envelope_str())),
            )
        }
        Event::Reset(s) => Message::Text(subscribed_json(s).into()),
    }
}

/// The close code answering a failed read, if the connection can still carry one.
fn classify(e: axum::Error) -> Option<Close> {
    let inner = e.into_inner();
    let Some(e) = inner.downcast_ref::<tungstenite::Error>() else {
        return Some(Close::ProtocolError);
    };
    match e {
        tungstenite::Error::Utf8(_) => Some(Close::InvalidPayload),
        tungstenite::Error::Capacity(_) => Some(Close::TooBig),
        tungstenite::Error::Protocol(_) => Some(Close::ProtocolError),
        _ => None,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn each_op_mistake_gets_its_own_code() {
        let code = |t: &str| parse_op(t).err().map(|e| e.code);
        assert_eq!(code("{"), Some(ErrorCode::BadJson));
        assert_eq!(code("[1]"), Some(ErrorCode::BadJson));
        assert_eq!(code(r#"{"op":"dance"}"#), Some(ErrorCode::UnknownOp));
        assert_eq!(code(r#"{"op":"subscribe"}"#), Some(ErrorCode::BadRequest));
        assert_eq!(
            code(r#"{"op":"subscribe","channel":"a b"}"#),
            Some(ErrorCode::BadChannel)
        );
        assert_eq!(parse_op(r#"{"op":"ping"}"#), Ok(ClientOp::Ping));
    }

    #[test]
    fn malformed_since_still_subscribes() {
        let op = parse_op(r#"{"op":"subscribe","channel":"a","since":"zz"}"#).unwrap();
        assert!(matches!(
            op,
            ClientOp::Subscribe {
                since: Some(Err(())),
                ..
            }
        ));
    }
}
