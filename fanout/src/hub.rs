//! The node's fan-out core: registry, broker and limits behind one handle.
//!
//! Transports hold a [`Hub`]: they publish through it, open [`Subscriber`]s on
//! it, and read history through it for stateless long-polls. The resume rules
//! (what a position means, when it counts as recovered) live here once, for
//! every transport.

use std::sync::Arc;

use tokio::sync::Notify;

use crate::{
    broker::{Broker, HistoryRead},
    message::SharedMessage,
    BrokerError, Channel, HistoryConfig, MemoryBroker, Position, PublishOutcome, PublishRequest,
    RedisBroker, RedisConfig, Registry, Subscribed, Subscriber, SubscriberLimits,
};

/// Shared handle to a node's fan-out core; cheap to clone.
#[derive(Clone)]
pub struct Hub(Arc<HubInner>);

struct HubInner {
    /// Local subscribers of every channel.
    registry: Arc<Registry>,
    /// Where offsets are assigned and history kept.
    broker: Broker,
    /// Bounds applied to every subscriber.
    limits: SubscriberLimits,
}

impl Hub {
    /// A node on the embedded in-process broker.
    pub fn memory(history: HistoryConfig, limits: SubscriberLimits) -> Self {
        let registry = Arc::new(Registry::new());
        let broker = Broker::Memory(MemoryBroker::new(history, registry.clone()));
        Self(Arc::new(HubInner {
            registry,
            broker,
            limits,
        }))
    }

    /// A node sharing Redis with others. Fails only on a malformed URL; an
    /// unreachable Redis is retried in the background and reported by [`Hub::is_ready`].
    pub fn redis(config: RedisConfig, limits: SubscriberLimits) -> Result<Self, BrokerError> {
        let registry = Arc::new(Registry::new());
        let broker = Broker::Redis(RedisBroker::start(config, registry.clone())?);
        Ok(Self(Arc::new(HubInner {
            registry,
            broker,
            limits,
        })))
    }

    pub fn registry(&self) -> &Registry {
        &self.0.registry
    }

    pub fn limits(&self) -> SubscriberLimits {
        self.0.limits
    }

    /// Whether the broker link is up.
    pub fn is_ready(&self) -> bool {
        self.0.broker.is_ready()
    }

    /// Which broker this node runs on, for logs and the status page.
    pub fn broker_name(&self) -> &'static str {
        match &self.0.broker {
            Broker::Memory(_) => "memory",
            Broker::Redis(_) => "redis",
        }
    }

    /// Times the broker link was re-established after a loss.
    pub fn broker_reconnects(&self) -> u64 {
        self.0.broker.reconnects()
    }

    /// A new subscriber with this node's limits.
    pub fn subscriber(&self) -> Subscriber {
        Subscriber::new(self.clone(), Arc::new(Notify::new()))
    }

    /// A new subscriber whose queue overflow also wakes every waiter on `alarm`,
    /// so that whoever drives the connection can drop it even while a write is stuck.
    pub fn subscriber_with_alarm(&self, alarm: Arc<Notify>) -> Subscriber {
        Subscriber::new(self.clone(), alarm)
    }

    /// Publishes one message.
    pub async fn publish(&self, req: PublishRequest) -> Result<PublishOutcome, BrokerError> {
        self.0.broker.publish(req).await
    }

    /// Publishes several messages in order; every item is attempted, each with its own answer.
    pub async fn publish_batch(
        &self,
        reqs: Vec<PublishRequest>,
    ) -> Result<Vec<PublishOutcome>, BrokerError> {
        self.0.broker.publish_batch(reqs).await
    }

    /// Reads `channel` after `since` without subscribing: what a stateless
    /// long-poll needs. At most `limit` messages; more may follow.
    pub async fn read(
        &self,
        channel: &Channel,
        since: Option<&Position>,
        limit: usize,
    ) -> Result<(Subscribed, Vec<SharedMessage>), BrokerError> {
        let after = since.map(|p| p.offset);
        let read = self.0.broker.read(channel, after, limit).await?;
        Ok(decide(channel, since, read))
    }

    /// Makes sure the broker routes `channel` here, then reads its first page after `since`.
    pub(crate) async fn resume(
        &self,
        channel: &Channel,
        since: Option<&Position>,
        limit: usize,
    ) -> Result<(Subscribed, Vec<SharedMessage>), BrokerError> {
        self.0
            .broker
            .watch(channel, self.0.limits.watch_timeout)
            .await?;
        self.read(channel, since, limit).await
    }

    /// Every live node of the cluster, as each describes itself. On the embedded
    /// broker the node is alone and `local` is its entry.
    pub async fn cluster(
        &self,
        local: serde_json::Value,
    ) -> Result<Vec<serde_json::Value>, BrokerError> {
        match &self.0.broker {
            Broker::Memory(_) => Ok(vec![local]),
            Broker::Redis(b) => b.cluster().await,
        }
    }

    /// Who listens to `channel`: local subscribers, and how many nodes hold any.
    pub async fn listening(&self, channel: &Channel) -> Result<(usize, u64), BrokerError> {
        let local = self.0.registry.count(channel.as_str());
        let nodes = match &self.0.broker {
            Broker::Memory(_) => u64::from(local > 0),
            Broker::Redis(b) => b.nodes_listening(channel).await?,
        };
        Ok((local, nodes))
    }
}

/// The resume rule, for every transport.
///
/// A position is honoured when it is in the channel's current epoch, not ahead
/// of the newest offset, and history still holds every message after it. Then
/// the reader gets exactly those messages. Otherwise it is told
/// `recovered: false` and continues from the newest offset: it may have missed
/// messages and should refetch whatever state it derives from the channel.
fn decide(
    channel: &Channel,
    since: Option<&Position>,
    read: HistoryRead,
) -> (Subscribed, Vec<SharedMessage>) {
    let now = Position::new(read.epoch.clone(), read.top);
    let fresh = |recovered| Subscribed {
        channel: channel.clone(),
        position: now.clone(),
        recovered,
    };
    let Some(since) = since else {
        return (fresh(true), Vec::new());
    };
    if !since.leads_into(&read.epoch) || since.offset > read.top || !read.covered {
        return (fresh(false), Vec::new());
    }
    let subscribed = Subscribed {
        channel: channel.clone(),
        position: Position::new(read.epoch.clone(), since.offset),
        recovered: true,
    };
    (subscribed, read.messages)
}
