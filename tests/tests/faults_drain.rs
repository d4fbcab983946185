//! SIGTERM under load: a draining node tells every client to go elsewhere,
//! and nobody loses a message on the way.
//!
//! - With WebSocket, SSE and long-poll subscribers attached to node A while
//!   messages are published through node B: every WebSocket gets
//!   `{"type":"reconnect","delay_ms":..}` and then close 1001, every SSE
//!   stream gets a `retry:` hint after its last event and then ends, a parked
//!   long-poll is answered 200 at once (not after its hold), node A exits 0
//!   within its `--drain-timeout`, and the subscribers, resuming on node B
//!   from their positions, end with every message exactly once, in order.
//! - A second SIGTERM while the drain is stuck (an SSE client that stopped
//!   reading keeps its stream from finishing) exits at once, with status 1.

use std::time::{Duration, Instant};

use anyhow::{ensure, Context, Result};
use serde_json::json;
use tests::faults::stalled::StalledSocket;
use tests::faults::{
    collect, ensure_exact, expected_of, feeds_on_every_transport, summary, tally,
    wait_all_subscribed, Publisher, PublisherOptions, Record, SessionEnd,
};
use tests::{
    eventually, unique_channel, within, Gateway, GatewayOpts, RedisServer, Transport, STEP_TIMEOUT,
};

/// `--drain-timeout` of the drained node, seconds.
const DRAIN_SECS: u64 = 2;

/// How long after SIGTERM the process may take to exit: the drain deadline
/// plus slack for a loaded machine.
const EXIT_BOUND: Duration = Duration::from_secs(DRAIN_SECS + 3);

/// `--sse-retry-ms`: the base of the jittered reconnect delay the node
/// advises (it answers between half and one and a half times this).
const RETRY_MS: u64 = 400;

/// The hold of the parked long-poll: far longer than the drain, so an
/// answer within the drain is the drain's doing.
const PARKED_HOLD_SECS: u64 = 20;

const MESSAGES: u64 = 200;
const PACE: Duration = Duration::from_millis(10);

/// Messages every subscriber takes from node A before SIGTERM.
const BEFORE_TERM: usize = 30;

#[tokio::test]
async fn sigterm_advises_every_client_loses_no_message_and_exits_0_within_the_drain_deadline(
) -> Result<()> {
    within(async {
        let redis = RedisServer::start().await?;
        let opts = GatewayOpts::redis(redis.url())
            .arg("--sse-heartbeat")
            .arg("1")
            .arg("--sse-retry-ms")
            .arg(RETRY_MS.to_string());
        let mut drained = Gateway::start(
            opts.clone()
                .arg("--drain-timeout")
                .arg(DRAIN_SECS.to_string()),
        )
        .await?;
        let other = Gateway::start(opts).await?;
        let channel = unique_channel("files:alice");

        let nodes = [drained.base_url(), other.base_url()];
        let feeds = feeds_on_every_transport(&channel, &nodes);
        wait_all_subscribed(&feeds).await?;
        let parked = park_a_long_poll(&drained).await?;

        let publisher = Publisher::start(
            PublisherOptions::new(&[other.base_url()], &channel, MESSAGES).pace(PACE),
        );
        for feed in &feeds {
            feed.wait_for(BEFORE_TERM, STEP_TIMEOUT).await?;
        }

        let term = Instant::now();
        let status = drained.terminate().await?;
        let exited_in = term.elapsed();
        let (answer, answered_at) = tokio::time::timeout(STEP_TIMEOUT, parked)
            .await
            .context("the parked long-poll was not answered")???;
        let answered_in = answered_at.saturating_duration_since(term);

        let record = publisher
            .finish(PACE * MESSAGES as u32 + STEP_TIMEOUT)
            .await?;
        let expected = expected_of(&record.accepted);
        let records = collect(feeds, expected.len(), STEP_TIMEOUT * 2).await?;
        let figures: Vec<_> = records
            .iter()
            .zip(Transport::ALL)
            .map(|(r, t)| tally(&t.to_string(), &expected, &r.messages))
            .collect();
        eprintln!(
            "{} | exit {status} after {exited_in:?}; parked poll answered after {answered_in:?}",
            summary("SIGTERM drain", Some(&record), &figures)
        );

        ensure!(
            status.success() && exited_in <= EXIT_BOUND,
            "the drained node must exit 0 within {EXIT_BOUND:?}: {status} after {exited_in:?}"
        );
        ensure!(
            answer.messages.is_empty() && answered_in < Duration::from_secs(DRAIN_SECS + 1),
            "the parked long-poll must be answered 200 during the drain, not after its \
             {PARKED_HOLD_SECS} s hold: after {answered_in:?}: {}",
            answer.body
        );
        for (r, transport) in records.iter().zip(Transport::ALL) {
            ensure_exact(&transport.to_string(), &expected, &r.messages)?;
            ensure!(
                r.unrecovered().is_empty(),
                "{transport} was told recovered:false after the drain: {:?}",
                r.unrecovered()
            );
            check_advice(r, transport, &nodes[0])?;
        }
        Ok(())
    })
    .await
}

/// Parks a long-poll on a channel of its own on `node` and waits until the
/// node holds it; the task returns the answer and when it came.
async fn park_a_long_poll(
    node: &Gateway,
) -> Result<tokio::task::JoinHandle<Result<(tests::http::PollAnswer, Instant)>>> {
    let http = node.http();
    let quiet = unique_channel("quiet");
    let cursor = http.poll(&[&quiet], None, 0).await?.cursor;
    let held = {
        let (http, quiet) = (http.clone(), quiet.clone());
        tokio::spawn(async move {
            let answer = http
                .poll(&[&quiet], Some(&cursor), PARKED_HOLD_SECS)
                .await?;
            Ok((answer, Instant::now()))
        })
    };
    eventually("the long-poll parked", STEP_TIMEOUT, || async {
        let (_, text) = http.get(&format!("/v1/channels/{quiet}")).await?;
        let body: serde_json::Value = serde_json::from_str(&text)?;
        Ok((body["local_subscribers"] == 1).then_some(()))
    })
    .await?;
    Ok(held)
}

/// The session a transport had on the drained node ended with its advice.
fn check_advice(record: &Record, transport: Transport, drained: &str) -> Result<()> {
    let on_drained: Vec<_> = record
        .sessions
        .iter()
        .filter(|s| s.node == drained)
        .collect();
    let ended = on_drained
        .first()
        .with_context(|| format!("{transport} had no session on the drained node"))?;
    let delay_ok = |ms: u64| (RETRY_MS / 2..=RETRY_MS / 2 + RETRY_MS).contains(&ms);
    match (transport, &ended.end) {
        (Transport::Ws, SessionEnd::WsClosed { code, advice }) => {
            let delay = advice.first().and_then(|a| a["delay_ms"].as_u64());
            ensure!(
                *code == Some(1001)
                    && advice.len() == 1
                    && advice[0]["type"] == "reconnect"
                    && delay.is_some_and(delay_ok),
                "websocket: expected one reconnect advice with a delay_ms near {RETRY_MS} \
                 and then close 1001; got code {code:?} after {advice:?}"
            );
        }
        (Transport::Sse, SessionEnd::SseEnded { retry_last, error }) => {
            ensure!(
                retry_last.is_some_and(delay_ok) && error.is_none(),
                "sse: expected a retry: hint near {RETRY_MS} after the last event, then the \
                 end; got retry {retry_last:?}, error event {error:?}"
            );
        }
        // A long-poll holds nothing between polls: its promise is the parked
        // answer checked above, and the messages it went on to get elsewhere.
        (Transport::Poll, _) => {}
        (_, end) => {
            ensure!(
                false,
                "{transport}: the session on the drained node ended with {end:?}, not its \
                 advice ({:?})",
                record.sessions
            );
        }
    }
    Ok(())
}

/// `--drain-timeout` of the node that must be stopped by a second signal:
/// far longer than the test waits.
const STUCK_DRAIN_SECS: u64 = 40;

/// Bytes queued for the stalled SSE client: far more than socket buffers
/// hold, far less than its (raised) queue bound, so its stream is stuck
/// writing but never cut.
const STUCK_PAYLOAD: usize = 16 * 1024;
const STUCK_MESSAGES: usize = 1000;

#[tokio::test]
async fn second_sigterm_during_a_stuck_drain_exits_at_once() -> Result<()> {
    within(async {
        let mut node = Gateway::start(
            GatewayOpts::embedded()
                .arg("--drain-timeout")
                .arg(STUCK_DRAIN_SECS.to_string())
                .arg("--queue-messages")
                .arg("100000")
                .arg("--queue-bytes")
                .arg((256u64 << 20).to_string()),
        )
        .await?;
        let channel = unique_channel("files:alice");
        let stalled =
            StalledSocket::sse(node.addr(), &format!("/v1/sse?channel={channel}")).await?;

        let filler = "x".repeat(STUCK_PAYLOAD);
        let per_batch = 40;
        for _ in 0..STUCK_MESSAGES / per_batch {
            let messages: Vec<_> = (0..per_batch)
                .map(|_| json!({ "channel": channel, "data": filler }))
                .collect();
            node.http()
                .publish_json(&json!({ "messages": messages }))
                .await?;
        }

        node.signal("TERM")?;
        eventually("the node started draining", STEP_TIMEOUT, || async {
            Ok(node.log().contains("draining").then_some(()))
        })
        .await?;
        let second = Instant::now();
        let status = node.terminate().await?;
        let exited_in = second.elapsed();
        eprintln!(
            "FIGURES second SIGTERM: exit {status} {exited_in:?} after the second signal \
             (drain deadline {STUCK_DRAIN_SECS} s)"
        );
        ensure!(
            !status.success() && exited_in < Duration::from_secs(3),
            "a second SIGTERM must exit at once (status 1): {status} after {exited_in:?}"
        );
        drop(stalled);
        Ok(())
    })
    .await
}
