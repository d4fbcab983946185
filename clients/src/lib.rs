//! Client library for the notification gateway (see the workspace README for
//! the wire protocol, which is the contract).
//!
//! - [`protocol`]: envelopes, positions, server frames, client ops.
//! - [`GatewayClient`] ([`client`]): base URL, HTTP pool, [`Timeouts`]; the
//!   transports hang off it:
//!   [`ws`](GatewayClient::ws) → [`WsClient`],
//!   [`sse`](GatewayClient::sse) → [`SseStream`] (over [`SseParser`]),
//!   [`poll`](GatewayClient::poll) → [`PollResponse`],
//!   [`publish`](GatewayClient::publish) / [`publish_batch`](GatewayClient::publish_batch),
//!   [`subscribe`](GatewayClient::subscribe) → [`Subscription`] (resuming, any transport).
//! - [`blocks`] and [`watch`]: block hashing and the directory watcher behind
//!   `gateway-cli watch`.
//!
//! Every network wait is bounded by a [`Timeouts`] value; an expired wait is
//! [`Error::Timeout`]. A refusal by the gateway is [`Error::Gateway`] with its
//! error code.

pub mod blocks;
pub mod client;
pub mod error;
pub mod poll;
pub mod protocol;
pub mod publish;
pub mod sse;
pub mod subscribe;
pub mod watch;
pub mod ws;

pub use client::{GatewayClient, Timeouts, DEFAULT_URL};
pub use error::{Error, GatewayError, Result};
pub use poll::PollResponse;
pub use protocol::{
    ClientOp, Envelope, ErrorFrame, MultiPosition, Position, PositionError, ServerFrame, Subscribed,
};
pub use publish::{BatchResult, PublishRequest, PublishResult};
pub use sse::{SseEvent, SseFrame, SseParser, SseStream};
pub use subscribe::{SubscribeOptions, Subscription, SubscriptionEvent, Transport};
pub use watch::{FileUpdate, FileWatcher, UpdateKind, WatchOptions, WatchState};
pub use ws::{WsClient, WsReceiver, WsSender};
