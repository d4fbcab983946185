//! A real browser's `EventSource` (Debian's headless Chromium, driven by
//! `tests/browser/eventsource.js`) against the gateway's SSE stream: what the
//! page gets in `event.data` is the envelope the WebSocket transport sends
//! for the same message (line breaks normalised to LF, as the HTML standard
//! says), its `data` is what was published, and after the server ends the
//! stream the browser's own reconnect with `Last-Event-ID` resumes exactly.
//!
//! Chromium and the npm packages come from `tests/browser/install.sh`, which
//! `scripts/test.sh` runs first.

use anyhow::{bail, ensure, Context, Result};
use futures::StreamExt;
use serde_json::{json, Value};
use tests::browser::BrowserEventSource;
use tests::relay::Relay;
use tests::{
    eventually, unique_channel, within, Broker, Gateway, GatewayOpts, Node, RedisServer,
    STEP_TIMEOUT,
};
use tokio_tungstenite::tungstenite::Message;

/// Published `data`, as raw JSON text, whose SSE framing needs care: line
/// breaks (LF only), empty values, characters outside the BMP and the
/// separators JavaScript once treated as line ends, escapes of line breaks
/// and of a whole SSE event, and one payload near the 64 KiB default limit.
fn tricky_payloads() -> Vec<(&'static str, String)> {
    vec![
        (
            "multi-line JSON (LF)",
            "{\n  \"path\": \"reports/q3.pdf\",\n  \"blocks\": [\n    \"0287\",\n    \"76aa\"\n  ],\n  \"changed\": [1]\n}".into(),
        ),
        ("blank lines inside JSON", "[1,\n\n\n2]".into()),
        ("trailing newline inside JSON", "{\"a\":1\n}".into()),
        ("empty string", "\"\"".into()),
        ("empty object", "{}".into()),
        ("empty array", "[]".into()),
        (
            "raw unicode",
            "\"é ß 中文 ✓ 😀 𝄞 \u{2028} \u{2029} \u{85} \u{feff} end\"".into(),
        ),
        (
            "escaped unicode",
            r#""\u00e9 \ud83d\ude00 \u2028 \u2029 \u0000 \u001f""#.into(),
        ),
        (
            "escaped line breaks",
            r#""line1\nline2\r\nline3\rline4""#.into(),
        ),
        (
            "escaped SSE event",
            r#""\n\nid: x\n\nevent: hijack\ndata: injected\n\nretry: 1\n""#.into(),
        ),
        ("large string", format!("\"{}\"", "x".repeat(60_000))),
    ]
}

/// Published `data` with CR and CRLF as JSON whitespace: the browser turns
/// every one into LF, so `event.data` differs from the envelope in those
/// bytes only, and parses to the same value.
fn cr_payloads() -> Vec<(&'static str, String)> {
    vec![
        (
            "CRLF whitespace",
            "{\r\n  \"a\": 1,\r\n  \"b\": [\r\n  ]\r\n}".into(),
        ),
        ("lone CR whitespace", "{\r\"a\":\r1}".into()),
        ("CR CR LF LF", "[1,\r\r\n\n2]".into()),
        ("mixed breaks", "{\"x\":\n\r\n\r[\"\\r\\n\"]}".into()),
    ]
}

/// CR LF and lone CR as LF: what a conforming SSE parser makes of line breaks.
fn normalise_breaks(text: &str) -> String {
    text.replace("\r\n", "\n").replace('\r', "\n")
}

/// Raw WebSocket text frames of one channel: the envelope bytes as sent.
struct Frames {
    stream: tokio_tungstenite::WebSocketStream<
        tokio_tungstenite::MaybeTlsStream<tokio::net::TcpStream>,
    >,
}

impl Frames {
    async fn open(node: &Gateway, channel: &str) -> Result<Self> {
        let url = node.ws_url(&format!("/v1/ws?channel={channel}"));
        let (stream, _) =
            tokio::time::timeout(STEP_TIMEOUT, tokio_tungstenite::connect_async(&url))
                .await
                .context("WebSocket connect timed out")??;
        let mut frames = Frames { stream };
        let first: Value = serde_json::from_str(&frames.next_text().await?)?;
        ensure!(first["type"] == "subscribed", "first frame {first}");
        Ok(frames)
    }

    async fn next_text(&mut self) -> Result<String> {
        loop {
            let next = tokio::time::timeout(STEP_TIMEOUT, self.stream.next())
                .await
                .context("no WebSocket frame in time")?;
            match next.context("WebSocket ended")?? {
                Message::Text(t) => return Ok(t.as_str().to_owned()),
                Message::Ping(_) | Message::Pong(_) => continue,
                other => bail!("unexpected WebSocket frame {other:?}"),
            }
        }
    }
}

/// Publishes each payload, then checks the browser's view of each against
/// the WebSocket frame of the same message. With `byte_exact`, `event.data`
/// must equal the frame byte for byte; otherwise after line-break
/// normalisation.
async fn check_payloads(payloads: Vec<(&'static str, String)>, byte_exact: bool) -> Result<()> {
    let node = Gateway::start(GatewayOpts::embedded()).await?;
    let channel = unique_channel("files:alice");
    let mut frames = Frames::open(&node, &channel).await?;
    let page = format!("{}/healthz", node.base_url());
    let stream = format!("{}/v1/sse?channel={channel}", node.base_url());
    let mut browser = BrowserEventSource::open(&page, &stream).await?;
    let subscribed = browser.next_kind("subscribed").await?;
    ensure!(
        subscribed["parsed"]["channel"] == channel.as_str(),
        "browser subscribed event {subscribed}"
    );

    let http = node.http();
    for (what, raw) in &payloads {
        let body = format!("{{\"channel\":\"{channel}\",\"data\":{raw}}}");
        let (status, text) = http.publish_raw("application/json", &body).await?;
        ensure!(status == 200, "publishing {what}: {status} {text}");
        let ack: Value = serde_json::from_str(&text)?;

        let frame = frames.next_text().await?;
        let seen = browser
            .next_kind("message")
            .await
            .with_context(|| format!("browser message for {what}"))?;
        let data = seen["data"].as_str().context("event.data is a string")?;
        if byte_exact {
            ensure!(
                !frame.contains('\r'),
                "{what}: the envelope itself holds a CR: {frame:?}"
            );
            ensure!(
                data == frame,
                "{what}: event.data differs from the envelope\n browser: {data:?}\n ws:      {frame:?}"
            );
        } else {
            ensure!(
                data == normalise_breaks(&frame),
                "{what}: event.data is not the envelope with breaks as LF\n browser: {data:?}\n ws:      {frame:?}"
            );
        }

        let envelope: Value = serde_json::from_str(&frame)?;
        let published: Value = serde_json::from_str(raw)?;
        ensure!(
            seen["parsed"] == envelope,
            "{what}: JSON.parse(event.data) is not the envelope: {} vs {envelope}",
            seen["parsed"]
        );
        ensure!(
            seen["parsed"]["data"] == published,
            "{what}: data {} is not what was published {published}",
            seen["parsed"]["data"]
        );
        let id = format!("{}:{}", ack["epoch"].as_str().unwrap_or("?"), ack["offset"]);
        ensure!(
            seen["lastEventId"] == id.as_str(),
            "{what}: lastEventId {} is not {id}",
            seen["lastEventId"]
        );
    }
    ensure!(
        browser.errors().is_empty(),
        "the stream failed: {:?}",
        browser.errors()
    );
    browser.close().await
}

#[tokio::test]
async fn browser_event_data_is_the_envelope_byte_for_byte_for_multiline_empty_and_unicode_payloads(
) -> Result<()> {
    within(check_payloads(tricky_payloads(), true)).await
}

#[tokio::test]
async fn browser_parses_json_with_cr_and_crlf_whitespace_back_to_the_published_value() -> Result<()>
{
    within(check_payloads(cr_payloads(), false)).await
}

#[tokio::test]
async fn browser_resumes_with_last_event_id_after_a_draining_node_ends_the_stream() -> Result<()> {
    within(async {
        // Two nodes on one Redis behind one relay address: the browser's
        // reconnect lands on node B with the Last-Event-ID node A gave it.
        let redis = RedisServer::start().await?;
        let mut a =
            Gateway::start(GatewayOpts::redis(redis.url()).arg("--sse-retry-ms=200")).await?;
        let b = Gateway::start(GatewayOpts::redis(redis.url())).await?;
        let relay = Relay::start(a.addr()).await?;
        let channel = unique_channel("files:alice");

        let page = format!("{}/healthz", relay.base_url());
        let stream = format!("{}/v1/sse?channel={channel}", relay.base_url());
        let mut browser = BrowserEventSource::open(&page, &stream).await?;
        browser.next_kind("subscribed").await?;

        // The channel's epoch is made by its first publish.
        let mut epoch = String::new();
        for n in 1..=3 {
            let ack = a.http().publish(&channel, json!({ "n": n })).await?;
            epoch = ack["epoch"].as_str().context("ack epoch")?.to_owned();
            let seen = browser.next_kind("message").await?;
            ensure!(
                seen["parsed"]["data"]["n"] == n && seen["lastEventId"] == format!("{epoch}:{n}"),
                "message {n}: {seen}"
            );
        }

        // Node A drains: its streams end with a short `retry:`. The relay
        // holds the browser's reconnect while two messages are published.
        relay.hold();
        relay.set_target(b.addr());
        let exit = a.terminate().await?;
        ensure!(exit.success(), "draining node A exited {exit}");
        eventually("the browser reconnects", STEP_TIMEOUT, || async {
            Ok((relay.waiting() > 0).then_some(()))
        })
        .await?;
        for n in 4..=5 {
            b.http().publish(&channel, json!({ "n": n })).await?;
        }
        relay.release();

        let again = browser.next_kind("subscribed").await?;
        ensure!(
            again["parsed"]["recovered"] == true
                && again["parsed"]["offset"] == 3
                && again["parsed"]["epoch"] == epoch.as_str(),
            "resumed subscribed event: {again}"
        );
        b.http().publish(&channel, json!({ "n": 6 })).await?;
        for n in 4..=6 {
            let seen = browser.next_kind("message").await?;
            ensure!(
                seen["parsed"]["data"]["n"] == n && seen["lastEventId"] == format!("{epoch}:{n}"),
                "after resume, message {n}: {seen}"
            );
        }

        let expected = format!("last-event-id: {epoch}:3");
        ensure!(
            relay
                .sent()
                .iter()
                .any(|s| s.to_ascii_lowercase().contains(&expected)),
            "no request carried {expected:?}; requests: {:?}",
            relay.sent()
        );
        ensure!(
            browser.opens() == 2
                && !browser.errors().is_empty()
                && browser.errors().iter().all(|e| e["readyState"] == 0),
            "expected two opens and reconnect errors only (readyState 0): opens {}, errors {:?}",
            browser.opens(),
            browser.errors()
        );
        browser.close().await
    })
    .await
}

#[tokio::test]
async fn browser_keeps_reconnecting_through_a_broker_outage_and_subscribes_once_it_is_back(
) -> Result<()> {
    within(async {
        let opts = GatewayOpts::embedded()
            .arg("--sse-retry-ms=200")
            .arg("--redis-timeout=1");
        let mut node = Node::start(Broker::Redis, opts).await?;
        let http = node.http();
        node.redis.as_mut().context("redis")?.kill()?;
        eventually("the node sees the broker down", STEP_TIMEOUT, || async {
            Ok((http.get("/readyz").await?.0 != 200).then_some(()))
        })
        .await?;

        let channel = unique_channel("files:alice");
        let page = format!("{}/healthz", node.base_url());
        let stream = format!("{}/v1/sse?channel={channel}", node.base_url());
        let mut browser = BrowserEventSource::open(&page, &stream).await?;

        // The gateway's `event: error` reaches `onerror` with its code, and
        // the end of the stream leaves the browser reconnecting (0), never
        // given up (2).
        let mut told = false;
        for _ in 0..20 {
            let error = browser.next_error().await?;
            ensure!(error["readyState"] != 2, "the browser gave up: {error}");
            if let Some(data) = error["data"].as_str() {
                let data: Value = serde_json::from_str(data)?;
                ensure!(data["code"] == "unavailable", "error event {data}");
                told = true;
            } else if told {
                break;
            }
        }
        ensure!(
            told,
            "no `event: error` with a code: {:?}",
            browser.errors()
        );

        node.redis.as_mut().context("redis")?.restart().await?;
        let subscribed = browser.next_kind("subscribed").await?;
        ensure!(
            subscribed["parsed"]["channel"] == channel.as_str(),
            "after the outage: {subscribed}"
        );
        ensure!(
            browser.errors().iter().all(|e| e["readyState"] != 2),
            "the browser gave up at some point: {:?}",
            browser.errors()
        );
        http.publish(&channel, json!("back")).await?;
        let message = browser.next_kind("message").await?;
        ensure!(
            message["parsed"]["data"] == "back",
            "after the outage: {message}"
        );
        browser.close().await
    })
    .await
}
