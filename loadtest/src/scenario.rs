//! What a run does: the scenario (transports, subscribers, channel spread,
//! publish rate, payload, timing, churn) and the targets it is run against.
//! Scenarios come from TOML files in `loadtest/scenarios/` and/or flags; this
//! module owns their shape, defaults and validation, and the one function
//! that says which channels a subscriber holds.

use std::{fmt, path::Path, str::FromStr};

use anyhow::{bail, Context};
use serde::{Deserialize, Serialize};

/// How a subscriber receives messages.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize, PartialOrd, Ord)]
#[serde(rename_all = "lowercase")]
pub enum Transport {
    /// One WebSocket per subscriber.
    Ws,
    /// One Server-Sent Events stream per subscriber.
    Sse,
    /// HTTP long-polling: each poll is held until a message or the timeout.
    Longpoll,
    /// Interval polling: a poll answered at once, repeated every
    /// `poll_interval_ms`.
    Poll,
}

impl Transport {
    /// The lowercase name used in flags, files and reports.
    pub fn name(self) -> &'static str {
        match self {
            Transport::Ws => "ws",
            Transport::Sse => "sse",
            Transport::Longpoll => "longpoll",
            Transport::Poll => "poll",
        }
    }
}

impl fmt::Display for Transport {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.name())
    }
}

impl FromStr for Transport {
    type Err = anyhow::Error;

    fn from_str(s: &str) -> anyhow::Result<Self> {
        Ok(match s {
            "ws" | "websocket" => Transport::Ws,
            "sse" | "eventsource" => Transport::Sse,
            "longpoll" | "long-poll" => Transport::Longpoll,
            "poll" | "interval" => Transport::Poll,
            other => bail!("unknown transport {other:?} (ws, sse, longpoll, poll)"),
        })
    }
}

/// How subscribers spread over channels.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum Spread {
    /// Every subscriber holds the one broadcast channel (channel 0).
    Broadcast,
    /// Subscriber `i` holds user channel `i % channels`, as in a file-sync
    /// service where each user has a channel and few devices.
    PerUser,
    /// Every subscriber holds its user channel and the broadcast channel;
    /// `broadcast_share` of the publishes go to the broadcast channel.
    Mix,
}

impl FromStr for Spread {
    type Err = anyhow::Error;

    fn from_str(s: &str) -> anyhow::Result<Self> {
        Ok(match s {
            "broadcast" => Spread::Broadcast,
            "per-user" | "peruser" | "user" => Spread::PerUser,
            "mix" => Spread::Mix,
            other => bail!("unknown spread {other:?} (broadcast, per-user, mix)"),
        })
    }
}

/// Where publishes enter the system.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum PublishVia {
    /// `POST /v1/publish` on the gateway, `POST /pub` on Nchan.
    Http,
    /// `FCALL gw_publish` straight into the gateway's Redis. Nchan keeps its
    /// own layout in Redis, so Nchan targets always publish over HTTP.
    Redis,
}

impl FromStr for PublishVia {
    type Err = anyhow::Error;

    fn from_str(s: &str) -> anyhow::Result<Self> {
        Ok(match s {
            "http" => PublishVia::Http,
            "redis" => PublishVia::Redis,
            other => bail!("unknown publish path {other:?} (http, redis)"),
        })
    }
}

/// What kind of server a target is; it decides URLs and framing.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum TargetKind {
    /// Our gateway (README wire protocol).
    Gateway,
    /// Nchan on nginx, configured by `loadtest/peers/nchan.sh`.
    Nchan,
}

/// One server to drive. Either `addr` names one already running, or the
/// harness starts it: a gateway from `bin`, Nchan through the peers script.
#[derive(Clone, Debug, Default, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct TargetSpec {
    /// Label in tables and charts; defaults to the kind (and store).
    #[serde(default)]
    pub name: Option<String>,
    /// Gateway or Nchan.
    pub kind: Option<TargetKind>,
    /// `127.0.0.1:PORT` of a running server.
    #[serde(default)]
    pub addr: Option<String>,
    /// PID to measure; found from the listening socket when absent.
    #[serde(default)]
    pub pid: Option<u32>,
    /// Gateway binary to start (`--listen 127.0.0.1:0`), when no `addr`.
    #[serde(default)]
    pub bin: Option<String>,
    /// Redis URL the gateway uses (`--redis`), or `spawn` to start a fresh
    /// redis-server on a free loopback port. Needed for `publish_via=redis`.
    #[serde(default)]
    pub redis: Option<String>,
    /// Nchan message store when the harness starts Nchan: memory or redis.
    #[serde(default)]
    pub store: Option<String>,
    /// Extra header sent with Nchan publishes (`Name: value`).
    #[serde(default)]
    pub publish_header: Option<String>,
    /// Gateway publish API key (its `--publish-key`).
    #[serde(default)]
    pub publish_key: Option<String>,
}

impl TargetSpec {
    /// The kind, defaulting to the gateway.
    pub fn kind(&self) -> TargetKind {
        self.kind.unwrap_or(TargetKind::Gateway)
    }

    /// The label used in reports.
    pub fn label(&self) -> String {
        if let Some(name) = &self.name {
            return name.clone();
        }
        match self.kind() {
            TargetKind::Gateway => match &self.redis {
                Some(_) => "gateway-redis".into(),
                None => "gateway".into(),
            },
            TargetKind::Nchan => format!("nchan-{}", self.store.as_deref().unwrap_or("memory")),
        }
    }
}

impl FromStr for TargetSpec {
    type Err = anyhow::Error;

    /// `kind=gateway,addr=127.0.0.1:8080,pid=42`, or the short forms
    /// `gateway@127.0.0.1:8080` and `nchan@127.0.0.1:9000`.
    fn from_str(s: &str) -> anyhow::Result<Self> {
        let mut spec = TargetSpec::default();
        if let Some((kind, addr)) = s.split_once('@') {
            spec.kind = Some(parse_kind(kind)?);
            spec.addr = Some(addr.to_string());
            return Ok(spec);
        }
        for part in s.split(',').filter(|p| !p.is_empty()) {
            // `addr=A,B` names several nodes: a bare part extends the address.
            if !part.contains('=') {
                match &mut spec.addr {
                    Some(addr) => {
                        addr.push(',');
                        addr.push_str(part);
                        continue;
                    }
                    None => bail!("target part {part:?} is not key=value"),
                }
            }
            let (key, value) = part
                .split_once('=')
                .with_context(|| format!("target part {part:?} is not key=value"))?;
            let value = value.to_string();
            match key {
                "name" => spec.name = Some(value),
                "kind" => spec.kind = Some(parse_kind(&value)?),
                "addr" => spec.addr = Some(value),
                "pid" => spec.pid = Some(value.parse().context("pid")?),
                "bin" => spec.bin = Some(value),
                "redis" => spec.redis = Some(value),
                "store" => spec.store = Some(value),
                "publish_header" => spec.publish_header = Some(value),
                "publish_key" => spec.publish_key = Some(value),
                other => bail!("unknown target key {other:?}"),
            }
        }
        Ok(spec)
    }
}

fn parse_kind(s: &str) -> anyhow::Result<TargetKind> {
    match s {
        "gateway" => Ok(TargetKind::Gateway),
        "nchan" => Ok(TargetKind::Nchan),
        other => bail!("unknown target kind {other:?} (gateway, nchan)"),
    }
}

/// Connection churn during the publish phase.
#[derive(Clone, Debug, Default, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct Churn {
    /// Subscribers dropped (and reconnected with their position) per second,
    /// across all workers.
    pub rate: f64,
    /// Delay before a churned subscriber reconnects, milliseconds (jittered
    /// up to twice this).
    pub reconnect_ms: u64,
    /// Seconds into the publish phase at which a reconnect storm drops
    /// `storm_fraction` of all subscribers at once.
    pub storm_at_s: Option<f64>,
    /// Share of subscribers dropped by the storm.
    pub storm_fraction: f64,
}

impl Churn {
    /// Whether any churn is configured.
    pub fn active(&self) -> bool {
        self.rate > 0.0 || self.storm_at_s.is_some()
    }
}

/// A load scenario. Every field has a default so a TOML file names only what
/// it changes.
#[derive(Clone, Debug, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct Scenario {
    /// Label for reports and the output folder.
    pub name: String,
    /// Transports to run, one after the other, against every target.
    pub transports: Vec<Transport>,
    /// Interval between polls for `poll`, milliseconds.
    pub poll_interval_ms: u64,
    /// Hold time asked of long-polls, seconds.
    pub longpoll_timeout_s: u64,
    /// Number of subscriber connections.
    pub subscribers: usize,
    /// How subscribers spread over channels.
    pub spread: Spread,
    /// User channels for `per-user` and `mix` (0 = one per subscriber).
    pub channels: usize,
    /// Share of publishes that go to the broadcast channel under `mix`.
    pub broadcast_share: f64,
    /// Publishes per second, all channels together.
    pub rate: f64,
    /// Size of the published JSON data in bytes (padded up to this).
    pub payload: usize,
    /// Length of the publish phase, seconds.
    pub duration_s: f64,
    /// Time over which subscribers connect, seconds.
    pub ramp_up_s: f64,
    /// Idle wait after everyone is connected, before memory is read, seconds.
    pub settle_s: f64,
    /// Longest wait for in-flight messages after publishing stops, seconds.
    pub drain_s: f64,
    /// Worker processes (0 = enough for ~12k connections each, at least 2).
    pub workers: usize,
    /// Handshakes in flight at once per worker.
    pub connect_concurrency: usize,
    /// Publishing path.
    pub publish_via: PublishVia,
    /// Concurrent publisher tasks (each owns a share of the channels so a
    /// channel's publishes stay in order).
    pub publishers: usize,
    /// Connection churn.
    pub churn: Churn,
    /// Pin the target to the first CPU and the generator (parent and
    /// workers) to the others, so neither steals the other's core. The
    /// target then has one core.
    pub pin: bool,
    /// Servers to drive.
    pub targets: Vec<TargetSpec>,
}

impl Default for Scenario {
    fn default() -> Self {
        Scenario {
            name: "adhoc".into(),
            transports: vec![Transport::Ws],
            poll_interval_ms: 1000,
            longpoll_timeout_s: 25,
            subscribers: 1000,
            spread: Spread::Broadcast,
            channels: 0,
            broadcast_share: 0.1,
            rate: 10.0,
            payload: 128,
            duration_s: 10.0,
            ramp_up_s: 2.0,
            settle_s: 2.0,
            drain_s: 5.0,
            workers: 0,
            connect_concurrency: 256,
            publish_via: PublishVia::Http,
            publishers: 8,
            churn: Churn::default(),
            pin: false,
            targets: Vec::new(),
        }
    }
}

/// Most sockets one worker process opens (the hard open-file limit here is
/// 20000 per process; the rest is head-room for the runtime and pipes).
pub const MAX_CONNECTIONS_PER_WORKER: usize = 15_000;

/// Connections per worker when the worker count is chosen automatically.
const AUTO_CONNECTIONS_PER_WORKER: usize = 12_000;

impl Scenario {
    /// Read a scenario from a TOML file.
    pub fn load(path: &Path) -> anyhow::Result<Scenario> {
        let text = std::fs::read_to_string(path)
            .with_context(|| format!("reading scenario {}", path.display()))?;
        let scenario: Scenario =
            toml::from_str(&text).with_context(|| format!("parsing {}", path.display()))?;
        Ok(scenario)
    }

    /// Check the numbers make sense before anything is started.
    pub fn validate(&self) -> anyhow::Result<()> {
        if self.subscribers == 0 {
            bail!("subscribers must be at least 1");
        }
        if self.transports.is_empty() {
            bail!("name at least one transport");
        }
        if !(self.rate > 0.0 && self.rate.is_finite()) {
            bail!("rate must be a positive number of publishes per second");
        }
        if !(self.duration_s > 0.0 && self.duration_s <= 3600.0) {
            bail!("duration must be within (0, 3600] seconds");
        }
        if !(0.0..=1.0).contains(&self.broadcast_share) {
            bail!("broadcast_share must be within [0, 1]");
        }
        if self.workers > 0 && self.subscribers.div_ceil(self.workers) > MAX_CONNECTIONS_PER_WORKER
        {
            bail!(
                "{} subscribers over {} workers is more than {} sockets per worker",
                self.subscribers,
                self.workers,
                MAX_CONNECTIONS_PER_WORKER
            );
        }
        if self.longpoll_timeout_s > 55 {
            bail!("longpoll_timeout_s is at most 55 (the gateway's limit)");
        }
        Ok(())
    }

    /// Worker processes to start.
    pub fn worker_count(&self) -> usize {
        if self.workers > 0 {
            return self.workers;
        }
        self.subscribers
            .div_ceil(AUTO_CONNECTIONS_PER_WORKER)
            .max(2)
            .min(self.subscribers)
    }

    /// Number of user channels (per-user and mix).
    pub fn user_channels(&self) -> usize {
        if self.channels == 0 {
            self.subscribers
        } else {
            self.channels
        }
    }

    /// Number of channel indices in use: `0..channel_count()`.
    pub fn channel_count(&self) -> usize {
        match self.spread {
            Spread::Broadcast => 1,
            Spread::PerUser => self.user_channels(),
            Spread::Mix => 1 + self.user_channels(),
        }
    }

    /// The channel indices subscriber `sub` holds. Channel 0 is the broadcast
    /// channel under `broadcast` and `mix`.
    pub fn channels_of(&self, sub: usize) -> Vec<u32> {
        let users = self.user_channels();
        match self.spread {
            Spread::Broadcast => vec![0],
            Spread::PerUser => vec![(sub % users) as u32],
            Spread::Mix => vec![0, 1 + (sub % users) as u32],
        }
    }

    /// How many subscribers hold each channel index.
    #[cfg(test)]
    pub fn subscribers_per_channel(&self) -> Vec<u64> {
        let mut counts = vec![0u64; self.channel_count()];
        for sub in 0..self.subscribers {
            for ch in self.channels_of(sub) {
                counts[ch as usize] += 1;
            }
        }
        counts
    }
}

/// Channel name for index `ch` in a run whose channels start with `prefix`.
/// Names use only characters every target accepts (`A-Z a-z 0-9 - :`).
pub fn channel_name(prefix: &str, ch: u32) -> String {
    format!("{prefix}:{ch}")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn mix_subscribers_hold_broadcast_and_their_user_channel() {
        let s = Scenario {
            spread: Spread::Mix,
            subscribers: 10,
            channels: 4,
            ..Scenario::default()
        };
        assert_eq!(s.channel_count(), 5);
        assert_eq!(s.channels_of(6), vec![0, 3]);
        assert_eq!(s.subscribers_per_channel(), vec![10, 3, 3, 2, 2]);
    }

    #[test]
    fn target_specs_parse_in_both_forms() {
        let t: TargetSpec = "nchan@127.0.0.1:9000".parse().unwrap();
        assert_eq!(t.kind(), TargetKind::Nchan);
        let t: TargetSpec = "kind=gateway,bin=target/release/gateway,redis=spawn"
            .parse()
            .unwrap();
        assert_eq!(t.label(), "gateway-redis");
        let t: TargetSpec = "kind=gateway,addr=127.0.0.1:1,127.0.0.1:2,pid=3"
            .parse()
            .unwrap();
        assert_eq!(t.addr.as_deref(), Some("127.0.0.1:1,127.0.0.1:2"));
        assert_eq!(t.pid, Some(3));
    }

    #[test]
    fn scenario_files_parse() {
        let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("scenarios");
        for entry in std::fs::read_dir(dir).unwrap() {
            let path = entry.unwrap().path();
            if path.extension().is_some_and(|e| e == "toml") {
                let s = Scenario::load(&path).unwrap();
                s.validate().unwrap();
            }
        }
    }
}
