//! Resume: a client that comes back with its position (SSE `Last-Event-ID`
//! as a header or `?last_event_id=`, the long-poll `cursor`, the WebSocket
//! `since`) gets exactly what it missed, none twice, then live messages; and
//! is told `recovered:false` when the position cannot be honoured (unknown
//! epoch, history too short, Redis flushed).

use anyhow::{ensure, Context, Result};
use serde_json::{json, Value};
use tests::{
    check_consecutive, unique_channel, within, Broker, GatewayOpts, Node, Position, SseClient,
    Subscribed, Subscriber, Transport,
};

/// How a client hands its position back.
#[derive(Debug, Clone, Copy)]
enum Resume {
    /// The transport's own way: `since`, `Last-Event-ID` header, `cursor`.
    Native(Transport),
    /// SSE with `?last_event_id=` (what `EventSource` can do on first connect).
    SseQuery,
}

impl Resume {
    fn transport(self) -> Transport {
        match self {
            Resume::Native(transport) => transport,
            Resume::SseQuery => Transport::Sse,
        }
    }

    async fn open(
        self,
        base_url: &str,
        channel: &str,
        from: &str,
    ) -> Result<(Subscriber, Subscribed)> {
        match self {
            Resume::Native(transport) => {
                Subscriber::open(transport, base_url, channel, Some(from)).await
            }
            Resume::SseQuery => {
                // Check the query form answers like the header form, then
                // hand the same query to a regular subscriber.
                let mut url = reqwest::Url::parse(&format!("{base_url}/v1/sse"))?;
                url.query_pairs_mut()
                    .append_pair("channel", channel)
                    .append_pair("last_event_id", from);
                let sse = SseClient::connect(url, None).await?;
                Subscriber::from_sse(sse, channel).await
            }
        }
    }
}

fn numbered(range: std::ops::Range<u64>) -> Vec<Value> {
    range.map(|n| json!({ "n": n })).collect()
}

/// Takes two of three messages, leaves, misses two more, comes back from the
/// position after the second: gets the third and the two missed, then a live
/// one right after (so nothing came twice).
async fn resume_gets_exactly_what_was_missed(resume: Resume, broker: Broker) -> Result<()> {
    let node = Node::start(broker, GatewayOpts::embedded()).await?;
    let http = node.http();
    let channel = unique_channel("files:alice");
    let transport = resume.transport();

    let (mut first, subscribed) =
        Subscriber::open(transport, &node.base_url(), &channel, None).await?;
    let start = subscribed.position;
    let all = numbered(1..7);
    for payload in &all[..3] {
        http.publish(&channel, payload.clone()).await?;
    }
    let taken = first.recv_messages(2).await?;
    let taken_end = check_consecutive(&taken, &channel, &start, &all[..2])?;
    let position = first
        .position()
        .context("no position after two messages")?
        .to_owned();
    first.close().await?;

    for payload in &all[3..5] {
        http.publish(&channel, payload.clone()).await?;
    }

    let (mut back, resumed) = resume
        .open(&node.base_url(), &channel, &position)
        .await
        .with_context(|| format!("resuming via {resume:?} from {position}"))?;
    ensure!(
        resumed.recovered && resumed.position == taken_end,
        "resume via {resume:?} from {position}: expected recovered:true at {taken_end}, \
         got {resumed:?}"
    );
    let missed = back.recv_messages(3).await?;
    let missed_end = check_consecutive(&missed, &channel, &taken_end, &all[2..5])
        .with_context(|| format!("messages missed while away, resumed via {resume:?}"))?;

    http.publish(&channel, all[5].clone()).await?;
    let live = back.recv_messages(1).await?;
    check_consecutive(&live, &channel, &missed_end, &all[5..])
        .context("the first live message must follow the missed ones directly")?;
    back.close().await
}

#[tokio::test]
async fn sse_resumes_from_last_event_id_header_on_embedded_broker() -> Result<()> {
    within(resume_gets_exactly_what_was_missed(
        Resume::Native(Transport::Sse),
        Broker::Embedded,
    ))
    .await
}

#[tokio::test]
async fn sse_resumes_from_last_event_id_query_on_embedded_broker() -> Result<()> {
    within(resume_gets_exactly_what_was_missed(
        Resume::SseQuery,
        Broker::Embedded,
    ))
    .await
}

#[tokio::test]
async fn long_poll_resumes_from_cursor_on_embedded_broker() -> Result<()> {
    within(resume_gets_exactly_what_was_missed(
        Resume::Native(Transport::Poll),
        Broker::Embedded,
    ))
    .await
}

#[tokio::test]
async fn websocket_resumes_from_since_on_embedded_broker() -> Result<()> {
    within(resume_gets_exactly_what_was_missed(
        Resume::Native(Transport::Ws),
        Broker::Embedded,
    ))
    .await
}

#[tokio::test]
async fn sse_resumes_from_last_event_id_header_on_redis_broker() -> Result<()> {
    within(resume_gets_exactly_what_was_missed(
        Resume::Native(Transport::Sse),
        Broker::Redis,
    ))
    .await
}

#[tokio::test]
async fn sse_resumes_from_last_event_id_query_on_redis_broker() -> Result<()> {
    within(resume_gets_exactly_what_was_missed(
        Resume::SseQuery,
        Broker::Redis,
    ))
    .await
}

#[tokio::test]
async fn long_poll_resumes_from_cursor_on_redis_broker() -> Result<()> {
    within(resume_gets_exactly_what_was_missed(
        Resume::Native(Transport::Poll),
        Broker::Redis,
    ))
    .await
}

#[tokio::test]
async fn websocket_resumes_from_since_on_redis_broker() -> Result<()> {
    within(resume_gets_exactly_what_was_missed(
        Resume::Native(Transport::Ws),
        Broker::Redis,
    ))
    .await
}

/// Subscribes to a channel nothing was published to yet, leaves at once,
/// misses its first three messages, and comes back from the position the
/// gateway gave at subscribe time: gets all three.
async fn resume_from_before_first_publish_gets_every_message(
    resume: Resume,
    broker: Broker,
) -> Result<()> {
    let node = Node::start(broker, GatewayOpts::embedded()).await?;
    let http = node.http();
    let channel = unique_channel("files:alice");

    let (first, subscribed) =
        Subscriber::open(resume.transport(), &node.base_url(), &channel, None).await?;
    let start = subscribed.position;
    first.close().await?;
    let all = numbered(1..4);
    for payload in &all {
        http.publish(&channel, payload.clone()).await?;
    }

    let (mut back, resumed) = resume
        .open(&node.base_url(), &channel, &start.to_string())
        .await?;
    ensure!(
        resumed.recovered,
        "resume via {resume:?} from {start} (given before the first publish) said \
         recovered:false: {resumed:?}"
    );
    let missed = back.recv_messages(3).await?;
    check_consecutive(&missed, &channel, &start, &all)
        .with_context(|| format!("messages published after {start} was handed out"))?;
    back.close().await
}

#[tokio::test]
async fn websocket_since_from_before_first_publish_gets_every_message_on_embedded_broker(
) -> Result<()> {
    within(resume_from_before_first_publish_gets_every_message(
        Resume::Native(Transport::Ws),
        Broker::Embedded,
    ))
    .await
}

#[tokio::test]
async fn sse_last_event_id_from_before_first_publish_gets_every_message_on_embedded_broker(
) -> Result<()> {
    within(resume_from_before_first_publish_gets_every_message(
        Resume::Native(Transport::Sse),
        Broker::Embedded,
    ))
    .await
}

#[tokio::test]
async fn long_poll_cursor_from_before_first_publish_gets_every_message_on_embedded_broker(
) -> Result<()> {
    within(resume_from_before_first_publish_gets_every_message(
        Resume::Native(Transport::Poll),
        Broker::Embedded,
    ))
    .await
}

#[tokio::test]
async fn websocket_since_from_before_first_publish_gets_every_message_on_redis_broker() -> Result<()>
{
    within(resume_from_before_first_publish_gets_every_message(
        Resume::Native(Transport::Ws),
        Broker::Redis,
    ))
    .await
}

#[tokio::test]
async fn sse_last_event_id_from_before_first_publish_gets_every_message_on_redis_broker(
) -> Result<()> {
    within(resume_from_before_first_publish_gets_every_message(
        Resume::Native(Transport::Sse),
        Broker::Redis,
    ))
    .await
}

#[tokio::test]
async fn long_poll_cursor_from_before_first_publish_gets_every_message_on_redis_broker(
) -> Result<()> {
    within(resume_from_before_first_publish_gets_every_message(
        Resume::Native(Transport::Poll),
        Broker::Redis,
    ))
    .await
}

/// Resuming from `stale` must answer recovered:false at the channel's current
/// position `current`, and deliver live messages from there.
async fn check_unrecovered_resume(
    resume: Resume,
    node: &Node,
    channel: &str,
    stale: &str,
    current: &Position,
) -> Result<()> {
    let (mut back, resumed) = resume.open(&node.base_url(), channel, stale).await?;
    ensure!(
        !resumed.recovered && resumed.position == *current,
        "resume via {resume:?} from {stale}: expected recovered:false at {current}, got {resumed:?}"
    );

    node.http().publish(channel, json!("live")).await?;
    let live = back.recv_messages(1).await?;
    check_consecutive(&live, channel, current, &[json!("live")])
        .context("after recovered:false delivery continues from the current position")?;
    back.close().await
}

/// A position in an epoch the channel never had.
async fn unknown_epoch_resumes_with_recovered_false(resume: Resume, broker: Broker) -> Result<()> {
    let node = Node::start(broker, GatewayOpts::embedded()).await?;
    let channel = unique_channel("files:alice");
    node.http().publish(&channel, json!(1)).await?;
    let ack = node.http().publish(&channel, json!(2)).await?;
    let current = Position {
        epoch: ack["epoch"]
            .as_str()
            .context("ack without epoch")?
            .to_owned(),
        offset: ack["offset"].as_u64().context("ack without offset")?,
    };

    let stale = if current.epoch == "zz0unknown0zz" {
        "yy0unknown0yy:1"
    } else {
        "zz0unknown0zz:1"
    };
    check_unrecovered_resume(resume, &node, &channel, stale, &current).await
}

#[tokio::test]
async fn websocket_since_with_unknown_epoch_says_recovered_false() -> Result<()> {
    within(unknown_epoch_resumes_with_recovered_false(
        Resume::Native(Transport::Ws),
        Broker::Embedded,
    ))
    .await
}

#[tokio::test]
async fn sse_last_event_id_with_unknown_epoch_says_recovered_false() -> Result<()> {
    within(unknown_epoch_resumes_with_recovered_false(
        Resume::Native(Transport::Sse),
        Broker::Embedded,
    ))
    .await
}

#[tokio::test]
async fn sse_last_event_id_query_with_unknown_epoch_says_recovered_false() -> Result<()> {
    within(unknown_epoch_resumes_with_recovered_false(
        Resume::SseQuery,
        Broker::Embedded,
    ))
    .await
}

#[tokio::test]
async fn long_poll_cursor_with_unknown_epoch_says_recovered_false() -> Result<()> {
    within(unknown_epoch_resumes_with_recovered_false(
        Resume::Native(Transport::Poll),
        Broker::Embedded,
    ))
    .await
}

#[tokio::test]
async fn websocket_since_with_unknown_epoch_on_redis_says_recovered_false() -> Result<()> {
    within(unknown_epoch_resumes_with_recovered_false(
        Resume::Native(Transport::Ws),
        Broker::Redis,
    ))
    .await
}

/// With `--history-size 2`, a position five messages back is no longer
/// covered: recovered:false, continue from now.
async fn gap_beyond_history_size_says_recovered_false(
    transport: Transport,
    broker: Broker,
) -> Result<()> {
    let node = Node::start(broker, GatewayOpts::embedded().history_size(2)).await?;
    let channel = unique_channel("files:alice");
    let http = node.http();
    let first = http.publish(&channel, json!(0)).await?;
    let epoch = first["epoch"]
        .as_str()
        .context("ack without epoch")?
        .to_owned();
    let stale = Position {
        epoch: epoch.clone(),
        offset: first["offset"].as_u64().context("ack offset")?,
    };
    let mut last = first;
    for n in 1..6 {
        last = http.publish(&channel, json!(n)).await?;
    }
    let current = Position {
        epoch,
        offset: last["offset"].as_u64().context("ack offset")?,
    };

    check_unrecovered_resume(
        Resume::Native(transport),
        &node,
        &channel,
        &stale.to_string(),
        &current,
    )
    .await
}

#[tokio::test]
async fn websocket_since_older_than_history_size_says_recovered_false() -> Result<()> {
    within(gap_beyond_history_size_says_recovered_false(
        Transport::Ws,
        Broker::Embedded,
    ))
    .await
}

#[tokio::test]
async fn sse_last_event_id_older_than_history_size_says_recovered_false() -> Result<()> {
    within(gap_beyond_history_size_says_recovered_false(
        Transport::Sse,
        Broker::Embedded,
    ))
    .await
}

#[tokio::test]
async fn long_poll_cursor_older_than_history_size_says_recovered_false() -> Result<()> {
    within(gap_beyond_history_size_says_recovered_false(
        Transport::Poll,
        Broker::Embedded,
    ))
    .await
}

#[tokio::test]
async fn long_poll_cursor_older_than_redis_history_size_says_recovered_false() -> Result<()> {
    within(gap_beyond_history_size_says_recovered_false(
        Transport::Poll,
        Broker::Redis,
    ))
    .await
}

/// FLUSHALL loses every channel's history: the next publish starts a new
/// epoch, and a position in the old one is answered recovered:false.
#[tokio::test]
async fn redis_flushall_starts_a_new_epoch_and_old_cursor_says_recovered_false() -> Result<()> {
    within(async {
        let node = Node::start(Broker::Redis, GatewayOpts::embedded()).await?;
        let redis = node.redis.as_ref().context("redis node without redis")?;
        let http = node.http();
        let channel = unique_channel("files:alice");

        let before = http.publish(&channel, json!("before")).await?;
        let old = Position {
            epoch: before["epoch"]
                .as_str()
                .context("ack without epoch")?
                .to_owned(),
            offset: before["offset"].as_u64().context("ack without offset")?,
        };
        redis.flushall().await?;

        let after = http.publish(&channel, json!("after")).await?;
        let new_epoch = after["epoch"]
            .as_str()
            .context("ack without epoch")?
            .to_owned();
        ensure!(
            new_epoch != old.epoch,
            "epoch {} survived FLUSHALL: {after}",
            old.epoch
        );
        let current = Position {
            epoch: new_epoch,
            offset: after["offset"].as_u64().context("ack offset")?,
        };

        check_unrecovered_resume(
            Resume::Native(Transport::Poll),
            &node,
            &channel,
            &old.to_string(),
            &current,
        )
        .await
    })
    .await
}
