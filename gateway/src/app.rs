//! The node's shared state and its one router: every transport on one port.

use std::{
    sync::{
        atomic::{AtomicI64, AtomicU64, Ordering},
        Arc,
    },
    time::Duration,
};

use axum::{
    routing::{get, post},
    Router,
};
use fanout::{Channel, Hub};
use tokio::sync::Notify;
use tokio_util::{sync::CancellationToken, task::TaskTracker};

use crate::{codes::ErrorCode, config::Config, error::ApiError};

/// Everything a request handler may need, shared by all connections of the node.
pub struct AppState {
    /// The fan-out core: registry and broker.
    pub hub: Hub,
    /// This node's name in the cluster view.
    pub node_id: String,
    pub config: Config,
    /// Cancelled when the node starts draining.
    pub shutdown: CancellationToken,
    /// Every connection and WebSocket session, so that drain can wait for them.
    pub tracker: TaskTracker,
    /// Live connection counts, for metrics and logs.
    pub metrics: Metrics,
}

/// Counters exported on `/metrics`.
#[derive(Default)]
pub struct Metrics {
    pub ws: AtomicI64,
    pub sse: AtomicI64,
    pub poll: AtomicI64,
    pub tcp: AtomicI64,
    pub published: AtomicU64,
}

/// Keeps one of the live-connection gauges in [`Metrics`] raised while held.
pub struct Gauge {
    app: App,
    which: fn(&Metrics) -> &AtomicI64,
}

impl Gauge {
    pub fn up(app: App, which: fn(&Metrics) -> &AtomicI64) -> Self {
        which(&app.metrics).fetch_add(1, Ordering::Relaxed);
        Self { app, which }
    }
}

impl Drop for Gauge {
    fn drop(&mut self) {
        (self.which)(&self.app.metrics).fetch_sub(1, Ordering::Relaxed);
    }
}

/// Per-connection facts the accept loop hands to handlers (a request extension).
#[derive(Clone)]
pub struct ConnInfo {
    pub peer: std::net::SocketAddr,
    /// Waking every waiter here drops the connection, even mid-write: a
    /// subscriber's queue overflow rings it to cut a stuck streaming client.
    pub alarm: Arc<Notify>,
}

pub type App = Arc<AppState>;

impl AppState {
    /// A reconnect delay with jitter, so clients leaving a draining node do not
    /// all arrive at the next one in the same instant.
    pub fn reconnect_delay(&self) -> Duration {
        let base = self.config.sse_retry_ms.max(100);
        Duration::from_millis(base / 2 + fastrand::u64(0..=base))
    }
}

pub fn router(app: App) -> Router {
    Router::new()
        .route("/", get(crate::status::page))
        .route("/healthz", get(crate::status::healthz))
        .route("/readyz", get(crate::status::readyz))
        .route("/metrics", get(crate::status::metrics))
        .route("/v1/ws", get(crate::ws::handler))
        .route("/v1/sse", get(crate::sse::handler))
        .route("/v1/poll", get(crate::poll::handler))
        .route("/v1/publish", post(crate::publish::handler))
        .route("/v1/cluster", get(crate::status::cluster))
        .route("/v1/channels/{channel}", get(crate::status::channel))
        .fallback(|| async { ApiError::plain(ErrorCode::NotFound) })
        .method_not_allowed_fallback(|| async { ApiError::plain(ErrorCode::MethodNotAllowed) })
        .with_state(app)
}

/// The query string of a transport request: channels in order, and other parameters.
pub struct Query {
    pairs: Vec<(String, String)>,
}

impl Query {
    pub fn parse(raw: Option<&str>) -> Self {
        let pairs = form_urlencoded::parse(raw.unwrap_or("").as_bytes())
            .map(|(k, v)| (k.into_owned(), v.into_owned()))
            .collect();
        Self { pairs }
    }

    /// The last value of `key`.
    pub fn get(&self, key: &str) -> Option<&str> {
        self.pairs
            .iter()
            .rev()
            .find(|(k, _)| k == key)
            .map(|(_, v)| v.as_str())
    }

    /// Every `channel=` value, validated, in order, without repeats.
    pub fn channels(&self, max: usize) -> Result<Vec<Channel>, ApiError> {
        let mut out: Vec<Channel> = Vec::new();
        for (_, v) in self.pairs.iter().filter(|(k, _)| k == "channel") {
            let ch = Channel::new(v)
                .map_err(|e| ApiError::new(ErrorCode::BadChannel, format!("{v:?}: {e}")))?;
            if !out.contains(&ch) {
                out.push(ch);
            }
        }
        if out.len() > max {
            return Err(ApiError::new(
                ErrorCode::TooManyChannels,
                format!("at most {max} channels per connection"),
            ));
        }
        Ok(out)
    }
}

/// The JSON of a `subscribed` frame or event.
pub fn subscribed_json(s: &fanout::Subscribed) -> String {
    serde_json::json!({
        "type": "subscribed",
        "channel": s.channel.as_str(),
        "epoch": s.position.epoch.as_str(),
        "offset": s.position.offset,
        "recovered": s.recovered,
    })
    .to_string()
}
