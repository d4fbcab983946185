//! The status page at `/`, health checks and Prometheus metrics.

use std::sync::atomic::Ordering;

use axum::{
    extract::{rejection::PathRejection, Path, State},
    http::{header, StatusCode},
    response::{Html, IntoResponse, Response},
    Json,
};
use serde_json::json;

use fanout::Channel;

use crate::{app::App, codes::ErrorCode, error::ApiError};

/// A page that shows a channel's file-update events live, over EventSource.
pub async fn page() -> Html<&'static str> {
    Html(include_str!("status.html"))
}

/// Alive: the process answers.
pub async fn healthz() -> Json<serde_json::Value> {
    Json(json!({"status": "ok"}))
}

/// Ready: the broker link is up and the node is not draining.
pub async fn readyz(State(app): State<App>) -> Response {
    let broker = app.hub.is_ready();
    let draining = app.shutdown.is_cancelled();
    let status = if broker && !draining {
        StatusCode::OK
    } else {
        StatusCode::SERVICE_UNAVAILABLE
    };
    let body = json!({
        "ready": broker && !draining,
        "broker": app.hub.broker_name(),
        "broker_connected": broker,
        "draining": draining,
    });
    (status, Json(body)).into_response()
}

/// The cluster view: every live node as it describes itself.
pub async fn cluster(State(app): State<App>) -> Result<Json<serde_json::Value>, ApiError> {
    let local = json!({
        "id": app.node_id,
        "channels": app.hub.registry().channel_count(),
        "link_up": app.hub.is_ready(),
    });
    let nodes = app.hub.cluster(local).await?;
    Ok(Json(
        json!({ "broker": app.hub.broker_name(), "nodes": nodes }),
    ))
}

/// Who listens to one channel: subscribers here, and nodes holding any.
pub async fn channel(
    State(app): State<App>,
    name: Result<Path<String>, PathRejection>,
) -> Result<Json<serde_json::Value>, ApiError> {
    let Path(name) = name.map_err(|e| ApiError::new(ErrorCode::BadChannel, e.body_text()))?;
    let channel = Channel::new(&name)
        .map_err(|e| ApiError::new(ErrorCode::BadChannel, format!("{name:?}: {e}")))?;
    let (local, nodes) = app.hub.listening(&channel).await?;
    Ok(Json(json!({
        "channel": channel.as_str(),
        "local_subscribers": local,
        "nodes_listening": nodes,
    })))
}

/// Prometheus text exposition.
pub async fn metrics(State(app): State<App>) -> Response {
    let m = &app.metrics;
    let stats = &app.hub.registry().stats;
    let text = format!(
        "# HELP gateway_connections Open client connections per transport.\n\
         # TYPE gateway_connections gauge\n\
         gateway_connections{{transport=\"ws\"}} {}\n\
         gateway_connections{{transport=\"sse\"}} {}\n\
         gateway_connections{{transport=\"poll\"}} {}\n\
         # HELP gateway_tcp_connections Open TCP connections.\n\
         # TYPE gateway_tcp_connections gauge\n\
         gateway_tcp_connections {}\n\
         # HELP gateway_channels Channels with local subscribers.\n\
         # TYPE gateway_channels gauge\n\
         gateway_channels {}\n\
         # HELP gateway_published_total Messages accepted by this node's publish API.\n\
         # TYPE gateway_published_total counter\n\
         gateway_published_total {}\n\
         # HELP gateway_delivered_total Messages queued to local subscribers.\n\
         # TYPE gateway_delivered_total counter\n\
         gateway_delivered_total {}\n\
         # HELP gateway_dropped_total Deliveries refused because a subscriber queue was full.\n\
         # TYPE gateway_dropped_total counter\n\
         gateway_dropped_total {}\n\
         # HELP gateway_slow_consumer_disconnects_total Connections cut for falling behind.\n\
         # TYPE gateway_slow_consumer_disconnects_total counter\n\
         gateway_slow_consumer_disconnects_total {}\n\
         # HELP gateway_broker_reconnects_total Broker link re-establishments.\n\
         # TYPE gateway_broker_reconnects_total counter\n\
         gateway_broker_reconnects_total {}\n\
         # HELP gateway_broker_up Whether the broker link is up.\n\
         # TYPE gateway_broker_up gauge\n\
         gateway_broker_up {}\n",
        m.ws.load(Ordering::Relaxed),
        m.sse.load(Ordering::Relaxed),
        m.poll.load(Ordering::Relaxed),
        m.tcp.load(Ordering::Relaxed),
        app.hub.registry().channel_count(),
        m.published.load(Ordering::Relaxed),
        stats.delivered.load(Ordering::Relaxed),
        stats.dropped.load(Ordering::Relaxed),
        stats.lagged.load(Ordering::Relaxed),
        app.hub.broker_reconnects(),
        u8::from(app.hub.is_ready()),
    );
    ([(header::CONTENT_TYPE, "text/plain; version=0.0.4")], text).into_response()
}
