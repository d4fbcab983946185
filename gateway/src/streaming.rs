//! The lean HTTP/1.1 path for long-lived GETs: SSE streams and parked long-polls.
//!
//! hyper keeps two 8 KiB buffers for every connection for as long as it lives,
//! which would make an idle event stream cost several times what the stream
//! itself needs. So the accept loop reads each request head itself, into a
//! small buffer, and serves `GET /v1/sse` and `GET /v1/poll` here: the same
//! router builds the response, and this module writes it straight to the
//! socket — close-delimited for a stream, with `Content-Length` (and
//! keep-alive) for a poll. Every other request, with the bytes already read,
//! is handed to hyper for the rest of the connection's life.
//!
//! While a response is written the socket is also read, so a client that goes
//! away is noticed at once rather than at the next write; a subscriber queue
//! overflow (the connection's alarm) or a write that stalls past its timeout
//! ends the connection too.

use std::{
    io,
    pin::Pin,
    sync::Arc,
    task::{Context, Poll},
    time::Duration,
};

use axum::{body::Body, extract::Request, Router};
use bytes::{Buf, Bytes, BytesMut};
use http_body_util::BodyExt;
use tokio::{
    io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt, ReadBuf},
    net::TcpStream,
    sync::Notify,
    time::timeout,
};
use tower::Service;

use crate::app::{App, ConnInfo};

/// Largest request head read here; a larger one goes to hyper, which answers 431.
const MAX_HEAD: usize = 4096;

/// Most header lines in a request served here.
const MAX_HEADERS: usize = 32;

/// How long a client may take to send a request head.
const HEAD_TIMEOUT: Duration = Duration::from_secs(10);

/// How long a kept-alive connection may wait for its next request.
const IDLE_TIMEOUT: Duration = Duration::from_secs(75);

/// How long one write may stall before the client counts as gone.
const WRITE_TIMEOUT: Duration = Duration::from_secs(30);

/// What became of a connection on the lean path.
pub enum Outcome {
    /// The connection is finished.
    Done,
    /// Not a request served here: hyper takes over, replaying `prefix` first.
    Handoff(Prefixed),
}

/// A parsed request head.
struct Head {
    method: String,
    target: String,
    http10: bool,
    headers: Vec<(String, Vec<u8>)>,
    len: usize,
}

impl Head {
    fn header(&self, name: &str) -> Option<&[u8]> {
        self.headers
            .iter()
            .find(|(k, _)| k.eq_ignore_ascii_case(name))
            .map(|(_, v)| v.as_slice())
    }

    /// A GET for a streaming endpoint, with no body and no upgrade.
    fn is_lean(&self) -> bool {
        let path = self.target.split('?').next().unwrap_or("");
        let lengths = self
            .headers
            .iter()
            .filter(|(k, _)| k.eq_ignore_ascii_case("content-length"));
        let bodyless = lengths.clone().count() <= 1
            && self.header("content-length").is_none_or(|v| v == b"0")
            && self.header("transfer-encoding").is_none();
        self.method == "GET"
            && matches!(path, "/v1/sse" | "/v1/poll")
            && bodyless
            && self.header("upgrade").is_none()
            && self.header("expect").is_none()
    }

    fn keep_alive(&self) -> bool {
        let close = self.header("connection").is_some_and(|v| {
            v.split(|&b| b == b',')
                .any(|t| t.trim_ascii().eq_ignore_ascii_case(b"close"))
        });
        !self.http10 && !close
    }
}

/// Serves requests on `stream` until one is not for the lean path.
pub async fn serve(mut stream: TcpStream, info: ConnInfo, router: Router, app: App) -> Outcome {
    let mut buf = BytesMut::new();
    let mut first = true;
    loop {
        let wait = if first { HEAD_TIMEOUT } else { IDLE_TIMEOUT };
        first = false;
        let head = tokio::select! {
            r = timeout(wait, read_head(&mut stream, &mut buf)) => match r {
                Ok(Ok(Some(head))) => head,
                Ok(Ok(None)) => {
                    // Not for us (or too big for us): hyper gets the bytes read so far.
                    return Outcome::Handoff(Prefixed { prefix: buf.freeze(), inner: stream });
                }
                Ok(Err(_)) | Err(_) => return Outcome::Done,
            },
            _ = app.shutdown.cancelled(), if buf.is_empty() => return Outcome::Done,
        };
        if !head.is_lean() {
            return Outcome::Handoff(Prefixed {
                prefix: buf.freeze(),
                inner: stream,
            });
        }
        // A target the request builder refuses (say, a raw `"`) goes to hyper
        // with its bytes, for hyper's own 400.
        let Some(req) = request(&head, &info) else {
            return Outcome::Handoff(Prefixed {
                prefix: buf.freeze(),
                inner: stream,
            });
        };
        buf.advance(head.len);
        let keep = head.keep_alive();
        // Nothing of the head or the read buffer need outlive a long wait.
        drop(head);
        if buf.is_empty() {
            buf = BytesMut::new();
        }
        // While the handler holds (a parked long-poll), watch the socket: a
        // client that goes away ends the wait and frees its subscriber.
        let mut router = router.clone();
        // Boxed: only this phase pays for the router's future, not the whole
        // connection task for its whole life.
        let mut call = Box::pin(router.call(req));
        let mut watching = true;
        let resp = loop {
            tokio::select! {
                r = &mut call => match r {
                    Ok(r) => break r,
                    Err(never) => match never {},
                },
                ready = stream.readable(), if watching => {
                    if ready.is_err() {
                        return Outcome::Done;
                    }
                    buf.reserve(256);
                    match stream.try_read_buf(&mut buf) {
                        Ok(0) => return Outcome::Done,
                        // Pipelined bytes are kept for the next request.
                        Ok(_) => watching = buf.len() < MAX_HEAD,
                        Err(e) if e.kind() == io::ErrorKind::WouldBlock => {}
                        Err(_) => return Outcome::Done,
                    }
                }
            }
        };
        // Boxed, like the call above: the connection task stays small while idle.
        let write = Box::pin(write_response(&mut stream, resp, keep, &info.alarm));
        match write.await {
            Ok(true) if !app.shutdown.is_cancelled() => {}
            _ => {
                let _ = stream.shutdown().await;
                return Outcome::Done;
            }
        }
    }
}

/// Reads until a complete head is buffered. `None`: not servable here (too
/// big, malformed, or the client closed before a full head), hand it over.
async fn read_head(stream: &mut TcpStream, buf: &mut BytesMut) -> io::Result<Option<Head>> {
    loop {
        if !buf.is_empty() {
            let mut headers = [httparse::EMPTY_HEADER; MAX_HEADERS];
            let mut req = httparse::Request::new(&mut headers);
            match req.parse(buf) {
                Ok(httparse::Status::Complete(len)) => {
                    let head = Head {
                        method: req.method.unwrap_or("").to_owned(),
                        target: req.path.unwrap_or("").to_owned(),
                        http10: req.version == Some(0),
                        headers: req
                            .headers
                            .iter()
                            .map(|h| (h.name.to_owned(), h.value.to_vec()))
                            .collect(),
                        len,
                    };
                    return Ok(Some(head));
                }
                Ok(httparse::Status::Partial) if buf.len() < MAX_HEAD => {}
                _ => return Ok(None),
            }
        }
        buf.reserve(if buf.capacity() == 0 { 1024 } else { buf.len() });
        if stream.read_buf(buf).await? == 0 {
            return if buf.is_empty() {
                Err(io::ErrorKind::UnexpectedEof.into())
            } else {
                Ok(None)
            };
        }
    }
}

fn request(head: &Head, info: &ConnInfo) -> Option<Request> {
    let mut builder = Request::builder().method("GET").uri(&head.target);
    for (k, v) in &head.headers {
        builder = builder.header(k.as_str(), v.as_slice());
    }
    let mut req = builder.body(Body::empty()).ok()?;
    req.extensions_mut().insert(info.clone());
    Some(req)
}

/// Writes the response; returns whether the connection may serve another request.
async fn write_response(
    stream: &mut TcpStream,
    resp: axum::response::Response,
    keep_alive: bool,
    alarm: &Arc<Notify>,
) -> io::Result<bool> {
    let (parts, mut body) = resp.into_parts();
    let length = axum::body::HttpBody::size_hint(&body).exact();
    let keep = keep_alive && length.is_some();

    let mut head = Vec::with_capacity(256);
    let reason = parts.status.canonical_reason().unwrap_or("");
    head.extend_from_slice(format!("HTTP/1.1 {} {reason}\r\n", parts.status.as_u16()).as_bytes());
    for (k, v) in &parts.headers {
        if k == "content-length" || k == "transfer-encoding" || k == "connection" {
            continue;
        }
        head.extend_from_slice(k.as_str().as_bytes());
        head.extend_from_slice(b": ");
        head.extend_from_slice(v.as_bytes());
        head.extend_from_slice(b"\r\n");
    }
    if let Some(n) = length {
        head.extend_from_slice(format!("content-length: {n}\r\n").as_bytes());
    }
    head.extend_from_slice(if keep {
        b"connection: keep-alive\r\n\r\n"
    } else {
        b"connection: close\r\n\r\n"
    });

    // The head is written; its headers need not live as long as the stream.
    drop(parts);
    let (mut rd, mut wr) = stream.split();
    write_or_give_up(&mut wr, &head, alarm).await?;
    drop(head);

    let mut scratch = [0u8; 64];
    loop {
        let frame = tokio::select! {
            biased;
            f = body.frame() => f,
            // The client sent something or went away: either way this response
            // is its last (a client does not pipeline behind a stream).
            r = rd.read(&mut scratch) => {
                let _ = r;
                return Ok(false);
            }
            _ = alarm.notified() => return Ok(false),
        };
        match frame {
            None => break,
            Some(Err(_)) => return Ok(false),
            Some(Ok(frame)) => {
                if let Ok(data) = frame.into_data() {
                    if !data.is_empty() {
                        write_or_give_up(&mut wr, &data, alarm).await?;
                    }
                }
            }
        }
    }
    Ok(keep)
}

async fn write_or_give_up(
    wr: &mut tokio::net::tcp::WriteHalf<'_>,
    bytes: &[u8],
    alarm: &Arc<Notify>,
) -> io::Result<()> {
    tokio::select! {
        r = timeout(WRITE_TIMEOUT, wr.write_all(bytes)) => match r {
            Ok(r) => r,
            Err(_) => Err(io::ErrorKind::TimedOut.into()),
        },
        _ = alarm.notified() => Err(io::ErrorKind::ConnectionAborted.into()),
    }
}

/// A TCP stream with bytes already read from it put back in front.
pub struct Prefixed {
    prefix: Bytes,
    inner: TcpStream,
}

impl AsyncRead for Prefixed {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        out: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        if !self.prefix.is_empty() {
            let n = self.prefix.len().min(out.remaining());
            out.put_slice(&self.prefix[..n]);
            self.prefix.advance(n);
            if self.prefix.is_empty() {
                // Free the buffer the prefix was cut from.
                self.prefix = Bytes::new();
            }
            return Poll::Ready(Ok(()));
        }
        Pin::new(&mut self.inner).poll_read(cx, out)
    }
}

impl AsyncWrite for Prefixed {
    fn poll_write(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        Pin::new(&mut self.inner).poll_write(cx, buf)
    }

    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.inner).poll_flush(cx)
    }

    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.inner).poll_shutdown(cx)
    }

    fn poll_write_vectored(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[io::IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        Pin::new(&mut self.inner).poll_write_vectored(cx, bufs)
    }

    fn is_write_vectored(&self) -> bool {
        self.inner.is_write_vectored()
    }
}
