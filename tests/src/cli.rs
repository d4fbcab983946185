//! One `gateway-cli watch DIR --channel C` child process, owned by a test.
//!
//! The watcher prints `watching DIR (N files known) -> C at URL` on stderr
//! once its watch is in place; [`Watcher::start`] waits for that line
//! (bounded), so a test never changes the directory before it is watched.
//! Later stderr lines (one per published event) are kept and printed when the
//! handle drops, which the test harness shows only for a failing test.

use std::path::Path;
use std::process::Stdio;
use std::sync::{Arc, Mutex};

use anyhow::{bail, Context, Result};
use tokio::io::{AsyncBufReadExt, BufReader};
use tokio::process::{Child, Command};

use crate::bins;
use crate::wait::STEP_TIMEOUT;

/// The stderr line that says the watch is in place.
const WATCHING_PREFIX: &str = "watching ";

/// A running `gateway-cli watch`, killed when dropped.
pub struct Watcher {
    /// The live process.
    child: Child,
    /// Every stderr line so far, shared with the task that reads them.
    stderr: Arc<Mutex<Vec<String>>>,
    /// The command line, for failure messages.
    args: Vec<String>,
}

impl Watcher {
    /// Runs `gateway-cli --url URL watch DIR --channel C` plus `extra_args`
    /// (e.g. `--block-size 4096`) and waits until it is watching.
    pub async fn start(url: &str, dir: &Path, channel: &str, extra_args: &[&str]) -> Result<Self> {
        let binary = bins::gateway_cli()?;
        let mut args = vec![
            "--url".to_owned(),
            url.to_owned(),
            "watch".to_owned(),
            dir.display().to_string(),
            "--channel".to_owned(),
            channel.to_owned(),
        ];
        args.extend(extra_args.iter().map(|a| (*a).to_owned()));

        let mut command = Command::new(&binary);
        for (name, _) in std::env::vars_os() {
            if name.to_string_lossy().starts_with("GATEWAY_") {
                command.env_remove(name);
            }
        }
        let mut child = command
            .args(&args)
            .env("NO_COLOR", "1")
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::piped())
            .kill_on_drop(true)
            .spawn()
            .with_context(|| format!("spawning {}", binary.display()))?;
        let mut lines = BufReader::new(child.stderr.take().context("stderr not piped")?).lines();

        let mut seen = Vec::new();
        loop {
            let line = match tokio::time::timeout(STEP_TIMEOUT, lines.next_line()).await {
                Ok(line) => line.context("reading gateway-cli stderr")?,
                Err(_) => bail!(
                    "gateway-cli {args:?} printed no `{WATCHING_PREFIX}` line within \
                     {STEP_TIMEOUT:?}; stderr so far {seen:?}"
                ),
            };
            let Some(line) = line else {
                let status = tokio::time::timeout(STEP_TIMEOUT, child.wait()).await;
                bail!("gateway-cli {args:?} exited ({status:?}) before watching; stderr {seen:?}");
            };
            let ready = line.starts_with(WATCHING_PREFIX);
            seen.push(line);
            if ready {
                break;
            }
        }

        let stderr = Arc::new(Mutex::new(seen));
        let sink = Arc::clone(&stderr);
        tokio::spawn(async move {
            while let Ok(Some(line)) = lines.next_line().await {
                if let Ok(mut kept) = sink.lock() {
                    kept.push(line);
                }
            }
        });
        Ok(Watcher {
            child,
            stderr,
            args,
        })
    }

    /// Every stderr line so far.
    pub fn stderr(&self) -> Vec<String> {
        self.stderr.lock().map(|l| l.clone()).unwrap_or_default()
    }

    /// Whether the process is still running.
    pub fn is_running(&mut self) -> bool {
        matches!(self.child.try_wait(), Ok(None))
    }
}

impl Drop for Watcher {
    fn drop(&mut self) {
        let _ = self.child.start_kill();
        eprintln!(
            "---- gateway-cli {:?} stderr ----\n{}\n---- end of gateway-cli stderr ----",
            self.args,
            self.stderr().join("\n")
        );
    }
}
