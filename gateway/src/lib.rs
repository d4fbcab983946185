//! A real-time notification gateway node, as a library: the binary in
//! `main.rs` only parses flags and calls [`run`].
//!
//! - [`config`]: flags and environment variables.
//! - [`app`]: shared node state and the router (one port for everything).
//! - [`server`]: the accept loop and per-connection control.
//! - [`streaming`]: the lean HTTP/1.1 path for SSE streams and long-polls.
//! - [`ws`], [`sse`], [`poll`]: the client transports, thin adapters between a
//!   [`fanout::Subscriber`] and bytes on a socket.
//! - [`publish`]: the publish API for backends.
//! - [`status`]: the status page, health and metrics.
//! - [`codes`]: every error and close code the gateway sends.
//! - [`error`]: HTTP error answers.
//!
//! Start-up: raise the open-file limit, connect the broker, bind, print the
//! bound address on stdout, serve. On SIGTERM or Ctrl-C the node drains: it
//! stops accepting, advises every client to reconnect elsewhere, lets queued
//! messages flush, and exits 0 within the drain deadline; a second signal
//! exits at once.

pub mod app;
pub mod codes;
pub mod config;
pub mod error;
pub mod poll;
pub mod publish;
pub mod server;
pub mod sse;
pub mod status;
pub mod streaming;
pub mod ws;

use std::{io::Write, sync::Arc, time::Duration};

use anyhow::Context;
use fanout::{HistoryConfig, Hub, RedisConfig, SubscriberLimits};
use tokio_util::{sync::CancellationToken, task::TaskTracker};

use crate::{app::AppState, config::Config};

/// Runs a node until it has drained after SIGTERM or Ctrl-C.
pub async fn run(config: Config) -> anyhow::Result<()> {
    let history = HistoryConfig {
        size: config.history_size,
        age: Duration::from_secs(config.history_age.max(1)),
    };
    let limits = SubscriberLimits {
        queue_messages: config.queue_messages.max(1),
        queue_bytes: config.queue_bytes.max(1),
        max_channels: config.max_channels.max(1),
        watch_timeout: Duration::from_secs(config.redis_timeout.max(1) * 2),
    };
    let listener = tokio::net::TcpListener::bind(config.listen)
        .await
        .with_context(|| format!("binding {}", config.listen))?;
    let addr = listener.local_addr().context("reading the bound address")?;

    let node_id = config
        .node_id
        .clone()
        .unwrap_or_else(|| format!("gateway-{}@{addr}", std::process::id()));
    let hub = match &config.redis {
        None => Hub::memory(history, limits),
        Some(url) => {
            let mut rc = RedisConfig::new(url.clone());
            rc.history = history;
            rc.max_data = config.max_payload;
            rc.command_timeout = Duration::from_secs(config.redis_timeout.max(1));
            rc.node_id = node_id.clone();
            rc.advertise = addr.to_string();
            Hub::redis(rc, limits).context("configuring the Redis broker")?
        }
    };

    let app = Arc::new(AppState {
        hub,
        node_id,
        config,
        shutdown: CancellationToken::new(),
        tracker: TaskTracker::new(),
        metrics: Default::default(),
    });
    let router = app::router(app.clone());

    // The one line on stdout: scripts and tests read the bound address from it.
    let mut out = std::io::stdout();
    writeln!(out, "listening on {addr}").context("writing to stdout")?;
    out.flush().context("writing to stdout")?;
    tracing::info!(%addr, broker = app.hub.broker_name(), "gateway listening on http://{addr}/");

    let signals = tokio::spawn(watch_signals(app.shutdown.clone()));
    server::serve(listener, router, app.clone()).await;

    // Draining: clients were told to go; wait for them within the deadline.
    app.tracker.close();
    let deadline = app.config.drain_timeout();
    if tokio::time::timeout(deadline, app.tracker.wait())
        .await
        .is_err()
    {
        tracing::warn!(
            left = app.tracker.len(),
            "drain deadline passed; closing the rest"
        );
    }
    signals.abort();
    tracing::info!("drained; exiting");
    Ok(())
}

/// First SIGTERM or Ctrl-C starts the drain; a second one exits at once.
async fn watch_signals(shutdown: CancellationToken) {
    let mut term = match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()) {
        Ok(s) => s,
        Err(e) => {
            tracing::error!(cause = %e, "cannot listen for SIGTERM");
            return;
        }
    };
    let first = tokio::select! {
        _ = term.recv() => "SIGTERM",
        _ = tokio::signal::ctrl_c() => "SIGINT",
    };
    tracing::info!(
        signal = first,
        "draining: no new connections, clients advised to reconnect"
    );
    shutdown.cancel();
    tokio::select! {
        _ = term.recv() => {}
        _ = tokio::signal::ctrl_c() => {}
    }
    tracing::warn!("second signal: exiting now");
    std::process::exit(1);
}
