//! Clients that stop reading, the slow consumers a node must cut.
//!
//! - [`StalledSocket`] completes a WebSocket upgrade (or opens an SSE
//!   stream), reads up to the `subscribed` frame or event so the test knows
//!   it is subscribed, and then reads nothing more until the test asks for
//!   everything that was sent ([`StalledSocket::read_to_end`]). Its receive
//!   buffer is set small ([`STALLED_RCVBUF`]), so the kernel absorbs little
//!   and the node's own bound is what is tested.
//! - [`PausedCli`] is a `gateway-cli subscribe` child that the test stops
//!   with SIGSTOP once it is subscribed: a whole client process that froze.

use std::net::SocketAddr;
use std::process::Stdio;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use anyhow::{anyhow, bail, Context, Result};
use tokio::io::{AsyncBufReadExt, AsyncReadExt, AsyncWriteExt, BufReader};
use tokio::net::{TcpSocket, TcpStream};
use tokio::process::{Child, Command};
use tokio::time::Instant;

use crate::bins;
use crate::process::send_signal;
use crate::wait::STEP_TIMEOUT;

/// The receive buffer a stalled socket asks for (the kernel doubles it and
/// applies its minimum): small, so the node's queue bound is what fills.
pub const STALLED_RCVBUF: u32 = 4096;

/// The most bytes [`StalledSocket::read_to_end`] reads before it stops.
const MAX_DRAIN: usize = 256 << 20;

/// How a drained socket ended.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum DrainEnd {
    /// The peer closed the connection (FIN): read returned 0.
    Eof,
    /// The connection was reset (or another read error).
    Reset(String),
    /// Nothing arrived for the whole wait: the connection is still open.
    Silent,
    /// [`MAX_DRAIN`] bytes were read and the connection still went on.
    TooMuch,
}

/// One server frame as it came off the wire.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct WireFrame {
    pub opcode: u8,
    pub payload: Vec<u8>,
}

impl WireFrame {
    /// The close code of a close frame.
    pub fn close_code(&self) -> Option<u16> {
        (self.opcode == 0x8 && self.payload.len() >= 2)
            .then(|| u16::from_be_bytes([self.payload[0], self.payload[1]]))
    }
}

/// A connection that stopped reading after it subscribed.
pub struct StalledSocket {
    stream: TcpStream,
    /// Every byte read so far, response head included.
    read: Vec<u8>,
}

impl StalledSocket {
    /// Upgrades `GET path_and_query` (which names the channels) to a
    /// WebSocket and reads until the first frame (`subscribed`) is complete.
    pub async fn websocket(addr: SocketAddr, path_and_query: &str) -> Result<Self> {
        let request = format!(
            "GET {path_and_query} HTTP/1.1\r\nHost: {addr}\r\nUpgrade: websocket\r\n\
             Connection: Upgrade\r\nSec-WebSocket-Key: c3RhbGxlZCBjbGllbnQgIQ==\r\n\
             Sec-WebSocket-Version: 13\r\n\r\n"
        );
        let mut socket = Self::open(addr, &request).await?;
        let head = socket.read_until(b"\r\n\r\n").await?;
        if !head.starts_with("HTTP/1.1 101") {
            bail!("upgrade of {path_and_query} answered {head:?}");
        }
        let body_start = socket.read.len() - socket.body().len();
        let give_up = Instant::now() + STEP_TIMEOUT;
        while ws_frames(&socket.read[body_start..]).0.is_empty() {
            socket.read_some(give_up).await?;
        }
        Ok(socket)
    }

    /// Opens `GET path_and_query` as an event stream and reads until its
    /// `subscribed` event.
    pub async fn sse(addr: SocketAddr, path_and_query: &str) -> Result<Self> {
        let request = format!(
            "GET {path_and_query} HTTP/1.1\r\nHost: {addr}\r\nAccept: text/event-stream\r\n\r\n"
        );
        let mut socket = Self::open(addr, &request).await?;
        let head = socket.read_until(b"\r\n\r\n").await?;
        if !head.starts_with("HTTP/1.1 200") {
            bail!("GET {path_and_query} answered {head:?}");
        }
        socket.read_until(b"event: subscribed").await?;
        Ok(socket)
    }

    async fn open(addr: SocketAddr, request: &str) -> Result<Self> {
        let socket = TcpSocket::new_v4().context("creating a socket")?;
        socket
            .set_recv_buffer_size(STALLED_RCVBUF)
            .context("setting SO_RCVBUF")?;
        let mut stream = tokio::time::timeout(STEP_TIMEOUT, socket.connect(addr))
            .await
            .map_err(|_| anyhow!("connecting to {addr} took over {STEP_TIMEOUT:?}"))?
            .with_context(|| format!("connecting to {addr}"))?;
        stream
            .write_all(request.as_bytes())
            .await
            .context("writing the request")?;
        Ok(StalledSocket {
            stream,
            read: Vec::new(),
        })
    }

    /// Reads until `needle` has arrived; returns everything read so far as
    /// text (lossy).
    async fn read_until(&mut self, needle: &[u8]) -> Result<String> {
        let give_up = Instant::now() + STEP_TIMEOUT;
        while !self.read.windows(needle.len()).any(|w| w == needle) {
            self.read_some(give_up).await?;
        }
        Ok(String::from_utf8_lossy(&self.read).into_owned())
    }

    async fn read_some(&mut self, give_up: Instant) -> Result<()> {
        let mut chunk = [0u8; 4096];
        let n = tokio::time::timeout_at(give_up, self.stream.read(&mut chunk))
            .await
            .map_err(|_| anyhow!("nothing more arrived within {STEP_TIMEOUT:?}"))?
            .context("reading")?;
        if n == 0 {
            bail!(
                "connection closed during setup after {:?}",
                String::from_utf8_lossy(&self.read)
            );
        }
        self.read.extend_from_slice(&chunk[..n]);
        Ok(())
    }

    /// The bytes after the response head.
    fn body(&self) -> &[u8] {
        match self.read.windows(4).position(|w| w == b"\r\n\r\n") {
            Some(i) => &self.read[i + 4..],
            None => &[],
        }
    }

    /// Reads everything the node sent, until the connection ends or nothing
    /// arrives for `silence`; returns the body bytes (after the response
    /// head, setup included) and how it ended.
    pub async fn read_to_end(mut self, silence: Duration) -> (Vec<u8>, DrainEnd) {
        let mut chunk = vec![0u8; 64 * 1024];
        let end = loop {
            if self.read.len() > MAX_DRAIN {
                break DrainEnd::TooMuch;
            }
            match tokio::time::timeout(silence, self.stream.read(&mut chunk)).await {
                Err(_) => break DrainEnd::Silent,
                Ok(Ok(0)) => break DrainEnd::Eof,
                Ok(Ok(n)) => self.read.extend_from_slice(&chunk[..n]),
                Ok(Err(e)) => break DrainEnd::Reset(e.to_string()),
            }
        };
        (self.body().to_vec(), end)
    }
}

/// Splits server (unmasked) WebSocket frames off `bytes`: the complete
/// frames, and how many bytes of an incomplete last frame follow them.
pub fn ws_frames(bytes: &[u8]) -> (Vec<WireFrame>, usize) {
    let mut frames = Vec::new();
    let mut rest = bytes;
    loop {
        if rest.len() < 2 {
            return (frames, rest.len());
        }
        let (b0, b1) = (rest[0], rest[1]);
        let (len, header) = match b1 & 0x7f {
            126 => match rest.get(2..4) {
                Some(l) => (u64::from(u16::from_be_bytes([l[0], l[1]])), 4),
                None => return (frames, rest.len()),
            },
            127 => match rest.get(2..10) {
                Some(l) => {
                    let mut be = [0u8; 8];
                    be.copy_from_slice(l);
                    (u64::from_be_bytes(be), 10)
                }
                None => return (frames, rest.len()),
            },
            short => (u64::from(short), 2),
        };
        let end = header + usize::try_from(len).unwrap_or(usize::MAX - header);
        let Some(payload) = rest.get(header..end) else {
            return (frames, rest.len());
        };
        frames.push(WireFrame {
            opcode: b0 & 0x0f,
            payload: payload.to_vec(),
        });
        rest = &rest[end..];
    }
}

/// A `gateway-cli subscribe` child, stopped (SIGSTOP) once subscribed;
/// killed when dropped (SIGKILL ends a stopped process too).
pub struct PausedCli {
    child: Child,
    /// Every stderr line so far (`subscribed` frames and notices).
    stderr: Arc<Mutex<Vec<String>>>,
}

impl PausedCli {
    /// Runs `gateway-cli --url URL subscribe --channel C --transport T` with
    /// stdout discarded, waits until it printed its `subscribed` frame, and
    /// stops it.
    pub async fn start(url: &str, channel: &str, transport: &str) -> Result<Self> {
        let binary = bins::gateway_cli()?;
        let mut command = Command::new(&binary);
        for (name, _) in std::env::vars_os() {
            if name.to_string_lossy().starts_with("GATEWAY_") {
                command.env_remove(name);
            }
        }
        let mut child = command
            .args(["--url", url, "subscribe", "--channel", channel])
            .args(["--transport", transport])
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::piped())
            .kill_on_drop(true)
            .spawn()
            .with_context(|| format!("spawning {}", binary.display()))?;
        let mut lines = BufReader::new(child.stderr.take().context("stderr not piped")?).lines();

        let stderr = Arc::new(Mutex::new(Vec::new()));
        let give_up = Instant::now() + STEP_TIMEOUT;
        loop {
            let line = tokio::time::timeout_at(give_up, lines.next_line())
                .await
                .map_err(|_| anyhow!("gateway-cli printed no subscribed frame in time"))?
                .context("reading gateway-cli stderr")?
                .context("gateway-cli exited before subscribing")?;
            let subscribed = line.contains(r#""subscribed""#);
            if let Ok(mut kept) = stderr.lock() {
                kept.push(line);
            }
            if subscribed {
                break;
            }
        }
        let sink = stderr.clone();
        tokio::spawn(async move {
            while let Ok(Some(line)) = lines.next_line().await {
                if let Ok(mut kept) = sink.lock() {
                    kept.push(line);
                }
            }
        });

        let cli = PausedCli { child, stderr };
        send_signal(cli.pid()?, "STOP")?;
        Ok(cli)
    }

    pub fn pid(&self) -> Result<u32> {
        self.child.id().context("gateway-cli already reaped")
    }

    /// Continues the process (SIGCONT).
    pub fn resume(&self) -> Result<()> {
        send_signal(self.pid()?, "CONT")
    }

    /// Every stderr line so far.
    pub fn stderr(&self) -> Vec<String> {
        self.stderr.lock().map(|l| l.clone()).unwrap_or_default()
    }
}

impl Drop for PausedCli {
    fn drop(&mut self) {
        let _ = self.child.start_kill();
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn splits_frames_and_counts_a_truncated_tail() {
        let mut bytes = vec![0x81, 2, b'h', b'i'];
        bytes.extend_from_slice(&[0x88, 2, 0x0f, 0xa1]);
        bytes.extend_from_slice(&[0x81, 126, 0x01, 0x00, b'x']);
        let (frames, tail) = ws_frames(&bytes);
        assert_eq!(frames.len(), 2);
        assert_eq!(frames[0].payload, b"hi");
        assert_eq!(frames[1].close_code(), Some(4001));
        assert_eq!(tail, 5);
    }
}
