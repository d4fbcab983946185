//! The delivery promise on the embedded broker, in-process: replay, order,
//! duplicates, resume verdicts and slow-consumer cut-off.
#![allow(clippy::unwrap_used)]

use std::time::Duration;

use fanout::{Channel, Event, HistoryConfig, Hub, Position, PublishRequest, SubscriberLimits};

fn hub(history: usize, queue: usize) -> Hub {
    let history = HistoryConfig {
        size: history,
        age: Duration::from_secs(60),
    };
    let limits = SubscriberLimits {
        queue_messages: queue,
        ..SubscriberLimits::default()
    };
    Hub::memory(history, limits)
}

fn ch(name: &str) -> Channel {
    Channel::new(name).unwrap()
}

async fn publish(hub: &Hub, channel: &str, n: u64) -> Position {
    let mut last = None;
    for i in 0..n {
        let req = PublishRequest::new(ch(channel), i.to_string().into(), None, None).unwrap();
        let out = hub.publish(req).await.unwrap();
        last = Some(Position::new(out.epoch, out.offset));
    }
    last.unwrap()
}

async fn next_offset(sub: &mut fanout::Subscriber) -> u64 {
    let ev = tokio::time::timeout(Duration::from_secs(5), sub.next())
        .await
        .unwrap()
        .unwrap();
    match ev {
        Event::Message(m) => m.offset,
        Event::Reset(s) => panic!("unexpected reset {s:?}"),
    }
}

#[tokio::test]
async fn resume_replays_exactly_the_missed_messages_then_live_ones() {
    let hub = hub(100, 1024);
    let at = publish(&hub, "c", 3).await;
    publish(&hub, "c", 2).await;

    let mut sub = hub.subscriber();
    let s = sub.subscribe(ch("c"), Some(&at)).await.unwrap();
    assert!(s.recovered);
    publish(&hub, "c", 1).await;
    let got: Vec<u64> = [
        next_offset(&mut sub).await,
        next_offset(&mut sub).await,
        next_offset(&mut sub).await,
    ]
    .into();
    assert_eq!(got, vec![4, 5, 6]);
    assert!(sub.try_next().unwrap().is_none());
}

#[tokio::test]
async fn position_older_than_history_is_not_recovered() {
    let hub = hub(2, 1024);
    let at = publish(&hub, "c", 1).await;
    publish(&hub, "c", 5).await;
    let mut sub = hub.subscriber();
    let s = sub.subscribe(ch("c"), Some(&at)).await.unwrap();
    assert!(!s.recovered);
    assert_eq!(s.position.offset, 6);
    assert!(sub.try_next().unwrap().is_none());
}

#[tokio::test]
async fn unknown_epoch_and_future_positions_are_not_recovered() {
    let hub = hub(10, 1024);
    let at = publish(&hub, "c", 2).await;
    let mut sub = hub.subscriber();
    let other = Position::new(fanout::Epoch::new("zzz").unwrap(), 1);
    assert!(
        !sub.subscribe(ch("c"), Some(&other))
            .await
            .unwrap()
            .recovered
    );
    let mut sub = hub.subscriber();
    let ahead = Position::new(at.epoch.clone(), 99);
    let s = sub.subscribe(ch("c"), Some(&ahead)).await.unwrap();
    assert!(!s.recovered);
    assert_eq!(s.position.offset, 2);
}

#[tokio::test]
async fn a_subscriber_that_stops_reading_is_cut_and_others_get_everything() {
    let hub = hub(10, 8);
    let mut slow = hub.subscriber();
    let mut fast = hub.subscriber();
    slow.subscribe(ch("c"), None).await.unwrap();
    fast.subscribe(ch("c"), None).await.unwrap();
    for i in 1..=20u64 {
        publish(&hub, "c", 1).await;
        assert_eq!(next_offset(&mut fast).await, i);
    }
    assert!(slow.is_lagged());
    assert!(slow.next().await.is_err());
}

#[tokio::test]
async fn two_channels_on_one_subscriber_keep_their_own_offsets() {
    let hub = hub(10, 64);
    let mut sub = hub.subscriber();
    sub.subscribe(ch("a"), None).await.unwrap();
    sub.subscribe(ch("b"), None).await.unwrap();
    publish(&hub, "a", 2).await;
    publish(&hub, "b", 1).await;
    let mut seen = Vec::new();
    for _ in 0..3 {
        if let Event::Message(m) = sub.next().await.unwrap() {
            seen.push((m.channel.to_string(), m.offset));
        }
    }
    assert_eq!(
        seen,
        vec![("a".into(), 1), ("a".into(), 2), ("b".into(), 1)]
    );
    assert!(sub.unsubscribe(&ch("a")));
    assert_eq!(hub.registry().count("a"), 0);
    drop(sub);
    assert_eq!(hub.registry().channel_count(), 0);
}

#[tokio::test]
async fn duplicate_publish_id_is_delivered_once() {
    let hub = hub(10, 64);
    let mut sub = hub.subscriber();
    sub.subscribe(ch("c"), None).await.unwrap();
    let req = || PublishRequest::new(ch("c"), "1".into(), Some("evt-1".into()), None).unwrap();
    let first = hub.publish(req()).await.unwrap();
    let again = hub.publish(req()).await.unwrap();
    assert!(!first.duplicate && again.duplicate);
    assert_eq!(first.offset, again.offset);
    assert_eq!(next_offset(&mut sub).await, 1);
    assert!(sub.try_next().unwrap().is_none());
}

#[tokio::test]
async fn reading_an_unpublished_channel_creates_nothing_and_resumes_from_zero() {
    let hub = hub(10, 64);
    let (s, msgs) = hub.read(&ch("never"), None, 100).await.unwrap();
    assert_eq!(s.position.offset, 0);
    assert!(msgs.is_empty());
    let at = s.position;
    publish(&hub, "never", 2).await;
    let (s, msgs) = hub.read(&ch("never"), Some(&at), 100).await.unwrap();
    assert!(s.recovered);
    assert_eq!(msgs.len(), 2);
}

#[tokio::test]
async fn a_long_replay_is_paged_in_and_interleaves_no_live_message_out_of_order() {
    // Queue of 8: the replay of 40 messages must come in pages, never all at once.
    let hub = hub(100, 8);
    let ch_at = publish(&hub, "c", 1).await;
    let at = Position::new(ch_at.epoch.clone(), 0);
    publish(&hub, "c", 39).await;
    let mut sub = hub.subscriber();
    assert!(sub.subscribe(ch("c"), Some(&at)).await.unwrap().recovered);
    let mut got = Vec::new();
    for i in 0..45u64 {
        if i == 20 {
            publish(&hub, "c", 5).await; // live while the replay is paged in
        }
        got.push(next_offset(&mut sub).await);
    }
    assert_eq!(got, (1..=45).collect::<Vec<u64>>());
}
