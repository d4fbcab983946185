//! HTTP/1.1 over a raw `TcpStream`, for tests that pin bytes a client
//! library hides: exact response headers, each chunk of a chunked body as
//! the server wrote it (so flushing is visible), a body that never ends, and
//! requests that lie about their `Content-Length`.

use std::net::SocketAddr;
use std::time::Duration;

use anyhow::{anyhow, bail, Context, Result};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

use crate::raw_ws::header;
use crate::wait::STEP_TIMEOUT;

/// The largest chunk this client accepts.
const MAX_CHUNK: usize = 16 * 1024 * 1024;

/// One response being read.
pub struct RawResponse {
    stream: TcpStream,
    /// Bytes read past what was decoded.
    buf: Vec<u8>,
    /// Status line and headers.
    pub head: String,
    /// Whether the body is chunked (else it runs to `Content-Length` or EOF).
    chunked: bool,
    /// Set once the last chunk (or EOF) was read.
    ended: bool,
}

impl RawResponse {
    /// The status code.
    pub fn status(&self) -> u16 {
        self.head
            .split_whitespace()
            .nth(1)
            .and_then(|s| s.parse().ok())
            .unwrap_or(0)
    }

    /// The value of a response header.
    pub fn header(&self, name: &str) -> Option<&str> {
        header(&self.head, name)
    }

    /// The next body chunk as the server framed it (for a body that is not
    /// chunked: whatever the next read gives). `None` at the end of the body.
    pub async fn next_chunk_within(&mut self, limit: Duration) -> Result<Option<Vec<u8>>> {
        if self.ended {
            return Ok(None);
        }
        let give_up = tokio::time::Instant::now() + limit;
        loop {
            if !self.chunked {
                if !self.buf.is_empty() {
                    return Ok(Some(std::mem::take(&mut self.buf)));
                }
            } else if let Some(chunk) = self.decode_chunk()? {
                if chunk.is_empty() {
                    self.ended = true;
                    return Ok(None);
                }
                return Ok(Some(chunk));
            }
            let mut data = [0u8; 16 * 1024];
            let n = tokio::time::timeout_at(give_up, self.stream.read(&mut data))
                .await
                .map_err(|_| anyhow!("no body bytes within {limit:?}"))?
                .context("reading the body")?;
            if n == 0 {
                if self.chunked {
                    bail!("connection closed inside a chunked body: {:?}", self.buf);
                }
                self.ended = true;
                return Ok(None);
            }
            self.buf.extend_from_slice(&data[..n]);
        }
    }

    /// The next chunk within [`STEP_TIMEOUT`].
    pub async fn next_chunk(&mut self) -> Result<Option<Vec<u8>>> {
        self.next_chunk_within(STEP_TIMEOUT).await
    }

    /// Reads body chunks until the body so far contains `needle`; returns
    /// everything read by this call.
    pub async fn read_until(&mut self, needle: &[u8]) -> Result<Vec<u8>> {
        let mut body = Vec::new();
        while !body.windows(needle.len()).any(|w| w == needle) {
            match self.next_chunk().await? {
                Some(chunk) => body.extend_from_slice(&chunk),
                None => bail!(
                    "body ended before {:?}: {:?}",
                    String::from_utf8_lossy(needle),
                    String::from_utf8_lossy(&body)
                ),
            }
        }
        Ok(body)
    }

    /// The whole body, for a response that ends (bounded by [`STEP_TIMEOUT`]).
    pub async fn body(&mut self) -> Result<Vec<u8>> {
        let mut body = Vec::new();
        while let Some(chunk) = self.next_chunk().await? {
            body.extend_from_slice(&chunk);
        }
        Ok(body)
    }

    fn decode_chunk(&mut self) -> Result<Option<Vec<u8>>> {
        let Some(line_end) = self.buf.windows(2).position(|w| w == b"\r\n") else {
            return Ok(None);
        };
        let size_line = String::from_utf8_lossy(&self.buf[..line_end]).into_owned();
        let size_hex = size_line.split(';').next().unwrap_or("").trim();
        let size = usize::from_str_radix(size_hex, 16)
            .with_context(|| format!("bad chunk size line {size_line:?}"))?;
        if size > MAX_CHUNK {
            bail!("chunk of {size} bytes");
        }
        let start = line_end + 2;
        if size == 0 {
            // The last chunk: no trailers are expected, just the final CRLF.
            if self.buf.len() < start + 2 {
                return Ok(None);
            }
            self.buf.drain(..start + 2);
            return Ok(Some(Vec::new()));
        }
        if self.buf.len() < start + size + 2 {
            return Ok(None);
        }
        if &self.buf[start + size..start + size + 2] != b"\r\n" {
            bail!("chunk of {size} bytes not followed by CRLF");
        }
        let chunk = self.buf[start..start + size].to_vec();
        self.buf.drain(..start + size + 2);
        Ok(Some(chunk))
    }
}

/// Sends `request` (a whole request head, and any body bytes) as it is and
/// reads the response head.
pub async fn send(addr: SocketAddr, request: &[u8]) -> Result<RawResponse> {
    let mut stream = tokio::time::timeout(STEP_TIMEOUT, TcpStream::connect(addr))
        .await
        .map_err(|_| anyhow!("connecting to {addr} took over {STEP_TIMEOUT:?}"))?
        .with_context(|| format!("connecting to {addr}"))?;
    stream.set_nodelay(true).ok();
    stream
        .write_all(request)
        .await
        .context("writing the request")?;
    let (head, buf) = crate::raw_ws::read_head(&mut stream).await?;
    let chunked = header(&head, "transfer-encoding").is_some_and(|v| v.contains("chunked"));
    Ok(RawResponse {
        stream,
        buf,
        head,
        chunked,
        ended: false,
    })
}

/// `GET path_and_query` with `headers`, `Connection: close`.
pub async fn get(
    addr: SocketAddr,
    path_and_query: &str,
    headers: &[(&str, &str)],
) -> Result<RawResponse> {
    let mut request = format!("GET {path_and_query} HTTP/1.1\r\nHost: {addr}\r\n");
    for (name, value) in headers {
        request.push_str(&format!("{name}: {value}\r\n"));
    }
    request.push_str("Connection: close\r\n\r\n");
    send(addr, request.as_bytes()).await
}
