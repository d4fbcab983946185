//! The accept loop: one HTTP/1.1 connection task per client, tracked for drain.
//!
//! Each connection is served by hyper with upgrades (for WebSocket) and can be
//! dropped from outside through its alarm, which a subscriber's queue overflow
//! rings: that is how a streaming client that stopped reading is cut even while
//! its write is stuck. On drain the loop stops accepting, and every connection
//! is asked to finish its current request and close.

use std::{sync::atomic::Ordering, sync::Arc, time::Duration};

use axum::{extract::Request, Router};
use hyper::body::Incoming;
use hyper_util::rt::{TokioIo, TokioTimer};
use tokio::{
    net::{TcpListener, TcpStream},
    sync::Notify,
};
use tower::Service;

use crate::{
    app::{App, ConnInfo, Gauge},
    streaming,
};

/// How long a client may take to send its request headers.
const HEADER_TIMEOUT: Duration = Duration::from_secs(10);

/// Accepts connections until the node starts draining.
pub async fn serve(listener: TcpListener, router: Router, app: App) {
    loop {
        let accepted = tokio::select! {
            _ = app.shutdown.cancelled() => break,
            a = listener.accept() => a,
        };
        let (stream, peer) = match accepted {
            Ok(a) => a,
            Err(e) => {
                // Out of file descriptors or similar: back off briefly, keep serving.
                tracing::warn!(cause = %e, "accept failed");
                tokio::time::sleep(Duration::from_millis(20)).await;
                continue;
            }
        };
        // Upgraded WebSockets have left hyper's connection task: count them too.
        let open = app.metrics.tcp.load(Ordering::Relaxed) + app.metrics.ws.load(Ordering::Relaxed);
        if open.max(0) as usize >= app.config.max_connections {
            tracing::debug!(%peer, "connection limit reached; refusing");
            continue;
        }
        let _ = stream.set_nodelay(true);

        let info = ConnInfo {
            peer,
            alarm: Arc::new(Notify::new()),
        };
        app.tracker
            .spawn(connection(stream, info, router.clone(), app.clone()));
    }
}

/// Serves one connection: the lean path first, hyper if the request needs it.
async fn connection(stream: TcpStream, info: ConnInfo, router: Router, app: App) {
    let _gauge = Gauge::up(app.clone(), |m| &m.tcp);
    let alarm = info.alarm.clone();
    let serve = streaming::serve(stream, info.clone(), router.clone(), app.clone());
    let outcome = tokio::select! {
        outcome = serve => outcome,
        _ = alarm.notified() => return,
    };
    if let streaming::Outcome::Handoff(stream) = outcome {
        // Boxed: an idle stream on the lean path should not carry hyper's state.
        Box::pin(with_hyper(stream, info, router, app)).await;
    }
}

/// Serves the rest of a connection with hyper (publish, WebSocket upgrades, pages).
async fn with_hyper(stream: streaming::Prefixed, info: ConnInfo, router: Router, app: App) {
    let (peer, alarm) = (info.peer, info.alarm.clone());
    let service = hyper::service::service_fn(move |mut req: Request<Incoming>| {
        req.extensions_mut().insert(info.clone());
        let mut router = router.clone();
        async move { router.call(req).await }
    });
    let mut builder = hyper::server::conn::http1::Builder::new();
    builder
        .timer(TokioTimer::new())
        .header_read_timeout(HEADER_TIMEOUT);
    let conn = builder
        .serve_connection(TokioIo::new(stream), service)
        .with_upgrades();
    tokio::pin!(conn);
    let mut draining = false;
    loop {
        let rung = alarm.notified();
        tokio::select! {
            r = conn.as_mut() => {
                if let Err(e) = r {
                    tracing::debug!(%peer, cause = %e, "connection ended with an error");
                }
                break;
            }
            _ = rung => {
                tracing::debug!(%peer, "connection dropped: slow consumer");
                break;
            }
            _ = app.shutdown.cancelled(), if !draining => {
                draining = true;
                conn.as_mut().graceful_shutdown();
            }
        }
    }
}
