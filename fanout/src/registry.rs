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
    collections::{HashMap, VecDeque},
    sync::{
        atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering},
        Arc, Mutex, OnceLock,
    },
};

use dashmap::DashMap;
use futures::task::AtomicWaker;
use tokio::sync::Notify;

use crate::{message::SharedMessage, Channel, Position};

/// Identifies one subscriber (one client connection or one parked long-poll).
pub type SubscriberId = u64;

/// Told when a channel gains its first local subscriber or loses its last.
pub trait Interest: Send + Sync {
    fn changed(&self, channel: &Channel);
}

/// One subscriber's bounded queue, shared between its producers (the
/// registry, on the broker's task) and its owner (the connection's task).
///
/// A plain deque behind a mutex that is held only for a push or a pop: an
/// idle subscriber's queue allocates nothing, where a channel type would keep
/// its blocks for the life of the connection.
#[derive(Debug)]
pub(crate) struct QueueState {
    /// Messages queued and not yet taken by the owner.
    pub(crate) queue: Mutex<VecDeque<Queued>>,
    /// Wakes the owner when a message is queued.
    pub(crate) waker: AtomicWaker,
    /// Most messages the queue may hold before the subscriber counts as lagging.
    pub(crate) max_messages: usize,
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

/// What a subscriber's queue carries.
#[derive(Debug, Clone)]
pub(crate) enum Queued {
    Message(SharedMessage),
    /// Continuity of the channel broke upstream (history lost or trimmed):
    /// delivery goes on from this position.
    Lost(Channel, Position),
}

/// Queues above this capacity are shrunk back when they drain, so a burst
/// does not pin its peak memory for the rest of the connection.
const SHRINK_ABOVE: usize = 64;

impl QueueState {
    pub(crate) fn new(max_messages: usize, max_bytes: usize, lag_notify: Arc<Notify>) -> Self {
        Self {
            queue: Mutex::new(VecDeque::new()),
            waker: AtomicWaker::new(),
            max_messages: max_messages.max(1),
            bytes: AtomicUsize::new(0),
            max_bytes,
            lagged: AtomicBool::new(false),
            lag_notify,
        }
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, VecDeque<Queued>> {
        self.queue.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Takes the oldest queued message, if any.
    pub(crate) fn pop(&self) -> Option<Queued> {
        let mut q = self.lock();
        let msg = q.pop_front();
        if q.is_empty() && q.capacity() > SHRINK_ABOVE {
            q.shrink_to(0);
        }
        drop(q);
        if let Some(Queued::Message(m)) = &msg {
            self.bytes.fetch_sub(m.size(), Ordering::Relaxed);
        }
        msg
    }

    /// Waits for the next queued message. Cancel-safe.
    pub(crate) async fn recv(&self) -> Queued {
        std::future::poll_fn(|cx| {
            if let Some(m) = self.pop() {
                return std::task::Poll::Ready(m);
            }
            self.waker.register(cx.waker());
            match self.pop() {
                Some(m) => std::task::Poll::Ready(m),
                None => std::task::Poll::Pending,
            }
        })
        .await
    }

    /// Marks the subscriber lagged; true the first time.
    fn mark_lagged(&self) -> bool {
        let first = !self.lagged.swap(true, Ordering::Relaxed);
        self.lag_notify.notify_waiters();
        self.waker.wake();
        first
    }
}

/// The registry's handle to one subscriber's queue.
#[derive(Clone, Debug)]
pub(crate) struct QueueTx {
    pub(crate) state: Arc<QueueState>,
}

impl QueueTx {
    /// Queues `item` without waiting. `Err(first)` when the subscriber lagged,
    /// with `first` true if this call is what tipped it over.
    fn offer(&self, item: Queued) -> Result<(), bool> {
        let state = &*self.state;
        if state.lagged.load(Ordering::Relaxed) {
            return Err(false);
        }
        let size = match &item {
            Queued::Message(m) => m.size(),
            Queued::Lost(..) => 0,
        };
        let mut q = state.lock();
        let fits = q.len() < state.max_messages
            && state.bytes.load(Ordering::Relaxed) + size <= state.max_bytes;
        if !fits {
            drop(q);
            return Err(state.mark_lagged());
        }
        q.push_back(item);
        state.bytes.fetch_add(size, Ordering::Relaxed);
        drop(q);
        state.waker.wake();
        Ok(())
    }
}

/// Counters a node exports as metrics.
#[derive(Debug, Default)]
pub struct RegistryStats {
    /// Messages handed to a subscriber queue.
    pub delivered: AtomicU64,
    /// Deliveries refused because the subscriber's queue was full.
    pub dropped: AtomicU64,
    /// Subscribers that overflowed their queue (each is then disconnected).
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
        self.offer_all(&msg.channel, || Queued::Message(msg.clone()));
    }

    /// Tells every local subscriber of `channel` that continuity broke and the
    /// channel goes on from `at` (they are told `recovered: false`).
    pub fn announce_loss(&self, channel: &Channel, at: &Position) {
        self.offer_all(channel, || Queued::Lost(channel.clone(), at.clone()));
    }

    fn offer_all(&self, channel: &Channel, item: impl Fn() -> Queued) {
        let Some(subs) = self.channels.get(channel.as_str()) else {
            return;
        };
        let (mut ok, mut dropped, mut lagged) = (0u64, 0u64, 0u64);
        for queue in subs.values() {
            match queue.offer(item()) {
                Ok(()) => ok += 1,
                Err(first) => {
                    dropped += 1;
                    lagged += u64::from(first);
                }
            }
        }
        drop(subs);
        self.stats.delivered.fetch_add(ok, Ordering::Relaxed);
        if dropped > 0 {
            self.stats.dropped.fetch_add(dropped, Ordering::Relaxed);
            self.stats.lagged.fetch_add(lagged, Ordering::Relaxed);
        }
    }
}
