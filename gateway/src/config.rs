//! Command-line flags and environment variables of a gateway node.
//!
//! Every flag can also be set by the environment variable shown in `--help`;
//! a flag given on the command line wins.

use std::{net::SocketAddr, time::Duration};

use clap::Parser;

/// A real-time notification gateway node: WebSocket, Server-Sent Events and
/// long-polling on one port, fanning out messages from an embedded broker or Redis.
#[derive(Debug, Clone, Parser)]
#[command(name = "gateway", version)]
pub struct Config {
    /// Address to listen on (port 0 picks a free port; the bound address is printed).
    #[arg(long, env = "GATEWAY_LISTEN", default_value = "127.0.0.1:8080")]
    pub listen: SocketAddr,

    /// Redis URL shared by every node; without it the node runs on its embedded broker.
    #[arg(long, env = "GATEWAY_REDIS")]
    pub redis: Option<String>,

    /// Messages of history kept per channel (0 keeps none: resume never recovers).
    #[arg(long, env = "GATEWAY_HISTORY_SIZE", default_value_t = 1000)]
    pub history_size: usize,

    /// Seconds a message stays in history.
    #[arg(long, env = "GATEWAY_HISTORY_AGE", default_value_t = 600)]
    pub history_age: u64,

    /// Largest published payload (`data`), in bytes.
    #[arg(long, env = "GATEWAY_MAX_PAYLOAD", default_value_t = 64 * 1024)]
    pub max_payload: usize,

    /// Largest publish request body, in bytes (a batch holds several payloads).
    #[arg(long, env = "GATEWAY_MAX_BODY", default_value_t = 1024 * 1024)]
    pub max_body: usize,

    /// Most messages in one batch publish.
    #[arg(long, env = "GATEWAY_MAX_BATCH", default_value_t = 1000)]
    pub max_batch: usize,

    /// API key required for publishing (`Authorization: Bearer KEY`); unset means open.
    #[arg(long, env = "GATEWAY_PUBLISH_KEY", hide_env_values = true)]
    pub publish_key: Option<String>,

    /// Messages a connection's queue holds before it is cut as a slow consumer.
    #[arg(long, env = "GATEWAY_QUEUE_MESSAGES", default_value_t = 1024)]
    pub queue_messages: usize,

    /// Envelope bytes a connection's queue holds before it is cut as a slow consumer.
    #[arg(long, env = "GATEWAY_QUEUE_BYTES", default_value_t = 4 * 1024 * 1024)]
    pub queue_bytes: usize,

    /// Channels one connection may hold.
    #[arg(long, env = "GATEWAY_MAX_CHANNELS", default_value_t = 256)]
    pub max_channels: usize,

    /// Client connections this node accepts at once; more are refused at accept.
    #[arg(long, env = "GATEWAY_MAX_CONNECTIONS", default_value_t = 100_000)]
    pub max_connections: usize,

    /// Largest WebSocket message (and frame) a client may send, in bytes.
    #[arg(long, env = "GATEWAY_WS_MAX_MESSAGE", default_value_t = 4096)]
    pub ws_max_message: usize,

    /// Seconds between WebSocket pings from the gateway.
    #[arg(long, env = "GATEWAY_WS_PING", default_value_t = 25)]
    pub ws_ping: u64,

    /// Seconds without any frame from a WebSocket client before it is closed as dead.
    #[arg(long, env = "GATEWAY_WS_IDLE_TIMEOUT", default_value_t = 60)]
    pub ws_idle_timeout: u64,

    /// Seconds between SSE heartbeat comments.
    #[arg(long, env = "GATEWAY_SSE_HEARTBEAT", default_value_t = 15)]
    pub sse_heartbeat: u64,

    /// Reconnect delay advised to SSE clients (`retry:`), in milliseconds.
    #[arg(long, env = "GATEWAY_SSE_RETRY_MS", default_value_t = 2000)]
    pub sse_retry_ms: u64,

    /// Long-poll hold when the request names no timeout, in seconds.
    #[arg(long, env = "GATEWAY_POLL_TIMEOUT", default_value_t = 25)]
    pub poll_timeout: u64,

    /// Longest long-poll hold, in seconds; longer requests are clamped. Below the
    /// 60 s idle timeout of common proxies.
    #[arg(long, env = "GATEWAY_POLL_MAX_TIMEOUT", default_value_t = 55)]
    pub poll_max_timeout: u64,

    /// Most messages one long-poll answer carries.
    #[arg(long, env = "GATEWAY_POLL_MAX_MESSAGES", default_value_t = 1000)]
    pub poll_max_messages: usize,

    /// Seconds a draining node gives clients to leave before it exits.
    #[arg(long, env = "GATEWAY_DRAIN_TIMEOUT", default_value_t = 10)]
    pub drain_timeout: u64,

    /// This node's name in the cluster view (default: `gateway-PID@LISTEN`).
    #[arg(long, env = "GATEWAY_NODE_ID")]
    pub node_id: Option<String>,

    /// Print the table of error and close codes as Markdown and exit.
    #[arg(long)]
    pub print_codes: bool,

    /// Seconds a Redis command (or connect) may take before the link counts as down.
    #[arg(long, env = "GATEWAY_REDIS_TIMEOUT", default_value_t = 2)]
    pub redis_timeout: u64,
}

impl Config {
    pub fn ws_ping(&self) -> Duration {
        Duration::from_secs(self.ws_ping.max(1))
    }

    pub fn ws_idle_timeout(&self) -> Duration {
        Duration::from_secs(self.ws_idle_timeout.max(1))
    }

    pub fn sse_heartbeat(&self) -> Duration {
        Duration::from_secs(self.sse_heartbeat.max(1))
    }

    pub fn drain_timeout(&self) -> Duration {
        Duration::from_secs(self.drain_timeout)
    }
}
