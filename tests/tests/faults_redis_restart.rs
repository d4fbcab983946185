//! Redis goes away under live traffic and comes back.
//!
//! - Killed (SIGKILL) and restarted on the same port five times while a
//!   publisher keeps publishing through node A: Redis runs with
//!   `--appendonly yes --appendfsync always` (what the README asks for
//!   loss-free restarts), publishes during each outage are refused with 503
//!   `unavailable` and retried under the same idempotency id, and a
//!   subscriber on node B on every transport (reconnecting with its position
//!   whenever its session breaks) ends with every accepted message exactly
//!   once, in order, without ever being told `recovered: false`.
//! - Flushed (FLUSHALL) under live subscribers: every transport is told
//!   `recovered: false` once, mid-stream, and goes on with the new epoch's
//!   messages; nothing is lost silently.

use std::time::Duration;

use anyhow::{ensure, Context, Result};
use serde_json::{json, Value};
use tests::faults::{
    collect, ensure_exact, expected_of, feeds_on_every_transport, metric, summary, tally,
    wait_all_subscribed, wait_readyz, Expected, Publisher, PublisherOptions, Record,
};
use tests::{
    unique_channel, within, Gateway, GatewayOpts, Position, RedisServer, Transport, STEP_TIMEOUT,
};

/// Kill-and-restart rounds.
const RESTARTS: usize = 5;

/// Messages published across all rounds.
const MESSAGES: u64 = 300;

/// The publisher's pause between messages: publishing spans every round.
const PACE: Duration = Duration::from_millis(8);

/// Messages accepted between two kills, so each outage hits a live stream.
const ACCEPTED_PER_ROUND: usize = 25;

/// How long subscribers get to catch up once publishing is done.
const CATCH_UP: Duration = Duration::from_secs(20);

/// Node flags for these tests: SSE heartbeats every second keep the test's
/// SSE client (which calls 10 s of silence a broken stream) from
/// reconnecting during quiet moments.
fn node_opts(redis: &RedisServer) -> GatewayOpts {
    GatewayOpts::redis(redis.url())
        .arg("--sse-heartbeat")
        .arg("1")
}

#[tokio::test]
async fn redis_killed_and_restarted_five_times_loses_and_repeats_no_accepted_message() -> Result<()>
{
    within(async {
        let mut redis = RedisServer::start_persistent().await?;
        let a = Gateway::start(node_opts(&redis)).await?;
        let b = Gateway::start(node_opts(&redis)).await?;
        let channel = unique_channel("files:alice");

        let feeds = feeds_on_every_transport(&channel, &[b.base_url()]);
        wait_all_subscribed(&feeds).await?;
        let publisher =
            Publisher::start(PublisherOptions::new(&[a.base_url()], &channel, MESSAGES).pace(PACE));

        for round in 0..RESTARTS {
            let target = publisher.accepted() + ACCEPTED_PER_ROUND;
            publisher
                .wait_accepted(target, STEP_TIMEOUT)
                .await
                .with_context(|| format!("round {round}: publishing before the kill"))?;

            let record = publisher.record();
            let failures = record.unanswered + record.refused_with("unavailable");
            redis.kill()?;
            publisher
                .wait_failures(failures + 1, STEP_TIMEOUT)
                .await
                .with_context(|| {
                    format!("round {round}: no publish failed while Redis was down")
                })?;
            redis
                .restart()
                .await
                .with_context(|| format!("round {round}: restarting Redis"))?;
        }

        let record = publisher.finish(CATCH_UP).await?;
        let expected = expected_of(&record.accepted);
        let records = collect(feeds, expected.len(), CATCH_UP).await?;
        let figures: Vec<_> = records
            .iter()
            .zip(Transport::ALL)
            .map(|(r, t)| tally(&t.to_string(), &expected, &r.messages))
            .collect();
        eprintln!(
            "{}",
            summary("redis SIGKILL+restart x5", Some(&record), &figures)
        );

        ensure!(
            record.refused_with("unavailable") >= RESTARTS as u64 && record.unanswered == 0,
            "every outage must be answered 503 unavailable by node A (never a dropped \
             request): {record:?}"
        );
        ensure_one_epoch(&expected, MESSAGES)?;
        for (r, transport) in records.iter().zip(Transport::ALL) {
            ensure_exact(&transport.to_string(), &expected, &r.messages)?;
            ensure!(
                r.unrecovered().is_empty(),
                "{transport} was told recovered:false although Redis persisted everything: {:?}",
                r.unrecovered()
            );
        }
        let reconnects = metric(&b.http(), "gateway_broker_reconnects_total").await?;
        ensure!(
            reconnects >= RESTARTS as f64,
            "node B re-established its Redis link {reconnects} times, not {RESTARTS}"
        );
        Ok(())
    })
    .await
}

/// With persistence, every message keeps the first epoch and the offsets run
/// 1..=n without a hole.
fn ensure_one_epoch(expected: &[Expected], n: u64) -> Result<()> {
    let epoch = &expected.first().context("nothing accepted")?.epoch;
    let offsets: Vec<u64> = expected.iter().map(|e| e.offset).collect();
    ensure!(
        expected.iter().all(|e| &e.epoch == epoch) && offsets == (1..=n).collect::<Vec<_>>(),
        "a persistent Redis must keep one epoch and offsets 1..={n}; got {:?}",
        expected
            .iter()
            .map(|e| format!("{}:{}", e.epoch, e.offset))
            .collect::<Vec<_>>()
    );
    Ok(())
}

/// Messages before and after the flush, and the marker that ends the test.
const BEFORE_FLUSH: u64 = 3;
const AFTER_FLUSH: u64 = 3;

#[tokio::test]
async fn redis_flushall_under_live_subscribers_is_told_recovered_false_never_silent_loss(
) -> Result<()> {
    within(async {
        let redis = RedisServer::start().await?;
        let node = Gateway::start(node_opts(&redis)).await?;
        let http = node.http();
        let channel = unique_channel("files:alice");

        let feeds = feeds_on_every_transport(&channel, &[node.base_url()]);
        wait_all_subscribed(&feeds).await?;

        let mut before = Vec::new();
        for n in 0..BEFORE_FLUSH {
            before.push(http.publish(&channel, json!({ "n": n })).await?);
        }
        for feed in &feeds {
            feed.wait_for(BEFORE_FLUSH as usize, STEP_TIMEOUT).await?;
        }

        redis.flushall().await?;
        let mut after = Vec::new();
        for n in BEFORE_FLUSH..BEFORE_FLUSH + AFTER_FLUSH {
            after.push(http.publish(&channel, json!({ "n": n })).await?);
        }
        let old = Position::of_ack(&before[0])?.epoch;
        let new = Position::of_ack(&after[0])?.epoch;
        ensure!(old != new, "FLUSHALL kept epoch {old}");

        // Every transport hears of the new epoch, then takes a marker
        // published after that: from then on it follows the new epoch.
        for feed in &feeds {
            tests::eventually(
                &format!("{} told recovered:false", feed.transport()),
                STEP_TIMEOUT,
                || async { Ok((!feed.record().unrecovered().is_empty()).then_some(())) },
            )
            .await
            .with_context(|| {
                let keys: Vec<(String, u64)> = feed.record().messages.iter().map(key).collect();
                format!("it received {keys:?} with no verdict")
            })?;
        }
        let marker = http.publish(&channel, json!("marker")).await?;
        let marker_at = Position::of_ack(&marker)?;
        for feed in &feeds {
            tests::eventually(
                &format!("{} got the marker", feed.transport()),
                STEP_TIMEOUT,
                || async {
                    let got = feed.record().messages.iter().any(|m| m["data"] == "marker");
                    Ok(got.then_some(()))
                },
            )
            .await?;
        }

        let mut records = Vec::new();
        for feed in feeds {
            records.push(feed.stop().await?);
        }
        let mut line = Vec::new();
        for (record, transport) in records.iter().zip(Transport::ALL) {
            let verdict = check_flush_record(record, transport, &old, &new, &marker_at)?;
            line.push(format!(
                "{transport} delivered {} (old epoch {}, new epoch {}) recovered:false at {}",
                record.messages.len(),
                record
                    .messages
                    .iter()
                    .filter(|m| m["epoch"] == old.as_str())
                    .count(),
                record
                    .messages
                    .iter()
                    .filter(|m| m["epoch"] == new.as_str())
                    .count(),
                verdict
            ));
        }
        eprintln!(
            "FIGURES redis FLUSHALL: published {} before and {} after (+1 marker); {}",
            BEFORE_FLUSH,
            AFTER_FLUSH,
            line.join("; ")
        );
        Ok(())
    })
    .await
}

/// One transport's record across a flush: the old epoch's messages
/// `1..=BEFORE_FLUSH`, exactly one `recovered: false` verdict after them at a
/// position in (or leading into) the new epoch, then the new epoch's
/// messages consecutively from that position up to the marker. WebSocket
/// and SSE were connected throughout, so they lose nothing: their verdict is
/// at the new epoch's start. Returns the verdict's position.
fn check_flush_record(
    record: &Record,
    transport: Transport,
    old: &str,
    new: &str,
    marker: &Position,
) -> Result<Position> {
    let unrecovered = record.unrecovered();
    ensure!(
        unrecovered.len() == 1,
        "{transport}: expected one recovered:false verdict, got {unrecovered:?}"
    );
    let verdict = unrecovered[0];
    ensure!(
        verdict.mid_stream || transport == Transport::Poll,
        "{transport}: the verdict must come mid-stream: {verdict:?}"
    );
    let (old_part, new_part) = record
        .messages
        .split_at(verdict.after_messages.min(record.messages.len()));

    let old_offsets: Vec<(String, u64)> = old_part.iter().map(key).collect();
    let want_old: Vec<(String, u64)> = (1..=BEFORE_FLUSH).map(|o| (old.to_owned(), o)).collect();
    ensure!(
        old_offsets == want_old,
        "{transport}: before the flush got {old_offsets:?}"
    );

    let mut at = verdict.position.clone();
    ensure!(
        at.epoch == new || at.is_never_published(),
        "{transport}: the verdict must point into the new epoch {new}: {verdict:?}"
    );
    for message in new_part {
        let (epoch, offset) = key(message);
        ensure!(
            at.is_followed_by(&epoch, offset) && epoch == new,
            "{transport}: after {at} came {message}"
        );
        at = Position { epoch, offset };
    }
    ensure!(
        at == *marker,
        "{transport}: ended at {at}, not at the marker {marker}"
    );
    if transport != Transport::Poll {
        ensure!(
            verdict.position.offset == 0,
            "{transport} was connected throughout, so it must get every new message: {verdict:?}"
        );
    }
    Ok(verdict.position.clone())
}

fn key(message: &Value) -> (String, u64) {
    (
        message["epoch"].as_str().unwrap_or_default().to_owned(),
        message["offset"].as_u64().unwrap_or(0),
    )
}

/// Messages published into the new epoch while node B is cut off from an
/// emptily restarted Redis.
const DURING_OUTAGE: u64 = 2;

/// How soon a live subscriber must hear of an epoch change that happened
/// while its node was cut off from Redis: the node's reconnect backoff is
/// capped at 2 s, plus slack.
const VERDICT_BOUND: Duration = Duration::from_secs(8);

#[tokio::test]
async fn redis_restarted_empty_under_live_subscribers_tells_them_recovered_false_without_a_new_publish(
) -> Result<()> {
    within(async {
        let mut redis = RedisServer::start().await?;
        let a = Gateway::start(node_opts(&redis)).await?;
        let b = Gateway::start(node_opts(&redis)).await?;
        let channel = unique_channel("files:alice");

        let feeds = feeds_on_every_transport(&channel, &[b.base_url()]);
        wait_all_subscribed(&feeds).await?;
        for n in 0..BEFORE_FLUSH {
            a.http().publish(&channel, json!({ "n": n })).await?;
        }
        for feed in &feeds {
            feed.wait_for(BEFORE_FLUSH as usize, STEP_TIMEOUT).await?;
        }

        // Node B is frozen (SIGSTOP) while Redis dies and comes back without
        // its data, and node A publishes into the new epoch; then B wakes
        // up, finds its link dead and reconnects.
        b.signal("STOP")?;
        redis.kill()?;
        redis.restart().await?;
        let mut after = Vec::new();
        for n in BEFORE_FLUSH..BEFORE_FLUSH + DURING_OUTAGE {
            let publish = || async { a.http().publish(&channel, json!({ "n": n })).await };
            after.push(
                tests::eventually("publishing after the restart", STEP_TIMEOUT, || async {
                    Ok(publish().await.ok())
                })
                .await?,
            );
        }
        b.signal("CONT")?;
        let b_http = b.http();
        tests::eventually("node B reconnected to Redis", STEP_TIMEOUT, || async {
            let reconnects = metric(&b_http, "gateway_broker_reconnects_total").await?;
            Ok((reconnects >= 1.0).then_some(()))
        })
        .await?;

        // Nothing more is published: each subscriber must learn of the lost
        // history from the node by itself.
        let told = |feed: &tests::faults::Feed| {
            let record = feed.record();
            record.messages.len() > BEFORE_FLUSH as usize || !record.unrecovered().is_empty()
        };
        let _ = tests::eventually(
            "every subscriber told of the new epoch",
            VERDICT_BOUND,
            || async { Ok(feeds.iter().all(told).then_some(())) },
        )
        .await;
        let silent: Vec<Transport> = feeds
            .iter()
            .filter(|f| !told(f))
            .map(|f| f.transport())
            .collect();

        // What the silent ones learn once something is published again.
        a.http().publish(&channel, json!("marker")).await?;
        for feed in &feeds {
            tests::eventually("the marker delivered", STEP_TIMEOUT, || async {
                let got = feed.record().messages.iter().any(|m| m["data"] == "marker");
                Ok(got.then_some(()))
            })
            .await?;
        }
        let mut line = Vec::new();
        for feed in feeds {
            let transport = feed.transport();
            let record = feed.stop().await?;
            line.push(format!(
                "{transport} delivered {} verdicts {:?}",
                record.messages.len(),
                record
                    .unrecovered()
                    .iter()
                    .map(|v| format!(
                        "recovered:false at {} {}",
                        v.position,
                        if v.mid_stream {
                            "mid-stream"
                        } else {
                            "on reconnect"
                        }
                    ))
                    .collect::<Vec<_>>()
            ));
        }
        eprintln!(
            "FIGURES redis restarted empty: published {BEFORE_FLUSH} before, {DURING_OUTAGE} \
             during B's outage (new epoch {}), then a marker; {}",
            Position::of_ack(&after[0])?.epoch,
            line.join("; ")
        );
        ensure!(
            silent.is_empty(),
            "{silent:?} neither received the {DURING_OUTAGE} messages of the new epoch nor \
             recovered:false within {VERDICT_BOUND:?} after node B reconnected: the loss stays \
             silent until something else is published"
        );
        Ok(())
    })
    .await
}

/// `--redis-timeout` of the parked-poll test: a parked long-poll waits up to
/// twice this for the node's Redis subscription.
const PARK_WAIT_SECS: u64 = 5;

/// The most wake-up publishes the parked-poll test sends.
const WAKE_ATTEMPTS: usize = 20;

/// How a parked long-poll's history is lost while it waits.
#[derive(Debug, Clone, Copy)]
enum Loss {
    /// FLUSHALL, then one publish into the new epoch.
    Flushall,
    /// More publishes than `--history-size` keeps.
    Trimmed,
}

/// `--history-size` of the trimmed case.
const PARK_HISTORY: u64 = 2;

/// A long-poll reads history, finds nothing new, and parks a subscriber from
/// the position it read. If the channel's history is lost between that read
/// and the park (flushed, or trimmed past the cursor), the park's own read
/// says `recovered: false` — and the answer must say so too, not hand out
/// later messages as if they followed the old cursor.
///
/// The window is held open on purpose: Redis refuses SUBSCRIBE to the node
/// (`ACL SETUSER default -subscribe`), so the park waits for its Redis
/// subscription; meanwhile the test loses the history and then gives
/// SUBSCRIBE back.
async fn long_poll_parked_while_history_is_lost_is_told_recovered_false(loss: Loss) -> Result<()> {
    let redis = RedisServer::start().await?;
    let node = Gateway::start(
        GatewayOpts::redis(redis.url())
            .history_size(PARK_HISTORY)
            .arg("--redis-timeout")
            .arg(PARK_WAIT_SECS.to_string()),
    )
    .await?;
    let http = node.http();
    let channel = unique_channel("files:alice");
    let old = Position::of_ack(&http.publish(&channel, json!({ "n": 0 })).await?)?;

    redis
        .cmd(&["ACL", "SETUSER", "default", "-subscribe"])
        .await?;
    let mut parked = {
        let (http, channel, cursor) = (http.clone(), channel.clone(), old.to_string());
        tokio::spawn(async move { http.poll(&[&channel], Some(&cursor), 10).await })
    };
    tests::eventually("the long-poll parked", STEP_TIMEOUT, || async {
        let (_, text) = http.get(&format!("/v1/channels/{channel}")).await?;
        let body: Value = serde_json::from_str(&text)?;
        Ok((body["local_subscribers"] == 1).then_some(()))
    })
    .await?;

    let (losses, mut n) = match loss {
        Loss::Flushall => {
            redis.flushall().await?;
            (1, 1)
        }
        Loss::Trimmed => (PARK_HISTORY + 1, 1),
    };
    let mut skipped = Vec::new();
    for _ in 0..losses {
        skipped.push(Position::of_ack(
            &http.publish(&channel, json!({ "n": n })).await?,
        )?);
        n += 1;
    }
    redis
        .cmd(&["ACL", "SETUSER", "default", "+subscribe"])
        .await?;
    wait_readyz(&http, 200, STEP_TIMEOUT).await?;

    // Wake the parked poll with further messages.
    let mut answer = None;
    for _ in 0..WAKE_ATTEMPTS {
        http.publish(&channel, json!({ "n": n })).await?;
        n += 1;
        if let Ok(joined) = tokio::time::timeout(Duration::from_millis(200), &mut parked).await {
            answer = Some(joined??);
            break;
        }
    }
    let answer = answer.context("the parked long-poll never answered")?;
    let got: Vec<String> = answer
        .messages
        .iter()
        .filter_map(|m| Position::of_message(m).ok().map(|p| p.to_string()))
        .collect();
    let skipped: Vec<String> = skipped.iter().map(ToString::to_string).collect();
    eprintln!(
        "FIGURES parked poll, history {loss:?}: cursor {old}; published meanwhile {skipped:?}; \
         answer recovered {} with messages {got:?}, cursor {}",
        answer.recovered, answer.cursor
    );
    ensure!(
        !answer.recovered,
        "a long-poll from {old} parked while its history was lost ({loss:?}) answered \
         recovered:true with {got:?}, silently skipping {skipped:?}: {}",
        answer.body
    );
    Ok(())
}

#[tokio::test]
async fn long_poll_parked_across_a_flushall_is_told_recovered_false() -> Result<()> {
    within(long_poll_parked_while_history_is_lost_is_told_recovered_false(Loss::Flushall)).await
}

#[tokio::test]
async fn long_poll_parked_while_history_is_trimmed_past_its_cursor_is_told_recovered_false(
) -> Result<()> {
    within(long_poll_parked_while_history_is_lost_is_told_recovered_false(Loss::Trimmed)).await
}

/// `--redis-timeout` of the refusal test: a subscribe waits up to twice
/// this for the broker before it is refused.
const REFUSAL_TIMEOUT_SECS: u64 = 1;

/// How soon a subscribe must be refused while Redis is down.
const REFUSAL_BOUND: Duration = Duration::from_secs(2 * REFUSAL_TIMEOUT_SECS + 3);

/// Subscribing while Redis is down is refused with `unavailable` the way
/// each transport tells a client to come back: a WebSocket `error` frame on
/// a connection that stays usable, an SSE 200 stream with a `retry:` hint
/// and an `error` event that then ends (so `EventSource` reconnects by
/// itself), a long-poll 503. Once Redis is back, all three subscribe.
#[tokio::test]
async fn subscribing_while_redis_is_down_is_refused_as_unavailable_on_every_transport() -> Result<()>
{
    within(async {
        let mut redis = RedisServer::start().await?;
        let node = Gateway::start(
            GatewayOpts::redis(redis.url())
                .arg("--redis-timeout")
                .arg(REFUSAL_TIMEOUT_SECS.to_string()),
        )
        .await?;
        let http = node.http();
        let channel = unique_channel("files:alice");
        redis.kill()?;
        wait_readyz(&http, 503, STEP_TIMEOUT).await?;

        let asked = std::time::Instant::now();
        let ws_answer = async {
            let mut ws = tests::WsClient::connect(&node.ws_url("/v1/ws")).await?;
            ws.send(&json!({"op": "subscribe", "channel": channel}))
                .await?;
            let frame = ws.recv().await?;
            ws.ping().await.context("the connection must stay usable")?;
            Ok::<_, anyhow::Error>(frame)
        };
        let sse_answer = async {
            let mut url = http.url("/v1/sse")?;
            url.query_pairs_mut().append_pair("channel", &channel);
            let mut sse = tests::SseClient::connect(url, None).await?;
            let mut events = Vec::new();
            while let Some(event) = sse.next_event_or_end().await? {
                events.push(event);
            }
            Ok::<_, anyhow::Error>((events, sse.retries().to_vec()))
        };
        let poll_answer = async {
            let url = http.poll_url(&[&channel], None, 1)?;
            http.get_url(url, Duration::from_secs(1)).await
        };
        let (ws_frame, (sse_events, sse_retries), (poll_status, poll_text)) =
            tokio::try_join!(ws_answer, sse_answer, poll_answer)?;
        let answered_in = asked.elapsed();
        eprintln!(
            "FIGURES subscribe with Redis down, answered within {answered_in:?}: websocket \
             {ws_frame}; sse retry {sse_retries:?} events {sse_events:?}; long-poll \
             {poll_status} {poll_text}"
        );

        ensure!(
            answered_in <= REFUSAL_BOUND,
            "refusals took {answered_in:?}, over {REFUSAL_BOUND:?}"
        );
        ensure!(
            ws_frame["type"] == "error"
                && ws_frame["code"] == "unavailable"
                && ws_frame["channel"] == channel.as_str(),
            "websocket subscribe with Redis down: {ws_frame}"
        );
        let sse_code = match sse_events.as_slice() {
            [event] if event.event == "error" => event.json()?["code"].clone(),
            _ => Value::Null,
        };
        ensure!(
            sse_code == "unavailable" && !sse_retries.is_empty(),
            "sse with Redis down must answer a retry: hint and one error event \
             `unavailable`, then end: retry {sse_retries:?}, events {sse_events:?}"
        );
        let poll_code = serde_json::from_str::<Value>(&poll_text)
            .map(|b| b["error"]["code"].clone())
            .unwrap_or_default();
        ensure!(
            poll_status == 503 && poll_code == "unavailable",
            "long-poll with Redis down: {poll_status} {poll_text}"
        );

        redis.restart().await?;
        wait_readyz(&http, 200, STEP_TIMEOUT).await?;
        for transport in Transport::ALL {
            let (sub, subscribed) =
                tests::Subscriber::open(transport, &node.base_url(), &channel, None).await?;
            ensure!(
                subscribed.recovered,
                "{transport} after Redis came back: {subscribed:?}"
            );
            sub.close().await?;
        }
        Ok(())
    })
    .await
}
