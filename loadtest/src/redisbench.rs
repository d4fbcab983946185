//! What one Redis shard sustains, measured beside a run that publishes
//! through Redis: raw `PUBLISH` with `redis-benchmark`, and the gateway's
//! `FCALL gw_publish` (offset, history and publish in one call) from this
//! harness with the same client count and payload. The capacity plan sizes
//! Redis shards from the second; the goal compares the two. Both
//! runs are bounded in time and count and publish to channels no subscriber
//! holds.

use std::{
    sync::{
        atomic::{AtomicU64, Ordering},
        Arc,
    },
    time::{Duration, Instant},
};

use anyhow::{bail, Context};
use serde::{Deserialize, Serialize};

use crate::payload;

/// Concurrent clients in both measurements.
const CLIENTS: usize = 32;

/// Length of the `gw_publish` measurement.
const GW_PUBLISH_TIME: Duration = Duration::from_secs(3);

/// Requests `redis-benchmark` sends.
const RAW_REQUESTS: u64 = 200_000;

/// The two rates.
#[derive(Clone, Debug, Default, Serialize, Deserialize)]
pub struct RedisBench {
    /// Raw `PUBLISH` per second (`redis-benchmark`, no pipelining).
    pub raw_publish_per_s: f64,
    /// `FCALL gw_publish` per second (history and offset included).
    pub gw_publish_per_s: f64,
    /// Clients used by both.
    pub clients: usize,
    /// Payload bytes used by both.
    pub payload: usize,
}

/// `(host, port)` of a `redis://host:port` URL.
fn host_port(url: &str) -> anyhow::Result<(String, u16)> {
    let rest = url
        .strip_prefix("redis://")
        .context("only redis:// URLs are benchmarked")?;
    let rest = rest.rsplit('@').next().unwrap_or(rest);
    let hostport = rest.split('/').next().unwrap_or(rest);
    let (host, port) = hostport
        .rsplit_once(':')
        .map(|(h, p)| (h.to_string(), p.parse().unwrap_or(6379)))
        .unwrap_or((hostport.to_string(), 6379));
    Ok((host, port))
}

/// Measure both rates on the Redis at `url`.
pub async fn measure(url: &str, payload_bytes: usize) -> anyhow::Result<RedisBench> {
    let (host, port) = host_port(url)?;
    let data = payload::encode(0, 1, payload::now_us(), payload_bytes);

    // Raw PUBLISH by redis-benchmark.
    let output = tokio::time::timeout(
        Duration::from_secs(120),
        tokio::process::Command::new("redis-benchmark")
            .args(["-h", &host, "-p", &port.to_string()])
            .args([
                "-c",
                &CLIENTS.to_string(),
                "-n",
                &RAW_REQUESTS.to_string(),
                "-q",
            ])
            .args(["PUBLISH", "lt-bench-raw", &data])
            .output(),
    )
    .await
    .context("redis-benchmark timed out")?
    .context("running redis-benchmark")?;
    let text = String::from_utf8_lossy(&output.stdout);
    let raw = text
        .split(['\r', '\n'])
        .filter_map(|line| {
            let (_, rest) = line.split_once(": ")?;
            rest.split_whitespace().next()?.parse::<f64>().ok()
        })
        .next_back()
        .with_context(|| format!("no rate in redis-benchmark output: {text}"))?;

    // gw_publish from CLIENTS connections, each one call at a time.
    let client = redis::Client::open(url)?;
    let done = Arc::new(AtomicU64::new(0));
    let start = Instant::now();
    let mut tasks = Vec::new();
    for c in 0..CLIENTS {
        let mut conn = tokio::time::timeout(
            Duration::from_secs(10),
            client.get_multiplexed_async_connection(),
        )
        .await
        .context("redis connect timed out")??;
        let done = done.clone();
        let data = data.clone();
        tasks.push(tokio::spawn(async move {
            let channel = format!("lt-bench:{c}");
            while start.elapsed() < GW_PUBLISH_TIME {
                let mut cmd = redis::cmd("FCALL");
                cmd.arg("gw_publish").arg(1).arg(&channel).arg(&data);
                let r: Result<redis::Value, _> = cmd.query_async(&mut conn).await;
                if r.is_err() {
                    return Err(());
                }
                done.fetch_add(1, Ordering::Relaxed);
            }
            Ok(())
        }));
    }
    let mut failed = 0;
    for t in tasks {
        if !matches!(t.await, Ok(Ok(()))) {
            failed += 1;
        }
    }
    if failed == CLIENTS {
        bail!("every gw_publish client failed (is the gateway's function loaded?)");
    }
    let gw = done.load(Ordering::Relaxed) as f64 / start.elapsed().as_secs_f64();

    Ok(RedisBench {
        raw_publish_per_s: raw,
        gw_publish_per_s: gw,
        clients: CLIENTS,
        payload: payload_bytes,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn urls_split_into_host_and_port() {
        assert_eq!(
            host_port("redis://127.0.0.1:7000").unwrap(),
            ("127.0.0.1".to_string(), 7000)
        );
        assert_eq!(
            host_port("redis://:pw@127.0.0.1:7001/0").unwrap(),
            ("127.0.0.1".to_string(), 7001)
        );
        assert!(host_port("rediss://x").is_err());
    }
}
