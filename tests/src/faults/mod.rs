//! What the fault-injection tests (`tests/tests/faults_*.rs`) share.
//!
//! - [`feed`]: a [`Feed`] is one subscriber that lives through faults: on
//!   WebSocket, SSE or long-poll it reconnects with its position after every
//!   failure (to the next node of its list), and records every message,
//!   every `recovered` verdict and how each session ended.
//! - [`publisher`]: a [`Publisher`] publishes numbered messages over HTTP,
//!   each under its own idempotency id, and retries a refused or failed
//!   publish under the same id until it is accepted, counting the refusals.
//! - [`tally`]: compares what a feed received with what was accepted, and
//!   prints the figures (published, delivered, lost, duplicated).
//! - [`stalled`]: clients that stop reading: a raw socket that completes a
//!   WebSocket upgrade or opens an SSE stream and then never reads, and a
//!   `gateway-cli subscribe` child that is paused with SIGSTOP.
//!
//! The functions below start a feed per transport and collect their
//! records, read one sample of a node's `/metrics`, wait for `/readyz` to
//! answer a given status, and publish straight into Redis under an id.
//!
//! Nothing here sleeps to synchronise: waits poll a condition against a
//! deadline, and every loop is bounded in count and time.

pub mod feed;
pub mod publisher;
pub mod stalled;
pub mod tally;

pub use feed::{Feed, FeedOptions, Record, SessionEnd, Verdict};
pub use publisher::{Accepted, Publisher, PublisherOptions, PublisherRecord};
pub use tally::{ensure_exact, expected_of, summary, tally, Expected, Figures};

use std::time::Duration;

use anyhow::{ensure, Result};

use crate::subscriber::Transport;

/// One feed per transport of `channel` on `nodes`, live from now.
pub fn feeds_on_every_transport(channel: &str, nodes: &[String]) -> Vec<Feed> {
    Transport::ALL
        .iter()
        .map(|&transport| Feed::start(FeedOptions::new(transport, channel, nodes)))
        .collect()
}

/// Waits until every feed is subscribed, each with `recovered: true`.
pub async fn wait_all_subscribed(feeds: &[Feed]) -> Result<()> {
    for feed in feeds {
        let verdict = feed.wait_subscribed().await?;
        ensure!(
            verdict.recovered,
            "{} feed subscribed with recovered:false: {verdict:?}",
            feed.transport()
        );
    }
    Ok(())
}

/// Waits (within `deadline` in all) until every feed has received `n`
/// messages, stops them all and returns their records. A feed that falls
/// short is not an error here: the tally of its record says what it missed.
pub async fn collect(feeds: Vec<Feed>, n: usize, deadline: Duration) -> Result<Vec<Record>> {
    let give_up = tokio::time::Instant::now() + deadline;
    for feed in &feeds {
        let left = give_up.saturating_duration_since(tokio::time::Instant::now());
        if let Err(e) = feed.wait_for(n, left).await {
            eprintln!("{e:#}");
        }
    }
    let mut records = Vec::with_capacity(feeds.len());
    for feed in feeds {
        records.push(feed.stop().await?);
    }
    Ok(records)
}

/// The value of the sample `name` (with its labels, e.g.
/// `gateway_connections{transport="ws"}`) on the node's `/metrics`.
pub async fn metric(http: &crate::http::Http, name: &str) -> Result<f64> {
    let (status, text) = http.get("/metrics").await?;
    ensure!(status == 200, "GET /metrics answered {status}: {text}");
    text.lines()
        .filter(|line| !line.starts_with('#'))
        .find_map(|line| {
            let (sample, value) = line.rsplit_once(' ')?;
            (sample == name).then(|| value.trim().parse::<f64>().ok())?
        })
        .ok_or_else(|| anyhow::anyhow!("no sample {name} in /metrics:\n{text}"))
}

/// Waits until the node's `/readyz` answers `status`; returns how long it
/// took.
pub async fn wait_readyz(
    http: &crate::http::Http,
    status: u16,
    deadline: Duration,
) -> Result<Duration> {
    let started = tokio::time::Instant::now();
    let what = format!("{} /readyz answering {status}", http.base());
    crate::wait::eventually(&what, deadline, || async {
        // A node that does not answer at all is not ready either.
        let now = match http.get("/readyz").await {
            Ok((now, _)) => now,
            Err(_) => 0,
        };
        Ok((now == status).then(|| started.elapsed()))
    })
    .await
}

/// `FCALL gw_publish 1 CHANNEL DATA ID` straight into Redis: the position
/// Redis gave the message and whether it answered `duplicate`.
pub async fn fcall_publish_with_id(
    redis: &crate::redis_server::RedisServer,
    channel: &str,
    data: &str,
    id: &str,
) -> Result<(crate::envelope::Position, bool)> {
    use crate::redis_server::Resp;

    let reply = redis
        .cmd(&["FCALL", "gw_publish", "1", channel, data, id])
        .await?;
    match reply.as_array() {
        Some([Resp::Int(offset), epoch, Resp::Int(duplicate)]) => {
            let epoch = epoch
                .as_str()
                .ok_or_else(|| anyhow::anyhow!("FCALL reply epoch {epoch:?}"))?;
            let position = crate::envelope::Position {
                epoch: epoch.to_owned(),
                offset: u64::try_from(*offset)?,
            };
            Ok((position, *duplicate == 1))
        }
        _ => anyhow::bail!("FCALL gw_publish reply is not [offset, epoch, duplicate]: {reply:?}"),
    }
}
