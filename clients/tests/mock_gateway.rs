//! The client library against an in-process fake gateway (axum) that speaks
//! the README's wire protocol: decoding, resume positions, de-duplication,
//! error bodies. No real gateway is needed; the real one is tested in `tests/`.
#![allow(clippy::unwrap_used)]

use std::{
    sync::{Arc, Mutex},
    time::Duration,
};

use axum::{
    body::Body,
    extract::{ws::Message, Query, State, WebSocketUpgrade},
    http::{HeaderMap, StatusCode},
    response::{IntoResponse, Response},
    routing::{get, post},
    Json, Router,
};
use clients::{
    Error, GatewayClient, PublishRequest, ServerFrame, SubscribeOptions, SubscriptionEvent,
    Timeouts, Transport,
};
use serde_json::{json, Value};

#[derive(Default)]
struct Seen {
    /// Last-Event-ID headers (SSE), `since` values (WS), cursors (poll), in order.
    resumes: Vec<String>,
    connects: usize,
}

type Shared = Arc<Mutex<Seen>>;

fn msg(offset: u64) -> Value {
    json!({"type":"message","channel":"c","offset":offset,"epoch":"e","time":1000 + offset,
           "data":{"n":offset}})
}

fn subscribed(offset: u64) -> Value {
    json!({"type":"subscribed","channel":"c","epoch":"e","offset":offset,"recovered":true})
}

async fn publish(Json(body): Json<Value>) -> Response {
    if let Some(list) = body.get("messages").and_then(Value::as_array) {
        let results: Vec<Value> = list
            .iter()
            .enumerate()
            .map(|(i, _)| json!({"channel":"c","offset":i + 1,"epoch":"e","duplicate":false}))
            .collect();
        return Json(json!({ "results": results })).into_response();
    }
    if body["channel"] == "bad channel" {
        let err = json!({"error":{"code":"bad_channel","message":"no spaces"}});
        return (StatusCode::BAD_REQUEST, Json(err)).into_response();
    }
    let dup = body.get("id").is_some_and(|id| id == "again");
    Json(json!({"channel":body["channel"],"offset":8,"epoch":"k3f9a2","duplicate":dup}))
        .into_response()
}

async fn sse(State(seen): State<Shared>, headers: HeaderMap) -> Response {
    let last = headers
        .get("last-event-id")
        .map(|v| v.to_str().unwrap().to_owned());
    let chunks: Vec<String> = {
        let mut s = seen.lock().unwrap();
        s.connects += 1;
        s.resumes.push(last.clone().unwrap_or_default());
        match last.as_deref() {
            None => vec![
                "\u{FEFF}: hello\r\n\r\n".into(),
                format!("event: subscribed\ndata: {}\n\n", subscribed(0)),
                format!("id: e:1\ndata: {}\n\nid: e:2\nda", msg(1)),
                format!("ta: {}\r", msg(2)),
                "\n\r\n".into(),
                // The stream ends here: the client must resume from e:2.
            ],
            Some(_) => vec![
                "retry: 10\n\n".into(),
                format!("event: subscribed\ndata: {}\n\n", subscribed(2)),
                // A duplicate the client must skip, then a new one.
                format!("id: e:2\ndata: {}\n\n", msg(2)),
                format!("id: e:3\ndata: {}\n\n", msg(3)),
            ],
        }
    };
    let resumed = last.is_some();
    let stream = async_stream(chunks, resumed);
    Response::builder()
        .header("content-type", "text/event-stream")
        .body(Body::from_stream(stream))
        .unwrap()
}

/// The chunks one by one; if `hold`, then stay open without data.
fn async_stream(
    chunks: Vec<String>,
    hold: bool,
) -> impl futures::Stream<Item = Result<String, std::io::Error>> {
    futures::stream::unfold((chunks.into_iter(), hold), |(mut it, hold)| async move {
        match it.next() {
            Some(c) => Some((Ok(c), (it, hold))),
            None if hold => {
                tokio::time::sleep(Duration::from_secs(3600)).await;
                None
            }
            None => None,
        }
    })
}

async fn ws(State(seen): State<Shared>, up: WebSocketUpgrade) -> Response {
    up.on_upgrade(move |mut sock| async move {
        let conn = {
            let mut s = seen.lock().unwrap();
            s.connects += 1;
            s.connects
        };
        while let Some(Ok(m)) = sock.recv().await {
            let Message::Text(t) = m else { continue };
            let op: Value = serde_json::from_str(t.as_str()).unwrap();
            let send = |v: Value| Message::Text(v.to_string().into());
            match op["op"].as_str().unwrap() {
                "ping" => sock.send(send(json!({"type":"pong"}))).await.unwrap(),
                "subscribe" if op["channel"] == "bad" => {
                    let e =
                        json!({"type":"error","code":"bad_channel","reason":"no","channel":"bad"});
                    sock.send(send(e)).await.unwrap();
                }
                "subscribe" => {
                    let since = op
                        .get("since")
                        .and_then(Value::as_str)
                        .unwrap_or("")
                        .to_owned();
                    seen.lock().unwrap().resumes.push(since);
                    if conn == 1 {
                        for v in [subscribed(0), msg(1), msg(2)] {
                            sock.send(send(v)).await.unwrap();
                        }
                        // Drop the connection without a close handshake.
                        return;
                    }
                    for v in [subscribed(2), msg(2), msg(3)] {
                        sock.send(send(v)).await.unwrap();
                    }
                }
                other => {
                    let e = json!({"type":"error","code":"unknown_op","reason":other});
                    sock.send(send(e)).await.unwrap();
                }
            }
        }
    })
}

async fn poll(State(seen): State<Shared>, Query(q): Query<Vec<(String, String)>>) -> Json<Value> {
    let cursor = q
        .iter()
        .find(|(k, _)| k == "cursor")
        .map(|(_, v)| v.clone());
    seen.lock()
        .unwrap()
        .resumes
        .push(cursor.clone().unwrap_or_default());
    Json(match cursor.as_deref() {
        None => json!({"messages":[msg(1)],"cursor":"e:1","recovered":true}),
        Some("e:1") => json!({"messages":[msg(2), msg(3)],"cursor":"e:3","recovered":true}),
        Some("stale:9") => json!({"messages":[],"cursor":"e:3","recovered":false}),
        Some(_) => {
            tokio::time::sleep(Duration::from_millis(50)).await;
            json!({"messages":[],"cursor":"e:3","recovered":true})
        }
    })
}

async fn start() -> (GatewayClient, Shared) {
    let seen = Shared::default();
    let app = Router::new()
        .route("/v1/publish", post(publish))
        .route("/v1/sse", get(sse))
        .route("/v1/ws", get(ws))
        .route("/v1/poll", get(poll))
        .with_state(seen.clone());
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    tokio::spawn(async move { axum::serve(listener, app).await.unwrap() });
    let timeouts = Timeouts {
        idle: Duration::from_secs(5),
        ..Timeouts::default()
    };
    let client = GatewayClient::with_timeouts(&format!("http://{addr}"), timeouts).unwrap();
    (client, seen)
}

async fn bounded<T>(f: impl std::future::Future<Output = T>) -> T {
    tokio::time::timeout(Duration::from_secs(20), f)
        .await
        .expect("test step timed out")
}

#[tokio::test]
async fn publish_returns_results_and_surfaces_error_bodies() {
    let (gw, _) = start().await;
    let r = bounded(gw.publish(&PublishRequest::new("files:alice", json!({"hello":1})))).await;
    let r = r.unwrap();
    assert_eq!(
        (r.channel.as_str(), r.offset, r.epoch.as_str(), r.duplicate),
        ("files:alice", 8, "k3f9a2", false)
    );
    let again = PublishRequest::new("c", json!(1)).with_id("again");
    assert!(bounded(gw.publish(&again)).await.unwrap().duplicate);

    let err = bounded(gw.publish(&PublishRequest::new("bad channel", json!(1))))
        .await
        .unwrap_err();
    match &err {
        Error::Gateway(g) => {
            assert_eq!(
                (g.status, g.code.as_str(), g.message.as_str()),
                (Some(400), "bad_channel", "no spaces")
            )
        }
        other => panic!("{other:?}"),
    }
    assert!(!err.is_retryable());

    let batch = vec![
        PublishRequest::new("c", json!(1)),
        PublishRequest::new("c", json!(2)),
    ];
    let rs = bounded(gw.publish_batch(&batch)).await.unwrap();
    let offsets: Vec<u64> = rs.into_iter().map(|r| r.unwrap().offset).collect();
    assert_eq!(offsets, vec![1, 2]);
}

#[tokio::test]
async fn sse_stream_decodes_frames_and_ids() {
    let (gw, seen) = start().await;
    let mut s = bounded(gw.sse(&["c"], None)).await.unwrap();
    let f = bounded(s.next_frame()).await.unwrap().unwrap();
    assert!(matches!(f.frame, ServerFrame::Subscribed(ref x) if x.offset == 0));
    assert_eq!(f.event, "subscribed");
    for want in 1..=2 {
        let f = bounded(s.next_frame()).await.unwrap().unwrap();
        assert_eq!(f.id, format!("e:{want}"));
        assert!(matches!(f.frame, ServerFrame::Message(ref m) if m.offset == want));
    }
    assert!(
        bounded(s.next_frame()).await.unwrap().is_none(),
        "stream ended"
    );
    assert_eq!(s.last_event_id(), "e:2");

    let mut s = bounded(gw.sse(&["c"], Some("e:2"))).await.unwrap();
    assert!(bounded(s.next_event()).await.unwrap().is_some());
    assert_eq!(s.retry(), Some(Duration::from_millis(10)));
    assert_eq!(
        seen.lock().unwrap().resumes,
        vec!["".to_owned(), "e:2".to_owned()]
    );
}

async fn collect_three(gw: &GatewayClient, transport: Transport) -> (Vec<u64>, String, u64) {
    let mut sub = gw
        .subscribe(SubscribeOptions::new(transport, ["c"]))
        .unwrap();
    let mut offsets = Vec::new();
    while offsets.len() < 3 {
        match bounded(sub.next()).await.unwrap() {
            SubscriptionEvent::Message(m) => {
                assert_eq!(m.data["n"], m.offset);
                offsets.push(m.offset)
            }
            SubscriptionEvent::Subscribed(s) => assert_eq!(s.channel, "c"),
            SubscriptionEvent::NotRecovered { .. } => panic!("not expected"),
        }
    }
    (
        offsets,
        sub.position().unwrap().to_string(),
        sub.reconnects(),
    )
}

#[tokio::test]
async fn sse_subscription_resumes_with_last_event_id_and_skips_duplicates() {
    let (gw, seen) = start().await;
    let (offsets, pos, reconnects) = collect_three(&gw, Transport::Sse).await;
    assert_eq!(offsets, vec![1, 2, 3]);
    assert_eq!(pos, "e:3");
    assert_eq!(reconnects, 1);
    assert_eq!(
        seen.lock().unwrap().resumes,
        vec!["".to_owned(), "e:2".to_owned()]
    );
}

#[tokio::test]
async fn ws_subscription_resumes_with_since_and_skips_duplicates() {
    let (gw, seen) = start().await;
    let (offsets, pos, reconnects) = collect_three(&gw, Transport::Ws).await;
    assert_eq!(offsets, vec![1, 2, 3]);
    assert_eq!(pos, "e:3");
    assert_eq!(reconnects, 1);
    assert_eq!(
        seen.lock().unwrap().resumes,
        vec!["".to_owned(), "e:2".to_owned()]
    );
}

#[tokio::test]
async fn poll_subscription_follows_the_cursor() {
    let (gw, seen) = start().await;
    let (offsets, pos, _) = collect_three(&gw, Transport::Poll).await;
    assert_eq!(offsets, vec![1, 2, 3]);
    assert_eq!(pos, "e:3");
    assert_eq!(
        seen.lock().unwrap().resumes,
        vec!["".to_owned(), "e:1".to_owned()]
    );

    let r = bounded(gw.poll(&["c"], Some("stale:9"), Some(1)))
        .await
        .unwrap();
    assert!(!r.recovered);
    assert_eq!(r.position().unwrap().to_string(), "e:3");
}

#[tokio::test]
async fn ws_client_speaks_ops_and_frames() {
    let (gw, _) = start().await;
    let mut ws = bounded(gw.ws::<&str>(&[])).await.unwrap();
    ws.ping().await.unwrap();
    assert_eq!(bounded(ws.recv()).await.unwrap(), Some(ServerFrame::Pong));
    ws.send_text(r#"{"op":"dance"}"#).await.unwrap();
    match bounded(ws.recv()).await.unwrap() {
        Some(ServerFrame::Error(e)) => assert_eq!(e.code, "unknown_op"),
        other => panic!("{other:?}"),
    }
    // Silence is a timeout, not a hang.
    let err = ws
        .recv_timeout(Duration::from_millis(100))
        .await
        .unwrap_err();
    assert!(matches!(err, Error::Timeout { .. }));
    bounded(ws.close()).await.unwrap();
}

#[tokio::test]
async fn refusals_end_a_subscription_at_once() {
    let (gw, _) = start().await;
    let mut sub = gw
        .subscribe(SubscribeOptions::new(Transport::Ws, ["bad"]))
        .unwrap();
    let err = bounded(sub.next()).await.unwrap_err();
    assert_eq!(err.code(), Some("bad_channel"));
}

#[tokio::test]
async fn an_unreachable_gateway_gives_up_after_bounded_retries() {
    // A port nothing listens on.
    let l = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let addr = l.local_addr().unwrap();
    drop(l);
    let gw = GatewayClient::new(&format!("http://{addr}")).unwrap();
    for t in [Transport::Ws, Transport::Sse, Transport::Poll] {
        let mut o = SubscribeOptions::new(t, ["c"]).max_retries(2);
        o.initial_backoff = Duration::from_millis(10);
        let mut sub = gw.subscribe(o).unwrap();
        match bounded(sub.next()).await.unwrap_err() {
            Error::GaveUp { attempts, .. } => assert_eq!(attempts, 3, "{t}"),
            other => panic!("{t}: {other:?}"),
        }
    }
}
