//! The fan-out core of the notification gateway. It knows nothing of HTTP.
//!
//! - [`channel`]: channel names, validated in one place.
//! - [`position`]: epochs and positions, the way a client says what it has seen.
//! - [`message`]: the envelope, encoded once and shared by every subscriber.
//! - [`registry`]: the node's local subscribers per channel, with bounded queues.
//! - [`subscriber`]: one connection's ordered, gap-free view of its channels.
//! - [`broker`]: where offsets and history live: [`MemoryBroker`] in-process,
//!   [`RedisBroker`] shared by many nodes.
//! - [`hub`]: registry, broker and limits behind one handle for transports.

pub mod broker;
pub mod channel;
pub mod hub;
pub mod message;
pub mod position;
pub mod registry;
pub mod subscriber;

pub use broker::{
    memory::MemoryBroker,
    redis::{RedisBroker, RedisConfig},
    BrokerError, HistoryConfig, HistoryRead,
};
pub use channel::{Channel, ChannelError, MAX_CHANNEL_LEN};
pub use hub::Hub;
pub use message::{Message, PublishOutcome, PublishRequest, RequestError, SharedMessage};
pub use position::{Epoch, MultiPosition, Position, PositionError};
pub use registry::{Registry, RegistryStats};
pub use subscriber::{Event, Lagged, SubscribeError, Subscribed, Subscriber, SubscriberLimits};
