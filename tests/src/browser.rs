//! A real browser's `EventSource` on a gateway stream: runs
//! `tests/browser/eventsource.js` (Debian's headless Chromium driven by
//! `playwright-core`) and reads what the page saw, one JSON record per line.
//!
//! It never installs anything: `tests/browser/install.sh` (called by
//! `scripts/test.sh`) brings Chromium and the npm packages, and a missing
//! piece is an error that names that script, not a skipped test.

use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::time::Duration;

use anyhow::{anyhow, bail, Context, Result};
use serde_json::Value;
use tempfile::TempDir;
use tokio::io::{AsyncBufReadExt, AsyncWriteExt, BufReader, Lines};
use tokio::process::{Child, ChildStdin, ChildStdout, Command};

use crate::bins::workspace_root;
use crate::wait::STEP_TIMEOUT;

/// The browser the script launches; never a downloaded build.
pub const CHROMIUM: &str = "/usr/bin/chromium";

/// How long the browser may take to start and show its first record: a cold
/// Chromium on a loaded 2-core machine takes several seconds.
pub const BROWSER_START_TIMEOUT: Duration = Duration::from_secs(40);

/// The most `open` and `error` records [`BrowserEventSource::next_event`]
/// passes over: a browser retrying every few hundred milliseconds through
/// an outage reaches it only after minutes.
const MAX_SKIPPED: usize = 2000;

/// The most the script may run before it exits by itself (seconds), so a
/// test that dies cannot leave a browser behind.
const SCRIPT_MAX_SECONDS: u64 = 90;

/// The node project that holds the script and its lockfile.
pub fn browser_dir() -> PathBuf {
    workspace_root().join("tests").join("browser")
}

/// One page with one `EventSource` open on a gateway stream.
pub struct BrowserEventSource {
    /// `node eventsource.js`; it ends by itself when stdin closes.
    child: Child,
    /// Where `close` is written; dropping it also ends the script.
    stdin: Option<ChildStdin>,
    /// The script's stdout, one JSON record per line.
    records: Lines<BufReader<ChildStdout>>,
    /// Holds the script's stderr, shown when something fails.
    dir: TempDir,
    /// `open` records seen so far (one per (re)connection that got 200).
    opens: usize,
    /// `error` records seen so far (the stream ended or failed).
    errors: Vec<Value>,
    /// Whether the first record has arrived (it may take the browser start-up).
    started: bool,
}

impl BrowserEventSource {
    /// Opens `page_url` (a page of the gateway's own origin) and there
    /// `new EventSource(stream_url)`.
    pub async fn open(page_url: &str, stream_url: &str) -> Result<Self> {
        let dir = browser_dir();
        check_installed(&dir)?;
        let log = tempfile::Builder::new()
            .prefix("e2e-browser-")
            .tempdir()
            .context("creating browser temp dir")?;
        let stderr =
            std::fs::File::create(log.path().join("node.log")).context("creating node.log")?;

        let mut child = Command::new("node")
            .arg("eventsource.js")
            .args([page_url, stream_url, &SCRIPT_MAX_SECONDS.to_string()])
            .current_dir(&dir)
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(stderr)
            .spawn()
            .context("spawning `node eventsource.js` (is Node.js installed?)")?;
        let stdout = child.stdout.take().context("node stdout not piped")?;
        let stdin = child.stdin.take();
        Ok(BrowserEventSource {
            child,
            stdin,
            records: BufReader::new(stdout).lines(),
            dir: log,
            opens: 0,
            errors: Vec::new(),
            started: false,
        })
    }

    /// The next `subscribed` or `message` record, as printed by the script
    /// (`data`, `lastEventId`, `parsed`). `open` and `error` records are
    /// counted on the way; a page error or the script's end is an error.
    pub async fn next_event(&mut self) -> Result<Value> {
        for _ in 0..MAX_SKIPPED {
            let record = self.next_record().await?;
            match record["kind"].as_str() {
                Some("subscribed" | "message") => return Ok(record),
                Some("open") => self.opens += 1,
                Some("error") => self.errors.push(record),
                _ => bail!("browser reported {record}; node log:\n{}", self.log()),
            }
        }
        bail!(
            "{MAX_SKIPPED} open/error records and no event: {:?}",
            self.errors.last()
        )
    }

    /// The next `error` record (`readyState`, and `data` when it was the
    /// gateway's own `event: error`); an event before it is an error.
    pub async fn next_error(&mut self) -> Result<Value> {
        loop {
            let record = self.next_record().await?;
            match record["kind"].as_str() {
                Some("error") => {
                    self.errors.push(record.clone());
                    return Ok(record);
                }
                Some("open") => self.opens += 1,
                _ => bail!("expected a browser error record, got {record}"),
            }
        }
    }

    /// The next event, which must be of `kind` (`subscribed` or `message`).
    pub async fn next_kind(&mut self, kind: &str) -> Result<Value> {
        let record = self.next_event().await?;
        if record["kind"] != kind {
            bail!("expected a browser {kind:?} event, got {record}");
        }
        Ok(record)
    }

    /// How many times the stream opened (200 with `text/event-stream`).
    pub fn opens(&self) -> usize {
        self.opens
    }

    /// The `error` records seen so far (`readyState` 0 = reconnecting, 2 = given up).
    pub fn errors(&self) -> &[Value] {
        &self.errors
    }

    /// The script's stderr so far.
    pub fn log(&self) -> String {
        std::fs::read_to_string(self.dir.path().join("node.log")).unwrap_or_default()
    }

    /// Closes the `EventSource` and waits (bounded) for the script to exit 0.
    pub async fn close(mut self) -> Result<()> {
        if let Some(mut stdin) = self.stdin.take() {
            // The script may already be gone; its exit status tells.
            let _ = stdin.write_all(b"close\n").await;
            let _ = stdin.flush().await;
        }
        let status = tokio::time::timeout(STEP_TIMEOUT, self.child.wait())
            .await
            .map_err(|_| anyhow!("eventsource.js did not exit within {STEP_TIMEOUT:?}"))?
            .context("waiting for eventsource.js")?;
        if !status.success() {
            bail!("eventsource.js exited {status}; log:\n{}", self.log());
        }
        Ok(())
    }

    async fn next_record(&mut self) -> Result<Value> {
        let limit = if self.started {
            STEP_TIMEOUT
        } else {
            BROWSER_START_TIMEOUT
        };
        let line = tokio::time::timeout(limit, self.records.next_line())
            .await
            .map_err(|_| {
                anyhow!(
                    "browser reported nothing within {limit:?}; node log:\n{}",
                    self.log()
                )
            })?
            .context("reading eventsource.js stdout")?;
        self.started = true;
        let Some(line) = line else {
            let status = tokio::time::timeout(STEP_TIMEOUT, self.child.wait()).await;
            bail!(
                "eventsource.js ended ({status:?}); node log:\n{}",
                self.log()
            );
        };
        serde_json::from_str(&line).with_context(|| format!("eventsource.js printed {line:?}"))
    }
}

impl Drop for BrowserEventSource {
    fn drop(&mut self) {
        // Closing stdin makes the script close the browser and exit: a
        // SIGKILL would leave Chromium running without its driver. The
        // script's own deadline is the backstop.
        self.stdin.take();
    }
}

/// Fails with the install command when Chromium or the npm packages are missing.
fn check_installed(dir: &Path) -> Result<()> {
    if !Path::new(CHROMIUM).is_file() {
        bail!("{CHROMIUM} is missing: run tests/browser/install.sh (scripts/test.sh does)");
    }
    if !dir.join("node_modules").join("playwright-core").is_dir() {
        bail!(
            "{}/node_modules/playwright-core is missing: run tests/browser/install.sh \
             (scripts/test.sh does)",
            dir.display()
        );
    }
    Ok(())
}
