//! The publishing side of a run, inside the parent process: paced tasks that
//! publish stamped payloads over HTTP (gateway `POST /v1/publish` through the
//! `clients` crate's `GatewayClient`, Nchan `POST /pub` through our small
//! HTTP client) or straight into Redis (`FCALL gw_publish`). Each channel is
//! owned by one task and published one message at a time, so the sequence
//! numbers of a channel are stored in the order they were numbered. The run
//! is bounded by its duration and its message count.

use std::{
    collections::BTreeMap,
    net::SocketAddr,
    sync::{
        atomic::{AtomicU64, Ordering},
        Arc,
    },
    time::{Duration, Instant},
};

use anyhow::{bail, Context};
use hdrhistogram::Histogram;

use crate::{
    http::{self, HttpConn},
    payload,
    scenario::{channel_name, PublishVia, Scenario, Spread, TargetKind},
};

/// Longest wait for one publish to be answered.
const PUBLISH_TIMEOUT: Duration = Duration::from_secs(10);

/// Pause after a failed publish before the same message is tried again.
const RETRY_PAUSE: Duration = Duration::from_millis(50);

/// What to publish where.
#[derive(Clone, Debug)]
pub struct PublishPlan {
    /// Dialect of the target.
    pub kind: TargetKind,
    /// Node that takes HTTP publishes.
    pub addr: SocketAddr,
    /// HTTP or Redis.
    pub via: PublishVia,
    /// Redis URL for `PublishVia::Redis`.
    pub redis_url: Option<String>,
    /// Extra header for Nchan publishes (`Name: value`).
    pub header: Option<String>,
    /// Gateway publish API key (`Authorization: Bearer KEY`).
    pub publish_key: Option<String>,
    /// Channel name prefix of the run.
    pub prefix: String,
    /// The scenario (rate, payload, duration, spread).
    pub scenario: Scenario,
}

/// What publishing did.
#[derive(Debug)]
pub struct PublishOutcome {
    /// Last sequence number published per channel index.
    pub last_seq: Vec<u64>,
    /// Messages accepted.
    pub published: u64,
    /// Failed attempts by kind.
    pub errors: BTreeMap<String, u64>,
    /// Time from sending a publish to its answer, µs.
    pub latency: Histogram<u64>,
    /// Wall time of the publish phase.
    pub elapsed: Duration,
}

/// One task's share: channels it owns and its rate.
#[derive(Debug)]
struct TaskPlan {
    channels: Vec<u32>,
    rate: f64,
}

fn task_plans(s: &Scenario) -> Vec<TaskPlan> {
    let users = s.user_channels() as u32;
    let split = |first: u32, n: u32, tasks: usize, rate: f64| -> Vec<TaskPlan> {
        let tasks = tasks.clamp(1, n.max(1) as usize);
        (0..tasks)
            .map(|j| TaskPlan {
                channels: (0..n)
                    .filter(|c| *c as usize % tasks == j)
                    .map(|c| first + c)
                    .collect(),
                rate: rate / tasks as f64,
            })
            .collect()
    };
    match s.spread {
        Spread::Broadcast => vec![TaskPlan {
            channels: vec![0],
            rate: s.rate,
        }],
        Spread::PerUser => split(0, users, s.publishers, s.rate),
        Spread::Mix => {
            let mut plans = Vec::new();
            let broadcast_rate = s.rate * s.broadcast_share;
            if broadcast_rate > 0.0 {
                plans.push(TaskPlan {
                    channels: vec![0],
                    rate: broadcast_rate,
                });
            }
            let user_rate = s.rate - broadcast_rate;
            if user_rate > 0.0 {
                plans.extend(split(1, users, s.publishers.saturating_sub(1), user_rate));
            }
            plans
        }
    }
}

/// Where one task sends its messages.
enum Sink {
    Gateway(clients::GatewayClient),
    Http {
        conn: Option<HttpConn>,
        addr: SocketAddr,
        kind: TargetKind,
        header: Option<String>,
    },
    Redis(redis::aio::MultiplexedConnection),
}

impl Sink {
    async fn open(plan: &PublishPlan) -> anyhow::Result<Sink> {
        let redis_path = plan.via == PublishVia::Redis && plan.kind == TargetKind::Gateway;
        if redis_path {
            let url = plan
                .redis_url
                .as_deref()
                .context("publish via redis needs the target's Redis URL")?;
            let client = redis::Client::open(url)?;
            let conn =
                tokio::time::timeout(PUBLISH_TIMEOUT, client.get_multiplexed_async_connection())
                    .await
                    .context("redis connect timed out")??;
            return Ok(Sink::Redis(conn));
        }
        if plan.kind == TargetKind::Gateway {
            let mut client = clients::GatewayClient::new(&format!("http://{}", plan.addr))?;
            if let Some(key) = &plan.publish_key {
                client = client.with_publish_key(key.clone());
            }
            return Ok(Sink::Gateway(client));
        }
        Ok(Sink::Http {
            conn: None,
            addr: plan.addr,
            kind: plan.kind,
            header: plan.header.clone(),
        })
    }

    async fn publish(&mut self, channel: &str, data: &str) -> anyhow::Result<()> {
        match self {
            Sink::Gateway(client) => {
                let data: serde_json::Value = serde_json::from_str(data)?;
                client
                    .publish(&clients::PublishRequest::new(channel, data))
                    .await?;
                Ok(())
            }
            Sink::Redis(conn) => {
                let mut cmd = redis::cmd("FCALL");
                cmd.arg("gw_publish").arg(1).arg(channel).arg(data);
                let _: redis::Value = cmd.query_async(conn).await?;
                Ok(())
            }
            Sink::Http {
                conn,
                addr,
                kind,
                header,
            } => {
                if conn.is_none() {
                    *conn = Some(HttpConn::new(http::connect(*addr, None).await?));
                }
                let Some(c) = conn.as_mut() else {
                    bail!("no connection");
                };
                let (path, body) = match kind {
                    TargetKind::Gateway => (
                        "/v1/publish".to_string(),
                        format!("{{\"channel\":\"{channel}\",\"data\":{data}}}"),
                    ),
                    TargetKind::Nchan => (format!("/pub?id={channel}"), data.to_string()),
                };
                let extra = header
                    .as_deref()
                    .map(|h| format!("{h}\r\n"))
                    .unwrap_or_default();
                let request = format!(
                    "POST {path} HTTP/1.1\r\nHost: {addr}\r\nContent-Type: application/json\r\n{extra}Content-Length: {}\r\n\r\n{body}",
                    body.len()
                );
                let result = async {
                    c.send(request.as_bytes()).await?;
                    let head = c.read_head().await?;
                    let answer = c.read_body(head.body).await?;
                    anyhow::Ok((head.status, answer))
                }
                .await;
                match result {
                    Ok((status, _)) if (200..300).contains(&status) => Ok(()),
                    Ok((status, answer)) => {
                        bail!(
                            "publish status {status}: {}",
                            String::from_utf8_lossy(&answer[..answer.len().min(200)])
                        )
                    }
                    Err(e) => {
                        *conn = None;
                        Err(e)
                    }
                }
            }
        }
    }
}

/// Publish for the scenario's duration; `published` counts as it goes (for
/// the progress display).
pub async fn run(plan: PublishPlan, published: Arc<AtomicU64>) -> anyhow::Result<PublishOutcome> {
    let s = &plan.scenario;
    let duration = Duration::from_secs_f64(s.duration_s);
    let started = Instant::now();

    let mut tasks = Vec::new();
    for task in task_plans(s) {
        let mut sink = Sink::open(&plan).await?;
        let plan = plan.clone();
        let published = published.clone();
        tasks.push(tokio::spawn(async move {
            let mut last = BTreeMap::<u32, u64>::new();
            let mut errors = BTreeMap::<String, u64>::new();
            let mut latency = Histogram::<u64>::new_with_bounds(1, 600_000_000, 3)
                .expect("constant histogram bounds are valid");
            let count = (task.rate * duration.as_secs_f64()).ceil() as u64;
            let period = Duration::from_secs_f64(1.0 / task.rate.max(1e-9));
            let start = tokio::time::Instant::now();
            let stop = start + duration;

            let mut k: u64 = 0;
            while k < count && tokio::time::Instant::now() < stop {
                tokio::time::sleep_until(start + period.mul_f64(k as f64)).await;
                let ch = task.channels[(k as usize) % task.channels.len()];
                let seq = last.get(&ch).copied().unwrap_or(0) + 1;
                let data = payload::encode(ch, seq, payload::now_us(), plan.scenario.payload);
                let name = channel_name(&plan.prefix, ch);

                let sent = Instant::now();
                let r = tokio::time::timeout(PUBLISH_TIMEOUT, sink.publish(&name, &data)).await;
                match r {
                    Ok(Ok(())) => {
                        let _ = latency.record((sent.elapsed().as_micros() as u64).max(1));
                        last.insert(ch, seq);
                        published.fetch_add(1, Ordering::Relaxed);
                        k += 1;
                    }
                    Ok(Err(e)) => {
                        let kind: String = e.to_string().chars().take(80).collect();
                        *errors.entry(kind).or_default() += 1;
                        tokio::time::sleep(RETRY_PAUSE).await;
                    }
                    Err(_) => {
                        *errors.entry("publish timed out".into()).or_default() += 1;
                    }
                }
            }
            // A slow task still lasts the whole phase, so the window over
            // which CPU and deliveries are measured is the scenario's.
            tokio::time::sleep_until(stop).await;
            (last, errors, latency)
        }));
    }

    let mut outcome = PublishOutcome {
        last_seq: vec![0; s.channel_count()],
        published: 0,
        errors: BTreeMap::new(),
        latency: Histogram::<u64>::new_with_bounds(1, 600_000_000, 3)
            .expect("constant histogram bounds are valid"),
        elapsed: Duration::ZERO,
    };
    for task in tasks {
        let (last, errors, latency) = task.await.context("publisher task")?;
        for (ch, seq) in last {
            outcome.last_seq[ch as usize] = seq;
            outcome.published += seq;
        }
        for (k, v) in errors {
            *outcome.errors.entry(k).or_default() += v;
        }
        let _ = outcome.latency.add(&latency);
    }
    outcome.elapsed = started.elapsed();
    Ok(outcome)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_channel_is_owned_by_exactly_one_task() {
        let s = Scenario {
            spread: Spread::Mix,
            subscribers: 100,
            channels: 10,
            publishers: 4,
            rate: 100.0,
            broadcast_share: 0.5,
            ..Scenario::default()
        };
        let plans = task_plans(&s);
        let mut owned: Vec<u32> = plans.iter().flat_map(|p| p.channels.clone()).collect();
        owned.sort();
        assert_eq!(owned, (0..11).collect::<Vec<_>>());
        let rate: f64 = plans.iter().map(|p| p.rate).sum();
        assert!((rate - 100.0).abs() < 1e-9);
    }
}
