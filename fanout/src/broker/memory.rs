//! The embedded broker: offsets, history and routing inside one process.
//!
//! Each channel's state sits behind its own mutex; a publish assigns the offset,
//! appends to history and hands the message to the registry while holding it,
//! so concurrent publishers to one channel are delivered in offset order. The
//! lock is never held across an await: delivery only pushes onto bounded
//! queues without waiting.
//!
//! Each channel gets its own epoch when its state is created. State costs
//! memory for as long as it lives, so a channel whose history has aged out
//! and that nobody here subscribes to is forgotten by the next sweep (one
//! every `--history-age`, run by whichever publish comes due). Publishing to it
//! again starts a new epoch, and an old position then resumes with
//! `recovered: false` — the history it would need is gone anyway. A process
//! restart is recognised the same way.

use std::{
    collections::{HashMap, VecDeque},
    sync::{
        atomic::{AtomicU64, Ordering},
        Arc, Mutex,
    },
};

use dashmap::DashMap;

use super::{now_ms, HistoryConfig, HistoryRead};
use crate::{
    message::SharedMessage, Channel, Epoch, Message, PublishOutcome, PublishRequest, Registry,
};

/// One channel's epoch, offsets, history and idempotency ids.
struct ChannelState {
    /// This life of the channel.
    epoch: Epoch,
    /// Newest offset assigned.
    top: u64,
    /// The newest messages, oldest first, bounded by the history config.
    history: VecDeque<SharedMessage>,
    /// Idempotency ids of messages still in history, to their offset.
    ids: HashMap<Box<str>, u64>,
}

/// The in-process broker.
pub struct MemoryBroker {
    /// Channel states; a channel appears on its first publish.
    channels: DashMap<Channel, Arc<Mutex<ChannelState>>>,
    history: HistoryConfig,
    registry: Arc<Registry>,
    /// When the last sweep of idle channels ran, Unix milliseconds.
    last_sweep: AtomicU64,
}

fn lock(state: &Mutex<ChannelState>) -> std::sync::MutexGuard<'_, ChannelState> {
    state.lock().unwrap_or_else(|e| e.into_inner())
}

impl MemoryBroker {
    pub fn new(history: HistoryConfig, registry: Arc<Registry>) -> Self {
        Self {
            channels: DashMap::new(),
            history,
            registry,
            last_sweep: AtomicU64::new(now_ms()),
        }
    }

    fn state(&self, channel: &Channel) -> Arc<Mutex<ChannelState>> {
        if let Some(s) = self.channels.get(channel) {
            return s.clone();
        }
        self.channels
            .entry(channel.clone())
            .or_insert_with(|| {
                Arc::new(Mutex::new(ChannelState {
                    epoch: Epoch::generate(),
                    top: 0,
                    history: VecDeque::new(),
                    ids: HashMap::new(),
                }))
            })
            .clone()
    }

    /// Assigns the next offset, keeps the message in history and delivers it locally.
    pub fn publish(&self, req: &PublishRequest) -> PublishOutcome {
        let now = now_ms();
        self.maybe_sweep(now);
        let state = self.state(&req.channel);
        let mut st = lock(&state);
        self.trim(&mut st, now);

        if let Some(&offset) = req.id.as_ref().and_then(|id| st.ids.get(id)) {
            let epoch = st.epoch.clone();
            return PublishOutcome {
                channel: req.channel.clone(),
                offset,
                epoch,
                duplicate: true,
            };
        }

        st.top += 1;
        let msg = Arc::new(Message::build(req, st.top, st.epoch.clone(), now));
        if self.history.size > 0 {
            if let Some(id) = &req.id {
                let top = st.top;
                st.ids.insert(id.clone(), top);
            }
            st.history.push_back(msg.clone());
            self.trim(&mut st, now);
        }
        self.registry.deliver(&msg);
        let epoch = st.epoch.clone();
        PublishOutcome {
            channel: req.channel.clone(),
            offset: st.top,
            epoch,
            duplicate: false,
        }
    }

    /// The channel's state and at most `limit` messages after `after`.
    pub fn read(&self, channel: &Channel, after: Option<u64>, limit: usize) -> HistoryRead {
        // Reading a channel nothing was published to creates no state: it
        // reads as the empty epoch, like a fresh channel on Redis.
        let Some(state) = self.channels.get(channel).map(|s| s.clone()) else {
            let covered = after.unwrap_or(0) == 0;
            return HistoryRead {
                epoch: Epoch::empty(),
                top: 0,
                covered,
                messages: Vec::new(),
            };
        };
        let mut st = lock(&state);
        self.trim(&mut st, now_ms());

        let (covered, messages) = match after {
            None => (true, Vec::new()),
            Some(after) if after >= st.top => (true, Vec::new()),
            Some(after) => {
                let oldest = st.history.front().map_or(u64::MAX, |m| m.offset);
                let msgs = st
                    .history
                    .iter()
                    .filter(|m| m.offset > after)
                    .take(limit)
                    .cloned()
                    .collect();
                (oldest <= after + 1, msgs)
            }
        };
        HistoryRead {
            epoch: st.epoch.clone(),
            top: st.top,
            covered,
            messages,
        }
    }

    /// Drops messages beyond the size bound or older than the age bound.
    fn trim(&self, st: &mut ChannelState, now: u64) {
        let max_age = self.history.age.as_millis() as u64;
        while let Some(oldest) = st.history.front() {
            let too_many = st.history.len() > self.history.size;
            let too_old = now.saturating_sub(oldest.time_ms) > max_age;
            if !too_many && !too_old {
                break;
            }
            if let Some(id) = &oldest.id {
                st.ids.remove(id);
            }
            st.history.pop_front();
        }
        if st.history.is_empty() && st.history.capacity() > 16 {
            st.history.shrink_to(0);
        }
    }

    /// Once per history age, trims every channel and forgets those with no
    /// history left and no local subscriber.
    fn maybe_sweep(&self, now: u64) {
        let every = (self.history.age.as_millis() as u64).max(1000);
        let last = self.last_sweep.load(Ordering::Relaxed);
        if now.saturating_sub(last) < every
            || self
                .last_sweep
                .compare_exchange(last, now, Ordering::Relaxed, Ordering::Relaxed)
                .is_err()
        {
            return;
        }
        self.channels.retain(|channel, state| {
            let mut st = lock(state);
            self.trim(&mut st, now);
            !st.history.is_empty() || self.registry.has(channel.as_str())
        });
    }
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use super::*;

    #[test]
    fn idle_channels_are_forgotten_once_their_history_ages_out() {
        let registry = Arc::new(Registry::new());
        let history = HistoryConfig {
            size: 10,
            age: Duration::from_millis(1),
        };
        let broker = MemoryBroker::new(history, registry);
        for i in 0..100 {
            let ch = Channel::new(&format!("files:{i}")).unwrap();
            broker.publish(&PublishRequest::new(ch, "1".into(), None, None).unwrap());
        }
        // The sweep runs at most once a second.
        broker.last_sweep.store(0, Ordering::Relaxed);
        std::thread::sleep(Duration::from_millis(5));
        let ch = Channel::new("files:last").unwrap();
        broker.publish(&PublishRequest::new(ch, "1".into(), None, None).unwrap());
        assert!(
            broker.channels.len() <= 2,
            "{} channels left",
            broker.channels.len()
        );
    }
}
