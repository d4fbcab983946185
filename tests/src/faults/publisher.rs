//! A publisher that keeps publishing through faults.
//!
//! Message `n` carries `data: {"n": n}` and the idempotency id
//! `PREFIX-n`. A publish answered 503 with one of the expected error codes,
//! or one that got no answer at all (the node is gone), is retried under the
//! same id — on the next node of the list — until it is accepted; any other
//! answer ends the publisher with an error. Because the id is the same, a
//! retry of a publish that did reach Redis is answered `duplicate: true`
//! with the original offset instead of being delivered twice.

use std::sync::{Arc, Mutex};
use std::time::Duration;

use anyhow::{anyhow, bail, Context, Result};
use serde_json::{json, Value};
use tokio::task::JoinHandle;
use tokio::time::Instant;

use crate::envelope::Position;
use crate::http::Http;
use crate::wait::{eventually, TEST_TIMEOUT};

/// The pause before retrying a refused publish.
const RETRY_PAUSE: Duration = Duration::from_millis(25);

/// The most attempts for one message: far above what any outage of the
/// tests costs, so a node that never recovers ends the test instead.
const MAX_ATTEMPTS: u64 = 2000;

/// What to publish and where.
#[derive(Debug, Clone)]
pub struct PublisherOptions {
    /// Base URLs tried in turn: the next one after each failed attempt.
    pub nodes: Vec<String>,
    pub channel: String,
    /// Messages `0..count` are published.
    pub count: u64,
    /// Ids are `PREFIX-n`.
    pub id_prefix: String,
    /// Pause after each accepted message, so that publishing spans the
    /// faults a test injects.
    pub pace: Duration,
    /// The error codes a 503 may carry and still be retried.
    pub retry_codes: Vec<String>,
}

impl PublisherOptions {
    /// `count` messages to `channel` through `nodes`, retried on
    /// `unavailable`.
    pub fn new(nodes: &[String], channel: &str, count: u64) -> Self {
        Self {
            nodes: nodes.to_vec(),
            channel: channel.to_owned(),
            count,
            id_prefix: format!("pub-{}", std::process::id()),
            pace: Duration::ZERO,
            retry_codes: vec!["unavailable".to_owned()],
        }
    }

    /// Pauses `pace` after each accepted message.
    pub fn pace(mut self, pace: Duration) -> Self {
        self.pace = pace;
        self
    }
}

/// One accepted message.
#[derive(Debug, Clone)]
pub struct Accepted {
    pub n: u64,
    pub position: Position,
    /// The accepting answer said `duplicate: true`: an earlier attempt had
    /// been stored although its answer was lost.
    pub duplicate: bool,
    /// Attempts it took.
    pub attempts: u64,
}

/// What the publisher did.
#[derive(Debug, Clone, Default)]
pub struct PublisherRecord {
    pub accepted: Vec<Accepted>,
    /// Every publish request sent.
    pub attempts: u64,
    /// 503 answers, by code (`unavailable`, `shutting_down`).
    pub refused: Vec<(String, u64)>,
    /// Attempts that got no HTTP answer (connection refused, reset, timeout).
    pub unanswered: u64,
}

impl PublisherRecord {
    /// 503 answers with `code`.
    pub fn refused_with(&self, code: &str) -> u64 {
        self.refused
            .iter()
            .find(|(c, _)| c == code)
            .map_or(0, |(_, n)| *n)
    }

    fn count_refusal(&mut self, code: &str) {
        match self.refused.iter_mut().find(|(c, _)| c == code) {
            Some((_, n)) => *n += 1,
            None => self.refused.push((code.to_owned(), 1)),
        }
    }

    /// Accepted answers that said `duplicate: true`.
    pub fn duplicates(&self) -> usize {
        self.accepted.iter().filter(|a| a.duplicate).count()
    }
}

/// A running publisher; aborted when dropped.
pub struct Publisher {
    record: Arc<Mutex<PublisherRecord>>,
    task: Option<JoinHandle<Result<()>>>,
}

impl Publisher {
    /// Starts publishing at once.
    pub fn start(opts: PublisherOptions) -> Self {
        let record = Arc::new(Mutex::new(PublisherRecord::default()));
        let task = tokio::spawn(run(opts, record.clone()));
        Publisher {
            record,
            task: Some(task),
        }
    }

    /// A copy of the record so far.
    pub fn record(&self) -> PublisherRecord {
        self.record.lock().map(|r| r.clone()).unwrap_or_default()
    }

    /// Messages accepted so far.
    pub fn accepted(&self) -> usize {
        self.record.lock().map(|r| r.accepted.len()).unwrap_or(0)
    }

    /// Waits until `n` messages are accepted, failing early if the publisher
    /// failed.
    pub async fn wait_accepted(&self, n: usize, deadline: Duration) -> Result<()> {
        let what = format!("{n} messages accepted");
        eventually(&what, deadline, || async {
            if self.task.as_ref().is_some_and(JoinHandle::is_finished) && self.accepted() < n {
                bail!("the publisher ended after {} messages", self.accepted());
            }
            Ok((self.accepted() >= n).then_some(()))
        })
        .await
    }

    /// Waits until the publisher has seen `n` refusals or unanswered
    /// attempts in all: the fault has reached it.
    pub async fn wait_failures(&self, n: u64, deadline: Duration) -> Result<()> {
        eventually("publishes failing", deadline, || async {
            let record = self.record();
            let failures = record.unanswered + record.refused.iter().map(|(_, n)| n).sum::<u64>();
            Ok((failures >= n).then_some(()))
        })
        .await
    }

    /// Waits for the publisher to finish every message; returns its record.
    pub async fn finish(mut self, deadline: Duration) -> Result<PublisherRecord> {
        if let Some(task) = self.task.take() {
            tokio::time::timeout(deadline, task)
                .await
                .map_err(|_| {
                    anyhow!(
                        "the publisher did not finish within {deadline:?} ({} accepted)",
                        self.accepted()
                    )
                })?
                .context("publisher task")??;
        }
        Ok(self.record())
    }
}

impl Drop for Publisher {
    fn drop(&mut self) {
        if let Some(task) = self.task.take() {
            task.abort();
        }
    }
}

async fn run(opts: PublisherOptions, record: Arc<Mutex<PublisherRecord>>) -> Result<()> {
    let give_up = Instant::now() + TEST_TIMEOUT;
    let clients: Vec<Http> = opts.nodes.iter().map(Http::new).collect();
    let note = |f: &dyn Fn(&mut PublisherRecord)| {
        if let Ok(mut r) = record.lock() {
            f(&mut r);
        }
    };
    let mut node = 0;

    for n in 0..opts.count {
        let body = json!({
            "channel": opts.channel,
            "data": { "n": n },
            "id": format!("{}-{n}", opts.id_prefix),
        })
        .to_string();

        let mut attempts = 0;
        let ack = loop {
            if attempts >= MAX_ATTEMPTS || Instant::now() >= give_up {
                bail!("message {n} not accepted after {attempts} attempts");
            }
            attempts += 1;
            note(&|r| r.attempts += 1);
            let http = &clients[node % clients.len()];
            match http.publish_raw("application/json", &body).await {
                Ok((200, text)) => {
                    break serde_json::from_str::<Value>(&text)
                        .with_context(|| format!("publish ack {text:?}"))?;
                }
                Ok((503, text)) => {
                    let code = error_code(&text)
                        .with_context(|| format!("503 without an error code: {text:?}"))?;
                    if !opts.retry_codes.contains(&code) {
                        bail!("publish of {n} answered 503 {code}: {text}");
                    }
                    note(&|r| r.count_refusal(&code));
                }
                Ok((status, text)) => bail!("publish of {n} answered {status}: {text}"),
                Err(_) => note(&|r| r.unanswered += 1),
            }
            node += 1;
            tokio::time::sleep(RETRY_PAUSE).await;
        };

        let accepted = Accepted {
            n,
            position: Position::of_ack(&ack)?,
            duplicate: ack["duplicate"]
                .as_bool()
                .context("ack without duplicate")?,
            attempts,
        };
        note(&|r| r.accepted.push(accepted.clone()));
        if !opts.pace.is_zero() {
            tokio::time::sleep(opts.pace).await;
        }
    }
    Ok(())
}

/// `error.code` of an error body.
fn error_code(text: &str) -> Option<String> {
    let body: Value = serde_json::from_str(text).ok()?;
    body["error"]["code"].as_str().map(str::to_owned)
}
