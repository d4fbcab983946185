//! Resume edge cases beyond `resume.rs`: positions a node must not honour,
//! the seam between replay and live delivery, and several channels on one
//! connection.
//!
//! - A position *ahead* of the newest offset, one *older than history* by
//!   age (`--history-age`) or by size on Redis, an *unknown epoch* on
//!   Redis, and *garbage*: each is answered `recovered: false` at the
//!   channel's current position on WebSocket and SSE, and delivery goes on
//!   from there — never a silent skip, never a stall. A garbage long-poll
//!   cursor is a client bug and is refused with 400 `bad_position` (README,
//!   "Long-poll").
//! - Reconnecting again and again while a publisher publishes, alternating
//!   between two nodes, each time from the position after the last message
//!   taken: every message exactly once, in order, on every transport.
//! - Two channels on one connection (WebSocket with one `since` per
//!   subscribe, SSE and long-poll with a multi-channel position): each
//!   channel resumes exactly from its own part of the position, SSE ids
//!   name both positions in channel order, and a position that is good for
//!   one channel and stale for the other recovers the first and says
//!   `recovered: false` for the second only.

use std::collections::HashMap;
use std::time::Duration;

use anyhow::{bail, ensure, Context, Result};
use serde_json::{json, Value};
use tests::faults::{ensure_exact, expected_of, summary, tally, Publisher, PublisherOptions};
use tests::http::expect_error_body;
use tests::{
    check_consecutive, eventually, unique_channel, within, Broker, Gateway, GatewayOpts, Node,
    Position, RedisServer, SseClient, Subscriber, Transport, WsClient, STEP_TIMEOUT,
};

/// Publishes `n` numbered messages; returns the position after the last.
async fn publish_numbered(node: &Node, channel: &str, n: u64) -> Result<Position> {
    let mut last = None;
    for i in 0..n {
        last = Some(node.http().publish(channel, json!({ "n": i })).await?);
    }
    Position::of_ack(&last.context("nothing published")?)
}

/// Resuming `channel` over `transport` from `stale` must answer
/// `recovered: false` at `current`, and the next live message must follow
/// `current` directly.
async fn ensure_unrecovered(
    transport: Transport,
    node: &Node,
    channel: &str,
    stale: &str,
    current: &Position,
) -> Result<()> {
    let what = format!("{transport} from {stale:?} at {current}");
    let (mut back, resumed) = Subscriber::open(transport, &node.base_url(), channel, Some(stale))
        .await
        .with_context(|| what.clone())?;
    ensure!(
        !resumed.recovered && resumed.position == *current,
        "{what}: expected recovered:false at {current}, got {resumed:?}"
    );
    let live = json!({ "live": stale });
    node.http().publish(channel, live.clone()).await?;
    let got = back.recv_messages(1).await.with_context(|| what.clone())?;
    check_consecutive(&got, channel, current, &[live])
        .with_context(|| format!("{what}: delivery must go on from the current position"))?;
    back.close().await
}

/// A position `ahead` offsets past the newest one.
async fn position_ahead_of_newest_offset_is_told_recovered_false(broker: Broker) -> Result<()> {
    let node = Node::start(broker, GatewayOpts::embedded()).await?;
    for transport in Transport::ALL {
        let channel = unique_channel("files:alice");
        let mut current = publish_numbered(&node, &channel, 2).await?;
        for ahead in [1, 5, 1_000_000] {
            let future = Position {
                offset: current.offset + ahead,
                ..current.clone()
            };
            ensure_unrecovered(transport, &node, &channel, &future.to_string(), &current).await?;
            current.offset += 1; // the live message just taken
        }
    }
    Ok(())
}

#[tokio::test]
async fn position_in_the_future_is_told_recovered_false_not_stalled_on_embedded_broker(
) -> Result<()> {
    within(position_ahead_of_newest_offset_is_told_recovered_false(
        Broker::Embedded,
    ))
    .await
}

#[tokio::test]
async fn position_in_the_future_is_told_recovered_false_not_stalled_on_redis() -> Result<()> {
    within(position_ahead_of_newest_offset_is_told_recovered_false(
        Broker::Redis,
    ))
    .await
}

/// Positions that are not `EPOCH:OFFSET` (or name too many channels).
const GARBAGE: [&str; 10] = [
    "garbage",
    ":",
    "abc:",
    ":5",
    "e!:1",
    "e:-1",
    "e:1x",
    "e:1:2",
    "e:99999999999999999999999",
    "e:1,e:2",
];

#[tokio::test]
async fn garbage_position_is_told_recovered_false_on_websocket_and_sse_and_400_on_long_poll(
) -> Result<()> {
    within(async {
        let node = Node::start(Broker::Embedded, GatewayOpts::embedded()).await?;
        let channel = unique_channel("files:alice");
        let mut current = publish_numbered(&node, &channel, 2).await?;
        let too_long_epoch = format!("{}:1", "a".repeat(33));

        for garbage in GARBAGE.iter().copied().chain([too_long_epoch.as_str()]) {
            for transport in [Transport::Ws, Transport::Sse] {
                ensure_unrecovered(transport, &node, &channel, garbage, &current).await?;
                current.offset += 1;
            }

            let url = node.http().poll_url(&[&channel], Some(garbage), 0)?;
            let (status, text) = node.http().get_url(url, Duration::ZERO).await?;
            let code = expect_error_body(&format!("poll cursor {garbage:?}"), status, &text)?;
            ensure!(
                status == 400 && code == "bad_position",
                "poll cursor {garbage:?}: expected 400 bad_position, got {status} {text}"
            );
        }
        Ok(())
    })
    .await
}

/// `--history-age` of the age test, seconds.
const HISTORY_AGE_SECS: u64 = 1;

async fn position_older_than_history_age_is_told_recovered_false(broker: Broker) -> Result<()> {
    let opts = GatewayOpts::embedded().history_age(HISTORY_AGE_SECS);
    let node = Node::start(broker, opts).await?;
    let channel = unique_channel("files:alice");
    let first = publish_numbered(&node, &channel, 1).await?;
    let mut current = publish_numbered(&node, &channel, 2).await?;
    let stale = first.to_string();

    // History ages out by itself: wait until a poll from the first message
    // no longer recovers (bounded well past the age).
    let http = node.http();
    eventually(
        "history aged out",
        Duration::from_secs(HISTORY_AGE_SECS + 5),
        || async {
            let answer = http.poll(&[&channel], Some(&stale), 0).await?;
            Ok((!answer.recovered).then_some(answer))
        },
    )
    .await
    .and_then(|answer| {
        ensure!(
            answer.cursor == current.to_string() && answer.messages.is_empty(),
            "poll from aged-out {stale}: expected no messages and cursor {current}: {}",
            answer.body
        );
        Ok(())
    })?;

    for transport in Transport::ALL {
        ensure_unrecovered(transport, &node, &channel, &stale, &current).await?;
        current.offset += 1;
    }
    Ok(())
}

#[tokio::test]
async fn position_older_than_history_age_is_told_recovered_false_on_embedded_broker() -> Result<()>
{
    within(position_older_than_history_age_is_told_recovered_false(
        Broker::Embedded,
    ))
    .await
}

#[tokio::test]
async fn position_older_than_history_age_is_told_recovered_false_on_redis() -> Result<()> {
    within(position_older_than_history_age_is_told_recovered_false(
        Broker::Redis,
    ))
    .await
}

#[tokio::test]
async fn unknown_epoch_and_trimmed_history_on_redis_are_told_recovered_false_on_every_transport(
) -> Result<()> {
    within(async {
        let node = Node::start(Broker::Redis, GatewayOpts::embedded().history_size(2)).await?;
        for transport in Transport::ALL {
            let channel = unique_channel("files:alice");
            let first = publish_numbered(&node, &channel, 1).await?;
            let mut current = publish_numbered(&node, &channel, 4).await?;

            let unknown = format!("zz{}:1", current.epoch);
            ensure_unrecovered(transport, &node, &channel, &unknown, &current).await?;
            current.offset += 1;
            ensure_unrecovered(transport, &node, &channel, &first.to_string(), &current).await?;
        }
        Ok(())
    })
    .await
}

/// Messages of the seam test.
const SEAM_MESSAGES: u64 = 300;
const SEAM_PACE: Duration = Duration::from_millis(3);

/// The most reconnects of the seam test (a bound, not a target).
const SEAM_MAX_SESSIONS: usize = 200;

/// Takes messages in short sessions while a publisher publishes, leaving
/// after each few and coming back (to the other node) from its position.
async fn reconnects_at_the_replay_live_seam_miss_and_repeat_nothing(
    transport: Transport,
) -> Result<()> {
    let redis = RedisServer::start().await?;
    let a = Gateway::start(GatewayOpts::redis(redis.url())).await?;
    let b = Gateway::start(GatewayOpts::redis(redis.url())).await?;
    let nodes = [a.base_url(), b.base_url()];
    let channel = unique_channel("files:alice");

    let (mut sub, subscribed) = Subscriber::open(transport, &nodes[0], &channel, None).await?;
    let mut position = subscribed.position;
    let publisher = Publisher::start(
        PublisherOptions::new(&[a.base_url()], &channel, SEAM_MESSAGES).pace(SEAM_PACE),
    );

    let mut received = Vec::new();
    let mut during_publishing = 0;
    for session in 1..=SEAM_MAX_SESSIONS {
        let left = SEAM_MESSAGES as usize - received.len();
        let take = (3 + session * 7 % 17).min(left);
        received.extend(sub.recv_messages(take).await?);
        if received.len() == SEAM_MESSAGES as usize {
            break;
        }

        let from = sub.position().context("no position")?.to_owned();
        sub.close().await?;
        if publisher.accepted() < SEAM_MESSAGES as usize {
            during_publishing += 1;
        }
        let node = &nodes[session % 2];
        let (next, resumed) = Subscriber::open(transport, node, &channel, Some(&from)).await?;
        position = Position::parse(&from)?;
        ensure!(
            resumed.recovered && resumed.position == position,
            "session {session}: resuming from {from} on {node}: {resumed:?}"
        );
        sub = next;
    }
    sub.close().await?;

    let record = publisher.finish(STEP_TIMEOUT).await?;
    let expected = expected_of(&record.accepted);
    let figures = tally(&transport.to_string(), &expected, &received);
    eprintln!(
        "{} | {during_publishing} reconnects while publishing, last at {position}",
        summary("replay/live seam", Some(&record), &[figures])
    );
    ensure_exact(&transport.to_string(), &expected, &received)?;
    ensure!(
        during_publishing >= 5,
        "only {during_publishing} reconnects happened while publishing: the seam was not tested"
    );
    Ok(())
}

#[tokio::test]
async fn websocket_reconnecting_while_messages_are_published_misses_and_repeats_nothing(
) -> Result<()> {
    within(reconnects_at_the_replay_live_seam_miss_and_repeat_nothing(
        Transport::Ws,
    ))
    .await
}

#[tokio::test]
async fn sse_reconnecting_while_messages_are_published_misses_and_repeats_nothing() -> Result<()> {
    within(reconnects_at_the_replay_live_seam_miss_and_repeat_nothing(
        Transport::Sse,
    ))
    .await
}

#[tokio::test]
async fn long_poll_reconnecting_while_messages_are_published_misses_and_repeats_nothing(
) -> Result<()> {
    within(reconnects_at_the_replay_live_seam_miss_and_repeat_nothing(
        Transport::Poll,
    ))
    .await
}

/// Per channel, the position after the messages taken so far.
type Positions = HashMap<String, Position>;

/// Checks `messages` against what was published to each channel after
/// `positions`, per channel in order (no order across channels is
/// promised); advances `positions`.
fn check_per_channel(
    what: &str,
    messages: &[Value],
    positions: &mut Positions,
    published: &HashMap<String, Vec<Value>>,
) -> Result<()> {
    for (channel, position) in positions.iter_mut() {
        let mine: Vec<Value> = messages
            .iter()
            .filter(|m| m["channel"] == channel.as_str())
            .cloned()
            .collect();
        let all = &published[channel];
        let start = usize::try_from(position.offset)?;
        let want = all
            .get(start..start + mine.len())
            .with_context(|| format!("{what}: {channel} got more than was published: {mine:?}"))?;
        *position = check_consecutive(&mine, channel, position, want)
            .with_context(|| format!("{what}: channel {channel}"))?;
    }
    Ok(())
}

/// Two channels, and what was published to each, in order.
struct Pair {
    node: Node,
    a: String,
    b: String,
    published: HashMap<String, Vec<Value>>,
}

impl Pair {
    async fn start() -> Result<Self> {
        let node = Node::start(Broker::Redis, GatewayOpts::embedded()).await?;
        let (a, b) = (unique_channel("files:alice"), unique_channel("files:bob"));
        let published = HashMap::from([(a.clone(), Vec::new()), (b.clone(), Vec::new())]);
        Ok(Pair {
            node,
            a,
            b,
            published,
        })
    }

    /// Publishes one message to each channel named, in that order.
    async fn publish(&mut self, channels: &[&str]) -> Result<()> {
        for &channel in channels {
            let list = self.published.get_mut(channel).context("unknown channel")?;
            let data = json!({ "n": list.len() });
            self.node.http().publish(channel, data.clone()).await?;
            list.push(data);
        }
        Ok(())
    }

    fn never_published(&self) -> Positions {
        let zero = Position {
            epoch: "0".into(),
            offset: 0,
        };
        HashMap::from([(self.a.clone(), zero.clone()), (self.b.clone(), zero)])
    }

    /// The multi-channel position `A,B` of `positions`.
    fn multi(&self, positions: &Positions) -> String {
        format!("{},{}", positions[&self.a], positions[&self.b])
    }
}

/// Reads WebSocket frames until `subscribed` `subscribed` frames and
/// `messages` messages have come; returns the frames of each kind.
async fn ws_read(
    ws: &mut WsClient,
    subscribed: usize,
    messages: usize,
) -> Result<(Vec<Value>, Vec<Value>)> {
    let (mut frames, mut got) = (Vec::new(), Vec::new());
    while frames.len() < subscribed || got.len() < messages {
        let frame = ws.recv().await?;
        match frame["type"].as_str() {
            Some("subscribed") => frames.push(frame),
            Some("message") => got.push(frame),
            _ => bail!("unexpected frame {frame}"),
        }
    }
    Ok((frames, got))
}

#[tokio::test]
async fn websocket_with_two_channels_resumes_each_from_its_own_since() -> Result<()> {
    within(async {
        let mut pair = Pair::start().await?;
        let url = pair.node.gateway.ws_url("/v1/ws");
        let mut positions = pair.never_published();

        let mut ws = WsClient::connect(&url).await?;
        ws.subscribe(&pair.a, None).await?;
        ws.subscribe(&pair.b, None).await?;
        let (a, b) = (pair.a.clone(), pair.b.clone());
        pair.publish(&[&a, &b, &a, &b]).await?;
        let (_, got) = ws_read(&mut ws, 0, 4).await?;
        check_per_channel("first connection", &got, &mut positions, &pair.published)?;
        ws.close().await?;

        pair.publish(&[&a, &b, &a]).await?;
        let mut ws = WsClient::connect(&url).await?;
        for channel in [&a, &b] {
            let since = positions[channel].to_string();
            ws.send(&json!({"op": "subscribe", "channel": channel, "since": since}))
                .await?;
        }
        let (frames, got) = ws_read(&mut ws, 2, 3).await?;
        for frame in &frames {
            let channel = frame["channel"]
                .as_str()
                .context("subscribed without channel")?;
            let at = positions.get(channel).context("subscribed to what?")?;
            ensure!(
                frame["recovered"] == true && Position::of_subscribed(frame)? == *at,
                "resuming {channel} from {at}: {frame}"
            );
        }
        check_per_channel("after resuming", &got, &mut positions, &pair.published)?;

        pair.publish(&[&b]).await?;
        let (_, live) = ws_read(&mut ws, 0, 1).await?;
        check_per_channel(
            "live after the replay",
            &live,
            &mut positions,
            &pair.published,
        )?;
        ws.close().await
    })
    .await
}

/// Opens SSE on both channels from `last_event_id`; returns the client and
/// the two `subscribed` events (id and JSON).
async fn sse_pair(
    pair: &Pair,
    last_event_id: Option<&str>,
) -> Result<(SseClient, Vec<(String, Value)>)> {
    let mut url = pair.node.http().url("/v1/sse")?;
    url.query_pairs_mut()
        .append_pair("channel", &pair.a)
        .append_pair("channel", &pair.b);
    let mut sse = SseClient::connect(url, last_event_id).await?;
    let mut subscribed = Vec::new();
    for _ in 0..2 {
        let event = sse.next_named("subscribed").await?;
        subscribed.push((event.id.clone().unwrap_or_default(), event.json()?));
    }
    Ok((sse, subscribed))
}

/// Takes `n` SSE messages; each `id:` must be the multi-channel position
/// after it, in channel order.
async fn sse_take(
    sse: &mut SseClient,
    pair: &Pair,
    n: usize,
    positions: &mut Positions,
) -> Result<Vec<Value>> {
    let mut got = Vec::new();
    for event in sse.recv_messages(n).await? {
        let message = event.json()?;
        let channel = message["channel"]
            .as_str()
            .context("message without channel")?;
        let mut after = positions.clone();
        after.insert(channel.to_owned(), Position::of_message(&message)?);
        check_per_channel(
            "sse",
            std::slice::from_ref(&message),
            positions,
            &pair.published,
        )?;
        ensure!(
            event.id.as_deref() == Some(pair.multi(&after).as_str()),
            "SSE id must be both positions in channel order, {}: got {:?} for {message}",
            pair.multi(&after),
            event.id
        );
        got.push(message);
    }
    Ok(got)
}

#[tokio::test]
async fn sse_with_two_channels_resumes_each_from_its_part_of_last_event_id() -> Result<()> {
    within(async {
        let mut pair = Pair::start().await?;
        let (a, b) = (pair.a.clone(), pair.b.clone());
        let mut positions = pair.never_published();

        let (mut sse, subscribed) = sse_pair(&pair, None).await?;
        ensure!(
            subscribed
                .iter()
                .all(|(id, _)| *id == pair.multi(&positions)),
            "subscribed ids must be the start position {}: {subscribed:?}",
            pair.multi(&positions)
        );
        pair.publish(&[&a, &b, &a, &b]).await?;
        sse_take(&mut sse, &pair, 4, &mut positions).await?;
        drop(sse);

        pair.publish(&[&a, &b, &a]).await?;
        let last_event_id = pair.multi(&positions);
        let (mut sse, subscribed) = sse_pair(&pair, Some(&last_event_id)).await?;
        for (_, frame) in &subscribed {
            let channel = frame["channel"]
                .as_str()
                .context("subscribed without channel")?;
            ensure!(
                frame["recovered"] == true && Position::of_subscribed(frame)? == positions[channel],
                "resuming from {last_event_id}: {frame}"
            );
        }
        sse_take(&mut sse, &pair, 3, &mut positions).await?;
        drop(sse);

        // Good for channel a, an unknown epoch for channel b.
        let stale_b = Position {
            epoch: format!("zz{}", positions[&b].epoch),
            offset: 1,
        };
        let mixed = format!("{},{stale_b}", positions[&a]);
        let (mut sse, subscribed) = sse_pair(&pair, Some(&mixed)).await?;
        let verdicts: HashMap<String, bool> = subscribed
            .iter()
            .map(|(_, f)| {
                (
                    f["channel"].as_str().unwrap_or_default().to_owned(),
                    f["recovered"] == true,
                )
            })
            .collect();
        ensure!(
            verdicts.get(&a) == Some(&true) && verdicts.get(&b) == Some(&false),
            "from {mixed}: channel a must recover and b must not: {subscribed:?}"
        );
        pair.publish(&[&b, &a]).await?;
        sse_take(&mut sse, &pair, 2, &mut positions).await?;
        Ok(())
    })
    .await
}

#[tokio::test]
async fn long_poll_with_two_channels_resumes_each_from_its_part_of_the_cursor() -> Result<()> {
    within(async {
        let mut pair = Pair::start().await?;
        let (a, b) = (pair.a.clone(), pair.b.clone());
        let http = pair.node.http();
        let mut positions = pair.never_published();

        pair.publish(&[&a, &b, &a, &b]).await?;
        let cursor = pair.multi(&positions);
        let answer = http.poll(&[&a, &b], Some(&cursor), 0).await?;
        ensure!(answer.recovered, "poll from {cursor}: {}", answer.body);
        check_per_channel("poll", &answer.messages, &mut positions, &pair.published)?;
        ensure!(
            answer.cursor == pair.multi(&positions),
            "the cursor must be both positions in channel order: {}",
            answer.body
        );

        pair.publish(&[&b, &a, &b]).await?;
        let answer = http.poll(&[&a, &b], Some(&answer.cursor), 0).await?;
        ensure!(
            answer.recovered,
            "poll from its own cursor: {}",
            answer.body
        );
        check_per_channel(
            "second poll",
            &answer.messages,
            &mut positions,
            &pair.published,
        )?;
        ensure!(answer.messages.len() == 3, "second poll: {}", answer.body);
        Ok(())
    })
    .await
}
