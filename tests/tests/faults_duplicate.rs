//! A publish repeated under the same idempotency id — the retry of a
//! publisher that never saw its answer — is stored and delivered once.
//!
//! On Redis the id is honoured whichever way each copy arrives: twice over
//! HTTP, twice as `FCALL gw_publish`, once each way (through different
//! nodes), and twice inside one batch. Every repeat is answered
//! `duplicate: true` with the original offset, and a subscriber on every
//! transport receives each message once: the marker published last follows
//! them directly. The embedded broker keeps the same promise over HTTP.

use anyhow::{ensure, Context, Result};
use serde_json::{json, Value};
use tests::faults::{
    collect, ensure_exact, fcall_publish_with_id, feeds_on_every_transport, summary, tally,
    wait_all_subscribed, Expected,
};
use tests::{
    unique_channel, within, Broker, Gateway, GatewayOpts, Http, Node, Position, RedisServer,
    Transport, STEP_TIMEOUT,
};

/// Publishes `data` under `id` over HTTP: the position and duplicate flag.
async fn publish_with_id(
    http: &Http,
    channel: &str,
    data: &Value,
    id: &str,
) -> Result<(Position, bool)> {
    let ack = http
        .publish_json(&json!({ "channel": channel, "data": data, "id": id }))
        .await?;
    let duplicate = ack["duplicate"]
        .as_bool()
        .context("ack without duplicate")?;
    Ok((Position::of_ack(&ack)?, duplicate))
}

/// The first copy must be new, every repeat a duplicate of it.
fn ensure_once(what: &str, answers: &[(Position, bool)]) -> Result<Position> {
    let (first, duplicate) = answers.first().context("no answer")?;
    ensure!(!duplicate, "{what}: the first copy was answered duplicate");
    for (i, (position, duplicate)) in answers.iter().enumerate().skip(1) {
        ensure!(
            *duplicate && position == first,
            "{what}: copy #{i} must be answered duplicate:true at {first}, got {position} \
             duplicate {duplicate}"
        );
    }
    Ok(first.clone())
}

/// Waits until every feed has `expected`, then checks each got exactly it.
async fn check_feeds(
    test: &str,
    feeds: Vec<tests::faults::Feed>,
    expected: &[Expected],
    copies: usize,
) -> Result<()> {
    let records = collect(feeds, expected.len(), STEP_TIMEOUT).await?;
    let figures: Vec<_> = records
        .iter()
        .zip(Transport::ALL)
        .map(|(r, t)| tally(&t.to_string(), expected, &r.messages))
        .collect();
    eprintln!(
        "{} (publishes sent {copies}, distinct ids+marker {})",
        summary(test, None, &figures),
        expected.len()
    );
    for (r, transport) in records.iter().zip(Transport::ALL) {
        ensure_exact(&transport.to_string(), expected, &r.messages)?;
    }
    Ok(())
}

fn expected_at(position: &Position, data: Value) -> Expected {
    Expected {
        epoch: position.epoch.clone(),
        offset: position.offset,
        data,
    }
}

#[tokio::test]
async fn duplicate_publish_id_over_http_and_fcall_is_delivered_once_on_every_transport(
) -> Result<()> {
    within(async {
        let redis = RedisServer::start().await?;
        let a = Gateway::start(GatewayOpts::redis(redis.url())).await?;
        let b = Gateway::start(GatewayOpts::redis(redis.url())).await?;
        let (http_a, http_b) = (a.http(), b.http());
        let channel = unique_channel("files:alice");
        let feeds = feeds_on_every_transport(&channel, &[b.base_url()]);
        wait_all_subscribed(&feeds).await?;
        let mut expected = Vec::new();

        let data = json!({ "via": "http" });
        let mut answers = Vec::new();
        for _ in 0..3 {
            answers.push(publish_with_id(&http_a, &channel, &data, "evt-http").await?);
        }
        expected.push(expected_at(&ensure_once("HTTP x3", &answers)?, data));

        let data = json!({ "via": "fcall" });
        let mut answers = Vec::new();
        for _ in 0..3 {
            answers.push(
                fcall_publish_with_id(&redis, &channel, &data.to_string(), "evt-fcall").await?,
            );
        }
        expected.push(expected_at(&ensure_once("FCALL x3", &answers)?, data));

        let data = json!({ "via": "mixed" });
        let answers = vec![
            publish_with_id(&http_b, &channel, &data, "evt-mixed").await?,
            fcall_publish_with_id(&redis, &channel, &data.to_string(), "evt-mixed").await?,
            publish_with_id(&http_a, &channel, &data, "evt-mixed").await?,
        ];
        expected.push(expected_at(
            &ensure_once("HTTP on B, FCALL, HTTP on A", &answers)?,
            data,
        ));

        let data = json!({ "via": "batch" });
        let item = json!({ "channel": channel, "data": data, "id": "evt-batch" });
        let ack = http_a
            .publish_json(&json!({ "messages": [item.clone(), item] }))
            .await?;
        let results = ack["results"]
            .as_array()
            .context("batch ack without results")?;
        let answers = results
            .iter()
            .map(|r| Ok((Position::of_ack(r)?, r["duplicate"] == true)))
            .collect::<Result<Vec<_>>>()?;
        expected.push(expected_at(
            &ensure_once("one batch, twice", &answers)?,
            data,
        ));

        let marker = http_a.publish(&channel, json!("marker")).await?;
        expected.push(expected_at(&Position::of_ack(&marker)?, json!("marker")));
        let offsets: Vec<u64> = expected.iter().map(|e| e.offset).collect();
        ensure!(
            offsets == (1..=5).collect::<Vec<_>>(),
            "the repeats must take no offset: {offsets:?}"
        );

        check_feeds("duplicate ids on redis", feeds, &expected, 12).await
    })
    .await
}

#[tokio::test]
async fn duplicate_publish_id_over_http_is_delivered_once_on_the_embedded_broker() -> Result<()> {
    within(async {
        let node = Node::start(Broker::Embedded, GatewayOpts::embedded()).await?;
        let http = node.http();
        let channel = unique_channel("files:alice");
        let feeds = feeds_on_every_transport(&channel, &[node.base_url()]);
        wait_all_subscribed(&feeds).await?;
        let mut expected = Vec::new();

        let data = json!({ "via": "http" });
        let mut answers = Vec::new();
        for _ in 0..3 {
            answers.push(publish_with_id(&http, &channel, &data, "evt-http").await?);
        }
        expected.push(expected_at(&ensure_once("HTTP x3", &answers)?, data));

        let data = json!({ "via": "batch" });
        let item = json!({ "channel": channel, "data": data, "id": "evt-batch" });
        let ack = http
            .publish_json(&json!({ "messages": [item.clone(), item] }))
            .await?;
        let results = ack["results"]
            .as_array()
            .context("batch ack without results")?;
        let answers = results
            .iter()
            .map(|r| Ok((Position::of_ack(r)?, r["duplicate"] == true)))
            .collect::<Result<Vec<_>>>()?;
        expected.push(expected_at(
            &ensure_once("one batch, twice", &answers)?,
            data,
        ));

        let marker = http.publish(&channel, json!("marker")).await?;
        expected.push(expected_at(&Position::of_ack(&marker)?, json!("marker")));
        check_feeds("duplicate ids on embedded", feeds, &expected, 6).await
    })
    .await
}
