//! Servers the harness starts itself, each on a free loopback port, and
//! stops when done: a private redis-server, a gateway from its binary, and
//! Nchan through `loadtest/peers/nchan.sh`. It never touches a server it did
//! not start, except a target whose address it was given.

use std::{
    net::{SocketAddr, TcpListener},
    path::{Path, PathBuf},
    process::Stdio,
    time::Duration,
};

use anyhow::{bail, Context};
use tokio::{
    io::{AsyncBufReadExt, AsyncReadExt, AsyncWriteExt, BufReader},
    process::{Child, Command},
};

use crate::http::{self, HttpConn};

/// Longest wait for a started server to answer.
const START_TIMEOUT: Duration = Duration::from_secs(30);

/// A free TCP port on 127.0.0.1, as the kernel hands one out.
pub fn free_port() -> anyhow::Result<u16> {
    let listener = TcpListener::bind("127.0.0.1:0")?;
    Ok(listener.local_addr()?.port())
}

/// A server this harness started.
pub struct Service {
    /// What it is, for messages.
    pub name: String,
    /// Where it listens.
    pub addr: SocketAddr,
    /// PID to measure (for Nchan, the nginx master; workers are found from
    /// the listening socket).
    pub pid: u32,
    /// The process, killed on drop, when we spawned it directly.
    child: Option<Child>,
    /// Command that stops it, when a script started it.
    stop: Option<Vec<String>>,
}

impl Service {
    /// `redis://` URL of a Redis service.
    pub fn redis_url(&self) -> String {
        format!("redis://{}", self.addr)
    }

    /// Stop it and wait (bounded) for it to go.
    pub async fn stop(mut self) {
        self.shutdown().await;
    }

    async fn shutdown(&mut self) {
        if let Some(child) = self.child.as_mut() {
            let _ = child.start_kill();
            let _ = tokio::time::timeout(Duration::from_secs(5), child.wait()).await;
        }
        self.child = None;
        if let Some(cmd) = self.stop.take() {
            let _ = tokio::time::timeout(
                Duration::from_secs(15),
                Command::new(&cmd[0])
                    .args(&cmd[1..])
                    .stdout(Stdio::null())
                    .status(),
            )
            .await;
        }
    }
}

impl Drop for Service {
    fn drop(&mut self) {
        // `kill_on_drop` takes care of spawned children; a script-started
        // server is stopped by its script.
        if let Some(cmd) = self.stop.take() {
            let _ = std::process::Command::new(&cmd[0])
                .args(&cmd[1..])
                .stdout(Stdio::null())
                .status();
        }
    }
}

/// Start a private redis-server (no persistence) on a free port.
pub async fn start_redis(bin: &str) -> anyhow::Result<Service> {
    let port = free_port()?;
    let child = Command::new(bin)
        .args(["--bind", "127.0.0.1", "--port", &port.to_string()])
        .args(["--save", "", "--appendonly", "no", "--daemonize", "no"])
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .stdin(Stdio::null())
        .kill_on_drop(true)
        .spawn()
        .with_context(|| format!("starting {bin}"))?;
    let pid = child.id().unwrap_or(0);
    let addr: SocketAddr = ([127, 0, 0, 1], port).into();

    let ready = tokio::time::timeout(START_TIMEOUT, async {
        loop {
            if redis_ping(addr).await {
                return;
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    })
    .await;
    if ready.is_err() {
        bail!("redis-server on {addr} did not answer PING");
    }
    Ok(Service {
        name: "redis-server".into(),
        addr,
        pid,
        child: Some(child),
        stop: None,
    })
}

async fn redis_ping(addr: SocketAddr) -> bool {
    let Ok(mut stream) = http::connect(addr, None).await else {
        return false;
    };
    if stream.write_all(b"PING\r\n").await.is_err() {
        return false;
    }
    let mut buf = [0u8; 16];
    matches!(
        tokio::time::timeout(Duration::from_secs(1), stream.read(&mut buf)).await,
        Ok(Ok(n)) if buf[..n].starts_with(b"+PONG")
    )
}

/// Start a gateway from its binary on a free port (`--listen 127.0.0.1:0`),
/// optionally on Redis; waits for `listening on` and `/readyz`. Its log goes
/// to `log`.
pub async fn start_gateway(bin: &Path, redis: Option<&str>, log: &Path) -> anyhow::Result<Service> {
    let log_file =
        std::fs::File::create(log).with_context(|| format!("creating {}", log.display()))?;
    let mut cmd = Command::new(bin);
    cmd.args(["--listen", "127.0.0.1:0"]);
    if let Some(url) = redis {
        cmd.args(["--redis", url]);
    }
    let mut child = cmd
        .stdout(Stdio::piped())
        .stderr(Stdio::from(log_file))
        .stdin(Stdio::null())
        .kill_on_drop(true)
        .spawn()
        .with_context(|| format!("starting {}", bin.display()))?;
    let pid = child.id().unwrap_or(0);
    let stdout = child.stdout.take().context("gateway stdout")?;

    // The first line that names the address; keep draining the rest.
    let mut lines = BufReader::new(stdout).lines();
    let addr = tokio::time::timeout(START_TIMEOUT, async {
        while let Some(line) = lines.next_line().await? {
            if let Some(rest) = line.trim().strip_prefix("listening on ") {
                let addr: SocketAddr = rest.trim().parse().context("listening address")?;
                return Ok(addr);
            }
        }
        bail!("gateway exited before it printed `listening on`")
    })
    .await
    .context("gateway did not print `listening on` in time")??;
    tokio::spawn(async move { while let Ok(Some(_)) = lines.next_line().await {} });

    let ready = tokio::time::timeout(START_TIMEOUT, async {
        loop {
            if http_status(addr, "/readyz").await == Some(200) {
                return;
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    })
    .await;
    if ready.is_err() {
        bail!("gateway on {addr} never answered /readyz with 200");
    }
    Ok(Service {
        name: "gateway".into(),
        addr,
        pid,
        child: Some(child),
        stop: None,
    })
}

/// Status of a GET, or None when it could not be had.
pub async fn http_status(addr: SocketAddr, path: &str) -> Option<u16> {
    let stream = http::connect(addr, None).await.ok()?;
    let mut conn = HttpConn::new(stream);
    let request = format!("GET {path} HTTP/1.1\r\nHost: {addr}\r\nConnection: close\r\n\r\n");
    tokio::time::timeout(Duration::from_secs(2), async {
        conn.send(request.as_bytes()).await.ok()?;
        conn.read_head().await.ok().map(|h| h.status)
    })
    .await
    .ok()
    .flatten()
}

/// The peers script shipped beside this crate.
pub fn nchan_script() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("peers/nchan.sh")
}

/// Start Nchan with `store` (memory or redis) in `dir` through the peers
/// script.
pub async fn start_nchan(store: &str, dir: &Path) -> anyhow::Result<Service> {
    let script = nchan_script();
    std::fs::create_dir_all(dir)?;
    let dir = std::fs::canonicalize(dir)?;
    let dir_s = dir.to_string_lossy().to_string();
    let output = tokio::time::timeout(
        Duration::from_secs(300),
        Command::new(&script)
            .args(["start", "--store", store, "--dir", &dir_s])
            .stderr(Stdio::inherit())
            .output(),
    )
    .await
    .context("nchan.sh start timed out")??;
    let text = String::from_utf8_lossy(&output.stdout);
    if !output.status.success() {
        bail!("nchan.sh start failed: {text}");
    }
    let mut addr = None;
    let mut pid = None;
    for line in text.lines() {
        if let Some(rest) = line.strip_prefix("listening on ") {
            addr = rest.trim().parse().ok();
        } else if let Some(rest) = line.strip_prefix("pid ") {
            pid = rest.trim().parse().ok();
        }
    }
    let (Some(addr), Some(pid)) = (addr, pid) else {
        bail!("nchan.sh start printed no address: {text}");
    };
    Ok(Service {
        name: format!("nchan-{store}"),
        addr,
        pid,
        child: None,
        stop: Some(vec![
            script.to_string_lossy().to_string(),
            "stop".into(),
            "--dir".into(),
            dir_s,
        ]),
    })
}
