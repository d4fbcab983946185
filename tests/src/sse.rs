//! A Server-Sent Events client for `GET /v1/sse`: an incremental
//! `text/event-stream` parser (the HTML standard's rules for lines, fields
//! and dispatch) over a `reqwest` body stream.

use std::collections::VecDeque;

use anyhow::{anyhow, bail, Context, Result};
use futures::stream::BoxStream;
use futures::StreamExt;
use reqwest::Url;
use serde_json::Value;

use crate::wait::STEP_TIMEOUT;

/// One dispatched event.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SseEvent {
    /// The `event:` field, or `"message"` when absent.
    pub event: String,
    /// The `data:` lines joined by `\n`.
    pub data: String,
    /// The `id:` field of this event, if it carried one.
    pub id: Option<String>,
}

impl SseEvent {
    /// `data` parsed as JSON.
    pub fn json(&self) -> Result<Value> {
        serde_json::from_str(&self.data)
            .with_context(|| format!("SSE {} event data is not JSON: {:?}", self.event, self.data))
    }
}

/// One open event stream.
pub struct SseClient {
    /// The response body, as chunks.
    body: BoxStream<'static, reqwest::Result<Vec<u8>>>,
    /// Bytes received but not yet split into lines.
    buf: Vec<u8>,
    /// Events parsed but not yet returned.
    ready: VecDeque<SseEvent>,
    /// The event being assembled from fields.
    pending: Pending,
    /// How many comment lines (`: heartbeat`) arrived.
    comments: usize,
    /// Every `retry:` field, with how many events had been dispatched when
    /// it arrived (so a test can tell a reconnect hint at the end of the
    /// stream from the one at its start).
    retries: Vec<(u64, usize)>,
    /// Events dispatched so far.
    dispatched: usize,
    /// The URL, for failure messages.
    url: String,
}

#[derive(Default)]
struct Pending {
    event: Option<String>,
    data: Option<String>,
    id: Option<String>,
}

impl SseClient {
    /// Opens `url`, sending `Last-Event-ID` when given. The answer must be 200
    /// with `content-type: text/event-stream`.
    pub async fn connect(url: Url, last_event_id: Option<&str>) -> Result<Self> {
        let client = reqwest::Client::builder()
            .no_proxy()
            .connect_timeout(STEP_TIMEOUT)
            .build()
            .context("building SSE client")?;
        let mut request = client
            .get(url.clone())
            .header("accept", "text/event-stream");
        if let Some(id) = last_event_id {
            request = request.header("last-event-id", id);
        }

        let response = tokio::time::timeout(STEP_TIMEOUT, request.send())
            .await
            .map_err(|_| anyhow!("GET {url} gave no answer within {STEP_TIMEOUT:?}"))?
            .with_context(|| format!("GET {url}"))?;
        let status = response.status().as_u16();
        let content_type = response
            .headers()
            .get("content-type")
            .and_then(|v| v.to_str().ok())
            .unwrap_or_default()
            .to_owned();
        if status != 200 || !content_type.starts_with("text/event-stream") {
            let body = tokio::time::timeout(STEP_TIMEOUT, response.text())
                .await
                .ok()
                .and_then(Result::ok)
                .unwrap_or_default();
            bail!("GET {url} answered {status} ({content_type}): {body}");
        }

        Ok(SseClient {
            body: response
                .bytes_stream()
                .map(|chunk| chunk.map(|bytes| bytes.to_vec()))
                .boxed(),
            buf: Vec::new(),
            ready: VecDeque::new(),
            pending: Pending::default(),
            comments: 0,
            retries: Vec::new(),
            dispatched: 0,
            url: url.to_string(),
        })
    }

    /// Every `retry:` hint so far (milliseconds), each with the number of
    /// events dispatched before it.
    pub fn retries(&self) -> &[(u64, usize)] {
        &self.retries
    }

    /// How many events have been dispatched so far.
    pub fn dispatched(&self) -> usize {
        self.dispatched
    }

    /// The next dispatched event, or `None` once the gateway ended the stream
    /// cleanly; silence past [`STEP_TIMEOUT`] or a broken body is an error.
    pub async fn next_event_or_end(&mut self) -> Result<Option<SseEvent>> {
        loop {
            if let Some(event) = self.ready.pop_front() {
                return Ok(Some(event));
            }
            let chunk = tokio::time::timeout(STEP_TIMEOUT, self.body.next())
                .await
                .map_err(|_| anyhow!("no SSE event from {} within {STEP_TIMEOUT:?}", self.url))?;
            match chunk {
                Some(chunk) => {
                    let chunk = chunk.with_context(|| format!("reading {}", self.url))?;
                    self.buf.extend_from_slice(&chunk);
                    self.parse_lines()?;
                }
                None => return Ok(None),
            }
        }
    }

    /// How many comment lines have arrived so far.
    pub fn comments(&self) -> usize {
        self.comments
    }

    /// The next dispatched event; silence past [`STEP_TIMEOUT`] or the end of
    /// the stream is an error.
    pub async fn next_event(&mut self) -> Result<SseEvent> {
        loop {
            if let Some(event) = self.ready.pop_front() {
                return Ok(event);
            }
            let chunk = tokio::time::timeout(STEP_TIMEOUT, self.body.next())
                .await
                .map_err(|_| anyhow!("no SSE event from {} within {STEP_TIMEOUT:?}", self.url))?;
            match chunk {
                Some(chunk) => {
                    let chunk = chunk.with_context(|| format!("reading {}", self.url))?;
                    self.buf.extend_from_slice(&chunk);
                    self.parse_lines()?;
                }
                None => bail!("{} ended the event stream", self.url),
            }
        }
    }

    /// Waits (bounded) for the gateway to end the stream; a `message` event
    /// first is an error, other events are skipped.
    pub async fn expect_end(&mut self) -> Result<()> {
        loop {
            while let Some(event) = self.ready.pop_front() {
                if event.event == "message" {
                    bail!("expected the stream to end, got {event:?}");
                }
            }
            let chunk = tokio::time::timeout(STEP_TIMEOUT, self.body.next())
                .await
                .map_err(|_| anyhow!("{} did not end within {STEP_TIMEOUT:?}", self.url))?;
            match chunk {
                Some(Ok(chunk)) => {
                    self.buf.extend_from_slice(&chunk);
                    self.parse_lines()?;
                }
                // A reset or an unclean end is an end all the same.
                Some(Err(_)) | None => return Ok(()),
            }
        }
    }

    /// The next event, which must be named `kind`; returns it.
    pub async fn next_named(&mut self, kind: &str) -> Result<SseEvent> {
        let event = self.next_event().await?;
        if event.event != kind {
            bail!("expected an SSE {kind:?} event, got {event:?}");
        }
        Ok(event)
    }

    /// The next event, which must be `subscribed`; returns its JSON.
    pub async fn subscribed(&mut self) -> Result<Value> {
        self.next_named("subscribed").await?.json()
    }

    /// The next `n` events, each a `message` carrying an `id:`; returns them.
    pub async fn recv_messages(&mut self, n: usize) -> Result<Vec<SseEvent>> {
        let mut events = Vec::with_capacity(n);
        for _ in 0..n {
            let event = self.next_named("message").await.with_context(|| {
                format!(
                    "message {} of {n} (got so far {events:?})",
                    events.len() + 1
                )
            })?;
            if event.id.is_none() {
                bail!("SSE message event without an id: field: {event:?}");
            }
            events.push(event);
        }
        Ok(events)
    }

    /// Splits complete lines off `buf` and feeds them to the field parser.
    fn parse_lines(&mut self) -> Result<()> {
        loop {
            let Some(end) = self.buf.iter().position(|&b| b == b'\n' || b == b'\r') else {
                return Ok(());
            };
            // A lone `\r` at the end may be the first half of `\r\n`.
            let terminator_len = match (self.buf[end], self.buf.get(end + 1)) {
                (b'\r', Some(b'\n')) => 2,
                (b'\r', None) => return Ok(()),
                _ => 1,
            };
            let line: Vec<u8> = self.buf.drain(..end + terminator_len).take(end).collect();
            let line = String::from_utf8(line).context("SSE line is not UTF-8")?;
            self.feed_line(&line);
        }
    }

    fn feed_line(&mut self, line: &str) {
        if line.is_empty() {
            self.dispatch();
            return;
        }
        if line.starts_with(':') {
            self.comments += 1;
            return;
        }

        let (field, value) = match line.split_once(':') {
            Some((field, value)) => (field, value.strip_prefix(' ').unwrap_or(value)),
            None => (line, ""),
        };
        match field {
            "event" => self.pending.event = Some(value.to_owned()),
            "data" => {
                // Each data line ends in `\n`; dispatch drops the last one.
                let data = self.pending.data.get_or_insert_with(String::new);
                data.push_str(value);
                data.push('\n');
            }
            "id" if !value.contains('\0') => self.pending.id = Some(value.to_owned()),
            "retry" => {
                // The standard ignores a retry that is not all ASCII digits.
                if let Ok(ms) = value.parse::<u64>() {
                    if value.bytes().all(|b| b.is_ascii_digit()) {
                        self.retries.push((ms, self.dispatched));
                    }
                }
            }
            _ => {}
        }
    }

    fn dispatch(&mut self) {
        let pending = std::mem::take(&mut self.pending);
        let Some(mut data) = pending.data else {
            return;
        };
        data.pop();
        self.dispatched += 1;
        self.ready.push_back(SseEvent {
            event: pending
                .event
                .filter(|e| !e.is_empty())
                .unwrap_or_else(|| "message".into()),
            data,
            id: pending.id,
        });
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parser() -> SseClient {
        SseClient {
            body: futures::stream::empty().boxed(),
            buf: Vec::new(),
            ready: VecDeque::new(),
            pending: Pending::default(),
            comments: 0,
            retries: Vec::new(),
            dispatched: 0,
            url: "test".into(),
        }
    }

    #[test]
    fn joins_data_lines_and_handles_crlf_split_across_chunks() -> Result<()> {
        let mut sse = parser();
        sse.buf.extend_from_slice(b": heartbeat\r");
        sse.parse_lines()?;
        sse.buf
            .extend_from_slice(b"\nevent: subscribed\r\ndata: {\"a\":\r\ndata: 1}\r\n\r\n");
        sse.parse_lines()?;
        sse.buf.extend_from_slice(b"id: e:1\ndata: x\n\n");
        sse.parse_lines()?;

        assert_eq!(sse.comments, 1);
        let first = sse.ready.pop_front().context("first event")?;
        assert_eq!(first.event, "subscribed");
        assert_eq!(first.data, "{\"a\":\n1}");
        assert_eq!(first.id, None);
        let second = sse.ready.pop_front().context("second event")?;
        assert_eq!(second.event, "message");
        assert_eq!(second.id.as_deref(), Some("e:1"));
        Ok(())
    }

    #[test]
    fn records_retry_hints_with_the_events_before_them() -> Result<()> {
        let mut sse = parser();
        sse.buf
            .extend_from_slice(b"retry: 2000\n\ndata: a\n\nretry: x1\n\nretry: 450\n\n");
        sse.parse_lines()?;
        assert_eq!(sse.retries(), &[(2000, 0), (450, 1)]);
        assert_eq!(sse.dispatched(), 1);
        Ok(())
    }
}
