//! The end-to-end test harness: real `redis-server` and `gateway` processes on
//! free loopback ports, and thin clients that speak the wire protocol of the
//! README over real sockets.
//!
//! - [`bins`] finds the release binaries (`gateway`, `gateway-cli`) in the
//!   workspace target directory. It never builds them: `scripts/test.sh` does,
//!   once, before the tests run.
//! - [`redis_server`] owns one `redis-server` child on a free port (kill,
//!   restart on the same port, flush) and a minimal RESP client to inspect it.
//!   It never touches any Redis it did not start.
//! - [`gateway`] owns one `gateway` child: start on port 0, learn the port from
//!   its `listening on` line, wait for `/readyz`, kill or terminate it. Its log
//!   is printed when the handle is dropped, so a failing test shows it.
//! - [`cli`] owns one `gateway-cli watch` child: start it on a directory,
//!   wait until it is watching, keep its stderr for failure output.
//! - [`envelope`] checks the shapes every transport shares: the message
//!   envelope and `EPOCH:OFFSET` positions (including `0:0`, the position of
//!   a channel nothing was published to, which leads into the epoch its
//!   first publish creates).
//! - [`http`] is publish, long-poll and plain GETs over `reqwest`.
//! - [`ws`] is a WebSocket client over `tokio-tungstenite`.
//! - [`sse`] is a Server-Sent Events client: an incremental `text/event-stream`
//!   parser over a `reqwest` body stream.
//! - [`subscriber`] is one subscription over any transport, so a delivery
//!   promise is written once and checked on WebSocket, SSE and long-poll.
//! - [`process`] sends signals (SIGSTOP, SIGCONT, SIGTERM) to a child the
//!   test started and reads its resident memory from `/proc`.
//! - [`faults`] is what the fault-injection tests share: subscribers that
//!   reconnect with their position on every transport and record everything
//!   they saw, a publisher that retries each message under the same
//!   idempotency id until it is accepted, and the per-transport tally of
//!   published, delivered, lost and duplicated messages.
//! - [`wait`] bounds every wait: a whole-test timeout and a poll-until-true
//!   helper with a deadline, so no test sleeps to synchronise.
//!
//! The clients here decode frames as plain `serde_json::Value`s on purpose: the
//! tests pin the wire format itself, so they must not share decoding code
//! with the product they check. The `clients` library is used only where its
//! own promise is the subject (the watcher test decodes events as
//! `clients::FileUpdate`).

pub mod bins;
pub mod cli;
pub mod envelope;
pub mod faults;
pub mod gateway;
pub mod http;
pub mod process;
pub mod redis_server;
pub mod sse;
pub mod subscriber;
pub mod wait;
pub mod ws;

pub use envelope::{check_consecutive, check_envelope, Position};
pub use gateway::{Gateway, GatewayOpts};
pub use http::Http;
pub use redis_server::RedisServer;
pub use sse::{SseClient, SseEvent};
pub use subscriber::{Subscribed, Subscriber, Transport};
pub use wait::{eventually, within, STEP_TIMEOUT, TEST_TIMEOUT};
pub use ws::WsClient;

/// Which broker a node runs on.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Broker {
    /// The in-process broker (no `--redis`).
    Embedded,
    /// A fresh `redis-server` started for the node.
    Redis,
}

/// One gateway node, with the Redis it uses when it uses one. Fields drop in
/// order: the node goes before its Redis.
pub struct Node {
    pub gateway: Gateway,
    pub redis: Option<RedisServer>,
}

impl Node {
    /// Starts a node on `broker` with `opts` (whose `redis` is filled in).
    pub async fn start(broker: Broker, mut opts: GatewayOpts) -> anyhow::Result<Self> {
        let redis = match broker {
            Broker::Embedded => None,
            Broker::Redis => Some(RedisServer::start().await?),
        };
        opts.redis = redis.as_ref().map(RedisServer::url);
        let gateway = Gateway::start(opts).await?;
        Ok(Node { gateway, redis })
    }

    /// `http://127.0.0.1:PORT` of the node.
    pub fn base_url(&self) -> String {
        self.gateway.base_url()
    }

    /// An HTTP client for the node.
    pub fn http(&self) -> Http {
        self.gateway.http()
    }
}

/// A channel name that no other test uses, so tests sharing one Redis (or
/// reading one node's metrics) cannot see each other's traffic.
pub fn unique_channel(prefix: &str) -> String {
    use std::sync::atomic::{AtomicU64, Ordering};
    static NEXT: AtomicU64 = AtomicU64::new(0);

    let n = NEXT.fetch_add(1, Ordering::Relaxed);
    format!("{prefix}:{}-{n}", std::process::id())
}
pub mod browser;
pub mod raw_http;
pub mod raw_ws;
pub mod relay;
