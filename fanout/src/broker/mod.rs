//! Brokers: where offsets are assigned, history is kept, and messages are routed.
//!
//! [`MemoryBroker`] is the embedded default for a node on its own;
//! [`RedisBroker`] lets many nodes share one Redis. Both give every message of
//! a channel the next offset, keep the channel's bounded history, and hand each
//! message to the local [`Registry`](crate::Registry) in offset order.

use std::time::Duration;

use crate::{message::SharedMessage, Channel, Epoch, PublishOutcome, PublishRequest};

pub mod memory;
pub mod redis;

/// How much history each channel keeps.
#[derive(Debug, Clone, Copy)]
pub struct HistoryConfig {
    /// Newest messages kept per channel; 0 keeps none (resume then never recovers).
    pub size: usize,
    /// Messages older than this are dropped from history.
    pub age: Duration,
}

impl Default for HistoryConfig {
    fn default() -> Self {
        Self {
            size: 1000,
            age: Duration::from_secs(600),
        }
    }
}

/// A channel's state and the history after a given offset.
#[derive(Debug, Clone)]
pub struct HistoryRead {
    pub epoch: Epoch,
    /// Newest offset assigned in this epoch (0: nothing published yet).
    pub top: u64,
    /// Whether `messages` starts right after the requested offset with no hole
    /// (and, unless the read's limit cut it short, runs up to `top`).
    pub covered: bool,
    /// Messages after the requested offset, oldest first (empty when none was requested).
    pub messages: Vec<SharedMessage>,
}

/// Why a broker could not do what was asked.
#[derive(Debug, Clone, thiserror::Error)]
pub enum BrokerError {
    /// The broker link is down or too slow; the caller may retry later.
    #[error("broker unavailable: {0}")]
    Unavailable(String),
    /// The broker refused the request itself, with one of the gateway's error
    /// codes (`bad_json`, `bad_channel`, `payload_too_large`, `bad_id`).
    #[error("{code}: {reason}")]
    Rejected { code: &'static str, reason: String },
    /// The broker cannot be set up as configured (for example a malformed URL).
    #[error("broker misconfigured: {0}")]
    Config(String),
}

/// The broker a node runs on.
pub(crate) enum Broker {
    Memory(memory::MemoryBroker),
    Redis(redis::RedisBroker),
}

impl Broker {
    pub(crate) async fn publish(&self, req: PublishRequest) -> Result<PublishOutcome, BrokerError> {
        match self {
            Self::Memory(b) => Ok(b.publish(&req)),
            Self::Redis(b) => b.publish(&req).await,
        }
    }

    pub(crate) async fn publish_batch(
        &self,
        reqs: Vec<PublishRequest>,
    ) -> Result<Vec<PublishOutcome>, BrokerError> {
        match self {
            Self::Memory(b) => Ok(reqs.iter().map(|r| b.publish(r)).collect()),
            Self::Redis(b) => b.publish_batch(&reqs).await,
        }
    }

    pub(crate) async fn read(
        &self,
        channel: &Channel,
        after: Option<u64>,
        limit: usize,
    ) -> Result<HistoryRead, BrokerError> {
        match self {
            Self::Memory(b) => Ok(b.read(channel, after, limit)),
            Self::Redis(b) => b.read(channel, after, limit).await,
        }
    }

    /// Waits until messages of `channel` are routed to this node.
    pub(crate) async fn watch(
        &self,
        channel: &Channel,
        timeout: Duration,
    ) -> Result<(), BrokerError> {
        match self {
            Self::Memory(_) => Ok(()),
            Self::Redis(b) => b.watch(channel, timeout).await,
        }
    }

    pub(crate) fn is_ready(&self) -> bool {
        match self {
            Self::Memory(_) => true,
            Self::Redis(b) => b.is_ready(),
        }
    }

    pub(crate) fn reconnects(&self) -> u64 {
        match self {
            Self::Memory(_) => 0,
            Self::Redis(b) => b.reconnects(),
        }
    }
}

/// Milliseconds since the Unix epoch.
pub(crate) fn now_ms() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_millis() as u64)
        .unwrap_or(0)
}
