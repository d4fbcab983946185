//! One `gateway` child process, started on `127.0.0.1:0` and owned by a test.
//!
//! The gateway prints exactly one stdout line, `listening on 127.0.0.1:PORT`,
//! once bound; [`Gateway::start`] reads it (bounded), then waits for `GET
//! /readyz` to answer 200. The process's stderr goes to a log file in a
//! per-gateway temp dir, and the tail of that log is printed when the handle
//! drops: the test harness shows it only for a failing test.

use std::fs::File;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::process::{ExitStatus, Stdio};

use anyhow::{bail, Context, Result};
use tempfile::TempDir;
use tokio::io::{AsyncBufReadExt, BufReader};
use tokio::process::{Child, ChildStdout, Command};

use crate::bins;
use crate::http::Http;
use crate::wait::{RETRY_INTERVAL, STEP_TIMEOUT};

/// How many log lines a dropped gateway prints.
const LOG_TAIL_LINES: usize = 80;

/// The stdout line that announces the bound address.
const LISTENING_PREFIX: &str = "listening on ";

/// How a gateway is started: broker, history bounds, any further flags.
#[derive(Debug, Clone, Default)]
pub struct GatewayOpts {
    /// `--redis URL`; `None` runs the embedded broker.
    pub redis: Option<String>,
    /// `--history-size N`
    pub history_size: Option<u64>,
    /// `--history-age SECONDS`
    pub history_age: Option<u64>,
    /// Further arguments, passed last.
    pub extra_args: Vec<String>,
}

impl GatewayOpts {
    /// One node on the embedded in-process broker.
    pub fn embedded() -> Self {
        Self::default()
    }

    /// One node on the Redis at `url`.
    pub fn redis(url: impl Into<String>) -> Self {
        Self {
            redis: Some(url.into()),
            ..Self::default()
        }
    }

    /// Keeps the last `n` messages per channel.
    pub fn history_size(mut self, n: u64) -> Self {
        self.history_size = Some(n);
        self
    }

    /// Keeps no message older than `seconds`.
    pub fn history_age(mut self, seconds: u64) -> Self {
        self.history_age = Some(seconds);
        self
    }

    /// Appends one raw argument.
    pub fn arg(mut self, arg: impl Into<String>) -> Self {
        self.extra_args.push(arg.into());
        self
    }

    fn to_args(&self) -> Vec<String> {
        let mut args = vec!["--listen".to_owned(), "127.0.0.1:0".to_owned()];
        if let Some(url) = &self.redis {
            args.extend(["--redis".to_owned(), url.clone()]);
        }
        if let Some(n) = self.history_size {
            args.extend(["--history-size".to_owned(), n.to_string()]);
        }
        if let Some(seconds) = self.history_age {
            args.extend(["--history-age".to_owned(), seconds.to_string()]);
        }
        args.extend(self.extra_args.iter().cloned());
        args
    }
}

/// A running gateway node, killed (SIGKILL) when dropped.
pub struct Gateway {
    /// The live process; `None` once it has been killed or has exited.
    child: Option<Child>,
    /// The address it announced on stdout.
    addr: SocketAddr,
    /// Holds `gateway.log` (stderr, then whatever stdout printed later).
    dir: TempDir,
    /// The command line, for failure messages.
    args: Vec<String>,
}

impl Gateway {
    /// Starts the release `gateway` binary and waits until it is bound and
    /// `/readyz` answers 200.
    pub async fn start(opts: GatewayOpts) -> Result<Self> {
        let binary = bins::gateway()?;
        let dir = tempfile::Builder::new()
            .prefix("e2e-gateway-")
            .tempdir()
            .context("creating gateway temp dir")?;
        let log_path = dir.path().join("gateway.log");
        let log = File::create(&log_path).context("creating gateway log")?;
        let args = opts.to_args();

        let mut command = Command::new(&binary);
        // Only the flags above configure the node: drop any GATEWAY_* setting
        // the developer's shell carries.
        for (name, _) in std::env::vars_os() {
            if name.to_string_lossy().starts_with("GATEWAY_") {
                command.env_remove(name);
            }
        }
        let mut child = command
            .args(&args)
            .current_dir(dir.path())
            .env(
                "RUST_LOG",
                std::env::var("RUST_LOG").unwrap_or_else(|_| "info".into()),
            )
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(log)
            .kill_on_drop(true)
            .spawn()
            .with_context(|| format!("spawning {}", binary.display()))?;
        let stdout = child.stdout.take().context("gateway stdout not piped")?;

        let mut gateway = Gateway {
            child: Some(child),
            addr: SocketAddr::from(([127, 0, 0, 1], 0)),
            dir,
            args,
        };
        gateway.addr = gateway.read_listening_line(stdout, log_path).await?;
        gateway.wait_ready().await?;
        Ok(gateway)
    }

    /// The bound address, `127.0.0.1:PORT`.
    pub fn addr(&self) -> SocketAddr {
        self.addr
    }

    /// `http://127.0.0.1:PORT`
    pub fn base_url(&self) -> String {
        format!("http://{}", self.addr)
    }

    /// `ws://127.0.0.1:PORT` + `path_and_query`
    pub fn ws_url(&self, path_and_query: &str) -> String {
        format!("ws://{}{path_and_query}", self.addr)
    }

    /// An HTTP client for this node.
    pub fn http(&self) -> Http {
        Http::new(self.base_url())
    }

    /// The node's log so far.
    pub fn log(&self) -> String {
        std::fs::read_to_string(self.log_path()).unwrap_or_default()
    }

    /// Kills the node with SIGKILL and reaps it.
    pub async fn kill(&mut self) -> Result<()> {
        if let Some(mut child) = self.child.take() {
            child.kill().await.context("killing gateway")?;
        }
        Ok(())
    }

    /// Sends SIGTERM (a graceful drain) and waits, bounded, for the exit.
    pub async fn terminate(&mut self) -> Result<ExitStatus> {
        let Some(mut child) = self.child.take() else {
            bail!("gateway already stopped");
        };
        let pid = child.id().context("gateway already reaped")?;

        // `kill -TERM` keeps the crate free of unsafe signal calls.
        let status = std::process::Command::new("kill")
            .args(["-TERM", &pid.to_string()])
            .status()
            .context("running kill -TERM")?;
        if !status.success() {
            bail!("kill -TERM {pid} failed with {status}");
        }

        match tokio::time::timeout(STEP_TIMEOUT, child.wait()).await {
            Ok(exit) => exit.context("waiting for gateway exit"),
            Err(_) => {
                child.start_kill().ok();
                bail!("gateway did not exit within {STEP_TIMEOUT:?} of SIGTERM")
            }
        }
    }

    /// The node's process id, while it runs.
    pub fn pid(&self) -> Option<u32> {
        self.child.as_ref().and_then(Child::id)
    }

    /// Sends `signal` (`STOP`, `CONT`, `TERM`, ...) to the running node
    /// without waiting for any effect.
    pub fn signal(&self, signal: &str) -> Result<()> {
        let pid = self.pid().context("gateway is not running")?;
        crate::process::send_signal(pid, signal)
    }

    /// The node's resident memory in bytes (`VmRSS`).
    pub fn rss_bytes(&self) -> Result<u64> {
        let pid = self.pid().context("gateway is not running")?;
        crate::process::rss_bytes(pid)
    }

    /// Whether the process is still running.
    pub fn is_running(&mut self) -> bool {
        match self.child.as_mut() {
            Some(child) => matches!(child.try_wait(), Ok(None)),
            None => false,
        }
    }

    /// Fails unless the node is still running and `/healthz` answers 200:
    /// the check after every fault a test injects.
    pub async fn assert_alive(&mut self) -> Result<()> {
        if !self.is_running() {
            bail!("gateway exited; log:\n{}", self.log());
        }
        let (status, body) = self.http().get("/healthz").await?;
        if status != 200 {
            bail!("GET /healthz answered {status}: {body}");
        }
        Ok(())
    }

    fn log_path(&self) -> PathBuf {
        self.dir.path().join("gateway.log")
    }

    /// Reads stdout until the `listening on` line; then copies the rest of
    /// stdout into the log so the pipe never fills.
    async fn read_listening_line(
        &mut self,
        stdout: ChildStdout,
        log_path: PathBuf,
    ) -> Result<SocketAddr> {
        let mut lines = BufReader::new(stdout).lines();
        let mut seen = Vec::new();

        let addr = loop {
            let line = match tokio::time::timeout(STEP_TIMEOUT, lines.next_line()).await {
                Ok(line) => line.context("reading gateway stdout")?,
                Err(_) => bail!(
                    "gateway {:?} printed no `{LISTENING_PREFIX}` line within {STEP_TIMEOUT:?}; \
                     stdout so far {seen:?}; log:\n{}",
                    self.args,
                    self.log()
                ),
            };
            let Some(line) = line else {
                let status = self.wait_exit().await;
                bail!(
                    "gateway {:?} exited ({status}) before listening; stdout {seen:?}; log:\n{}",
                    self.args,
                    self.log()
                );
            };
            if let Some(addr) = line.strip_prefix(LISTENING_PREFIX) {
                break addr
                    .trim()
                    .parse::<SocketAddr>()
                    .with_context(|| format!("parsing address in stdout line {line:?}"))?;
            }
            seen.push(line);
        };

        tokio::spawn(async move {
            let Ok(mut log) = tokio::fs::OpenOptions::new()
                .append(true)
                .open(&log_path)
                .await
            else {
                return;
            };
            let mut rest = lines.into_inner();
            let _ = tokio::io::copy(&mut rest, &mut log).await;
        });
        Ok(addr)
    }

    async fn wait_ready(&mut self) -> Result<()> {
        let http = self.http();
        let give_up = tokio::time::Instant::now() + STEP_TIMEOUT;
        loop {
            let last = match http.get("/readyz").await {
                Ok((200, _)) => return Ok(()),
                Ok((status, body)) => format!("{status} {body}"),
                Err(e) => format!("{e:#}"),
            };
            if !self.is_running() {
                bail!(
                    "gateway {:?} exited before ready; log:\n{}",
                    self.args,
                    self.log()
                );
            }
            if tokio::time::Instant::now() >= give_up {
                bail!(
                    "GET /readyz did not answer 200 within {STEP_TIMEOUT:?} (last: {last}); \
                     gateway {:?}; log:\n{}",
                    self.args,
                    self.log()
                );
            }
            tokio::time::sleep(RETRY_INTERVAL).await;
        }
    }

    async fn wait_exit(&mut self) -> String {
        let Some(child) = self.child.as_mut() else {
            return "already reaped".into();
        };
        match tokio::time::timeout(STEP_TIMEOUT, child.wait()).await {
            Ok(Ok(status)) => status.to_string(),
            Ok(Err(e)) => format!("wait failed: {e}"),
            Err(_) => "still running".into(),
        }
    }
}

impl Drop for Gateway {
    fn drop(&mut self) {
        if let Some(child) = self.child.as_mut() {
            let _ = child.start_kill();
        }

        let log = self.log();
        let lines: Vec<&str> = log.lines().collect();
        let tail = &lines[lines.len().saturating_sub(LOG_TAIL_LINES)..];
        eprintln!(
            "---- gateway {} {:?}: last {} log lines ----\n{}\n---- end of gateway {} log ----",
            self.addr,
            self.args,
            tail.len(),
            tail.join("\n"),
            self.addr
        );
    }
}
