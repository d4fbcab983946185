//! A gateway node killed (SIGKILL) under its subscribers: no drain, no
//! advice, the sockets simply die. Subscribers on every transport reconnect
//! to a second node with their positions (positions mean the same on every
//! node) while a publisher keeps publishing through that second node, and
//! end with every accepted message exactly once, in order.

use std::time::Duration;

use anyhow::{ensure, Result};
use tests::faults::{
    collect, ensure_exact, expected_of, feeds_on_every_transport, summary, tally,
    wait_all_subscribed, Publisher, PublisherOptions,
};
use tests::{unique_channel, within, Gateway, GatewayOpts, RedisServer, Transport, STEP_TIMEOUT};

const MESSAGES: u64 = 200;
const PACE: Duration = Duration::from_millis(10);

/// Messages every subscriber takes from the doomed node before it dies.
const BEFORE_KILL: usize = 40;

#[tokio::test]
async fn node_killed_under_subscribers_loses_and_repeats_nothing_once_they_resume_on_another(
) -> Result<()> {
    within(async {
        let redis = RedisServer::start().await?;
        let opts = GatewayOpts::redis(redis.url())
            .arg("--sse-heartbeat")
            .arg("1");
        let mut doomed = Gateway::start(opts.clone()).await?;
        let survivor = Gateway::start(opts).await?;
        let channel = unique_channel("files:alice");

        let nodes = [doomed.base_url(), survivor.base_url()];
        let feeds = feeds_on_every_transport(&channel, &nodes);
        wait_all_subscribed(&feeds).await?;
        let publisher = Publisher::start(
            PublisherOptions::new(&[survivor.base_url()], &channel, MESSAGES).pace(PACE),
        );
        for feed in &feeds {
            feed.wait_for(BEFORE_KILL, STEP_TIMEOUT).await?;
        }
        doomed.kill().await?;

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
            "{}",
            summary("gateway node SIGKILL", Some(&record), &figures)
        );

        for (r, transport) in records.iter().zip(Transport::ALL) {
            ensure_exact(&transport.to_string(), &expected, &r.messages)?;
            ensure!(
                r.unrecovered().is_empty(),
                "{transport} was told recovered:false on the second node: {:?}",
                r.unrecovered()
            );
            let first = r.sessions.first().map(|s| s.node.as_str());
            let last = r.sessions.last().map(|s| s.node.as_str());
            ensure!(
                first == Some(nodes[0].as_str()) && last == Some(nodes[1].as_str()),
                "{transport} should have started on the killed node and ended on the other: \
                 {:?}",
                r.sessions
            );
        }
        Ok(())
    })
    .await
}
