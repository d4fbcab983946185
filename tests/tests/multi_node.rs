//! Nodes on Redis: a subscriber on node B gets what was published on node A
//! over HTTP and what was published straight into Redis with
//! `FCALL gw_publish`, with the offsets Redis assigned; a node holds a Redis
//! subscription for a channel only while it has local subscribers; and a
//! channel left and joined again at once loses no live message (checked on
//! the embedded broker too, as the baseline).

use anyhow::{ensure, Context, Result};
use serde_json::{json, Value};
use tests::redis_server::Resp;
use tests::{
    check_consecutive, eventually, unique_channel, within, Broker, Gateway, GatewayOpts, Node,
    Position, RedisServer, SseClient, Subscriber, Transport, WsClient, STEP_TIMEOUT,
};

/// A Redis and two nodes on it.
struct Cluster {
    a: Gateway,
    b: Gateway,
    redis: RedisServer,
}

impl Cluster {
    async fn start() -> Result<Self> {
        let redis = RedisServer::start().await?;
        let a = Gateway::start(GatewayOpts::redis(redis.url())).await?;
        let b = Gateway::start(GatewayOpts::redis(redis.url())).await?;
        Ok(Cluster { a, b, redis })
    }
}

/// Decodes an `FCALL gw_publish` reply, `[offset, epoch, duplicate]`, into
/// the message's position and its duplicate flag.
fn fcall_reply(reply: &Resp) -> Result<(Position, bool)> {
    let items = reply.as_array().context("FCALL reply is not an array")?;
    let decoded = match items {
        [Resp::Int(offset), epoch, Resp::Int(duplicate)] => epoch.as_str().map(|epoch| {
            let position = Position {
                epoch: epoch.to_owned(),
                offset: u64::try_from(*offset).unwrap_or_default(),
            };
            (position, *duplicate != 0)
        }),
        _ => None,
    };
    decoded.with_context(|| {
        format!("FCALL gw_publish reply is not [offset, epoch, duplicate]: {reply:?}")
    })
}

/// Subscriber on B; three HTTP publishes on A, then two FCALLs into Redis.
async fn node_b_gets_publishes_from_node_a_and_from_redis(transport: Transport) -> Result<()> {
    let cluster = Cluster::start().await?;
    let channel = unique_channel("files:alice");
    let (mut subscriber, subscribed) =
        Subscriber::open(transport, &cluster.b.base_url(), &channel, None).await?;
    let start = subscribed.position;

    let over_http: Vec<Value> = (0..3).map(|i| json!({ "via": "http", "n": i })).collect();
    for payload in &over_http {
        cluster.a.http().publish(&channel, payload.clone()).await?;
    }
    let messages = subscriber.recv_messages(3).await?;
    let after_http = check_consecutive(&messages, &channel, &start, &over_http)
        .context("publishes on node A, delivered on node B")?;

    let over_redis: Vec<Value> = (0..2).map(|i| json!({ "via": "redis", "n": i })).collect();
    for (i, payload) in over_redis.iter().enumerate() {
        let reply = cluster
            .redis
            .fcall_publish(&channel, &payload.to_string())
            .await?;
        let (position, duplicate) = fcall_reply(&reply)?;
        let expected = after_http.offset + 1 + i as u64;
        ensure!(
            position
                == Position {
                    epoch: after_http.epoch.clone(),
                    offset: expected
                }
                && !duplicate,
            "FCALL gw_publish #{i}: expected [{expected}, {:?}, 0], got {reply:?}",
            after_http.epoch
        );
    }
    let messages = subscriber.recv_messages(2).await?;
    check_consecutive(&messages, &channel, &after_http, &over_redis)
        .context("FCALL gw_publish straight into Redis, delivered on node B")?;
    subscriber.close().await
}

#[tokio::test]
async fn websocket_on_node_b_gets_publishes_from_node_a_and_from_redis_fcall() -> Result<()> {
    within(node_b_gets_publishes_from_node_a_and_from_redis(
        Transport::Ws,
    ))
    .await
}

#[tokio::test]
async fn sse_on_node_b_gets_publishes_from_node_a_and_from_redis_fcall() -> Result<()> {
    within(node_b_gets_publishes_from_node_a_and_from_redis(
        Transport::Sse,
    ))
    .await
}

#[tokio::test]
async fn long_poll_on_node_b_gets_publishes_from_node_a_and_from_redis_fcall() -> Result<()> {
    within(node_b_gets_publishes_from_node_a_and_from_redis(
        Transport::Poll,
    ))
    .await
}

/// `FCALL gw_publish` with an id and publisher: the envelope carries both, and
/// a second call with the same id answers the original offset with
/// duplicate=1 and is not delivered again.
#[tokio::test]
async fn redis_fcall_with_repeated_id_is_delivered_once_with_id_and_publisher() -> Result<()> {
    within(async {
        let cluster = Cluster::start().await?;
        let channel = unique_channel("files:alice");
        let (mut ws, subscribed) =
            Subscriber::open(Transport::Ws, &cluster.b.base_url(), &channel, None).await?;
        let start = subscribed.position;
        let data = r#"{"path":"a.txt"}"#;

        let args = [
            "FCALL",
            "gw_publish",
            "1",
            &channel,
            data,
            "evt-991",
            "sync-svc",
        ];
        let first = cluster.redis.cmd(&args).await?;
        let (accepted, duplicate) = fcall_reply(&first)?;
        ensure!(
            start.is_followed_by(&accepted.epoch, accepted.offset) && !duplicate,
            "first FCALL with id evt-991: expected the offset after {start}, duplicate 0; got {first:?}"
        );
        let again = cluster.redis.cmd(&args).await?;
        ensure!(
            fcall_reply(&again)? == (accepted.clone(), true),
            "repeating accepted id evt-991: expected [{}, {:?}, 1], got {again:?}",
            accepted.offset,
            accepted.epoch
        );
        cluster.a.http().publish(&channel, json!("marker")).await?;

        let messages = ws.recv_messages(2).await?;
        ensure!(
            messages[0]["id"] == "evt-991" && messages[0]["publisher"] == "sync-svc",
            "envelope should carry id and publisher: {}",
            messages[0]
        );
        check_consecutive(
            &messages,
            &channel,
            &start,
            &[json!({"path": "a.txt"}), json!("marker")],
        )
        .context("the duplicate must not be delivered: the marker comes right after")?;
        Ok(())
    })
    .await
}

/// A cursor returned by node A is honoured by node B: the gateway keeps no
/// per-client poll state.
#[tokio::test]
async fn long_poll_cursor_from_node_a_resumes_exactly_on_node_b() -> Result<()> {
    within(async {
        let cluster = Cluster::start().await?;
        let channel = unique_channel("files:alice");
        let (a, b) = (cluster.a.http(), cluster.b.http());

        a.publish(&channel, json!(1)).await?;
        let first = a.poll(&[&channel], None, 0).await?;
        let start = Position::parse(&first.cursor)?;
        a.publish(&channel, json!(2)).await?;
        a.publish(&channel, json!(3)).await?;

        let answer = b.poll(&[&channel], Some(&first.cursor), 5).await?;
        ensure!(
            answer.recovered,
            "node B refused node A's cursor: {}",
            answer.body
        );
        check_consecutive(&answer.messages, &channel, &start, &[json!(2), json!(3)])?;
        Ok(())
    })
    .await
}

/// How a client holds a channel on a node, for the subscription check.
enum Holder {
    Ws(WsClient),
    Sse(SseClient),
}

async fn hold(transport: Transport, node: &Gateway, channel: &str) -> Result<Holder> {
    Ok(match transport {
        Transport::Ws => {
            let mut ws = WsClient::connect(&node.ws_url("/v1/ws")).await?;
            ws.subscribe(channel, None).await?;
            Holder::Ws(ws)
        }
        Transport::Sse => {
            let mut url = node.http().url("/v1/sse")?;
            url.query_pairs_mut().append_pair("channel", channel);
            let mut sse = SseClient::connect(url, None).await?;
            sse.subscribed().await?;
            Holder::Sse(sse)
        }
        Transport::Poll => anyhow::bail!("a poll holds no subscription between requests"),
    })
}

async fn release(holder: Holder) -> Result<()> {
    match holder {
        Holder::Ws(ws) => ws.close().await,
        Holder::Sse(sse) => {
            drop(sse);
            Ok(())
        }
    }
}

/// Waits until Redis shows `expected` subscriptions to channel's pub/sub name,
/// checking both PUBSUB NUMSUB and PUBSUB CHANNELS.
async fn await_redis_subscribers(
    redis: &RedisServer,
    channel: &str,
    expected: i64,
    when: &str,
) -> Result<()> {
    let name = RedisServer::pubsub_name(channel);
    let what = format!("{when}: PUBSUB NUMSUB {name} == {expected}");
    eventually(&what, STEP_TIMEOUT, || async {
        let numsub = redis.numsub(&name).await?;
        let listed = redis.pubsub_channels(&name).await?.contains(&name);
        Ok((numsub == expected && listed == (expected > 0)).then_some(()))
    })
    .await
}

/// One node: no Redis subscription before a client holds the channel, exactly
/// one while one or two clients hold it, none after the last leaves.
async fn node_subscribes_only_while_it_has_local_subscribers(transport: Transport) -> Result<()> {
    let redis = RedisServer::start().await?;
    let node = Gateway::start(GatewayOpts::redis(redis.url())).await?;
    let channel = unique_channel("files:alice");
    let name = RedisServer::pubsub_name(&channel);

    // Publishing and an interval poll hold nothing: no Redis subscription.
    node.http()
        .publish(&channel, json!("nobody listens"))
        .await?;
    node.http().poll(&[&channel], None, 0).await?;
    let before = redis.numsub(&name).await?;
    ensure!(
        before == 0,
        "node subscribed to {name} with no local subscriber: NUMSUB {before}"
    );

    let first = hold(transport, &node, &channel).await?;
    await_redis_subscribers(&redis, &channel, 1, "one local subscriber").await?;
    let second = hold(transport, &node, &channel).await?;
    await_redis_subscribers(
        &redis,
        &channel,
        1,
        "two local subscribers share one Redis subscription",
    )
    .await?;

    release(first).await?;
    let still = redis.numsub(&name).await?;
    ensure!(
        still == 1,
        "node unsubscribed {name} while a local subscriber remained: NUMSUB {still}"
    );
    // The remaining subscriber must still be served.
    let mut second = second;
    node.http().publish(&channel, json!("still here")).await?;
    match &mut second {
        Holder::Ws(ws) => drop(ws.recv_type("message").await?),
        Holder::Sse(sse) => drop(sse.recv_messages(1).await?),
    }

    release(second).await?;
    await_redis_subscribers(&redis, &channel, 0, "after the last local subscriber left").await
}

#[tokio::test]
async fn node_holds_redis_subscription_only_while_websocket_clients_hold_the_channel() -> Result<()>
{
    within(node_subscribes_only_while_it_has_local_subscribers(
        Transport::Ws,
    ))
    .await
}

#[tokio::test]
async fn node_holds_redis_subscription_only_while_sse_clients_hold_the_channel() -> Result<()> {
    within(node_subscribes_only_while_it_has_local_subscribers(
        Transport::Sse,
    ))
    .await
}

/// Unsubscribing over WebSocket (without closing) releases the node's Redis
/// subscription too, and answers `unsubscribed`.
#[tokio::test]
async fn websocket_unsubscribe_op_releases_the_nodes_redis_subscription() -> Result<()> {
    within(async {
        let redis = RedisServer::start().await?;
        let node = Gateway::start(GatewayOpts::redis(redis.url())).await?;
        let channel = unique_channel("files:alice");

        let mut ws = WsClient::connect(&node.ws_url("/v1/ws")).await?;
        ws.subscribe(&channel, None).await?;
        await_redis_subscribers(&redis, &channel, 1, "subscribed over WebSocket").await?;

        ws.send(&json!({ "op": "unsubscribe", "channel": channel }))
            .await?;
        let frame = ws.recv_type("unsubscribed").await?;
        ensure!(
            frame["channel"] == channel.as_str(),
            "unsubscribed names another channel: {frame}"
        );
        await_redis_subscribers(&redis, &channel, 0, "after the unsubscribe op").await?;
        ws.ping().await
    })
    .await
}

/// A held long-poll is a local subscriber for as long as it is held: the
/// node subscribes in Redis while it waits and unsubscribes once it answered.
#[tokio::test]
async fn node_holds_redis_subscription_only_while_a_long_poll_is_held() -> Result<()> {
    within(async {
        let redis = RedisServer::start().await?;
        let node = Gateway::start(GatewayOpts::redis(redis.url())).await?;
        let channel = unique_channel("files:alice");
        let http = node.http();
        let cursor = http.poll(&[&channel], None, 0).await?.cursor;

        let held = {
            let (http, channel) = (http.clone(), channel.clone());
            tokio::spawn(async move { http.poll(&[&channel], Some(&cursor), 5).await })
        };
        await_redis_subscribers(&redis, &channel, 1, "while a long-poll is held").await?;

        http.publish(&channel, json!("wake")).await?;
        let answer = tokio::time::timeout(STEP_TIMEOUT, held).await???;
        ensure!(
            answer.messages.len() == 1,
            "held poll answered {}",
            answer.body
        );
        await_redis_subscribers(&redis, &channel, 0, "after the long-poll answered").await
    })
    .await
}

/// How many leave-and-come-back rounds the resubscribe race test runs: the
/// race it pins lost a message in about one round of a hundred.
const RESUBSCRIBE_ROUNDS: usize = 200;

/// The last local subscriber leaves and a new one arrives at once, while the
/// node may still be unsubscribing in Redis: a message published right after
/// the new `subscribed` frame must still be delivered.
async fn live_message_after_quick_resubscribe_arrives(broker: Broker) -> Result<()> {
    let node = Node::start(broker, GatewayOpts::embedded()).await?;
    let channel = unique_channel("files:alice");
    let http = node.http();
    let ws_url = node.gateway.ws_url("/v1/ws");

    for round in 0..RESUBSCRIBE_ROUNDS {
        let mut leaving = WsClient::connect(&ws_url).await?;
        leaving.subscribe(&channel, None).await?;
        leaving.close().await?;

        let mut arriving = WsClient::connect(&ws_url).await?;
        let start = Position::of_subscribed(&arriving.subscribe(&channel, None).await?)?;
        http.publish(&channel, json!({ "round": round })).await?;
        let message = arriving.recv_type("message").await.with_context(|| {
            format!("round {round}: live message after resubscribing at {start}")
        })?;
        check_consecutive(&[message], &channel, &start, &[json!({ "round": round })])?;
        arriving.close().await?;
    }
    Ok(())
}

#[tokio::test]
async fn live_message_right_after_a_quick_resubscribe_is_not_lost_on_redis() -> Result<()> {
    within(live_message_after_quick_resubscribe_arrives(Broker::Redis)).await
}

#[tokio::test]
async fn live_message_right_after_a_quick_resubscribe_is_not_lost_on_embedded_broker() -> Result<()>
{
    within(live_message_after_quick_resubscribe_arrives(
        Broker::Embedded,
    ))
    .await
}
