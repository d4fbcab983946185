//! One `redis-server` child process on a free loopback port, owned by a test,
//! plus the few commands the tests send to it over a minimal RESP2 client.
//!
//! By default the server keeps nothing on disk (`--save "" --appendonly no`,
//! in its own temporary `--dir`), so [`RedisServer::restart`] is a Redis that
//! lost all its data: exactly the event that must change every channel's
//! epoch. [`RedisServer::start_persistent`] runs it with `--appendonly yes
//! --appendfsync always` instead (what the README asks of a Redis that must
//! restart without losing accepted messages), and its restart replays the
//! append-only file from the same `--dir`.
//!
//! [`RedisServer::pause`] and [`RedisServer::resume`] stop and continue the
//! process (SIGSTOP, SIGCONT): a Redis that goes silent without closing any
//! connection, the fault only a timeout can detect.

use std::net::TcpListener;
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};

use anyhow::{anyhow, bail, Context, Result};
use tempfile::TempDir;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

use crate::process::send_signal;
use crate::wait::{RETRY_INTERVAL, STEP_TIMEOUT};

/// How many free ports [`RedisServer::start`] tries before giving up: a port
/// found free can be taken by another test before redis binds it.
const START_ATTEMPTS: usize = 3;

/// A RESP2 reply.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Resp {
    /// `+OK`
    Simple(String),
    /// `-ERR ...`
    Error(String),
    /// `:42`
    Int(i64),
    /// `$3\r\nabc` or the null bulk string `$-1`.
    Bulk(Option<Vec<u8>>),
    /// `*2\r\n...` or the null array `*-1`.
    Array(Option<Vec<Resp>>),
}

impl Resp {
    /// The reply as text, for simple and bulk strings.
    pub fn as_str(&self) -> Option<&str> {
        match self {
            Resp::Simple(s) => Some(s),
            Resp::Bulk(Some(bytes)) => std::str::from_utf8(bytes).ok(),
            _ => None,
        }
    }

    /// The reply as an integer.
    pub fn as_int(&self) -> Option<i64> {
        match self {
            Resp::Int(n) => Some(*n),
            _ => None,
        }
    }

    /// The elements of an array reply.
    pub fn as_array(&self) -> Option<&[Resp]> {
        match self {
            Resp::Array(Some(items)) => Some(items),
            _ => None,
        }
    }
}

/// A running `redis-server`, killed when dropped.
pub struct RedisServer {
    /// The loopback port, kept across [`RedisServer::restart`].
    port: u16,
    /// `--dir` and the server's log file; removed on drop.
    dir: TempDir,
    /// The live process; `None` between [`RedisServer::kill`] and a restart.
    child: Option<Child>,
    /// Whether every write is in the append-only file before it is answered,
    /// so that a restart keeps what was accepted.
    persistent: bool,
}

impl RedisServer {
    /// Starts `redis-server` on a free loopback port and waits until it
    /// answers PING.
    pub async fn start() -> Result<Self> {
        Self::start_with(false).await
    }

    /// Starts a `redis-server` that persists every write before answering it
    /// (`--appendonly yes --appendfsync always`), so that a kill and
    /// [`RedisServer::restart`] lose nothing that was accepted.
    pub async fn start_persistent() -> Result<Self> {
        Self::start_with(true).await
    }

    async fn start_with(persistent: bool) -> Result<Self> {
        let mut last_error = anyhow!("no attempt made");
        for _ in 0..START_ATTEMPTS {
            let dir = tempfile::Builder::new()
                .prefix("e2e-redis-")
                .tempdir()
                .context("creating redis temp dir")?;
            let mut server = RedisServer {
                port: free_port()?,
                dir,
                child: None,
                persistent,
            };
            match server.spawn_and_wait().await {
                Ok(()) => return Ok(server),
                Err(e) => last_error = e,
            }
        }
        Err(last_error.context(format!(
            "redis-server did not start in {START_ATTEMPTS} attempts"
        )))
    }

    /// `redis://127.0.0.1:PORT`
    pub fn url(&self) -> String {
        format!("redis://127.0.0.1:{}", self.port)
    }

    /// The loopback port the server listens on.
    pub fn port(&self) -> u16 {
        self.port
    }

    /// Kills the server with SIGKILL and reaps it; its data is gone.
    pub fn kill(&mut self) -> Result<()> {
        if let Some(mut child) = self.child.take() {
            child.kill().context("killing redis-server")?;
            child.wait().context("reaping redis-server")?;
        }
        Ok(())
    }

    /// Kills the server (if running) and starts it again on the same port,
    /// waiting until it answers PING: empty, or for a persistent server with
    /// everything its append-only file holds.
    pub async fn restart(&mut self) -> Result<()> {
        self.kill()?;
        self.spawn_and_wait().await
    }

    /// The server's process id, while it runs.
    pub fn pid(&self) -> Option<u32> {
        self.child.as_ref().map(Child::id)
    }

    /// Stops the process (SIGSTOP): its sockets stay open and silent.
    pub fn pause(&self) -> Result<()> {
        let pid = self.pid().context("redis-server is not running")?;
        send_signal(pid, "STOP")
    }

    /// Continues a paused process (SIGCONT).
    pub fn resume(&self) -> Result<()> {
        let pid = self.pid().context("redis-server is not running")?;
        send_signal(pid, "CONT")
    }

    /// `FLUSHALL`: drops every key (history, offsets, epochs). Functions
    /// survive, as they do in a real flush.
    pub async fn flushall(&self) -> Result<()> {
        let reply = self.cmd(&["FLUSHALL"]).await?;
        if reply.as_str() != Some("OK") {
            bail!("FLUSHALL answered {reply:?}");
        }
        Ok(())
    }

    /// Sends one command and returns its reply; a Redis error reply is an
    /// `Err` carrying its text.
    pub async fn cmd(&self, args: &[&str]) -> Result<Resp> {
        let reply = self.raw_cmd(args).await?;
        if let Resp::Error(text) = &reply {
            bail!("redis {:?} failed: {text}", args.first().unwrap_or(&""));
        }
        Ok(reply)
    }

    /// `PUBSUB NUMSUB name`: how many connections are subscribed to `name`.
    pub async fn numsub(&self, pubsub_channel: &str) -> Result<i64> {
        let reply = self.cmd(&["PUBSUB", "NUMSUB", pubsub_channel]).await?;
        reply
            .as_array()
            .and_then(|items| items.get(1))
            .and_then(Resp::as_int)
            .ok_or_else(|| anyhow!("unexpected PUBSUB NUMSUB reply {reply:?}"))
    }

    /// `PUBSUB CHANNELS pattern`: the subscribed channels matching `pattern`.
    pub async fn pubsub_channels(&self, pattern: &str) -> Result<Vec<String>> {
        let reply = self.cmd(&["PUBSUB", "CHANNELS", pattern]).await?;
        let items = reply
            .as_array()
            .ok_or_else(|| anyhow!("unexpected PUBSUB CHANNELS reply {reply:?}"))?;
        Ok(items
            .iter()
            .filter_map(|item| item.as_str().map(str::to_owned))
            .collect())
    }

    /// The Redis pub/sub channel a gateway node subscribes to for gateway
    /// channel `channel` (README: `gw:{C}:p`, hash-tagged so offset, history
    /// and pub/sub name share one cluster slot).
    pub fn pubsub_name(channel: &str) -> String {
        format!("gw:{{{channel}}}:p")
    }

    /// Publishes straight into Redis through the function the gateway
    /// installs: `FCALL gw_publish 1 <channel> <json>`.
    pub async fn fcall_publish(&self, channel: &str, json: &str) -> Result<Resp> {
        self.cmd(&["FCALL", "gw_publish", "1", channel, json]).await
    }

    /// The server's log so far, for failure messages.
    pub fn log(&self) -> String {
        std::fs::read_to_string(self.log_path()).unwrap_or_default()
    }

    fn log_path(&self) -> PathBuf {
        self.dir.path().join("redis.log")
    }

    async fn raw_cmd(&self, args: &[&str]) -> Result<Resp> {
        let addr = ("127.0.0.1", self.port);
        let exchange = async {
            let mut stream = TcpStream::connect(addr).await?;
            stream.write_all(&encode_command(args)).await?;
            read_reply(&mut stream).await
        };
        tokio::time::timeout(STEP_TIMEOUT, exchange)
            .await
            .map_err(|_| anyhow!("redis on port {} did not answer in time", self.port))?
    }

    /// Spawns redis-server on `self.port` and waits until PING answers PONG,
    /// failing early (with the log) if the process exits.
    async fn spawn_and_wait(&mut self) -> Result<()> {
        // Appended to, so that a restart's log follows the previous run's.
        let log = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(self.log_path())
            .context("creating redis log")?;
        let durability: &[&str] = if self.persistent {
            &["--appendonly", "yes", "--appendfsync", "always"]
        } else {
            &["--appendonly", "no"]
        };
        let child = Command::new("redis-server")
            .arg("--port")
            .arg(self.port.to_string())
            .args(["--bind", "127.0.0.1", "--save", ""])
            .args(durability)
            .arg("--dir")
            .arg(self.dir.path())
            .stdin(Stdio::null())
            .stdout(log.try_clone()?)
            .stderr(log)
            .spawn()
            .context("spawning redis-server (is it installed? scripts/test.sh installs it)")?;
        self.child = Some(child);

        let ready = self.wait_for_pong().await;
        if ready.is_err() {
            self.kill()?;
        }
        ready
    }

    async fn wait_for_pong(&mut self) -> Result<()> {
        let give_up = tokio::time::Instant::now() + STEP_TIMEOUT;
        loop {
            if let Some(status) = self
                .child
                .as_mut()
                .map(Child::try_wait)
                .transpose()?
                .flatten()
            {
                bail!("redis-server exited with {status}:\n{}", self.log());
            }
            if let Ok(reply) = self.raw_cmd(&["PING"]).await {
                if reply.as_str() == Some("PONG") {
                    return Ok(());
                }
            }
            if tokio::time::Instant::now() >= give_up {
                bail!(
                    "redis-server on port {} did not answer PING in time",
                    self.port
                );
            }
            tokio::time::sleep(RETRY_INTERVAL).await;
        }
    }
}

impl Drop for RedisServer {
    fn drop(&mut self) {
        let _ = self.kill();
    }
}

/// A loopback port that was free a moment ago.
pub fn free_port() -> Result<u16> {
    let listener = TcpListener::bind("127.0.0.1:0").context("finding a free port")?;
    Ok(listener.local_addr()?.port())
}

fn encode_command(args: &[&str]) -> Vec<u8> {
    let mut out = format!("*{}\r\n", args.len()).into_bytes();
    for arg in args {
        out.extend_from_slice(format!("${}\r\n", arg.len()).as_bytes());
        out.extend_from_slice(arg.as_bytes());
        out.extend_from_slice(b"\r\n");
    }
    out
}

async fn read_reply(stream: &mut TcpStream) -> Result<Resp> {
    let mut buf = Vec::new();
    let mut chunk = [0u8; 4096];
    loop {
        if let Some((reply, _)) = parse_reply(&buf)? {
            return Ok(reply);
        }
        let n = stream.read(&mut chunk).await?;
        if n == 0 {
            bail!("redis closed the connection mid-reply");
        }
        buf.extend_from_slice(&chunk[..n]);
    }
}

/// Parses one reply from the front of `buf`: `Ok(None)` when incomplete,
/// else the reply and how many bytes it used.
fn parse_reply(buf: &[u8]) -> Result<Option<(Resp, usize)>> {
    let Some(line_end) = buf.windows(2).position(|w| w == b"\r\n") else {
        return Ok(None);
    };
    let line = std::str::from_utf8(&buf[1..line_end]).context("non-UTF-8 RESP header")?;
    let after_line = line_end + 2;
    let Some(&kind) = buf.first() else {
        return Ok(None);
    };

    let parsed = match kind {
        b'+' => (Resp::Simple(line.to_owned()), after_line),
        b'-' => (Resp::Error(line.to_owned()), after_line),
        b':' => (Resp::Int(line.parse()?), after_line),
        b'$' => {
            let len: i64 = line.parse()?;
            if len < 0 {
                (Resp::Bulk(None), after_line)
            } else {
                let end = after_line + usize::try_from(len)?;
                if buf.len() < end + 2 {
                    return Ok(None);
                }
                (Resp::Bulk(Some(buf[after_line..end].to_vec())), end + 2)
            }
        }
        b'*' => {
            let count: i64 = line.parse()?;
            if count < 0 {
                (Resp::Array(None), after_line)
            } else {
                let mut items = Vec::new();
                let mut used = after_line;
                for _ in 0..count {
                    let Some((item, n)) = parse_reply(&buf[used..])? else {
                        return Ok(None);
                    };
                    items.push(item);
                    used += n;
                }
                (Resp::Array(Some(items)), used)
            }
        }
        other => bail!("unknown RESP type byte {other:#x}"),
    };
    Ok(Some(parsed))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_nested_arrays_and_waits_for_incomplete_bulk() -> Result<()> {
        let full = b"*2\r\n$3\r\nabc\r\n*1\r\n:7\r\n";
        let (reply, used) = parse_reply(full)?.context("complete reply")?;
        assert_eq!(used, full.len());
        assert_eq!(
            reply,
            Resp::Array(Some(vec![
                Resp::Bulk(Some(b"abc".to_vec())),
                Resp::Array(Some(vec![Resp::Int(7)])),
            ]))
        );
        assert_eq!(parse_reply(b"$3\r\nab")?, None);
        Ok(())
    }
}
