//! The local subscription registry, shared by every transport of a node.
//!
//! It maps each channel to the subscribers this node holds for it, and hands
//! every message to each of them without blocking: a subscriber whose bounded
//! queue is full is marked lagged (and later disconnected by its transport)
//! rather than slowing the others. A channel with no local subscriber has no
//! entry at all. The broker hears of a channel's first arrival and last
//! departure through [`Interest`], so it can subscribe in Redis only while
//! someone here listens.

use std::{
    collections::HashMap,
    sync::{
        atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering},
        Arc, OnceLock,
    },
};

use dashmap::DashMap;
use tokio::sync::{mpsc, Notify};

use crate::{message::SharedMessage, Channel};

/// Identifies one subscriber (one client connection or one parked long-poll).
pub type SubscriberId = u64;

/// Told when a channel gains its first local subscriber or loses its last.
pub trait Interest: Send + Sync {
    fn changed(&self, channel: &Channel);
}

/// State shared between a subscriber's queue producers (the registry) and its owner.
#[derive(Debug)]
pub(crate) struct QueueState {
    /// Bytes of envelopes queued and not yet taken by the owner.
    pub(crate) bytes: AtomicUsize,
    /// Most bytes the queue may hold before the subscriber counts as lagging.
    pub(crate) max_bytes: usize,
    /// Set once the queue overflowed; never cleared. The owner must disconnect.
    pub(crate) lagged: AtomicBool,
    /// Woken (all waiters) when `lagged` is set, so a transport stuck writing
    /// can give up; may be shared with the connection that owns the subscriber.
    pub(crate) lag_notify: Arc<Notify>,
}

/// The registry's handle to one subscriber's queue.
#[derive(Clone, Debug)]
pub(crate) struct QueueTx {
    pub(crate) tx: mpsc::Sender<SharedMessage>,
    pub(crate) state: Arc<QueueState>,
}

impl QueueTx {
    /// Queues `msg` without waiting; returns false when the subscriber lagged.
    fn offer(&self, msg: &SharedMessage) -> bool {
        let state = &*self.state;
        if state.lagged.load(Ordering::Relaxed) {
            return false;
        }
        let size = msg.size();
        let queued = state.bytes.fetch_add(size, Ordering::Relaxed) + size;
        let fits = queued <= state.max_bytes;
        match fits.then(|| self.tx.try_send(msg.clone())) {
            Some(Ok(())) => true,
            Some(Err(mpsc::error::TrySendError::Closed(_))) => {
                state.bytes.fetch_sub(size, Ordering::Relaxed);
                true
            }
            Some(Err(mpsc::error::TrySendError::Full(_))) | None => {
                state.bytes.fetch_sub(size, Ordering::Relaxed);
                state.lagged.store(true, Ordering::Relaxed);
                state.lag_notify.notify_waiters();
                false
            }
        }
    }
}

/// Counters a node exports as metrics.
#[derive(Debug, Default)]
pub struct RegistryStats {
    /// Messages handed to a subscriber queue.
    pub delivered: AtomicU64,
    /// Deliveries refused because the subscriber's queue was full.
    pub dropped: AtomicU64,
    /// Subscribers that overflowed their queue.
    pub lagged: AtomicU64,
}

/// Every local subscriber of every channel on this node.
#[derive(Default)]
pub struct Registry {
    /// Channel to its subscribers; an entry exists only while it has at least one.
    channels: DashMap<Channel, HashMap<SubscriberId, QueueTx>>,
    /// The broker's ear for first-arrival and last-departure of a channel.
    interest: OnceLock<Arc<dyn Interest>>,
    /// Source of subscriber ids.
    next_id: AtomicU64,
    /// Delivery counters.
    pub stats: RegistryStats,
}

impl Registry {
    pub fn new() -> Self {
        Self::default()
    }

    /// Installs the hook told about channels gaining or losing all local subscribers.
    pub fn set_interest(&self, interest: Arc<dyn Interest>) {
        let _ = self.interest.set(interest);
    }

    pub(crate) fn next_id(&self) -> SubscriberId {
        self.next_id.fetch_add(1, Ordering::Relaxed)
    }

    /// Adds a subscriber to a channel.
    pub(crate) fn add(&self, channel: &Channel, id: SubscriberId, queue: QueueTx) {
        let first = {
            let mut subs = self.channels.entry(channel.clone()).or_default();
            subs.insert(id, queue);
            subs.len() == 1
        };
        if first {
            self.notify(channel);
        }
    }

    /// Removes a subscriber from a channel; drops the channel's entry with its last one.
    pub(crate) fn remove(&self, channel: &Channel, id: SubscriberId) {
        let removed = self.channels.remove_if_mut(channel, |_, subs| {
            subs.remove(&id).is_some() && subs.is_empty()
        });
        if removed.is_some() {
            self.notify(channel);
        }
    }

    fn notify(&self, channel: &Channel) {
        if let Some(interest) = self.interest.get() {
            interest.changed(channel);
        }
    }

    /// Whether any local subscriber holds `channel`.
    pub fn has(&self, channel: &str) -> bool {
        self.channels.contains_key(channel)
    }

    /// Local subscribers of `channel`.
    pub fn count(&self, channel: &str) -> usize {
        self.channels.get(channel).map_or(0, |s| s.len())
    }

    /// Channels with at least one local subscriber.
    pub fn channels(&self) -> Vec<Channel> {
        self.channels.iter().map(|e| e.key().clone()).collect()
    }

    /// Number of channels with local subscribers.
    pub fn channel_count(&self) -> usize {
        self.channels.len()
    }

    /// Hands `msg` to every local subscriber of its channel; never waits.
    pub fn deliver(&self, msg: &SharedMessage) {
        let Some(subs) = self.channels.get(msg.channel.as_str()) else {
            return;
        };
        let mut ok = 0u64;
        let mut dropped = 0u64;
        for queue in subs.values() {
            if queue.offer(msg) {
                ok += 1;
            } else {
                dropped += 1;
            }
        }
        drop(subs);
        self.stats.delivered.fetch_add(ok, Ordering::Relaxed);
        if dropped > 0 {
            self.stats.dropped.fetch_add(dropped, Ordering::Relaxed);
        }
    }
}
