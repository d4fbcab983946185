//! One subscriber: a connection's view of the channels it holds.
//!
//! A [`Subscriber`] owns a bounded queue filled by the registry, and per channel
//! the position it has reached. It turns what arrives into [`Event`]s that keep
//! the delivery promise: per channel, offsets in order, no duplicates, and an
//! explicit [`Event::Reset`] (`recovered: false`) wherever continuity is broken
//! (the epoch changed, or history could not fill a hole). Replay of missed
//! messages on subscribe is queued ahead of anything live, so live messages never
//! overtake it.

use std::{
    collections::{HashMap, VecDeque},
    sync::{atomic::Ordering, Arc},
    time::Duration,
};

use tokio::sync::Notify;

use crate::{
    hub::Hub,
    message::SharedMessage,
    registry::{QueueState, QueueTx, Queued, SubscriberId},
    BrokerError, Channel, Epoch, Position,
};

/// Bounds of one subscriber, all configurable by the node's operator.
#[derive(Debug, Clone, Copy)]
pub struct SubscriberLimits {
    /// Messages a subscriber's queue holds before it counts as lagging and is cut off.
    /// Large enough to ride out a burst on a healthy connection; small enough that
    /// a stuck client pins little memory.
    pub queue_messages: usize,
    /// Envelope bytes a subscriber's queue holds before it counts as lagging.
    pub queue_bytes: usize,
    /// Channels one subscriber may hold at once.
    pub max_channels: usize,
    /// How long a subscribe waits for the broker to start routing the channel here.
    pub watch_timeout: Duration,
}

impl Default for SubscriberLimits {
    fn default() -> Self {
        Self {
            queue_messages: 1024,
            queue_bytes: 4 << 20,
            max_channels: 256,
            watch_timeout: Duration::from_secs(5),
        }
    }
}

/// The answer to a subscribe, and what a [`Event::Reset`] carries.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Subscribed {
    pub channel: Channel,
    /// Delivery continues with the message after this position.
    pub position: Position,
    /// False when the requested position could not be honoured and messages may
    /// have been missed; the client continues from `position`.
    pub recovered: bool,
}

/// What a subscriber receives next.
#[derive(Debug, Clone)]
pub enum Event {
    Message(SharedMessage),
    /// Continuity of a channel was broken; delivery goes on from the given position.
    Reset(Subscribed),
}

/// Why a subscribe was refused.
#[derive(Debug, thiserror::Error)]
pub enum SubscribeError {
    #[error("already subscribed to this channel")]
    AlreadySubscribed,
    #[error("at most {0} channels per connection")]
    TooManyChannels(usize),
    #[error(transparent)]
    Broker(#[from] BrokerError),
}

/// The subscriber's queue overflowed: it fell too far behind and must reconnect.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
#[error("subscriber fell behind and its queue overflowed")]
pub struct Lagged;

/// Where a subscriber stands on one channel.
#[derive(Debug, Clone)]
struct Cursor {
    epoch: Epoch,
    /// Highest offset accepted for delivery (queued in `ready` or delivered).
    accepted: u64,
    /// Highest offset handed to the owner by [`Subscriber::next`].
    delivered: u64,
    /// A replay is still being paged in from history: live messages of this
    /// channel are skipped meanwhile (history has them too, and the pages
    /// deliver them in order).
    replaying: bool,
}

/// A connection's subscription to any number of channels.
pub struct Subscriber {
    id: SubscriberId,
    hub: Hub,
    /// The sending side of our queue, registered once per channel we hold.
    queue: QueueTx,
    /// Per channel, how far we have got.
    cursors: HashMap<Channel, Cursor>,
    /// Events decided but not yet handed out: replay on subscribe, and resets.
    ready: VecDeque<Event>,
}

impl Subscriber {
    pub(crate) fn new(hub: Hub, alarm: Arc<Notify>) -> Self {
        let limits = hub.limits();
        let state = Arc::new(QueueState::new(
            limits.queue_messages,
            limits.queue_bytes,
            alarm,
        ));
        let id = hub.registry().next_id();
        Self {
            id,
            hub,
            queue: QueueTx { state },
            cursors: HashMap::new(),
            ready: VecDeque::new(),
        }
    }

    /// Subscribes to `channel`, replaying what was missed after `since` when history covers it.
    pub async fn subscribe(
        &mut self,
        channel: Channel,
        since: Option<&Position>,
    ) -> Result<Subscribed, SubscribeError> {
        let limits = self.hub.limits();
        if self.cursors.contains_key(&channel) {
            return Err(SubscribeError::AlreadySubscribed);
        }
        if self.cursors.len() >= limits.max_channels {
            return Err(SubscribeError::TooManyChannels(limits.max_channels));
        }

        // Register first, so nothing published from here on is missed; the
        // cursor set below then filters what the replay already covers.
        self.hub
            .registry()
            .add(&channel, self.id, self.queue.clone());
        let resumed = match self.hub.resume(&channel, since, self.page_limit()).await {
            Ok(r) => r,
            Err(e) => {
                self.hub.registry().remove(&channel, self.id);
                return Err(e.into());
            }
        };
        let (subscribed, replay) = resumed;

        let start = subscribed.position.offset;
        let mut cursor = Cursor {
            epoch: subscribed.position.epoch.clone(),
            accepted: start,
            delivered: start,
            replaying: false,
        };
        self.take_page(&mut cursor, replay);
        self.cursors.insert(channel, cursor);
        Ok(subscribed)
    }

    /// Most messages replayed per history read: a resume far back is paged in
    /// as the client takes it, so it never holds more than about a queue's
    /// worth of the channel's history at once.
    fn page_limit(&self) -> usize {
        self.hub.limits().queue_messages.clamp(1, 512)
    }

    /// Queues a page of replay (bounded in bytes too) and notes whether more may follow.
    fn take_page(&mut self, cursor: &mut Cursor, page: Vec<SharedMessage>) {
        let full = page.len() >= self.page_limit();
        let budget = (self.hub.limits().queue_bytes / 2).max(1);
        let mut bytes = 0;
        let mut cut = false;
        for msg in page {
            if msg.offset <= cursor.accepted {
                continue;
            }
            if bytes > 0 && bytes + msg.size() > budget {
                cut = true;
                break;
            }
            bytes += msg.size();
            cursor.accepted = msg.offset;
            self.ready.push_back(Event::Message(msg));
        }
        cursor.replaying = full || cut;
    }

    /// Reads the next page of a replay still in progress.
    async fn next_page(&mut self, channel: Channel) -> Result<(), Lagged> {
        let Some(at) = self
            .cursors
            .get(&channel)
            .map(|c| Position::new(c.epoch.clone(), c.accepted))
        else {
            return Ok(());
        };
        let page = self.page_limit();
        // A broker that cannot be read ends the connection; the client resumes from its position.
        let (s, msgs) = self
            .hub
            .read(&channel, Some(&at), page)
            .await
            .map_err(|_| Lagged)?;
        let Some(mut cursor) = self.cursors.remove(&channel) else {
            return Ok(());
        };
        if s.recovered {
            self.take_page(&mut cursor, msgs);
        } else {
            // History moved on while the replay was paged in.
            cursor.epoch = s.position.epoch.clone();
            cursor.accepted = s.position.offset;
            cursor.replaying = false;
            self.ready.push_back(Event::Reset(s));
        }
        self.cursors.insert(channel, cursor);
        Ok(())
    }

    /// Stops delivery of `channel`; returns false when it was not held.
    pub fn unsubscribe(&mut self, channel: &Channel) -> bool {
        if self.cursors.remove(channel).is_none() {
            return false;
        }
        self.hub.registry().remove(channel, self.id);
        self.ready.retain(|ev| event_channel(ev) != channel);
        true
    }

    /// Channels held, in no particular order.
    pub fn channels(&self) -> impl Iterator<Item = &Channel> {
        self.cursors.keys()
    }

    /// The position of the last event handed out for `channel`.
    pub fn position(&self, channel: &Channel) -> Option<Position> {
        self.cursors
            .get(channel)
            .map(|c| Position::new(c.epoch.clone(), c.delivered))
    }

    /// The next event, waiting for one. Cancel-safe: nothing is lost if the future is dropped.
    pub async fn next(&mut self) -> Result<Event, Lagged> {
        loop {
            if let Some(ev) = self.take_ready()? {
                return Ok(ev);
            }
            let replaying = self
                .cursors
                .iter()
                .find(|(_, c)| c.replaying)
                .map(|(ch, _)| ch.clone());
            if let Some(channel) = replaying {
                // Take what is queued first (the replaying channel's live
                // messages are skipped), so a long replay cannot overflow it.
                while let Some(item) = self.queue.state.pop() {
                    self.accept(item);
                }
                self.next_page(channel).await?;
                continue;
            }
            let msg = self.queue.state.recv().await;
            self.accept(msg);
        }
    }

    /// The next event if one is ready now, without waiting.
    pub fn try_next(&mut self) -> Result<Option<Event>, Lagged> {
        loop {
            if let Some(ev) = self.take_ready()? {
                return Ok(Some(ev));
            }
            match self.queue.state.pop() {
                Some(msg) => self.accept(msg),
                None => return Ok(None),
            }
        }
    }

    /// Resolves once the queue has overflowed; use it to stop waiting on a stuck client.
    pub async fn lagged(&self) {
        let state = &self.queue.state;
        loop {
            let woken = state.lag_notify.notified();
            if state.lagged.load(Ordering::Relaxed) {
                return;
            }
            woken.await;
        }
    }

    /// Whether the queue has overflowed.
    pub fn is_lagged(&self) -> bool {
        self.queue.state.lagged.load(Ordering::Relaxed)
    }

    fn take_ready(&mut self) -> Result<Option<Event>, Lagged> {
        if self.is_lagged() {
            return Err(Lagged);
        }
        let Some(ev) = self.ready.pop_front() else {
            return Ok(None);
        };
        match &ev {
            Event::Message(m) => {
                if let Some(c) = self.cursors.get_mut(&m.channel) {
                    c.delivered = m.offset;
                }
            }
            Event::Reset(s) => {
                if let Some(c) = self.cursors.get_mut(&s.channel) {
                    c.delivered = s.position.offset;
                }
            }
        }
        Ok(Some(ev))
    }

    /// Decides what a queued item means for its channel's cursor.
    fn accept(&mut self, item: Queued) {
        let msg = match item {
            Queued::Message(m) => m,
            Queued::Lost(channel, at) => return self.lost(channel, at),
        };
        let Some(cursor) = self.cursors.get_mut(&msg.channel) else {
            return; // queued before an unsubscribe
        };
        if cursor.replaying {
            return; // the replay's pages will bring it, in order
        }
        let at = Position::new(cursor.epoch.clone(), cursor.accepted);
        let same_line = at.leads_into(&msg.epoch);
        let continuous = same_line && msg.offset == cursor.accepted + 1;
        let stale = same_line && msg.offset <= cursor.accepted;
        if stale {
            return;
        }
        if continuous {
            cursor.epoch = msg.epoch.clone();
        } else {
            // The epoch changed or a hole appeared that history could not fill
            // upstream: say so, then go on from just before this message.
            let position = Position::new(msg.epoch.clone(), msg.offset.saturating_sub(1));
            self.ready.push_back(Event::Reset(Subscribed {
                channel: msg.channel.clone(),
                position,
                recovered: false,
            }));
            cursor.epoch = msg.epoch.clone();
        }
        cursor.accepted = msg.offset;
        self.ready.push_back(Event::Message(msg));
    }
}

impl Subscriber {
    /// Continuity of the channel broke upstream (its history was lost, or
    /// trimmed past what the node missed): unless this subscriber is already
    /// at or past `at`, tell it so now rather than at the next message.
    fn lost(&mut self, channel: Channel, at: Position) {
        let Some(cursor) = self.cursors.get_mut(&channel) else {
            return;
        };
        let same_line = Position::new(cursor.epoch.clone(), cursor.accepted).leads_into(&at.epoch);
        if same_line && cursor.accepted >= at.offset {
            return;
        }
        cursor.epoch = at.epoch.clone();
        cursor.accepted = at.offset;
        cursor.replaying = false;
        self.ready.push_back(Event::Reset(Subscribed {
            channel,
            position: at,
            recovered: false,
        }));
    }
}

fn event_channel(ev: &Event) -> &Channel {
    match ev {
        Event::Message(m) => &m.channel,
        Event::Reset(s) => &s.channel,
    }
}

impl Drop for Subscriber {
    fn drop(&mut self) {
        for channel in self.cursors.keys() {
            self.hub.registry().remove(channel, self.id);
        }
    }
}
