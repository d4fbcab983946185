//! A WebSocket client over a raw `TcpStream` with hand-built frames, for
//! conformance tests (RFC 6455) that a well-behaved library would refuse to
//! send: unmasked frames, reserved bits and opcodes, broken fragmentation,
//! invalid UTF-8, oversize lengths announced without their payload.
//!
//! Server frames are decoded exactly as they came, so a test can assert on
//! every byte the gateway puts on the wire (one close frame, its code).

use std::net::SocketAddr;
use std::time::Duration;

use anyhow::{anyhow, bail, Context, Result};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;
use tokio_tungstenite::tungstenite::handshake::derive_accept_key;

use crate::wait::STEP_TIMEOUT;

/// Opcodes of RFC 6455 section 5.2.
pub mod op {
    pub const CONTINUATION: u8 = 0x0;
    pub const TEXT: u8 = 0x1;
    pub const BINARY: u8 = 0x2;
    pub const CLOSE: u8 = 0x8;
    pub const PING: u8 = 0x9;
    pub const PONG: u8 = 0xA;
}

/// The most frames [`RawWs::read_to_end`] takes before calling the stream
/// endless.
const MAX_FRAMES_TO_END: usize = 10_000;

/// The largest server frame payload this client accepts.
const MAX_SERVER_PAYLOAD: u64 = 16 * 1024 * 1024;

/// The masking key of every client frame: any key is valid, and a fixed
/// one makes failures reproducible.
const MASK: [u8; 4] = [0x37, 0xfa, 0x21, 0x3d];

/// One frame as the server sent it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Frame {
    pub fin: bool,
    /// RSV1..RSV3 as the low three bits.
    pub rsv: u8,
    pub opcode: u8,
    /// Whether the server masked it (it must not).
    pub masked: bool,
    pub payload: Vec<u8>,
}

impl Frame {
    /// For a close frame: the code, if the payload carries one.
    pub fn close_code(&self) -> Option<u16> {
        (self.payload.len() >= 2).then(|| u16::from_be_bytes([self.payload[0], self.payload[1]]))
    }

    /// The payload as text (lossy), for messages.
    pub fn text(&self) -> String {
        String::from_utf8_lossy(&self.payload).into_owned()
    }
}

/// Encodes one frame. `mask` is `true` for a conforming client frame.
pub fn encode(fin: bool, rsv: u8, opcode: u8, payload: &[u8], mask: bool) -> Vec<u8> {
    let mut out = Vec::with_capacity(payload.len() + 14);
    out.push(((fin as u8) << 7) | ((rsv & 0x7) << 4) | (opcode & 0xF));
    let mask_bit = if mask { 0x80 } else { 0 };
    encode_length(&mut out, mask_bit, payload.len() as u64);
    if mask {
        out.extend_from_slice(&MASK);
        out.extend(payload.iter().enumerate().map(|(i, b)| b ^ MASK[i % 4]));
    } else {
        out.extend_from_slice(payload);
    }
    out
}

/// The header of a masked frame announcing `len` payload bytes, with no
/// payload: what a peer sends before it streams a huge frame.
pub fn header_only(fin: bool, opcode: u8, len: u64) -> Vec<u8> {
    let mut out = vec![((fin as u8) << 7) | (opcode & 0xF)];
    encode_length(&mut out, 0x80, len);
    out.extend_from_slice(&MASK);
    out
}

fn encode_length(out: &mut Vec<u8>, mask_bit: u8, len: u64) {
    if len < 126 {
        out.push(mask_bit | len as u8);
    } else if len <= u64::from(u16::MAX) {
        out.push(mask_bit | 126);
        out.extend_from_slice(&(len as u16).to_be_bytes());
    } else {
        out.push(mask_bit | 127);
        out.extend_from_slice(&len.to_be_bytes());
    }
}

/// A close frame payload: the code and a reason.
pub fn close_payload(code: u16, reason: &[u8]) -> Vec<u8> {
    let mut p = code.to_be_bytes().to_vec();
    p.extend_from_slice(reason);
    p
}

/// One upgraded connection.
pub struct RawWs {
    stream: TcpStream,
    /// Bytes read but not yet decoded into frames.
    buf: Vec<u8>,
    /// The server's `101` head, for checks on its headers.
    pub response_head: String,
}

impl RawWs {
    /// Upgrades `GET path_and_query` on `addr`; the answer must be 101 with
    /// the right `Sec-WebSocket-Accept`.
    pub async fn connect(addr: SocketAddr, path_and_query: &str) -> Result<Self> {
        Self::connect_with(addr, path_and_query, &[]).await
    }

    /// As [`RawWs::connect`], sending `extra` request headers too.
    pub async fn connect_with(
        addr: SocketAddr,
        path_and_query: &str,
        extra: &[(&str, &str)],
    ) -> Result<Self> {
        let key = "dGhlIHNhbXBsZSBub25jZQ==";
        let (stream, head, rest) = handshake(addr, path_and_query, key, extra).await?;
        let status = head.lines().next().unwrap_or_default();
        if !status.starts_with("HTTP/1.1 101") {
            bail!("upgrade of {path_and_query} answered {head:?}");
        }
        let accept = header(&head, "sec-websocket-accept").unwrap_or_default();
        if accept != derive_accept_key(key.as_bytes()) {
            bail!("wrong Sec-WebSocket-Accept in {head:?}");
        }
        Ok(RawWs {
            stream,
            buf: rest,
            response_head: head,
        })
    }

    /// Sends a conforming (masked) frame.
    pub async fn send(&mut self, fin: bool, opcode: u8, payload: &[u8]) -> Result<()> {
        self.send_raw(&encode(fin, 0, opcode, payload, true)).await
    }

    /// Sends a masked, unfragmented text frame.
    pub async fn send_text(&mut self, text: &str) -> Result<()> {
        self.send(true, op::TEXT, text.as_bytes()).await
    }

    /// Sends bytes as they are.
    pub async fn send_raw(&mut self, bytes: &[u8]) -> Result<()> {
        tokio::time::timeout(STEP_TIMEOUT, self.stream.write_all(bytes))
            .await
            .map_err(|_| anyhow!("writing {} bytes took over {STEP_TIMEOUT:?}", bytes.len()))?
            .context("writing to the gateway")
    }

    /// The next server frame; `None` when the server closed the TCP
    /// connection (or reset it) at a frame boundary. Silence past `limit`
    /// is an error.
    pub async fn next_frame_within(&mut self, limit: Duration) -> Result<Option<Frame>> {
        let give_up = tokio::time::Instant::now() + limit;
        loop {
            if let Some(frame) = self.decode()? {
                return Ok(Some(frame));
            }
            let mut chunk = [0u8; 8192];
            let read = tokio::time::timeout_at(give_up, self.stream.read(&mut chunk))
                .await
                .map_err(|_| anyhow!("no frame from the gateway within {limit:?}"))?;
            match read {
                Ok(0) | Err(_) if self.buf.is_empty() => return Ok(None),
                Ok(0) => bail!("connection ended inside a frame: {:?}", self.buf),
                Ok(n) => self.buf.extend_from_slice(&chunk[..n]),
                Err(e) => bail!("connection reset inside a frame ({e}): {:?}", self.buf),
            }
        }
    }

    /// The next server frame within [`STEP_TIMEOUT`].
    pub async fn next_frame(&mut self) -> Result<Option<Frame>> {
        self.next_frame_within(STEP_TIMEOUT).await
    }

    /// The next text message, skipping pings and pongs; anything else is an error.
    pub async fn next_text(&mut self) -> Result<String> {
        loop {
            match self.next_frame().await? {
                Some(f) if f.opcode == op::TEXT && f.fin => return Ok(f.text()),
                Some(f) if f.opcode == op::PING || f.opcode == op::PONG => continue,
                other => bail!("expected a text frame, got {other:?}"),
            }
        }
    }

    /// The next text message as JSON.
    pub async fn next_json(&mut self) -> Result<serde_json::Value> {
        let text = self.next_text().await?;
        serde_json::from_str(&text).with_context(|| format!("non-JSON text frame {text:?}"))
    }

    /// Every frame until the server ends the TCP connection (bounded).
    pub async fn read_to_end(&mut self) -> Result<Vec<Frame>> {
        let mut frames = Vec::new();
        while let Some(frame) = self.next_frame().await? {
            frames.push(frame);
            if frames.len() > MAX_FRAMES_TO_END {
                bail!("over {MAX_FRAMES_TO_END} frames and no end");
            }
        }
        Ok(frames)
    }

    /// Reads to the end and checks the closing handshake as RFC 6455 asks of
    /// a server: exactly one close frame, last, unmasked, whose payload is
    /// empty or a code (never 1005, 1006 or 1015, which must not be sent) and
    /// a UTF-8 reason. Returns the code (`None` for an empty close) and the
    /// text messages that came before it.
    pub async fn expect_close(&mut self) -> Result<(Option<u16>, Vec<String>)> {
        let frames = self.read_to_end().await?;
        let closes: Vec<&Frame> = frames.iter().filter(|f| f.opcode == op::CLOSE).collect();
        if closes.len() != 1 {
            bail!(
                "expected exactly one close frame, got {}: {frames:?}",
                closes.len()
            );
        }
        let close = closes[0];
        if frames.last() != Some(close) {
            bail!("frames after the close frame: {frames:?}");
        }
        if close.masked || !close.fin || close.rsv != 0 {
            bail!("malformed close frame {close:?}");
        }
        if close.payload.len() == 1 {
            bail!("close payload of one byte: {close:?}");
        }
        if let Some(code) = close.close_code() {
            if matches!(code, 1005 | 1006 | 1015) || code < 1000 {
                bail!("the gateway put close code {code} on the wire");
            }
            std::str::from_utf8(&close.payload[2..])
                .with_context(|| format!("close reason is not UTF-8: {close:?}"))?;
        }
        let texts = frames
            .iter()
            .filter(|f| f.opcode == op::TEXT)
            .map(Frame::text)
            .collect();
        Ok((close.close_code(), texts))
    }

    /// Decodes one whole frame off `buf`, if it holds one.
    fn decode(&mut self) -> Result<Option<Frame>> {
        let b = &self.buf;
        if b.len() < 2 {
            return Ok(None);
        }
        let (fin, rsv, opcode) = (b[0] & 0x80 != 0, (b[0] >> 4) & 0x7, b[0] & 0xF);
        let masked = b[1] & 0x80 != 0;
        let (len, mut at) = match b[1] & 0x7F {
            126 if b.len() >= 4 => (u64::from(u16::from_be_bytes([b[2], b[3]])), 4),
            127 if b.len() >= 10 => {
                let mut n = [0u8; 8];
                n.copy_from_slice(&b[2..10]);
                (u64::from_be_bytes(n), 10)
            }
            126 | 127 => return Ok(None),
            n => (u64::from(n), 2),
        };
        if len > MAX_SERVER_PAYLOAD {
            bail!("server frame announces {len} bytes");
        }
        let key = if masked {
            if b.len() < at + 4 {
                return Ok(None);
            }
            let k = [b[at], b[at + 1], b[at + 2], b[at + 3]];
            at += 4;
            Some(k)
        } else {
            None
        };
        let end = at + len as usize;
        if b.len() < end {
            return Ok(None);
        }
        let mut payload = b[at..end].to_vec();
        if let Some(k) = key {
            payload
                .iter_mut()
                .enumerate()
                .for_each(|(i, x)| *x ^= k[i % 4]);
        }
        self.buf.drain(..end);
        Ok(Some(Frame {
            fin,
            rsv,
            opcode,
            masked,
            payload,
        }))
    }
}

/// Sends an upgrade request and reads the response head. Returns the stream,
/// the head (status line and headers) and any bytes read past it.
pub async fn handshake(
    addr: SocketAddr,
    path_and_query: &str,
    key: &str,
    extra: &[(&str, &str)],
) -> Result<(TcpStream, String, Vec<u8>)> {
    let mut stream = tokio::time::timeout(STEP_TIMEOUT, TcpStream::connect(addr))
        .await
        .map_err(|_| anyhow!("connecting to {addr} took over {STEP_TIMEOUT:?}"))?
        .with_context(|| format!("connecting to {addr}"))?;
    stream.set_nodelay(true).ok();
    let mut request = format!(
        "GET {path_and_query} HTTP/1.1\r\nHost: {addr}\r\nUpgrade: websocket\r\n\
         Connection: Upgrade\r\nSec-WebSocket-Key: {key}\r\nSec-WebSocket-Version: 13\r\n"
    );
    for (name, value) in extra {
        request.push_str(&format!("{name}: {value}\r\n"));
    }
    request.push_str("\r\n");
    stream.write_all(request.as_bytes()).await?;

    let (head, rest) = read_head(&mut stream).await?;
    Ok((stream, head, rest))
}

/// Reads an HTTP response head (bounded in size and time).
pub async fn read_head(stream: &mut TcpStream) -> Result<(String, Vec<u8>)> {
    let mut buf = Vec::new();
    let give_up = tokio::time::Instant::now() + STEP_TIMEOUT;
    loop {
        if let Some(end) = buf.windows(4).position(|w| w == b"\r\n\r\n") {
            let head = String::from_utf8_lossy(&buf[..end]).into_owned();
            return Ok((head, buf[end + 4..].to_vec()));
        }
        if buf.len() > 64 * 1024 {
            bail!("response head over 64 KiB");
        }
        let mut chunk = [0u8; 4096];
        let n = tokio::time::timeout_at(give_up, stream.read(&mut chunk))
            .await
            .map_err(|_| anyhow!("no response head within {STEP_TIMEOUT:?}: {buf:?}"))??;
        if n == 0 {
            bail!("connection closed before the response head: {buf:?}");
        }
        buf.extend_from_slice(&chunk[..n]);
    }
}

/// The value of header `name` (case-insensitive) in a response head.
pub fn header<'a>(head: &'a str, name: &str) -> Option<&'a str> {
    head.lines().skip(1).find_map(|line| {
        let (k, v) = line.split_once(':')?;
        k.trim().eq_ignore_ascii_case(name).then(|| v.trim())
    })
}
