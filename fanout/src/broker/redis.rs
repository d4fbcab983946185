//! The Redis broker: many nodes, one source of offsets and history.
//!
//! Publishing is one call of the `gw_publish` function (see `functions.lua`),
//! which assigns the offset, appends to history and PUBLISHes the envelope in
//! one atomic step. Each node keeps one pub/sub link, subscribed only to the
//! channels its local registry holds. The link task owns that connection and
//! keeps the delivery promise at the node:
//!
//! - subscriptions follow the registry, batched: a burst of subscribes becomes
//!   a few `SUBSCRIBE` commands;
//! - per channel it remembers the last offset it delivered, and when a message
//!   arrives after a hole (n+2 after n) it reads the missing ones from history
//!   and delivers them first;
//! - a lost or silent link (checked with PING under a timeout) is reconnected
//!   with backoff and jitter for as long as it takes; every channel is then
//!   resubscribed in batches and whatever was published meanwhile is read
//!   from history and delivered before anything newer.

use std::{
    collections::{HashMap, HashSet},
    sync::{
        atomic::{AtomicBool, AtomicU64, Ordering},
        Arc, Mutex,
    },
    time::Duration,
};

use bytes::Bytes;
use dashmap::DashSet;
use futures::StreamExt;
use redis::{aio::MultiplexedConnection, AsyncConnectionConfig, Client, Value};
use tokio::{sync::Notify, task::JoinHandle, time::timeout};

use super::{BrokerError, HistoryConfig, HistoryRead};
use crate::{
    registry::Interest, Channel, Epoch, Message, Position, PublishOutcome, PublishRequest, Registry,
};

/// Channels per SUBSCRIBE/UNSUBSCRIBE command and per pipelined history read,
/// so that 100k channels come back in a hundred round trips, not 100k.
const BATCH: usize = 1000;

/// How often a node refreshes its entry in the cluster view.
const HEARTBEAT: Duration = Duration::from_secs(5);

/// How long a node's cluster entry outlives its last heartbeat.
const HEARTBEAT_TTL: Duration = Duration::from_secs(15);

/// How long an idle channel's offset and epoch are remembered in Redis. After
/// that a new epoch starts and old positions resume with `recovered: false`.
const META_TTL: Duration = Duration::from_secs(7 * 24 * 3600);

/// Settings of the Redis broker.
#[derive(Debug, Clone)]
pub struct RedisConfig {
    pub url: String,
    pub history: HistoryConfig,
    /// Largest payload `gw_publish` accepts, also for backends calling it directly.
    pub max_data: usize,
    /// Timeout of each command and of connecting.
    pub command_timeout: Duration,
    /// Interval of PING on the pub/sub link; a PING unanswered within
    /// `command_timeout` counts as a dead link.
    pub ping_interval: Duration,
    /// Longest pause between reconnect attempts (backoff starts at 50 ms).
    pub max_backoff: Duration,
    /// This node's name in the cluster view (`gw:node:NAME` in Redis).
    pub node_id: String,
    /// Where clients reach this node, shown in the cluster view.
    pub advertise: String,
}

impl RedisConfig {
    pub fn new(url: impl Into<String>) -> Self {
        Self {
            url: url.into(),
            history: HistoryConfig::default(),
            max_data: 64 << 10,
            command_timeout: Duration::from_secs(2),
            ping_interval: Duration::from_secs(2),
            max_backoff: Duration::from_secs(2),
            node_id: format!("node-{:08x}", fastrand::u32(..)),
            advertise: String::new(),
        }
    }
}

/// State shared by the broker's callers and its link task.
struct Shared {
    client: Client,
    config: RedisConfig,
    /// The function library's source, with this node's bounds filled in.
    library: String,
    registry: Arc<Registry>,
    /// Command connection; `None` after a failure until the next call reconnects.
    conn: tokio::sync::Mutex<Option<MultiplexedConnection>>,
    /// Channels whose registry entry appeared or vanished since the link last looked.
    dirty: Mutex<HashSet<Channel>>,
    /// Wakes the link task when `dirty` gains a channel.
    dirty_notify: Notify,
    /// Channels the link is subscribed to and delivering.
    active: DashSet<Channel>,
    /// Woken whenever `active` gains channels.
    active_notify: Notify,
    /// Whether the pub/sub link is up.
    ready: AtomicBool,
    /// Times the pub/sub link was re-established after a loss.
    reconnects: AtomicU64,
}

/// A broker on Redis, shared by every node that points at the same server.
pub struct RedisBroker {
    shared: Arc<Shared>,
    link: JoinHandle<()>,
    heartbeat: JoinHandle<()>,
}

impl Drop for RedisBroker {
    fn drop(&mut self) {
        self.link.abort();
        self.heartbeat.abort();
    }
}

/// Tells the link task about registry changes.
struct LinkInterest(Arc<Shared>);

impl Interest for LinkInterest {
    fn changed(&self, channel: &Channel) {
        let mut dirty = self.0.dirty.lock().unwrap_or_else(|e| e.into_inner());
        dirty.insert(channel.clone());
        drop(dirty);
        self.0.dirty_notify.notify_one();
    }
}

fn unavailable(e: impl std::fmt::Display) -> BrokerError {
    BrokerError::Unavailable(e.to_string())
}

/// Error words `gw_publish`/`gw_read` use for requests they refuse.
const REFUSALS: [&str; 4] = ["bad_channel", "bad_json", "payload_too_large", "bad_id"];

fn classify(e: impl std::fmt::Display) -> BrokerError {
    let text = e.to_string();
    match REFUSALS
        .iter()
        .find_map(|w| text.find(w).map(|at| (*w, at)))
    {
        // Keep the function's own words ("bad_json data is not valid JSON"),
        // not the client library's wrapping around them.
        Some((code, at)) => {
            let reason = text[at + code.len()..].trim().trim_end_matches(')').trim();
            BrokerError::Rejected {
                code,
                reason: reason.to_owned(),
            }
        }
        None => unavailable(text),
    }
}

fn key_pubsub(channel: &str) -> String {
    format!("gw:{{{channel}}}:p")
}

/// The gateway channel a pub/sub channel name stands for.
fn channel_of_pubsub(name: &str) -> Option<&str> {
    name.strip_prefix("gw:{")?.strip_suffix("}:p")
}

impl RedisBroker {
    /// Starts the link task; Redis need not be reachable yet.
    pub fn start(config: RedisConfig, registry: Arc<Registry>) -> Result<Self, BrokerError> {
        let client = Client::open(config.url.as_str())
            .map_err(|e| BrokerError::Config(format!("bad Redis URL: {e}")))?;
        let library = include_str!("functions.lua")
            .replace("__HISTORY_SIZE__", &config.history.size.to_string())
            .replace(
                "__HISTORY_AGE_MS__",
                &config.history.age.as_millis().max(1).to_string(),
            )
            .replace("__MAX_DATA__", &config.max_data.to_string())
            .replace("__META_TTL_MS__", &META_TTL.as_millis().to_string());
        let shared = Arc::new(Shared {
            client,
            config,
            library,
            registry: registry.clone(),
            conn: tokio::sync::Mutex::new(None),
            dirty: Mutex::new(HashSet::new()),
            dirty_notify: Notify::new(),
            active: DashSet::new(),
            active_notify: Notify::new(),
            ready: AtomicBool::new(false),
            reconnects: AtomicU64::new(0),
        });
        registry.set_interest(Arc::new(LinkInterest(shared.clone())));
        let link = tokio::spawn(link_task(shared.clone()));
        let heartbeat = tokio::spawn(heartbeat_task(shared.clone()));
        Ok(Self {
            shared,
            link,
            heartbeat,
        })
    }

    pub fn is_ready(&self) -> bool {
        self.shared.ready.load(Ordering::Relaxed)
    }

    pub fn reconnects(&self) -> u64 {
        self.shared.reconnects.load(Ordering::Relaxed)
    }

    pub async fn publish(&self, req: &PublishRequest) -> Result<PublishOutcome, BrokerError> {
        let mut pipe = redis::pipe();
        push_publish(&mut pipe, req);
        let values: Vec<Value> = self.shared.run(&pipe).await?;
        let value = values
            .into_iter()
            .next()
            .ok_or_else(|| unavailable("empty reply"))?;
        parse_outcome(req, value)
    }

    pub async fn publish_batch(
        &self,
        reqs: &[PublishRequest],
    ) -> Result<Vec<PublishOutcome>, BrokerError> {
        let mut pipe = redis::pipe();
        for req in reqs {
            push_publish(&mut pipe, req);
        }
        let values: Vec<Value> = self.shared.run(&pipe).await?;
        reqs.iter()
            .zip(values)
            .map(|(req, v)| parse_outcome(req, v))
            .collect()
    }

    /// The channel's state and at most `limit` messages after `after`.
    pub async fn read(
        &self,
        channel: &Channel,
        after: Option<u64>,
        limit: usize,
    ) -> Result<HistoryRead, BrokerError> {
        let mut pipe = redis::pipe();
        push_read(&mut pipe, channel, after, Some(limit));
        let values = self.shared.run(&pipe).await?;
        let value = values
            .into_iter()
            .next()
            .ok_or_else(|| unavailable("empty reply"))?;
        parse_read(value)
    }

    /// Waits until the link is subscribed to `channel` (the registry already holds it).
    pub async fn watch(&self, channel: &Channel, wait: Duration) -> Result<(), BrokerError> {
        let shared = &self.shared;
        let deadline = tokio::time::Instant::now() + wait;
        loop {
            let woken = shared.active_notify.notified();
            tokio::pin!(woken);
            woken.as_mut().enable();
            if shared.active.contains(channel) {
                return Ok(());
            }
            if tokio::time::timeout_at(deadline, woken).await.is_err() {
                return Err(unavailable("timed out waiting for the Redis subscription"));
            }
        }
    }
}

impl RedisBroker {
    /// Every live node's cluster entry (nodes refresh theirs every few seconds).
    pub async fn cluster(&self) -> Result<Vec<serde_json::Value>, BrokerError> {
        let mut conn = self.shared.connection().await?;
        let mut keys: Vec<String> = Vec::new();
        let mut cursor: u64 = 0;
        // SCAN in bounded steps; a cluster has few nodes, so few steps.
        for _ in 0..1000 {
            let (next, batch): (u64, Vec<String>) = redis::cmd("SCAN")
                .arg(cursor)
                .arg("MATCH")
                .arg("gw:node:*")
                .arg("COUNT")
                .arg(1000)
                .query_async(&mut conn)
                .await
                .map_err(classify)?;
            keys.extend(batch);
            cursor = next;
            if cursor == 0 {
                break;
            }
        }
        if keys.is_empty() {
            return Ok(Vec::new());
        }
        let values: Vec<Option<String>> = redis::cmd("MGET")
            .arg(&keys)
            .query_async(&mut conn)
            .await
            .map_err(classify)?;
        Ok(values
            .into_iter()
            .flatten()
            .filter_map(|v| serde_json::from_str(&v).ok())
            .collect())
    }

    /// How many nodes are subscribed to `channel` in Redis right now.
    pub async fn nodes_listening(&self, channel: &Channel) -> Result<u64, BrokerError> {
        let mut conn = self.shared.connection().await?;
        let (_, n): (String, u64) = redis::cmd("PUBSUB")
            .arg("NUMSUB")
            .arg(key_pubsub(channel.as_str()))
            .query_async(&mut conn)
            .await
            .map_err(classify)?;
        Ok(n)
    }
}

/// Keeps this node's entry in the cluster view fresh: `gw:node:ID` with an
/// expiry, holding what the node serves, so a node that dies drops out by itself.
async fn heartbeat_task(shared: Arc<Shared>) {
    let started = super::now_ms();
    let key = format!("gw:node:{}", shared.config.node_id);
    let mut tick = tokio::time::interval(HEARTBEAT);
    loop {
        tick.tick().await;
        let entry = serde_json::json!({
            "id": shared.config.node_id,
            "advertise": shared.config.advertise,
            "started": started,
            "seen": super::now_ms(),
            "channels": shared.registry.channel_count(),
            "link_up": shared.ready.load(Ordering::Relaxed),
        });
        let mut pipe = redis::pipe();
        pipe.cmd("SET")
            .arg(&key)
            .arg(entry.to_string())
            .arg("PX")
            .arg(HEARTBEAT_TTL.as_millis() as u64);
        if let Err(e) = shared.run(&pipe).await {
            tracing::debug!(cause = %e, "cluster heartbeat failed");
        }
    }
}

fn push_publish(pipe: &mut redis::Pipeline, req: &PublishRequest) {
    let cmd = pipe
        .cmd("FCALL")
        .arg("gw_publish")
        .arg(1)
        .arg(req.channel.as_str())
        .arg(&*req.data);
    match (&req.id, &req.publisher) {
        (None, None) => {}
        (id, publisher) => {
            cmd.arg(id.as_deref().unwrap_or(""))
                .arg(publisher.as_deref().unwrap_or(""));
        }
    }
}

fn parse_outcome(req: &PublishRequest, value: Value) -> Result<PublishOutcome, BrokerError> {
    let (offset, epoch, duplicate): (u64, String, u8) =
        redis::from_redis_value(value).map_err(classify)?;
    let epoch =
        Epoch::new(&epoch).map_err(|e| unavailable(format!("bad epoch from Redis: {e}")))?;
    Ok(PublishOutcome {
        channel: req.channel.clone(),
        offset,
        epoch,
        duplicate: duplicate == 1,
    })
}

impl Shared {
    /// The command connection, connecting (and loading the functions) when there is none.
    async fn connection(&self) -> Result<MultiplexedConnection, BrokerError> {
        let mut slot = self.conn.lock().await;
        if let Some(conn) = slot.as_ref() {
            return Ok(conn.clone());
        }
        let config = AsyncConnectionConfig::new()
            .set_connection_timeout(Some(self.config.command_timeout))
            .set_response_timeout(Some(self.config.command_timeout));
        let mut conn = self
            .client
            .get_multiplexed_async_connection_with_config(&config)
            .await
            .map_err(unavailable)?;
        self.load_functions(&mut conn).await?;
        *slot = Some(conn.clone());
        Ok(conn)
    }

    async fn load_functions(&self, conn: &mut MultiplexedConnection) -> Result<(), BrokerError> {
        redis::cmd("FUNCTION")
            .arg("LOAD")
            .arg("REPLACE")
            .arg(&self.library)
            .query_async::<String>(conn)
            .await
            .map_err(|e| unavailable(format!("loading the gateway functions failed: {e}")))?;
        Ok(())
    }

    /// Runs a pipeline; on a lost connection the next call reconnects, and when
    /// Redis lost the functions (restarted empty) they are loaded again once.
    async fn run(&self, pipe: &redis::Pipeline) -> Result<Vec<Value>, BrokerError> {
        for attempt in 0..2 {
            let mut conn = self.connection().await?;
            match pipe.query_async::<Vec<Value>>(&mut conn).await {
                Ok(values) => {
                    let missing = values.iter().any(|v| {
                        matches!(v, Value::ServerError(e) if e.to_string().contains("Function not found"))
                    });
                    if missing && attempt == 0 {
                        self.load_functions(&mut conn).await?;
                        continue;
                    }
                    return Ok(values);
                }
                Err(e) if e.to_string().contains("Function not found") && attempt == 0 => {
                    self.load_functions(&mut conn).await?;
                }
                Err(e) => {
                    if e.is_io_error() || e.is_connection_dropped() || e.is_timeout() {
                        *self.conn.lock().await = None;
                    }
                    return Err(classify(e));
                }
            }
        }
        Err(unavailable("the gateway functions could not be loaded"))
    }

    /// Reads several channels' state and history in one pipelined round trip.
    async fn read_many(
        &self,
        reads: &[(Channel, Option<u64>)],
    ) -> Result<Vec<HistoryRead>, BrokerError> {
        let mut pipe = redis::pipe();
        for (channel, after) in reads {
            push_read(&mut pipe, channel, *after, None);
        }
        let values = self.run(&pipe).await?;
        values.into_iter().map(parse_read).collect()
    }
}

/// Adds one `gw_read` call: the channel's state, and with `after` the
/// messages after it (at most `limit`, or the whole history).
fn push_read(
    pipe: &mut redis::Pipeline,
    channel: &Channel,
    after: Option<u64>,
    limit: Option<usize>,
) {
    let cmd = pipe
        .cmd("FCALL")
        .arg("gw_read")
        .arg(1)
        .arg(channel.as_str());
    if let Some(after) = after {
        cmd.arg(after);
        if let Some(limit) = limit {
            cmd.arg(limit.max(1));
        }
    }
}

fn parse_read(value: Value) -> Result<HistoryRead, BrokerError> {
    let items: Vec<Value> = redis::from_redis_value(value).map_err(classify)?;
    let mut items = items.into_iter();
    let mut next = || {
        items
            .next()
            .ok_or_else(|| unavailable("short gw_read reply"))
    };
    let epoch: String = redis::from_redis_value(next()?).map_err(classify)?;
    let top: u64 = redis::from_redis_value(next()?).map_err(classify)?;
    let covered: u8 = redis::from_redis_value(next()?).map_err(classify)?;
    let epoch =
        Epoch::new(&epoch).map_err(|e| unavailable(format!("bad epoch from Redis: {e}")))?;
    let mut messages = Vec::new();
    let mut covered = covered == 1;
    for v in items {
        let raw: Vec<u8> = redis::from_redis_value(v).map_err(classify)?;
        match Message::from_envelope(Bytes::from(raw)) {
            Ok(m) => messages.push(Arc::new(m)),
            Err(e) => {
                // Skipped, not fatal: readers see the hole as `recovered: false`.
                tracing::warn!(cause = %e, "skipping an unreadable message in Redis history");
                covered = false;
            }
        }
    }
    Ok(HistoryRead {
        epoch,
        top,
        covered,
        messages,
    })
}

/// Where the link stands on one channel: the last message it delivered.
#[derive(Clone, Debug)]
struct Delivered {
    epoch: Epoch,
    offset: u64,
}

/// Owns the pub/sub connection for the life of the node.
async fn link_task(shared: Arc<Shared>) {
    // Survives reconnects: what each channel had delivered when the link fell.
    let mut delivered: HashMap<Channel, Delivered> = HashMap::new();
    let mut backoff = Duration::from_millis(50);
    let mut first = true;
    loop {
        match run_link(&shared, &mut delivered, &mut first).await {
            LinkEnd::Connected => backoff = Duration::from_millis(50),
            LinkEnd::Failed => {}
        }
        shared.ready.store(false, Ordering::Relaxed);
        shared.active.clear();
        let jitter = backoff.mul_f64(fastrand::f64());
        tokio::time::sleep(backoff / 2 + jitter).await;
        backoff = (backoff * 2).min(shared.config.max_backoff);
    }
}

enum LinkEnd {
    /// The link was up and then lost.
    Connected,
    /// The link could not be brought up.
    Failed,
}

async fn run_link(
    shared: &Arc<Shared>,
    delivered: &mut HashMap<Channel, Delivered>,
    first: &mut bool,
) -> LinkEnd {
    let wait = shared.config.command_timeout;
    let pubsub = match timeout(wait, shared.client.get_async_pubsub()).await {
        Ok(Ok(p)) => p,
        Ok(Err(e)) => {
            tracing::debug!(cause = %e, "redis pub/sub connect failed");
            return LinkEnd::Failed;
        }
        Err(_) => return LinkEnd::Failed,
    };
    let (mut sink, mut stream) = pubsub.split();
    // The command connection may be stale after an outage; make sure it works,
    // which also loads the functions into a Redis that restarted empty.
    *shared.conn.lock().await = None;
    if let Err(e) = shared.connection().await {
        tracing::debug!(cause = %e, "redis command connection failed");
        return LinkEnd::Failed;
    }

    // Resubscribe everything the registry holds, then repair what was missed.
    shared
        .dirty
        .lock()
        .unwrap_or_else(|e| e.into_inner())
        .clear();
    let wanted = shared.registry.channels();
    delivered.retain(|c, _| shared.registry.has(c.as_str()));
    if subscribe_all(shared, &mut sink, &wanted, delivered)
        .await
        .is_err()
    {
        return LinkEnd::Failed;
    }
    shared.ready.store(true, Ordering::Relaxed);
    if *first {
        tracing::info!(url = %shared.config.url, "redis link up");
        *first = false;
    } else {
        shared.reconnects.fetch_add(1, Ordering::Relaxed);
        tracing::info!(
            channels = wanted.len(),
            "redis link re-established; channels resubscribed"
        );
    }

    let mut ping = tokio::time::interval(shared.config.ping_interval);
    ping.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tokio::select! {
            biased;
            _ = shared.dirty_notify.notified() => {
                if reconcile(shared, &mut sink, delivered).await.is_err() {
                    return LinkEnd::Connected;
                }
            }
            msg = stream.next() => {
                let Some(msg) = msg else {
                    tracing::warn!("redis pub/sub link closed");
                    return LinkEnd::Connected;
                };
                if on_message(shared, delivered, msg).await.is_err() {
                    return LinkEnd::Connected;
                }
            }
            _ = ping.tick() => {
                match timeout(wait, sink.ping::<Value>()).await {
                    Ok(Ok(_)) => {}
                    _ => {
                        tracing::warn!("redis pub/sub link did not answer PING; reconnecting");
                        return LinkEnd::Connected;
                    }
                }
            }
        }
    }
}

/// SUBSCRIBEs `channels` in batches and delivers whatever history holds after
/// each channel's last delivered offset; channels seen for the first time get
/// their current position as the starting point.
async fn subscribe_all(
    shared: &Shared,
    sink: &mut redis::aio::PubSubSink,
    channels: &[Channel],
    delivered: &mut HashMap<Channel, Delivered>,
) -> Result<(), BrokerError> {
    let wait = shared.config.command_timeout;
    for chunk in channels.chunks(BATCH) {
        let names: Vec<String> = chunk.iter().map(|c| key_pubsub(c.as_str())).collect();
        match timeout(wait, sink.subscribe(&names)).await {
            Ok(Ok(())) => {}
            Ok(Err(e)) => return Err(unavailable(e)),
            Err(_) => return Err(unavailable("SUBSCRIBE timed out")),
        }

        let reads: Vec<(Channel, Option<u64>)> = chunk
            .iter()
            .map(|c| (c.clone(), delivered.get(c).map(|d| d.offset)))
            .collect();
        let mut results = shared.read_many(&reads).await?;

        // Channels whose history was lost while we were away (a new epoch):
        // read the new epoch from its start, so what was published in it
        // since is delivered, right after the verdict.
        let lost: Vec<(Channel, Option<u64>)> = reads
            .iter()
            .zip(&results)
            .filter(|((c, after), read)| {
                after.is_some()
                    && delivered.get(c).is_some_and(|d| {
                        !Position::new(d.epoch.clone(), d.offset).leads_into(&read.epoch)
                    })
            })
            .map(|((c, _), _)| (c.clone(), Some(0)))
            .collect();
        if !lost.is_empty() {
            let fresh = shared.read_many(&lost).await?;
            for ((channel, _), read) in lost.into_iter().zip(fresh) {
                if let Some(i) = reads.iter().position(|(c, _)| *c == channel) {
                    results[i] = read;
                }
            }
        }

        for ((channel, after), read) in reads.into_iter().zip(results) {
            let known = delivered.get(&channel).cloned();
            match known {
                Some(d) if after.is_some() => repair(shared, &channel, d, read, delivered),
                _ => {
                    delivered.insert(
                        channel.clone(),
                        Delivered {
                            epoch: read.epoch,
                            offset: read.top,
                        },
                    );
                }
            }
            shared.active.insert(channel);
        }
        shared.active_notify.notify_waiters();
    }
    Ok(())
}

/// Delivers what a reconnect missed, from a read made after `last` (or, when
/// the epoch changed, from the new epoch's start). Wherever continuity is
/// broken — history lost, or trimmed past what we missed — subscribers are
/// told `recovered: false` at once, with the position delivery goes on from.
fn repair(
    shared: &Shared,
    channel: &Channel,
    last: Delivered,
    read: HistoryRead,
    delivered: &mut HashMap<Channel, Delivered>,
) {
    let same_line = Position::new(last.epoch.clone(), last.offset).leads_into(&read.epoch);
    let mut offset = if same_line { last.offset } else { 0 };
    let first = read.messages.first().map(|m| m.offset);
    let broken = !same_line || !read.covered || first.is_some_and(|f| f != offset + 1);
    if broken {
        tracing::warn!(%channel, from = last.offset, "history does not cover a link outage");
        let resume_at = first.map_or(read.top, |f| f - 1).max(offset);
        shared
            .registry
            .announce_loss(channel, &Position::new(read.epoch.clone(), resume_at));
        offset = resume_at;
    }
    for msg in read.messages {
        if msg.offset > offset {
            offset = msg.offset;
            shared.registry.deliver(&msg);
        }
    }
    let offset = offset.max(read.top);
    delivered.insert(
        channel.clone(),
        Delivered {
            epoch: read.epoch,
            offset,
        },
    );
}

/// Brings the link's subscriptions in line with the registry.
async fn reconcile(
    shared: &Shared,
    sink: &mut redis::aio::PubSubSink,
    delivered: &mut HashMap<Channel, Delivered>,
) -> Result<(), BrokerError> {
    let dirty: Vec<Channel> = {
        let mut set = shared.dirty.lock().unwrap_or_else(|e| e.into_inner());
        set.drain().collect()
    };
    let (add, remove): (Vec<Channel>, Vec<Channel>) = dirty
        .into_iter()
        .partition(|c| shared.registry.has(c.as_str()));
    let add: Vec<Channel> = add
        .into_iter()
        .filter(|c| !shared.active.contains(c))
        .collect();

    // Take leaving channels out of `active` before unsubscribing, so a
    // subscriber arriving meanwhile waits for the fresh subscription instead
    // of reading a position the stream is about to stop following. One that
    // registered before we took the channel out is seen by the second look
    // at the registry, and the channel simply stays.
    let mut remove: Vec<Channel> = remove
        .into_iter()
        .filter(|c| shared.active.remove(c).is_some())
        .collect();
    remove.retain(|c| {
        let back = shared.registry.has(c.as_str());
        if back {
            shared.active.insert(c.clone());
        }
        !back
    });
    shared.active_notify.notify_waiters();

    let wait = shared.config.command_timeout;
    for chunk in remove.chunks(BATCH) {
        let names: Vec<String> = chunk.iter().map(|c| key_pubsub(c.as_str())).collect();
        match timeout(wait, sink.unsubscribe(&names)).await {
            Ok(Ok(())) => {}
            Ok(Err(e)) => return Err(unavailable(e)),
            Err(_) => return Err(unavailable("UNSUBSCRIBE timed out")),
        }
        for c in chunk {
            delivered.remove(c);
        }
    }
    for c in &add {
        delivered.remove(c);
    }
    subscribe_all(shared, sink, &add, delivered).await
}

/// Delivers one pub/sub message in order, filling any hole before it from history.
async fn on_message(
    shared: &Shared,
    delivered: &mut HashMap<Channel, Delivered>,
    msg: redis::Msg,
) -> Result<(), BrokerError> {
    let Some(name) = channel_of_pubsub(msg.get_channel_name()) else {
        return Ok(());
    };
    let envelope = Bytes::copy_from_slice(msg.get_payload_bytes());
    let message = match Message::from_envelope(envelope) {
        Ok(m) => Arc::new(m),
        Err(e) => {
            tracing::warn!(channel = name, cause = %e, "dropping malformed envelope from Redis");
            return Ok(());
        }
    };
    let Some(last) = delivered.get(&message.channel).cloned() else {
        return Ok(()); // not subscribed (any more), or its starting point is not known yet
    };

    let same_epoch = Position::new(last.epoch.clone(), last.offset).leads_into(&message.epoch);
    if same_epoch && message.offset <= last.offset {
        return Ok(());
    }
    if !same_epoch || message.offset > last.offset + 1 {
        let after = if same_epoch { last.offset } else { 0 };
        let read = shared
            .read_many(&[(message.channel.clone(), Some(after))])
            .await?;
        let missing = read
            .into_iter()
            .flat_map(|r| r.messages)
            .filter(|m| m.epoch == message.epoch && m.offset > after && m.offset < message.offset);
        for m in missing {
            shared.registry.deliver(&m);
        }
    }
    shared.registry.deliver(&message);
    delivered.insert(
        message.channel.clone(),
        Delivered {
            epoch: message.epoch.clone(),
            offset: message.offset,
        },
    );
    Ok(())
}

/// Pub/sub channel names of gateway channels, for operators inspecting Redis.
pub fn pubsub_name(channel: &Channel) -> String {
    key_pubsub(channel.as_str())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn pubsub_names_round_trip() {
        let c = Channel::new("files:alice").unwrap();
        let name = pubsub_name(&c);
        assert_eq!(name, "gw:{files:alice}:p");
        assert_eq!(channel_of_pubsub(&name), Some("files:alice"));
        assert_eq!(channel_of_pubsub("other"), None);
    }

    #[test]
    fn function_library_has_every_bound_filled() {
        let lib = include_str!("functions.lua");
        for marker in [
            "__HISTORY_SIZE__",
            "__HISTORY_AGE_MS__",
            "__MAX_DATA__",
            "__META_TTL_MS__",
        ] {
            assert!(lib.contains(marker), "{marker} missing");
        }
    }
}
