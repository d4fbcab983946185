//! The in-process fan-out hot path: one publish on the embedded broker handed
//! to every subscriber of a channel (a reference-count increment and a queue
//! push each), and subscribers taking it off their queues.
//!
//! `cargo bench -p fanout` reports time per publish for 1k, 10k and 15k
//! subscribers; divide by the count for the cost of one delivery, which should
//! stay flat as the count grows.
#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::time::Duration;

use criterion::{criterion_group, criterion_main, BenchmarkId, Criterion, Throughput};
use fanout::{Channel, HistoryConfig, Hub, PublishRequest, SubscriberLimits};

fn broadcast(c: &mut Criterion) {
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    let mut group = c.benchmark_group("broadcast");
    group.measurement_time(Duration::from_secs(5));
    for &subscribers in &[1_000usize, 10_000, 15_000] {
        let history = HistoryConfig {
            size: 100,
            age: Duration::from_secs(60),
        };
        let hub = Hub::memory(history, SubscriberLimits::default());
        let channel = Channel::new("bench:broadcast").unwrap();
        let mut subs: Vec<_> = (0..subscribers)
            .map(|_| {
                let mut s = hub.subscriber();
                rt.block_on(s.subscribe(channel.clone(), None)).unwrap();
                s
            })
            .collect();
        let payload: Box<str> = format!(r#"{{"path":"a.txt","pad":"{}"}}"#, "x".repeat(200)).into();

        group.throughput(Throughput::Elements(subscribers as u64));
        group.bench_with_input(
            BenchmarkId::from_parameter(subscribers),
            &subscribers,
            |b, _| {
                b.iter(|| {
                    let req =
                        PublishRequest::new(channel.clone(), payload.clone(), None, None).unwrap();
                    rt.block_on(hub.publish(req)).unwrap();
                    for s in subs.iter_mut() {
                        let ev = s.try_next().unwrap();
                        assert!(ev.is_some());
                    }
                })
            },
        );
    }
    group.finish();
}

criterion_group!(benches, broadcast);
criterion_main!(benches);
