//! A small HTTP/1.1 client for the hot path: one keep-alive connection per
//! subscriber or publisher, bound to a chosen source address, with a buffer
//! that starts small and grows only as a response needs. It reads response
//! heads (with `httparse`), whole bodies (length-delimited or chunked) and
//! streamed bodies (chunked or read-until-close, as SSE servers send), and
//! parses `text/event-stream`. It is deliberately not a general client.

use std::{
    io,
    net::{IpAddr, SocketAddr},
    time::Duration,
};

use bytes::{Buf, BytesMut};
use tokio::{
    io::{AsyncReadExt, AsyncWriteExt},
    net::{TcpSocket, TcpStream},
};

/// Longest wait for a TCP connect on loopback; longer means the listen
/// backlog is full and the attempt is retried.
pub const CONNECT_TIMEOUT: Duration = Duration::from_secs(10);

/// First capacity of a connection's read buffer: enough for a response head
/// and a few small messages, so 15k idle connections stay cheap.
const INITIAL_BUFFER: usize = 1024;

/// Largest response head accepted.
const MAX_HEAD: usize = 16 * 1024;

/// Largest whole body accepted (a long-poll answer with many messages).
const MAX_BODY: usize = 64 * 1024 * 1024;

/// Most headers parsed from a response.
const MAX_HEADERS: usize = 32;

/// Open a TCP connection to `addr` from `source` (any free port on it).
pub async fn connect(addr: SocketAddr, source: Option<IpAddr>) -> io::Result<TcpStream> {
    let socket = match addr {
        SocketAddr::V4(_) => TcpSocket::new_v4()?,
        SocketAddr::V6(_) => TcpSocket::new_v6()?,
    };
    if let Some(ip) = source {
        socket.bind(SocketAddr::new(ip, 0))?;
    }
    let stream = tokio::time::timeout(CONNECT_TIMEOUT, socket.connect(addr))
        .await
        .map_err(|_| io::Error::new(io::ErrorKind::TimedOut, "connect timed out"))??;
    stream.set_nodelay(true)?;
    Ok(stream)
}

/// How a response body ends.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum BodyMode {
    /// `Content-Length` bytes.
    Length(usize),
    /// `Transfer-Encoding: chunked`.
    Chunked,
    /// Until the server closes the connection.
    UntilClose,
}

/// A response's status line and the headers the harness looks at.
#[derive(Debug)]
pub struct Head {
    /// Status code.
    pub status: u16,
    /// Headers, names lowercased.
    pub headers: Vec<(String, String)>,
    /// How the body is delimited.
    pub body: BodyMode,
}

impl Head {
    /// The first value of header `name` (lowercase).
    pub fn header(&self, name: &str) -> Option<&str> {
        self.headers
            .iter()
            .find(|(n, _)| n == name)
            .map(|(_, v)| v.as_str())
    }
}

/// One keep-alive connection and its read buffer.
pub struct HttpConn {
    /// The socket.
    stream: TcpStream,
    /// Bytes read from the socket and not consumed yet.
    raw: BytesMut,
    /// Bytes read from the socket since the last `take_read`.
    read: u64,
}

impl HttpConn {
    /// Wrap a connected socket.
    pub fn new(stream: TcpStream) -> HttpConn {
        HttpConn {
            stream,
            raw: BytesMut::with_capacity(INITIAL_BUFFER),
            read: 0,
        }
    }

    /// Bytes read since the last call (for bytes-per-delivery).
    pub fn take_read(&mut self) -> u64 {
        std::mem::take(&mut self.read)
    }

    /// Write a whole request.
    pub async fn send(&mut self, request: &[u8]) -> io::Result<()> {
        self.stream.write_all(request).await
    }

    /// Read more bytes into the buffer; an error at end of stream.
    async fn fill(&mut self) -> io::Result<()> {
        if self.raw.capacity() - self.raw.len() < INITIAL_BUFFER / 2 {
            self.raw.reserve(INITIAL_BUFFER.max(self.raw.len()));
        }
        let n = self.stream.read_buf(&mut self.raw).await?;
        if n == 0 {
            return Err(io::Error::new(
                io::ErrorKind::UnexpectedEof,
                "connection closed",
            ));
        }
        self.read += n as u64;
        Ok(())
    }

    /// Read the next response head.
    pub async fn read_head(&mut self) -> io::Result<Head> {
        loop {
            if let Some(head) = self.parse_head()? {
                return Ok(head);
            }
            if self.raw.len() > MAX_HEAD {
                return Err(invalid("response head too large"));
            }
            self.fill().await?;
        }
    }

    fn parse_head(&mut self) -> io::Result<Option<Head>> {
        let mut headers = [httparse::EMPTY_HEADER; MAX_HEADERS];
        let mut response = httparse::Response::new(&mut headers);
        let used = match response.parse(&self.raw) {
            Ok(httparse::Status::Complete(used)) => used,
            Ok(httparse::Status::Partial) => return Ok(None),
            Err(e) => return Err(invalid(&format!("bad response head: {e}"))),
        };

        let status = response.code.unwrap_or(0);
        let mut body = BodyMode::UntilClose;
        let mut kept = Vec::new();
        for h in response.headers.iter() {
            let name = h.name.to_ascii_lowercase();
            let value = String::from_utf8_lossy(h.value).trim().to_string();
            if name == "content-length" {
                let n = value.parse().map_err(|_| invalid("bad content-length"))?;
                body = BodyMode::Length(n);
            } else if name == "transfer-encoding" && value.to_ascii_lowercase().contains("chunked")
            {
                body = BodyMode::Chunked;
            }
            kept.push((name, value));
        }
        if status == 204 || status == 304 || (100..200).contains(&status) {
            body = BodyMode::Length(0);
        }

        self.raw.advance(used);
        Ok(Some(Head {
            status,
            headers: kept,
            body,
        }))
    }

    /// Read a whole body.
    pub async fn read_body(&mut self, mode: BodyMode) -> io::Result<BytesMut> {
        match mode {
            BodyMode::Length(n) => {
                if n > MAX_BODY {
                    return Err(invalid("body too large"));
                }
                while self.raw.len() < n {
                    self.fill().await?;
                }
                Ok(self.raw.split_to(n))
            }
            BodyMode::Chunked => {
                let mut decoder = Chunked::default();
                let mut out = BytesMut::new();
                loop {
                    if decoder.decode(&mut self.raw, &mut out)? {
                        return Ok(out);
                    }
                    if out.len() > MAX_BODY {
                        return Err(invalid("body too large"));
                    }
                    self.fill().await?;
                }
            }
            BodyMode::UntilClose => {
                loop {
                    match self.fill().await {
                        Ok(()) if self.raw.len() <= MAX_BODY => {}
                        Ok(()) => return Err(invalid("body too large")),
                        Err(e) if e.kind() == io::ErrorKind::UnexpectedEof => break,
                        Err(e) => return Err(e),
                    }
                }
                Ok(self.raw.split())
            }
        }
    }

    /// Append the next piece of a streamed body to `out`. Returns false when
    /// the body has ended (chunked terminator); an error when the connection
    /// closed.
    pub async fn read_stream(
        &mut self,
        mode: BodyMode,
        decoder: &mut Chunked,
        out: &mut BytesMut,
    ) -> io::Result<bool> {
        loop {
            match mode {
                BodyMode::Chunked => {
                    let before = out.len();
                    if decoder.decode(&mut self.raw, out)? {
                        return Ok(false);
                    }
                    if out.len() > before {
                        return Ok(true);
                    }
                }
                BodyMode::UntilClose | BodyMode::Length(_) => {
                    if !self.raw.is_empty() {
                        out.extend_from_slice(&self.raw);
                        self.raw.clear();
                        return Ok(true);
                    }
                }
            }
            self.fill().await?;
        }
    }
}

fn invalid(what: &str) -> io::Error {
    io::Error::new(io::ErrorKind::InvalidData, what.to_string())
}

/// Where a chunked decoder is.
#[derive(Debug, Default)]
enum ChunkState {
    /// Reading a chunk-size line.
    #[default]
    Size,
    /// Inside a chunk with this many bytes left.
    Data(usize),
    /// Expecting the CRLF after a chunk.
    DataEnd,
    /// The last chunk was read.
    Done,
}

/// Incremental `Transfer-Encoding: chunked` decoder.
#[derive(Debug, Default)]
pub struct Chunked {
    state: ChunkState,
}

impl Chunked {
    /// Move decoded bytes from `raw` to `out`; true once the body ended.
    pub fn decode(&mut self, raw: &mut BytesMut, out: &mut BytesMut) -> io::Result<bool> {
        loop {
            match self.state {
                ChunkState::Size => {
                    let Some(end) = memchr::memmem::find(raw, b"\r\n") else {
                        if raw.len() > 1024 {
                            return Err(invalid("chunk size line too long"));
                        }
                        return Ok(false);
                    };
                    let line = &raw[..end];
                    let hex = line.split(|b| *b == b';').next().unwrap_or(line);
                    let hex = std::str::from_utf8(hex).map_err(|_| invalid("bad chunk size"))?;
                    let size = usize::from_str_radix(hex.trim(), 16)
                        .map_err(|_| invalid("bad chunk size"))?;
                    raw.advance(end + 2);
                    self.state = if size == 0 {
                        ChunkState::Done
                    } else {
                        ChunkState::Data(size)
                    };
                }
                ChunkState::Data(left) => {
                    if raw.is_empty() {
                        return Ok(false);
                    }
                    let take = left.min(raw.len());
                    out.extend_from_slice(&raw[..take]);
                    raw.advance(take);
                    self.state = if take == left {
                        ChunkState::DataEnd
                    } else {
                        ChunkState::Data(left - take)
                    };
                }
                ChunkState::DataEnd => {
                    if raw.len() < 2 {
                        return Ok(false);
                    }
                    raw.advance(2);
                    self.state = ChunkState::Size;
                }
                ChunkState::Done => return Ok(true),
            }
        }
    }
}

/// One dispatched server-sent event.
#[derive(Debug)]
pub struct SseEvent<'a> {
    /// The `event:` name, empty for the default ("message").
    pub event: &'a [u8],
    /// The `data:` lines joined with `\n`.
    pub data: &'a [u8],
}

/// Incremental `text/event-stream` parser.
#[derive(Debug, Default)]
pub struct SseParser {
    /// `data:` of the event being read.
    data: Vec<u8>,
    /// `event:` of the event being read.
    event: Vec<u8>,
    /// Last `id:` seen (kept across events, as the standard says).
    pub last_id: Option<String>,
}

impl SseParser {
    /// Consume complete lines from `body`, calling `on_event` per event.
    pub fn feed(&mut self, body: &mut BytesMut, mut on_event: impl FnMut(SseEvent<'_>)) {
        while let Some(nl) = memchr::memchr(b'\n', body) {
            let mut line = &body[..nl];
            if line.last() == Some(&b'\r') {
                line = &line[..line.len() - 1];
            }

            if line.is_empty() {
                if !self.data.is_empty() || !self.event.is_empty() {
                    on_event(SseEvent {
                        event: &self.event,
                        data: &self.data,
                    });
                }
                self.data.clear();
                self.event.clear();
            } else if line[0] != b':' {
                let (field, value) = match memchr::memchr(b':', line) {
                    Some(at) => {
                        let value = &line[at + 1..];
                        (&line[..at], value.strip_prefix(b" ").unwrap_or(value))
                    }
                    None => (line, &b""[..]),
                };
                match field {
                    b"data" => {
                        if !self.data.is_empty() {
                            self.data.push(b'\n');
                        }
                        self.data.extend_from_slice(value);
                    }
                    b"event" => {
                        self.event.clear();
                        self.event.extend_from_slice(value);
                    }
                    b"id" => self.last_id = Some(String::from_utf8_lossy(value).into_owned()),
                    _ => {}
                }
            }
            body.advance(nl + 1);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn chunked_decoder_handles_split_input() {
        let wire = b"5\r\nhello\r\n6;x=1\r\n world\r\n0\r\n\r\n";
        let mut decoder = Chunked::default();
        let mut out = BytesMut::new();
        let mut raw = BytesMut::new();
        let mut done = false;
        for b in wire.iter() {
            raw.extend_from_slice(&[*b]);
            done = decoder.decode(&mut raw, &mut out).unwrap();
        }
        assert!(done);
        assert_eq!(&out[..], b"hello world");
    }

    #[test]
    fn sse_parser_dispatches_events_with_ids() {
        let mut p = SseParser::default();
        let mut body = BytesMut::from(
            &b": hi\n\nevent: subscribed\ndata: {\"a\":1}\n\nid: k:1\ndata: x\ndata: y\r\n\r\npartial"[..],
        );
        let mut seen = Vec::new();
        p.feed(&mut body, |e| {
            seen.push((e.event.to_vec(), e.data.to_vec()))
        });
        assert_eq!(seen.len(), 2);
        assert_eq!(seen[0].0, b"subscribed");
        assert_eq!(seen[1].1, b"x\ny");
        assert_eq!(p.last_id.as_deref(), Some("k:1"));
        assert_eq!(&body[..], b"partial");
    }
}
