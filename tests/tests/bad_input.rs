//! Bad input on every transport gets a clear refusal, never a crash: a 4xx
//! with `{"error":{"code","message"}}` over HTTP, an error frame over
//! WebSocket (after which the connection keeps working), and the node still
//! answers `/healthz` afterwards.

use anyhow::{ensure, Context, Result};
use serde_json::json;
use tests::http::expect_error_body;
use tests::{unique_channel, within, Broker, GatewayOpts, Node, WsClient};

/// Names the README's channel rule refuses: empty, too long (256 bytes),
/// and characters outside `A-Z a-z 0-9 _ - . : @ /`.
fn bad_channels() -> Vec<String> {
    vec![
        String::new(),
        "a".repeat(256),
        "has space".into(),
        "semi;colon".into(),
        "star*".into(),
        "quote\"".into(),
        "percent%".into(),
        "ünïcode".into(),
        "tab\tname".into(),
        "new\nline".into(),
    ]
}

/// A valid name of exactly 255 bytes using every allowed character class.
fn longest_good_channel() -> String {
    let alphabet = "AZaz09_-.:@/";
    alphabet.chars().cycle().take(255).collect()
}

#[tokio::test]
async fn publish_to_malformed_channel_is_400_bad_channel() -> Result<()> {
    within(async {
        let mut node = Node::start(Broker::Embedded, GatewayOpts::embedded()).await?;
        let http = node.http();

        for channel in bad_channels() {
            let body = json!({ "channel": channel, "data": {"x": 1} }).to_string();
            let (status, text) = http.publish_raw("application/json", &body).await?;
            let what = format!("POST /v1/publish {body}");
            let code = expect_error_body(&what, status, &text)?;
            ensure!(
                status == 400 && code == "bad_channel",
                "{what}: expected 400 bad_channel, got {status} {text}"
            );
        }
        node.gateway.assert_alive().await
    })
    .await
}

#[tokio::test]
async fn channel_name_of_255_allowed_bytes_is_accepted_everywhere() -> Result<()> {
    within(async {
        let node = Node::start(Broker::Embedded, GatewayOpts::embedded()).await?;
        let http = node.http();
        let channel = longest_good_channel();

        let mut ws = WsClient::connect(&node.gateway.ws_url("/v1/ws")).await?;
        ws.subscribe(&channel, None).await?;
        let answer = http.poll(&[&channel], None, 0).await?;
        ensure!(
            answer.recovered,
            "poll of the longest valid name: {}",
            answer.body
        );
        let ack = http.publish(&channel, json!("edge")).await?;
        ensure!(
            ack["offset"].is_u64(),
            "publish to the longest valid name: {ack}"
        );
        let message = ws.recv_type("message").await?;
        ensure!(
            message["channel"] == channel.as_str(),
            "wrong channel in {message}"
        );
        Ok(())
    })
    .await
}

#[tokio::test]
async fn sse_on_malformed_channel_is_400_bad_channel() -> Result<()> {
    within(async {
        let mut node = Node::start(Broker::Embedded, GatewayOpts::embedded()).await?;
        let http = node.http();

        for channel in bad_channels() {
            let mut url = http.url("/v1/sse")?;
            url.query_pairs_mut().append_pair("channel", &channel);
            let what = format!("GET {url}");
            let (status, text) = http.get_url(url, std::time::Duration::ZERO).await?;
            let code = expect_error_body(&what, status, &text)?;
            ensure!(
                status == 400 && code == "bad_channel",
                "{what}: expected 400 bad_channel, got {status} {text}"
            );
        }
        node.gateway.assert_alive().await
    })
    .await
}

#[tokio::test]
async fn long_poll_on_malformed_channel_is_400_bad_channel() -> Result<()> {
    within(async {
        let mut node = Node::start(Broker::Embedded, GatewayOpts::embedded()).await?;
        let http = node.http();

        for channel in bad_channels() {
            let url = http.poll_url(&[&channel], None, 0)?;
            let what = format!("GET {url}");
            let (status, text) = http.get_url(url, std::time::Duration::ZERO).await?;
            let code = expect_error_body(&what, status, &text)?;
            ensure!(
                status == 400 && code == "bad_channel",
                "{what}: expected 400 bad_channel, got {status} {text}"
            );
        }
        node.gateway.assert_alive().await
    })
    .await
}

#[tokio::test]
async fn websocket_subscribe_to_malformed_channel_gets_bad_channel_frame_and_stays_usable(
) -> Result<()> {
    within(async {
        let mut node = Node::start(Broker::Embedded, GatewayOpts::embedded()).await?;
        let mut ws = WsClient::connect(&node.gateway.ws_url("/v1/ws")).await?;

        for channel in bad_channels() {
            let op = json!({ "op": "subscribe", "channel": channel });
            ws.send(&op).await?;
            let frame = ws.recv().await.with_context(|| format!("answer to {op}"))?;
            ensure!(
                frame["type"] == "error"
                    && frame["code"] == "bad_channel"
                    && frame["channel"] == channel.as_str()
                    && frame["reason"].as_str().is_some_and(|r| !r.is_empty()),
                "{op}: expected {{type:error, code:bad_channel, reason, channel}}, got {frame}"
            );
        }

        // The same connection still subscribes and delivers.
        ws.ping().await?;
        let channel = unique_channel("files:alice");
        ws.subscribe(&channel, None).await?;
        node.http().publish(&channel, json!("after errors")).await?;
        let message = ws.recv_type("message").await?;
        ensure!(message["data"] == "after errors", "unexpected {message}");
        node.gateway.assert_alive().await
    })
    .await
}

#[tokio::test]
async fn publish_with_malformed_json_is_400_and_node_stays_up() -> Result<()> {
    within(async {
        let mut node = Node::start(Broker::Embedded, GatewayOpts::embedded()).await?;
        let http = node.http();

        let not_json = [
            "",
            "{",
            "{not json}",
            r#"{"channel":"files:alice","data":}"#,
            r#"{"channel":"files:alice","data":1"#,
            "\u{0}\u{1}",
        ];
        for body in not_json {
            let (status, text) = http.publish_raw("application/json", body).await?;
            let what = format!("POST /v1/publish {body:?}");
            expect_error_body(&what, status, &text)?;
            ensure!(status == 400, "{what}: expected 400, got {status} {text}");
        }

        // Well-formed JSON that is not a publish request: any clear 4xx.
        let wrong_shape = [
            "[1,2]",
            "42",
            r#"{"data":1}"#,
            r#"{"channel":5,"data":1}"#,
            r#"{"messages":"no"}"#,
        ];
        for body in wrong_shape {
            let (status, text) = http.publish_raw("application/json", body).await?;
            expect_error_body(&format!("POST /v1/publish {body:?}"), status, &text)?;
        }
        node.gateway.assert_alive().await
    })
    .await
}

#[tokio::test]
async fn websocket_unknown_op_gets_unknown_op_frame_and_connection_keeps_working() -> Result<()> {
    within(async {
        let mut node = Node::start(Broker::Embedded, GatewayOpts::embedded()).await?;
        let mut ws = WsClient::connect(&node.gateway.ws_url("/v1/ws")).await?;
        let channel = unique_channel("files:alice");
        ws.subscribe(&channel, None).await?;

        for op in [
            json!({"op": "explode"}),
            json!({"op": "SUBSCRIBE", "channel": channel}),
        ] {
            ws.send(&op).await?;
            let frame = ws.recv().await.with_context(|| format!("answer to {op}"))?;
            ensure!(
                frame["type"] == "error" && frame["code"] == "unknown_op",
                "{op}: expected an error frame with code unknown_op, got {frame}"
            );
        }

        ws.ping().await?;
        node.http()
            .publish(&channel, json!("still subscribed"))
            .await?;
        let message = ws.recv_type("message").await?;
        ensure!(
            message["data"] == "still subscribed",
            "unexpected {message}"
        );
        node.gateway.assert_alive().await
    })
    .await
}

#[tokio::test]
async fn websocket_non_json_frame_gets_error_frame_and_connection_keeps_working() -> Result<()> {
    within(async {
        let mut node = Node::start(Broker::Embedded, GatewayOpts::embedded()).await?;
        let mut ws = WsClient::connect(&node.gateway.ws_url("/v1/ws")).await?;

        for text in ["not json", "{\"op\":", "[]", "{}"] {
            ws.send_text(text).await?;
            let frame = ws
                .recv()
                .await
                .with_context(|| format!("answer to {text:?}"))?;
            ensure!(
                frame["type"] == "error" && frame["code"].as_str().is_some_and(|c| !c.is_empty()),
                "{text:?}: expected an error frame with a code, got {frame}"
            );
        }

        ws.ping().await?;
        node.gateway.assert_alive().await
    })
    .await
}

#[tokio::test]
async fn long_poll_with_malformed_cursor_is_400() -> Result<()> {
    within(async {
        let mut node = Node::start(Broker::Embedded, GatewayOpts::embedded()).await?;
        let http = node.http();
        let channel = unique_channel("files:alice");

        for cursor in [
            "garbage",
            "abc:",
            ":5",
            "abc:-1",
            "abc:x",
            "abc:5:6",
            "ab c:5",
            "abc:99999999999999999999999",
        ] {
            let url = http.poll_url(&[&channel], Some(cursor), 0)?;
            let what = format!("GET {url}");
            let (status, text) = http.get_url(url, std::time::Duration::ZERO).await?;
            expect_error_body(&what, status, &text)?;
            ensure!(status == 400, "{what}: expected 400, got {status} {text}");
        }
        node.gateway.assert_alive().await
    })
    .await
}
