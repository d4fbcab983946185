//! One subscriber on one channel over any of the three transports, so a test
//! that states a delivery promise can run it on WebSocket, SSE and long-poll
//! alike. Each transport keeps its own resume handle: the WebSocket `since`,
//! the SSE `id:`, the long-poll `cursor`.

use std::collections::VecDeque;
use std::fmt;

use anyhow::{bail, Context, Result};
use reqwest::Url;
use serde_json::Value;

use crate::envelope::Position;
use crate::http::Http;
use crate::sse::SseClient;
use crate::wait::STEP_TIMEOUT;
use crate::ws::WsClient;

/// How long one long-poll of a [`Subscriber`] holds: short enough that two
/// fit in one [`STEP_TIMEOUT`].
const POLL_HOLD_SECONDS: u64 = 4;

/// A client transport.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Transport {
    Ws,
    Sse,
    Poll,
}

impl Transport {
    /// Every transport, for tests that run on each.
    pub const ALL: [Transport; 3] = [Transport::Ws, Transport::Sse, Transport::Poll];
}

impl fmt::Display for Transport {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Transport::Ws => "websocket",
            Transport::Sse => "sse",
            Transport::Poll => "long-poll",
        })
    }
}

/// What the gateway answered to a subscription: where delivery starts.
#[derive(Debug, Clone)]
pub struct Subscribed {
    /// Messages after this position follow.
    pub position: Position,
    /// `false` when a requested position could not be honoured.
    pub recovered: bool,
}

/// A live subscription to one channel.
pub struct Subscriber {
    transport: Transport,
    channel: String,
    inner: Inner,
    /// The resume position after the last message taken.
    position: Option<String>,
}

enum Inner {
    Ws(WsClient),
    Sse(SseClient),
    Poll {
        http: Http,
        cursor: String,
        queue: VecDeque<Value>,
    },
}

impl Subscriber {
    /// Subscribes to `channel` on the node at `base_url` (`http://...`), live
    /// from now, or from `from` (a position in the transport's own format)
    /// when given.
    pub async fn open(
        transport: Transport,
        base_url: &str,
        channel: &str,
        from: Option<&str>,
    ) -> Result<(Self, Subscribed)> {
        let opened = match transport {
            Transport::Ws => Self::open_ws(base_url, channel, from).await,
            Transport::Sse => Self::open_sse(base_url, channel, from).await,
            Transport::Poll => Self::open_poll(base_url, channel, from).await,
        };
        opened.with_context(|| format!("subscribing over {transport} to {channel:?}"))
    }

    /// The transport in use.
    pub fn transport(&self) -> Transport {
        self.transport
    }

    /// Where to resume after the last message taken, in the transport's own
    /// format (a multi-channel position of one channel).
    pub fn position(&self) -> Option<&str> {
        self.position.as_deref()
    }

    /// The next message envelope on the channel.
    pub async fn next_message(&mut self) -> Result<Value> {
        let message = match &mut self.inner {
            Inner::Ws(ws) => {
                let message = ws.recv_type("message").await?;
                self.position = Some(Position::of_message(&message)?.to_string());
                message
            }
            Inner::Sse(sse) => {
                let event = sse.next_named("message").await?;
                self.position = Some(
                    event
                        .id
                        .clone()
                        .with_context(|| format!("SSE message without id: {event:?}"))?,
                );
                event.json()?
            }
            Inner::Poll {
                http,
                cursor,
                queue,
            } => {
                let message = Self::next_polled(http, &self.channel, cursor, queue).await?;
                // The cursor is the position after the whole answer; between
                // messages of one answer the position is the message's own.
                self.position = Some(if queue.is_empty() {
                    cursor.clone()
                } else {
                    Position::of_message(&message)?.to_string()
                });
                message
            }
        };
        if message["channel"] != self.channel.as_str() {
            bail!(
                "{} subscriber of {:?} got {message}",
                self.transport,
                self.channel
            );
        }
        Ok(message)
    }

    /// The next `n` messages.
    pub async fn recv_messages(&mut self, n: usize) -> Result<Vec<Value>> {
        let mut messages = Vec::with_capacity(n);
        for _ in 0..n {
            let message = self.next_message().await.with_context(|| {
                format!(
                    "{} message {} of {n} (got so far {messages:?})",
                    self.transport,
                    messages.len() + 1
                )
            })?;
            messages.push(message);
        }
        Ok(messages)
    }

    /// Ends the subscription: closes the socket or stream (a poll holds
    /// nothing between requests).
    pub async fn close(self) -> Result<()> {
        match self.inner {
            Inner::Ws(ws) => ws.close().await,
            Inner::Sse(sse) => {
                drop(sse);
                Ok(())
            }
            Inner::Poll { .. } => Ok(()),
        }
    }

    async fn open_ws(
        base_url: &str,
        channel: &str,
        from: Option<&str>,
    ) -> Result<(Self, Subscribed)> {
        let url = format!("{}/v1/ws", base_url.replacen("http://", "ws://", 1));
        let mut ws = WsClient::connect(&url).await?;
        let frame = ws.subscribe(channel, from).await?;
        let subscribed = subscribed_of(&frame)?;

        let subscriber = Subscriber {
            transport: Transport::Ws,
            channel: channel.to_owned(),
            position: Some(subscribed.position.to_string()),
            inner: Inner::Ws(ws),
        };
        Ok((subscriber, subscribed))
    }

    async fn open_sse(
        base_url: &str,
        channel: &str,
        from: Option<&str>,
    ) -> Result<(Self, Subscribed)> {
        let mut url = Url::parse(&format!("{base_url}/v1/sse"))?;
        url.query_pairs_mut().append_pair("channel", channel);
        let sse = SseClient::connect(url, from).await?;
        Self::from_sse(sse, channel).await
    }

    /// Wraps an SSE stream opened by the caller (say, with
    /// `?last_event_id=`) on one channel: reads its `subscribed` event.
    pub async fn from_sse(mut sse: SseClient, channel: &str) -> Result<(Self, Subscribed)> {
        let frame = sse.subscribed().await?;
        if frame["channel"] != channel {
            bail!("SSE subscribed event names another channel: {frame}");
        }
        let subscribed = subscribed_of(&frame)?;

        let subscriber = Subscriber {
            transport: Transport::Sse,
            channel: channel.to_owned(),
            position: Some(subscribed.position.to_string()),
            inner: Inner::Sse(sse),
        };
        Ok((subscriber, subscribed))
    }

    async fn open_poll(
        base_url: &str,
        channel: &str,
        from: Option<&str>,
    ) -> Result<(Self, Subscribed)> {
        let http = Http::new(base_url);
        let answer = http.poll(&[channel], from, 0).await?;
        let cursor = Position::parse(&answer.cursor)?;

        // Delivery starts right before the first message returned, or at the
        // returned cursor when nothing was.
        let start = match answer.messages.first() {
            Some(first) => Position {
                epoch: cursor.epoch.clone(),
                offset: crate::envelope::offset_of(first)?.saturating_sub(1),
            },
            None => cursor,
        };
        let subscribed = Subscribed {
            position: start.clone(),
            recovered: answer.recovered,
        };

        let subscriber = Subscriber {
            transport: Transport::Poll,
            channel: channel.to_owned(),
            position: Some(start.to_string()),
            inner: Inner::Poll {
                http,
                cursor: answer.cursor,
                queue: answer.messages.into(),
            },
        };
        Ok((subscriber, subscribed))
    }

    /// Takes the next queued message, long-polling (bounded) when none is
    /// queued. Every poll from a cursor the gateway returned must say
    /// `recovered: true`.
    async fn next_polled(
        http: &Http,
        channel: &str,
        cursor: &mut String,
        queue: &mut VecDeque<Value>,
    ) -> Result<Value> {
        let give_up = tokio::time::Instant::now() + STEP_TIMEOUT;
        loop {
            if let Some(message) = queue.pop_front() {
                return Ok(message);
            }
            if tokio::time::Instant::now() >= give_up {
                bail!("no message by long-poll on {channel:?} within {STEP_TIMEOUT:?} (cursor {cursor})");
            }

            let answer = http
                .poll(&[channel], Some(cursor), POLL_HOLD_SECONDS)
                .await?;
            if !answer.recovered {
                bail!(
                    "poll from the gateway's own cursor {cursor} answered recovered:false: {}",
                    answer.body
                );
            }
            *cursor = answer.cursor;
            queue.extend(answer.messages);
        }
    }
}

/// The [`Subscribed`] of a WebSocket `subscribed` frame or SSE event.
fn subscribed_of(frame: &Value) -> Result<Subscribed> {
    let recovered = frame["recovered"]
        .as_bool()
        .with_context(|| format!("subscribed frame without a recovered bool: {frame}"))?;
    Ok(Subscribed {
        position: Position::of_subscribed(frame)?,
        recovered,
    })
}
