//! The embedded broker: offsets, history and routing inside one process.
//!
//! Each channel's state sits behind its own mutex; a publish assigns the offset,
//! appends to history and hands the message to the registry while holding it,
//! so concurrent publishers to one channel are delivered in offset order. The
//! lock is never held across an await: delivery only pushes onto bounded
//! queues without waiting. All channels share one epoch per process start,
//! so a restart is recognised as a loss of history.

use std::{
    collections::{HashMap, VecDeque},
    sync::{Arc, Mutex},
};

use dashmap::DashMap;

use super::{now_ms, HistoryConfig, HistoryRead};
use crate::{
    message::SharedMessage, Channel, Epoch, Message, PublishOutcome, PublishRequest, Registry,
};

/// One channel's offsets, history and idempotency ids.
struct ChannelState {
    /// Newest offset assigned.
    top: u64,
    /// The newest messages, oldest first, bounded by the history config.
    history: VecDeque<SharedMessage>,
    /// Idempotency ids of messages still in history, to their offset.
    ids: HashMap<Box<str>, u64>,
}

/// The in-process broker.
pub struct MemoryBroker {
    /// Channel states; a channel appears on its first publish or read.
    channels: DashMap<Channel, Arc<Mutex<ChannelState>>>,
    /// The epoch of every channel for the life of this process.
    epoch: Epoch,
    history: HistoryConfig,
    registry: Arc<Registry>,
}

impl MemoryBroker {
    pub fn new(history: HistoryConfig, registry: Arc<Registry>) -> Self {
        Self {
            channels: DashMap::new(),
            epoch: Epoch::generate(),
            history,
            registry,
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
                    top: 0,
                    history: VecDeque::new(),
                    ids: HashMap::new(),
                }))
            })
            .clone()
    }

    /// Assigns the next offset, keeps the message in history and delivers it locally.
    pub fn publish(&self, req: &PublishRequest) -> PublishOutcome {
        let state = self.state(&req.channel);
        let mut st = state.lock().unwrap_or_else(|e| e.into_inner());
        let now = now_ms();
        self.trim(&mut st, now);

        let outcome = |offset, duplicate| PublishOutcome {
            channel: req.channel.clone(),
            offset,
            epoch: self.epoch.clone(),
            duplicate,
        };
        if let Some(&offset) = req.id.as_ref().and_then(|id| st.ids.get(id)) {
            return outcome(offset, true);
        }

        st.top += 1;
        let msg = Arc::new(Message::build(req, st.top, self.epoch.clone(), now));
        if self.history.size > 0 {
            if let Some(id) = &req.id {
                let top = st.top;
                st.ids.insert(id.clone(), top);
            }
            st.history.push_back(msg.clone());
            self.trim(&mut st, now);
        }
        self.registry.deliver(&msg);
        outcome(st.top, false)
    }

    /// The channel's state and the messages after `after`.
    pub fn read(&self, channel: &Channel, after: Option<u64>) -> HistoryRead {
        // Reading a channel nothing was published to creates no state.
        let Some(state) = self.channels.get(channel).map(|s| s.clone()) else {
            let covered = after.unwrap_or(0) == 0;
            return HistoryRead {
                epoch: self.epoch.clone(),
                top: 0,
                covered,
                messages: Vec::new(),
            };
        };
        let mut st = state.lock().unwrap_or_else(|e| e.into_inner());
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
                    .cloned()
                    .collect();
                (oldest <= after + 1, msgs)
            }
        };
        HistoryRead {
            epoch: self.epoch.clone(),
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
    }
}
