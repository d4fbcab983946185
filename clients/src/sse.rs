//! Server-Sent Events transport: `GET /v1/sse?channel=..` answering `text/event-stream`.
//!
//! [`SseParser`] is an incremental parser following the WHATWG HTML
//! "event stream interpretation" rules: UTF-8 (invalid bytes become U+FFFD),
//! one leading BOM stripped, lines ended by CRLF, LF or CR (also when a CRLF
//! is split between two chunks), `:` comment lines ignored, fields `event`,
//! `data` (several lines joined by `\n`), `id` (ignored if it contains NUL;
//! kept across events as the "last event ID") and `retry` (digits only),
//! unknown fields ignored, an event dispatched on a blank line only when it
//! has data, and an unterminated event at end of stream discarded.
//!
//! [`SseStream`] runs the parser over a `reqwest` body, sends `Last-Event-ID`
//! when resuming, and bounds every wait.

use std::{collections::VecDeque, pin::Pin, time::Duration};

use bytes::Bytes;
use futures::{Stream, StreamExt};
use reqwest::{header, Url};

use crate::{
    client::{GatewayClient, Timeouts},
    error::{Error, Result},
    protocol::ServerFrame,
};

/// The longest line plus pending event data the stream accepts (a stream that
/// never ends its lines is cut off instead of filling memory).
pub const MAX_EVENT_BYTES: usize = 16 << 20;

/// One dispatched event.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct SseEvent {
    /// The `event:` name, `"message"` when none was given.
    pub event: String,
    /// The `data:` lines joined by `\n`.
    pub data: String,
    /// The stream's last event ID when this event was dispatched (the latest
    /// `id:` seen so far, possibly from an earlier event; empty if none).
    pub id: String,
}

impl SseEvent {
    /// Decodes `data` as a gateway frame; the event name stands in for a missing `"type"`.
    pub fn frame(&self) -> Result<ServerFrame, serde_json::Error> {
        let v = serde_json::from_str(&self.data)?;
        ServerFrame::from_value_or(v, Some(&self.event))
    }
}

const BOM: [u8; 3] = [0xEF, 0xBB, 0xBF];

/// Incremental `text/event-stream` parser; feed it chunks split anywhere.
#[derive(Debug, Default)]
pub struct SseParser {
    /// Bytes of the current, unterminated line.
    line: Vec<u8>,
    /// The previous chunk ended in CR: a LF at the start of the next one belongs to it.
    after_cr: bool,
    /// How many bytes of a leading BOM were seen; `None` once past the stream start.
    bom_seen: Option<usize>,
    started: bool,
    data: String,
    event: String,
    id_buffer: String,
    last_event_id: String,
    retry: Option<u64>,
}

impl SseParser {
    pub fn new() -> Self {
        Self::default()
    }

    /// Feeds one chunk; every completed event is passed to `emit`.
    pub fn feed(&mut self, chunk: &[u8], emit: &mut impl FnMut(SseEvent)) {
        let mut chunk = chunk;
        if !self.started {
            let mut seen = self.bom_seen.unwrap_or(0);
            while let Some((&b, rest)) = chunk.split_first() {
                if b == BOM[seen] {
                    seen += 1;
                    chunk = rest;
                    if seen == BOM.len() {
                        self.started = true;
                        break;
                    }
                } else {
                    // Not a BOM after all: what looked like its start is content.
                    self.started = true;
                    self.feed_lines(&BOM[..seen], emit);
                    break;
                }
            }
            if !self.started {
                self.bom_seen = Some(seen);
                return;
            }
        }
        self.feed_lines(chunk, emit);
    }

    /// Feeds one chunk and returns the completed events.
    pub fn push(&mut self, chunk: &[u8]) -> Vec<SseEvent> {
        let mut out = Vec::new();
        self.feed(chunk, &mut |e| out.push(e));
        out
    }

    /// The last event ID seen so far (what `Last-Event-ID` carries on reconnect).
    pub fn last_event_id(&self) -> &str {
        &self.last_event_id
    }

    /// The reconnection time the server asked for with `retry:`, in milliseconds.
    pub fn retry_ms(&self) -> Option<u64> {
        self.retry
    }

    /// Bytes held for the current line and event.
    pub fn buffered_len(&self) -> usize {
        self.line.len() + self.data.len() + self.event.len() + self.id_buffer.len()
    }

    fn feed_lines(&mut self, mut chunk: &[u8], emit: &mut impl FnMut(SseEvent)) {
        while !chunk.is_empty() {
            if self.after_cr {
                self.after_cr = false;
                if chunk[0] == b'\n' {
                    chunk = &chunk[1..];
                    continue;
                }
            }
            match chunk.iter().position(|&b| b == b'\n' || b == b'\r') {
                None => {
                    self.line.extend_from_slice(chunk);
                    return;
                }
                Some(i) => {
                    self.line.extend_from_slice(&chunk[..i]);
                    self.after_cr = chunk[i] == b'\r';
                    chunk = &chunk[i + 1..];
                    self.end_line(emit);
                }
            }
        }
    }

    fn end_line(&mut self, emit: &mut impl FnMut(SseEvent)) {
        let line = std::mem::take(&mut self.line);
        if line.is_empty() {
            self.dispatch(emit);
        } else if line[0] != b':' {
            let text = String::from_utf8_lossy(&line);
            let (field, value) = match text.find(':') {
                Some(i) => {
                    let v = &text[i + 1..];
                    (&text[..i], v.strip_prefix(' ').unwrap_or(v))
                }
                None => (&*text, ""),
            };
            match field {
                "event" => value.clone_into(&mut self.event),
                "data" => {
                    self.data.push_str(value);
                    self.data.push('\n');
                }
                "id" if !value.contains('\0') => value.clone_into(&mut self.id_buffer),
                "retry" if !value.is_empty() && value.bytes().all(|b| b.is_ascii_digit()) => {
                    if let Ok(ms) = value.parse() {
                        self.retry = Some(ms);
                    }
                }
                _ => {}
            }
        }
        // Keep the line buffer's allocation.
        self.line = line;
        self.line.clear();
    }

    fn dispatch(&mut self, emit: &mut impl FnMut(SseEvent)) {
        self.last_event_id.clone_from(&self.id_buffer);
        if self.data.is_empty() {
            self.event.clear();
            return;
        }
        let mut data = std::mem::take(&mut self.data);
        if data.ends_with('\n') {
            data.pop();
        }
        let event = match std::mem::take(&mut self.event) {
            e if e.is_empty() => "message".to_owned(),
            e => e,
        };
        emit(SseEvent {
            event,
            data,
            id: self.last_event_id.clone(),
        });
    }
}

type Body = Pin<Box<dyn Stream<Item = reqwest::Result<Bytes>> + Send>>;

/// A decoded event: its name, the last event ID, and the gateway frame in `data:`.
#[derive(Debug, Clone, PartialEq)]
pub struct SseFrame {
    pub event: String,
    pub id: String,
    pub frame: ServerFrame,
}

/// An open event stream.
pub struct SseStream {
    body: Body,
    parser: SseParser,
    queue: VecDeque<SseEvent>,
    idle: Duration,
    ended: bool,
}

impl GatewayClient {
    /// Opens `GET /v1/sse?channel=..`, sending `Last-Event-ID: last_event_id`
    /// when given (a multi-channel position). A refusal (e.g. `bad_channel`)
    /// is an [`Error::Gateway`].
    pub async fn sse<S: AsRef<str>>(
        &self,
        channels: &[S],
        last_event_id: Option<&str>,
    ) -> Result<SseStream> {
        let url = self.channel_url("v1/sse", channels);
        SseStream::connect(self.http(), url, last_event_id, self.timeouts()).await
    }
}

impl SseStream {
    /// Opens any event-stream URL. The response head is awaited at most
    /// `timeouts.request`; each body chunk at most `timeouts.idle`.
    pub async fn connect(
        http: &reqwest::Client,
        url: Url,
        last_event_id: Option<&str>,
        timeouts: &Timeouts,
    ) -> Result<Self> {
        let mut req = http
            .get(url)
            .header(header::ACCEPT, "text/event-stream")
            .header(header::CACHE_CONTROL, "no-cache");
        if let Some(id) = last_event_id.filter(|id| !id.is_empty()) {
            req = req.header("Last-Event-ID", id);
        }
        let wait = timeouts.request;
        let resp = tokio::time::timeout(wait, req.send())
            .await
            .map_err(|_| Error::timeout("waiting for the SSE response", wait))??;
        let status = resp.status();
        if !status.is_success() {
            let body = tokio::time::timeout(wait, resp.bytes())
                .await
                .map_err(|_| Error::timeout("reading an error body", wait))??;
            return Err(Error::from_status(status.as_u16(), &body));
        }
        if status == reqwest::StatusCode::NO_CONTENT {
            return Err(Error::Status {
                status: 204,
                body: "no content: do not reconnect".into(),
            });
        }
        let ctype = resp
            .headers()
            .get(header::CONTENT_TYPE)
            .and_then(|v| v.to_str().ok())
            .unwrap_or("");
        let mime = ctype.split(';').next().unwrap_or("").trim();
        if !mime.eq_ignore_ascii_case("text/event-stream") {
            return Err(Error::Protocol(format!(
                "SSE answered content-type {ctype:?}"
            )));
        }
        Ok(Self {
            body: Box::pin(resp.bytes_stream()),
            parser: SseParser::new(),
            queue: VecDeque::new(),
            idle: timeouts.idle,
            ended: false,
        })
    }

    /// The next event; `Ok(None)` at the end of the stream (an unterminated
    /// last event is discarded, as the spec says). Silence longer than the
    /// idle timeout is an [`Error::Timeout`].
    pub async fn next_event(&mut self) -> Result<Option<SseEvent>> {
        loop {
            if let Some(e) = self.queue.pop_front() {
                return Ok(Some(e));
            }
            if self.ended {
                return Ok(None);
            }
            let chunk = tokio::time::timeout(self.idle, self.body.next())
                .await
                .map_err(|_| Error::timeout("waiting for SSE data", self.idle))?;
            match chunk {
                None => self.ended = true,
                Some(Err(e)) => {
                    self.ended = true;
                    return Err(e.into());
                }
                Some(Ok(bytes)) => {
                    let queue = &mut self.queue;
                    self.parser.feed(&bytes, &mut |e| queue.push_back(e));
                    if self.parser.buffered_len() > MAX_EVENT_BYTES {
                        self.ended = true;
                        return Err(Error::Protocol(format!(
                            "SSE event larger than {MAX_EVENT_BYTES} bytes"
                        )));
                    }
                }
            }
        }
    }

    /// The next event decoded as a gateway frame.
    pub async fn next_frame(&mut self) -> Result<Option<SseFrame>> {
        match self.next_event().await? {
            None => Ok(None),
            Some(e) => {
                let frame = e.frame()?;
                Ok(Some(SseFrame {
                    event: e.event,
                    id: e.id,
                    frame,
                }))
            }
        }
    }

    /// The last event ID received (to resume with on reconnect).
    pub fn last_event_id(&self) -> &str {
        self.parser.last_event_id()
    }

    /// The reconnection delay the server asked for with `retry:`.
    pub fn retry(&self) -> Option<Duration> {
        self.parser.retry_ms().map(Duration::from_millis)
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;

    fn ev(event: &str, data: &str, id: &str) -> SseEvent {
        SseEvent {
            event: event.into(),
            data: data.into(),
            id: id.into(),
        }
    }

    fn parse_all(input: &[u8]) -> Vec<SseEvent> {
        SseParser::new().push(input)
    }

    /// Parses `input` whole, then split at every byte boundary (two chunks),
    /// then byte by byte, and checks every way gives `want`.
    fn check(input: &[u8], want: &[SseEvent]) {
        assert_eq!(
            parse_all(input),
            want,
            "whole input {:?}",
            String::from_utf8_lossy(input)
        );
        for cut in 0..=input.len() {
            let mut p = SseParser::new();
            let mut got = p.push(&input[..cut]);
            got.extend(p.push(&input[cut..]));
            assert_eq!(
                got,
                want,
                "split at {cut} of {:?}",
                String::from_utf8_lossy(input)
            );
        }
        let mut p = SseParser::new();
        let got: Vec<_> = input
            .iter()
            .flat_map(|b| p.push(std::slice::from_ref(b)))
            .collect();
        assert_eq!(got, want, "byte by byte");
    }

    #[test]
    fn simple_events_with_every_line_ending() {
        for nl in ["\n", "\r", "\r\n"] {
            let input = format!("data: hello{nl}{nl}event: subscribed{nl}data: {{}}{nl}{nl}");
            check(
                input.as_bytes(),
                &[ev("message", "hello", ""), ev("subscribed", "{}", "")],
            );
        }
        // Mixed endings in one stream.
        check(
            b"data: a\r\ndata: b\rdata: c\n\r\n",
            &[ev("message", "a\nb\nc", "")],
        );
    }

    #[test]
    fn multiple_data_lines_are_joined_with_newlines() {
        check(
            b"data: one\ndata: two\ndata:\ndata:  three\n\n",
            &[ev("message", "one\ntwo\n\n three", "")],
        );
        // "data" without colon is an empty data line; a lone one is an empty event.
        check(b"data\n\n", &[ev("message", "", "")]);
        check(b"data\ndata\n\n", &[ev("message", "\n", "")]);
    }

    #[test]
    fn comments_and_unknown_fields_are_ignored() {
        check(
            b": heartbeat\n\n:another\nfoo: bar\ndata: x\n: mid\n\n",
            &[ev("message", "x", "")],
        );
        // A blank line after only a comment dispatches nothing.
        check(b": heartbeat\n\n", &[]);
        // Field names are case sensitive.
        check(b"Data: x\nDATA: y\n\n", &[]);
    }

    #[test]
    fn one_leading_space_is_stripped_from_values() {
        check(
            b"data:x\n\ndata: x\n\ndata:  x\n\n",
            &[
                ev("message", "x", ""),
                ev("message", "x", ""),
                ev("message", " x", ""),
            ],
        );
        check(b"event:  spaced\ndata\n\n", &[ev(" spaced", "", "")]);
    }

    #[test]
    fn last_event_id_persists_and_is_carried_by_later_events() {
        let input = b"id: k3f9a2:1\ndata: a\n\ndata: b\n\nid: k3f9a2:2\n\nid\ndata: c\n\n";
        check(
            input,
            &[
                ev("message", "a", "k3f9a2:1"),
                ev("message", "b", "k3f9a2:1"),
                ev("message", "c", ""),
            ],
        );
        let mut p = SseParser::new();
        p.push(b"id: e:5,f:6\n\n");
        assert_eq!(
            p.last_event_id(),
            "e:5,f:6",
            "an id-only event still sets the last id"
        );
        // An id containing NUL is ignored.
        let mut p = SseParser::new();
        let got = p.push(b"id: good\ndata: 1\n\nid: b\0d\ndata: 2\n\n");
        assert_eq!(got[1].id, "good");
    }

    #[test]
    fn event_name_resets_after_each_dispatch_and_empty_events_are_skipped() {
        check(
            b"event: a\ndata: 1\n\ndata: 2\n\nevent: b\n\ndata: 3\n\n",
            &[
                ev("a", "1", ""),
                ev("message", "2", ""),
                ev("message", "3", ""),
            ],
        );
    }

    #[test]
    fn retry_takes_digits_only() {
        let mut p = SseParser::new();
        p.push(b"retry: 1500\n\n");
        assert_eq!(p.retry_ms(), Some(1500));
        p.push(b"retry: 12x\n\nretry:\n\nretry: -1\n\n");
        assert_eq!(p.retry_ms(), Some(1500));
        p.push(b"retry:7\n");
        assert_eq!(p.retry_ms(), Some(7));
    }

    #[test]
    fn leading_bom_is_stripped_once() {
        check(b"\xEF\xBB\xBFdata: a\n\n", &[ev("message", "a", "")]);
        // Only at the very start: a second BOM is part of the field name.
        check(b"\xEF\xBB\xBF\xEF\xBB\xBFdata: a\n\n", &[]);
        check(
            b"data: a\n\n\xEF\xBB\xBFdata: b\n\n",
            &[ev("message", "a", "")],
        );
        // A BOM-like prefix that is not a BOM is content.
        check(b"\xEF\xBBdata: a\n\n", &[]);
    }

    #[test]
    fn utf8_is_decoded_and_invalid_bytes_replaced() {
        check(
            "data: héllo ✓ 😀\n\n".as_bytes(),
            &[ev("message", "héllo ✓ 😀", "")],
        );
        check(b"data: a\xFFb\n\n", &[ev("message", "a\u{FFFD}b", "")]);
    }

    #[test]
    fn unterminated_event_at_end_is_not_dispatched() {
        check(b"data: a\n\ndata: b\n", &[ev("message", "a", "")]);
        check(b"data: a\n\ndata: b", &[ev("message", "a", "")]);
    }

    #[test]
    fn crlf_split_across_chunks_is_one_line_ending() {
        let mut p = SseParser::new();
        assert!(p.push(b"data: a\r").is_empty());
        // If the LF began a new line, this would dispatch "a" now, then "b" later separately.
        assert!(p.push(b"\ndata: b\r").is_empty());
        assert_eq!(p.push(b"\n\r\n"), vec![ev("message", "a\nb", "")]);
        // CR CR is two line endings: a blank line dispatches.
        assert_eq!(p.push(b"data: c\r\r"), vec![ev("message", "c", "")]);
    }

    #[test]
    fn gateway_stream_decodes_to_frames() {
        let input = concat!(
            ": hello\n\n",
            "event: subscribed\n",
            "data: {\"type\":\"subscribed\",\"channel\":\"c\",\"epoch\":\"e\",\"offset\":3,\"recovered\":true}\n\n",
            "id: e:4\n",
            "data: {\"type\":\"message\",\"channel\":\"c\",\"offset\":4,\"epoch\":\"e\",\"time\":1,\"data\":[1]}\n\n",
        );
        let evs = parse_all(input.as_bytes());
        assert_eq!(evs.len(), 2);
        assert!(matches!(evs[0].frame().unwrap(), ServerFrame::Subscribed(s) if s.offset == 3));
        match evs[1].frame().unwrap() {
            ServerFrame::Message(m) => assert_eq!((m.offset, evs[1].id.as_str()), (4, "e:4")),
            other => panic!("{other:?}"),
        }
        // An event whose data lacks "type" takes its event name.
        let e = ev(
            "subscribed",
            r#"{"channel":"c","epoch":"e","offset":0}"#,
            "",
        );
        assert!(matches!(e.frame().unwrap(), ServerFrame::Subscribed(_)));
    }

    #[test]
    fn a_long_mixed_stream_survives_every_split() {
        let input = b"\xEF\xBB\xBF: c\r\nid: 1\r\nevent: x\r\ndata: a\r\ndata: b\r\n\r\nretry: 10\ndata:\n\r\rid: 2\ndata: z\r\n\n";
        check(
            input,
            &[
                ev("x", "a\nb", "1"),
                ev("message", "", "1"),
                ev("message", "z", "2"),
            ],
        );
    }
}
