//! The Server-Sent Events transport: `GET /v1/sse?channel=..`.
//!
//! Each message is one event: `id:` is the connection's multi-channel
//! position after it (so a browser's automatic reconnect resumes exactly) and
//! `data:` is the envelope, framed once per message and shared by every
//! stream. Per channel, a `subscribed` event opens the stream, with
//! `recovered:false` when the requested position could not be honoured.
//! Comment heartbeats keep idle streams open through proxies.

use std::{collections::HashMap, convert::Infallible};

use axum::{
    body::Body,
    extract::{RawQuery, State},
    http::{header, HeaderMap, HeaderValue, StatusCode},
    response::Response,
    Extension,
};
use bytes::{BufMut, Bytes, BytesMut};
use fanout::{Channel, Event, MultiPosition, Position, SubscribeError, Subscriber};
use futures::StreamExt;
use tokio::time::Instant;

use crate::{
    app::{subscribed_json, App, ConnInfo, Gauge, Query},
    codes::ErrorCode,
    error::ApiError,
};

/// The encoding slot of a message's SSE `data:` lines, built once per message.
const SSE_SLOT: usize = 1;

/// Most events gathered into one write.
const MAX_BATCH: usize = 64;

/// Opens an event stream on the channels named in the query.
pub async fn handler(
    State(app): State<App>,
    RawQuery(raw): RawQuery,
    headers: HeaderMap,
    Extension(conn): Extension<ConnInfo>,
) -> Result<Response, ApiError> {
    if app.shutdown.is_cancelled() {
        return Ok(transient(&app, ErrorCode::ShuttingDown));
    }
    let query = Query::parse(raw.as_deref());
    let channels = query.channels(app.config.max_channels)?;
    if channels.is_empty() {
        return Err(ApiError::plain(ErrorCode::NoChannel));
    }

    // The header wins over the query parameter (EventSource sets it on reconnect).
    let last_id = headers
        .get("last-event-id")
        .map(|v| v.to_str().ok())
        .or_else(|| query.get("last_event_id").map(Some));
    // A header that is not even text is as malformed as a bad position.
    let since = last_id.map(|s| s.and_then(|s| MultiPosition::parse(s, channels.len()).ok()));

    let mut sub = app.hub.subscriber_with_alarm(conn.alarm.clone());
    let mut head = BytesMut::new();
    head.put_slice(format!("retry: {}\n\n", app.config.sse_retry_ms).as_bytes());
    let mut positions = Vec::with_capacity(channels.len());
    let mut subscribed = Vec::with_capacity(channels.len());
    for (i, ch) in channels.iter().enumerate() {
        let pos = match &since {
            Some(Some(m)) => m.0.get(i),
            _ => None,
        };
        let mut s = match sub.subscribe(ch.clone(), pos).await {
            Ok(s) => s,
            Err(SubscribeError::Broker(e)) => {
                tracing::warn!(cause = %e, "sse subscribe failed: broker unavailable");
                return Ok(transient(&app, ErrorCode::Unavailable));
            }
            Err(other) => return Err(ApiError::new(ErrorCode::BadRequest, other.to_string())),
        };
        s.recovered &= !matches!(since, Some(None));
        positions.push(s.position.clone());
        subscribed.push(s);
    }
    let id = MultiPosition(positions.clone()).to_string();
    for s in &subscribed {
        let lines = data_lines(subscribed_json(s).as_bytes());
        put_event(&mut head, Some("subscribed"), Some(&id), &lines);
    }

    let index = channels
        .iter()
        .cloned()
        .enumerate()
        .map(|(i, c)| (c, i))
        .collect();
    let gauge = Gauge::up(app.clone(), |m| &m.sse);
    let stream = Stream {
        app: app.clone(),
        sub,
        positions,
        index,
        conn: conn.clone(),
        _gauge: gauge,
    };
    let body = futures::stream::once(async move { Ok::<_, Infallible>(head.freeze()) }).chain(
        futures::stream::unfold(Some(stream), |state| async move {
            let mut state = state?;
            let (chunk, go_on) = state.next_chunk().await;
            Some((Ok::<_, Infallible>(chunk), go_on.then_some(state)))
        }),
    );

    tracing::info!(transport = "sse", peer = %conn.peer, channels = channels.len(), "open");
    Ok(event_stream(Body::from_stream(body)))
}

/// The answer to a transient failure. `EventSource` gives up for good on any
/// status but 200, so a condition that will pass (broker down, node draining)
/// answers 200 with a `retry:` hint and an `error` event, then ends the stream:
/// the browser reconnects by itself after the hinted delay, with its
/// `Last-Event-ID`, so nothing is lost.
fn transient(app: &App, code: ErrorCode) -> Response {
    let info = code.info();
    let retry = app.reconnect_delay().as_millis();
    let data = serde_json::json!({"type": "error", "code": info.code, "reason": info.reason});
    let mut buf = BytesMut::new();
    buf.put_slice(format!("retry: {retry}\n\n").as_bytes());
    put_event(
        &mut buf,
        Some("error"),
        None,
        &data_lines(data.to_string().as_bytes()),
    );
    event_stream(Body::from(buf.freeze()))
}

/// A 200 `text/event-stream` response with the headers proxies and browsers need.
fn event_stream(body: Body) -> Response {
    let mut resp = Response::new(body);
    *resp.status_mut() = StatusCode::OK;
    let h = resp.headers_mut();
    h.insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static("text/event-stream"),
    );
    h.insert(header::CACHE_CONTROL, HeaderValue::from_static("no-cache"));
    h.insert("x-accel-buffering", HeaderValue::from_static("no"));
    resp
}

/// One open event stream.
struct Stream {
    app: App,
    sub: Subscriber,
    /// Each channel's position, in the request's channel order: the `id:` of the next event.
    positions: Vec<Position>,
    /// Channel to its index in `positions`.
    index: HashMap<Channel, usize>,
    conn: ConnInfo,
    /// Counts this stream as open for as long as it lives.
    _gauge: Gauge,
}

impl Drop for Stream {
    fn drop(&mut self) {
        tracing::info!(transport = "sse", peer = %self.conn.peer, "close");
    }
}

impl Stream {
    /// The next bytes to send, and whether the stream goes on after them.
    async fn next_chunk(&mut self) -> (Bytes, bool) {
        let heartbeat = self.app.config.sse_heartbeat();
        let shutdown = self.app.shutdown.clone();
        let deadline = Instant::now() + heartbeat;
        tokio::select! {
            biased;
            _ = shutdown.cancelled() => {
                // Flush what is queued, then advise a jittered reconnect and end.
                let mut buf = BytesMut::new();
                while let Ok(Some(ev)) = self.sub.try_next() {
                    self.put(&mut buf, &ev);
                }
                let retry = self.app.reconnect_delay().as_millis();
                buf.put_slice(format!("retry: {retry}\n\n").as_bytes());
                (buf.freeze(), false)
            }
            ev = self.sub.next() => match ev {
                Ok(ev) => (self.batch(ev), true),
                Err(_) => {
                    tracing::info!(transport = "sse", peer = %self.conn.peer, reason = "slow consumer", "close");
                    (Bytes::new(), false)
                }
            },
            _ = tokio::time::sleep_until(deadline) => (Bytes::from_static(b": heartbeat\n\n"), true),
        }
    }

    /// Frames `first` and every event ready after it into one buffer.
    fn batch(&mut self, first: Event) -> Bytes {
        let mut buf = BytesMut::new();
        let mut ev = Some(first);
        let mut n = 0;
        while let Some(e) = ev.take() {
            self.put(&mut buf, &e);
            n += 1;
            if n < MAX_BATCH {
                ev = self.sub.try_next().ok().flatten();
            }
        }
        buf.freeze()
    }

    fn put(&mut self, buf: &mut BytesMut, ev: &Event) {
        match ev {
            Event::Message(m) => {
                if let Some(&i) = self.index.get(&m.channel) {
                    self.positions[i] = m.position();
                }
                let id = MultiPosition(self.positions.clone()).to_string();
                match m.encoded(SSE_SLOT, |m| data_lines(m.envelope())) {
                    Some(lines) => put_event(buf, None, Some(&id), lines),
                    None => put_event(buf, None, Some(&id), &data_lines(m.envelope())),
                }
            }
            Event::Reset(s) => {
                if let Some(&i) = self.index.get(&s.channel) {
                    self.positions[i] = s.position.clone();
                }
                let id = MultiPosition(self.positions.clone()).to_string();
                let lines = data_lines(subscribed_json(s).as_bytes());
                put_event(buf, Some("subscribed"), Some(&id), &lines);
            }
        }
    }
}

/// Appends one complete event; `lines` are its `data:` lines from [`data_lines`].
fn put_event(buf: &mut BytesMut, event: Option<&str>, id: Option<&str>, lines: &[u8]) {
    if let Some(name) = event {
        buf.put_slice(b"event: ");
        buf.put_slice(name.as_bytes());
        buf.put_u8(b'\n');
    }
    if let Some(id) = id {
        buf.put_slice(b"id: ");
        buf.put_slice(id.as_bytes());
        buf.put_u8(b'\n');
    }
    buf.put_slice(lines);
    buf.put_u8(b'\n');
}

/// `data:` lines for a payload: one per line of it, CR, LF and CRLF all being
/// line breaks, so no payload byte can start a field or end the event.
pub fn data_lines(payload: &[u8]) -> Bytes {
    let mut out = BytesMut::with_capacity(payload.len() + 8);
    let mut rest = payload;
    loop {
        let cut = rest.iter().position(|&b| b == b'\n' || b == b'\r');
        out.put_slice(b"data: ");
        match cut {
            None => {
                out.put_slice(rest);
                out.put_u8(b'\n');
                break;
            }
            Some(i) => {
                out.put_slice(&rest[..i]);
                out.put_u8(b'\n');
                let skip = if rest[i] == b'\r' && rest.get(i + 1) == Some(&b'\n') {
                    2
                } else {
                    1
                };
                rest = &rest[i + skip..];
            }
        }
    }
    out.freeze()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_kind_of_line_break_starts_a_new_data_line() {
        assert_eq!(&data_lines(b"a")[..], b"data: a\n");
        assert_eq!(&data_lines(b"")[..], b"data: \n");
        assert_eq!(
            &data_lines(b"a\nb\rc\r\nd")[..],
            b"data: a\ndata: b\ndata: c\ndata: d\n"
        );
        assert_eq!(&data_lines(b"a\n")[..], b"data: a\ndata: \n");
    }
}
