//! A Redis that goes silent without closing anything: the redis-server is
//! stopped with SIGSTOP, so no RST or FIN ever tells a node it is gone.
//!
//! Only timeouts can detect that. With `--redis-timeout 1` a node must
//! report not ready on `/readyz` within [`DETECTION_BOUND`] (its pub/sub
//! PING every 2 s, unanswered for 1 s, plus slack for a loaded machine), and
//! a publish must be refused with 503 `unavailable` within
//! [`PUBLISH_REFUSAL_BOUND`] instead of hanging. After SIGCONT both nodes are
//! ready again, and subscribers on every transport have every accepted
//! message exactly once, in order: including the publish that Redis executed
//! from its socket buffer after it woke up although node A had already
//! answered 503 for it (its retry under the same id is answered
//! `duplicate: true`).

use std::time::{Duration, Instant};

use anyhow::{ensure, Context, Result};
use serde_json::json;
use tests::faults::{
    collect, ensure_exact, expected_of, feeds_on_every_transport, summary, tally,
    wait_all_subscribed, wait_readyz, Publisher, PublisherOptions,
};
use tests::{unique_channel, within, Gateway, GatewayOpts, RedisServer, Transport, STEP_TIMEOUT};

/// `--redis-timeout`, seconds: how long a command may take before the link
/// counts as down.
const REDIS_TIMEOUT_SECS: u64 = 1;

/// How soon a node must say it is not ready once Redis is stopped: the
/// 2 s pub/sub PING interval, the 1 s timeout, and 3 s of slack.
const DETECTION_BOUND: Duration = Duration::from_secs(6);

/// How soon a publish to a stopped Redis must be answered 503.
const PUBLISH_REFUSAL_BOUND: Duration = Duration::from_secs(REDIS_TIMEOUT_SECS + 3);

/// How soon both nodes must be ready again after SIGCONT: reconnect backoff
/// is capped at 2 s.
const RECOVERY_BOUND: Duration = Duration::from_secs(10);

const MESSAGES: u64 = 150;
const PACE: Duration = Duration::from_millis(10);

#[tokio::test]
async fn redis_stopped_with_sigstop_is_detected_refused_with_503_and_loses_nothing_after_sigcont(
) -> Result<()> {
    within(async {
        let redis = RedisServer::start().await?;
        let opts = GatewayOpts::redis(redis.url())
            .arg("--redis-timeout")
            .arg(REDIS_TIMEOUT_SECS.to_string())
            .arg("--sse-heartbeat")
            .arg("1");
        let a = Gateway::start(opts.clone()).await?;
        let b = Gateway::start(opts).await?;
        let channel = unique_channel("files:alice");

        let feeds = feeds_on_every_transport(&channel, &[b.base_url()]);
        wait_all_subscribed(&feeds).await?;
        let publisher =
            Publisher::start(PublisherOptions::new(&[a.base_url()], &channel, MESSAGES).pace(PACE));
        publisher.wait_accepted(30, STEP_TIMEOUT).await?;

        let (a_http, b_http) = (a.http(), b.http());
        redis.pause()?;
        let paused = Instant::now();
        let (a_down, b_down) = tokio::try_join!(
            wait_readyz(&a_http, 503, DETECTION_BOUND),
            wait_readyz(&b_http, 503, DETECTION_BOUND),
        )
        .context("a node kept saying ready with Redis stopped")?;

        // A publish on a channel of its own, so that its late execution after
        // SIGCONT touches nothing the subscribers count.
        let probe = json!({ "channel": unique_channel("probe"), "data": 1 }).to_string();
        let asked = Instant::now();
        let (status, text) = a.http().publish_raw("application/json", &probe).await?;
        let refused_in = asked.elapsed();
        ensure!(
            status == 503 && refused_in <= PUBLISH_REFUSAL_BOUND,
            "a publish to a stopped Redis must be refused with 503 within \
             {PUBLISH_REFUSAL_BOUND:?}: got {status} after {refused_in:?}: {text}"
        );
        let code = serde_json::from_str::<serde_json::Value>(&text)?["error"]["code"].clone();
        ensure!(
            code == "unavailable",
            "503 body must carry code unavailable: {text}"
        );
        publisher
            .wait_failures(1, STEP_TIMEOUT)
            .await
            .context("the publisher's own publishes did not fail while Redis was stopped")?;

        redis.resume()?;
        let stopped_for = paused.elapsed();
        let (a_up, b_up) = tokio::try_join!(
            wait_readyz(&a_http, 200, RECOVERY_BOUND),
            wait_readyz(&b_http, 200, RECOVERY_BOUND),
        )
        .context("a node did not become ready again after SIGCONT")?;

        let record = publisher.finish(STEP_TIMEOUT * 2).await?;
        let expected = expected_of(&record.accepted);
        let records = collect(feeds, expected.len(), STEP_TIMEOUT * 2).await?;
        let figures: Vec<_> = records
            .iter()
            .zip(Transport::ALL)
            .map(|(r, t)| tally(&t.to_string(), &expected, &r.messages))
            .collect();
        eprintln!(
            "{} | not ready after A {a_down:?} B {b_down:?}; probe refused in {refused_in:?}; \
             stopped {stopped_for:?}; ready again after A {a_up:?} B {b_up:?}",
            summary("redis SIGSTOP/SIGCONT", Some(&record), &figures)
        );

        ensure!(
            record.refused_with("unavailable") >= 1,
            "publishes during the stop must be refused with unavailable: {record:?}"
        );
        ensure!(
            record.unanswered == 0,
            "node A left {} publishes unanswered instead of refusing them",
            record.unanswered
        );
        for (r, transport) in records.iter().zip(Transport::ALL) {
            ensure_exact(&transport.to_string(), &expected, &r.messages)?;
            ensure!(
                r.unrecovered().is_empty(),
                "{transport} was told recovered:false: {:?}",
                r.unrecovered()
            );
        }
        Ok(())
    })
    .await
}
