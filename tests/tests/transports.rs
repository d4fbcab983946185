//! Single-node delivery on each transport, on both brokers: messages published
//! over HTTP reach a WebSocket, SSE or long-poll subscriber in order, with the
//! consecutive offsets the publish acks announced, inside the README envelope.

use std::time::{Duration, Instant};

use anyhow::{ensure, Context, Result};
use serde_json::{json, Value};
use tests::{
    check_consecutive, unique_channel, within, Broker, GatewayOpts, Node, Position, SseClient,
    Subscriber, Transport, WsClient, STEP_TIMEOUT,
};

/// How many messages each delivery test publishes.
const BURST: usize = 5;

/// File-update-like payloads, distinct so a reordering cannot go unseen.
fn payloads(n: usize) -> Vec<Value> {
    (0..n)
        .map(|i| json!({ "path": format!("docs/report-{i}.pdf"), "version": i, "blocks": [i, i + 1] }))
        .collect()
}

/// Subscribes over `transport`, publishes [`BURST`] messages over HTTP and
/// checks the acks and the delivered envelopes.
async fn http_publishes_arrive_in_offset_order(transport: Transport, broker: Broker) -> Result<()> {
    let node = Node::start(broker, GatewayOpts::embedded()).await?;
    let http = node.http();
    let channel = unique_channel("files:alice");

    let (mut subscriber, subscribed) =
        Subscriber::open(transport, &node.base_url(), &channel, None).await?;
    ensure!(
        subscribed.recovered,
        "a subscription without a position must say recovered:true, got {subscribed:?}"
    );
    let start = subscribed.position;

    let data = payloads(BURST);
    let mut acked = start.clone();
    for (i, payload) in data.iter().enumerate() {
        let ack = http.publish(&channel, payload.clone()).await?;
        let position = Position::of_ack(&ack)?;
        ensure!(
            ack["channel"] == channel.as_str()
                && ack["duplicate"] == false
                && acked.is_followed_by(&position.epoch, position.offset),
            "publish #{i} ack: expected channel {channel}, the offset after {acked}, \
             duplicate false; got {ack}"
        );
        acked = position;
    }

    let messages = subscriber.recv_messages(BURST).await?;
    let delivered = check_consecutive(&messages, &channel, &start, &data)
        .with_context(|| format!("{transport} on {broker:?}"))?;
    ensure!(
        delivered == acked,
        "delivered up to {delivered}, acked up to {acked}"
    );
    subscriber.close().await
}

#[tokio::test]
async fn websocket_receives_http_publishes_in_offset_order_on_embedded_broker() -> Result<()> {
    within(http_publishes_arrive_in_offset_order(
        Transport::Ws,
        Broker::Embedded,
    ))
    .await
}

#[tokio::test]
async fn sse_receives_http_publishes_in_offset_order_on_embedded_broker() -> Result<()> {
    within(http_publishes_arrive_in_offset_order(
        Transport::Sse,
        Broker::Embedded,
    ))
    .await
}

#[tokio::test]
async fn long_poll_receives_http_publishes_in_offset_order_on_embedded_broker() -> Result<()> {
    within(http_publishes_arrive_in_offset_order(
        Transport::Poll,
        Broker::Embedded,
    ))
    .await
}

#[tokio::test]
async fn websocket_receives_http_publishes_in_offset_order_on_redis_broker() -> Result<()> {
    within(http_publishes_arrive_in_offset_order(
        Transport::Ws,
        Broker::Redis,
    ))
    .await
}

#[tokio::test]
async fn sse_receives_http_publishes_in_offset_order_on_redis_broker() -> Result<()> {
    within(http_publishes_arrive_in_offset_order(
        Transport::Sse,
        Broker::Redis,
    ))
    .await
}

#[tokio::test]
async fn long_poll_receives_http_publishes_in_offset_order_on_redis_broker() -> Result<()> {
    within(http_publishes_arrive_in_offset_order(
        Transport::Poll,
        Broker::Redis,
    ))
    .await
}

/// `/v1/ws?channel=a&channel=b` subscribes both at connect: one `subscribed`
/// frame each, then messages of both.
async fn ws_connect_url_channels_are_subscribed(broker: Broker) -> Result<()> {
    let node = Node::start(broker, GatewayOpts::embedded()).await?;
    let http = node.http();
    let a = unique_channel("files:alice");
    let b = unique_channel("files:bob");

    let mut url = reqwest::Url::parse(&node.gateway.ws_url("/v1/ws"))?;
    url.query_pairs_mut()
        .append_pair("channel", &a)
        .append_pair("channel", &b);
    let mut ws = WsClient::connect(url.as_str()).await?;

    let mut starts = std::collections::HashMap::new();
    for _ in 0..2 {
        let frame = ws.recv_type("subscribed").await?;
        let channel = frame["channel"].as_str().unwrap_or_default().to_owned();
        ensure!(
            channel == a || channel == b,
            "subscribed to an unasked channel: {frame}"
        );
        starts.insert(channel, Position::of_subscribed(&frame)?);
    }
    ensure!(
        starts.len() == 2,
        "one subscribed frame per channel expected, got {starts:?}"
    );

    http.publish(&b, json!({"to": "bob"})).await?;
    http.publish(&a, json!({"to": "alice"})).await?;
    let messages = ws.recv_messages(2).await?;
    check_consecutive(&messages[..1], &b, &starts[&b], &[json!({"to": "bob"})])?;
    check_consecutive(&messages[1..], &a, &starts[&a], &[json!({"to": "alice"})])?;
    ws.close().await
}

#[tokio::test]
async fn websocket_subscribes_channels_named_in_connect_url_on_embedded_broker() -> Result<()> {
    within(ws_connect_url_channels_are_subscribed(Broker::Embedded)).await
}

#[tokio::test]
async fn websocket_subscribes_channels_named_in_connect_url_on_redis_broker() -> Result<()> {
    within(ws_connect_url_channels_are_subscribed(Broker::Redis)).await
}

/// An SSE stream of two channels: each event's `id:` is the multi-channel
/// position after it, both channels' positions in the order they were named.
async fn sse_ids_are_multi_channel_positions(broker: Broker) -> Result<()> {
    let node = Node::start(broker, GatewayOpts::embedded()).await?;
    let http = node.http();
    let a = unique_channel("files:alice");
    let b = unique_channel("files:bob");

    let mut url = http.url("/v1/sse")?;
    url.query_pairs_mut()
        .append_pair("channel", &a)
        .append_pair("channel", &b);
    let mut sse = SseClient::connect(url, None).await?;
    let mut a_pos = None;
    let mut b_pos = None;
    for _ in 0..2 {
        let frame = sse.subscribed().await?;
        let position = Position::of_subscribed(&frame)?;
        if frame["channel"] == a.as_str() {
            a_pos = Some(position);
        } else if frame["channel"] == b.as_str() {
            b_pos = Some(position);
        }
    }
    let mut a_pos = a_pos.context("no subscribed event for the first channel")?;
    let mut b_pos = b_pos.context("no subscribed event for the second channel")?;

    http.publish(&a, json!(1)).await?;
    let event = sse.recv_messages(1).await?.remove(0);
    a_pos = check_consecutive(&[event.json()?], &a, &a_pos, &[json!(1)])?;
    ensure!(
        event.id.as_deref() == Some(format!("{a_pos},{b_pos}").as_str()),
        "after a message on the first channel expected id {a_pos},{b_pos}, got {event:?}"
    );

    http.publish(&b, json!(2)).await?;
    let event = sse.recv_messages(1).await?.remove(0);
    b_pos = check_consecutive(&[event.json()?], &b, &b_pos, &[json!(2)])?;
    ensure!(
        event.id.as_deref() == Some(format!("{a_pos},{b_pos}").as_str()),
        "after a message on the second channel expected id {a_pos},{b_pos}, got {event:?}"
    );
    Ok(())
}

#[tokio::test]
async fn sse_event_ids_are_multi_channel_positions_on_embedded_broker() -> Result<()> {
    within(sse_ids_are_multi_channel_positions(Broker::Embedded)).await
}

#[tokio::test]
async fn sse_event_ids_are_multi_channel_positions_on_redis_broker() -> Result<()> {
    within(sse_ids_are_multi_channel_positions(Broker::Redis)).await
}

/// A long-poll with nothing new holds for its `timeout`, then answers no
/// messages and the same cursor.
#[tokio::test]
async fn long_poll_with_nothing_new_answers_empty_after_its_timeout() -> Result<()> {
    within(async {
        let node = Node::start(Broker::Embedded, GatewayOpts::embedded()).await?;
        let http = node.http();
        let channel = unique_channel("files:alice");
        http.publish(&channel, json!("before")).await?;
        let cursor = http.poll(&[&channel], None, 0).await?.cursor;

        let started = Instant::now();
        let answer = http.poll(&[&channel], Some(&cursor), 1).await?;
        let held = started.elapsed();

        ensure!(
            answer.messages.is_empty() && answer.cursor == cursor && answer.recovered,
            "expected {{messages:[], cursor:{cursor}, recovered:true}}, got {}",
            answer.body
        );
        ensure!(
            held >= Duration::from_millis(900),
            "timeout=1 poll answered after only {held:?}"
        );
        Ok(())
    })
    .await
}

/// A held long-poll is answered as soon as a message is published, long
/// before its timeout.
#[tokio::test]
async fn held_long_poll_is_answered_by_a_publish_before_its_timeout() -> Result<()> {
    within(async {
        let node = Node::start(Broker::Embedded, GatewayOpts::embedded()).await?;
        let http = node.http();
        let channel = unique_channel("files:alice");
        let cursor = http.poll(&[&channel], None, 0).await?.cursor;
        let start = Position::parse(&cursor)?;

        let held = {
            let http = http.clone();
            let channel = channel.clone();
            let cursor = cursor.clone();
            tokio::spawn(async move {
                let started = Instant::now();
                let answer = http.poll(&[&channel], Some(&cursor), 50).await;
                (answer, started.elapsed())
            })
        };
        http.publish(&channel, json!({"wake": true})).await?;

        let (answer, took) = tokio::time::timeout(STEP_TIMEOUT, held).await??;
        let answer = answer?;
        ensure!(
            took < STEP_TIMEOUT,
            "held poll answered only after {took:?}"
        );
        let after =
            check_consecutive(&answer.messages, &channel, &start, &[json!({"wake": true})])?;
        ensure!(
            answer.cursor == after.to_string(),
            "cursor after one message should be {after}, got {}",
            answer.body
        );
        Ok(())
    })
    .await
}

/// A batch publish answers one result per message, in order, and each is
/// delivered with its own channel's next offset.
#[tokio::test]
async fn batch_publish_answers_results_in_order_and_delivers_each() -> Result<()> {
    within(async {
        let node = Node::start(Broker::Embedded, GatewayOpts::embedded()).await?;
        let http = node.http();
        let a = unique_channel("files:alice");
        let b = unique_channel("files:bob");
        let (mut sub_a, start_a) =
            Subscriber::open(Transport::Ws, &node.base_url(), &a, None).await?;
        let (mut sub_b, start_b) =
            Subscriber::open(Transport::Sse, &node.base_url(), &b, None).await?;

        let answer = http
            .publish_json(&json!({ "messages": [
                { "channel": a, "data": "a1" },
                { "channel": b, "data": "b1" },
                { "channel": a, "data": "a2" },
            ]}))
            .await?;
        let results = answer["results"]
            .as_array()
            .context("batch answer without results")?;
        let offsets: Vec<(Value, Value)> = results
            .iter()
            .map(|r| (r["channel"].clone(), r["offset"].clone()))
            .collect();
        let (a1, b1) = (start_a.position.offset + 1, start_b.position.offset + 1);
        ensure!(
            offsets
                == vec![
                    (json!(a), json!(a1)),
                    (json!(b), json!(b1)),
                    (json!(a), json!(a1 + 1))
                ],
            "batch results out of order or with wrong offsets: {answer}"
        );

        let got_a = sub_a.recv_messages(2).await?;
        check_consecutive(&got_a, &a, &start_a.position, &[json!("a1"), json!("a2")])?;
        let got_b = sub_b.recv_messages(1).await?;
        check_consecutive(&got_b, &b, &start_b.position, &[json!("b1")])?;
        Ok(())
    })
    .await
}
