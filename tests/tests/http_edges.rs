//! The edges of the plain-HTTP endpoints: every long-poll and publish
//! request gets a final status and, when refused, a JSON body
//! `{"error":{"code","message"}}` whose code is in the gateway's table.
//!
//! Long-poll: polls from one cursor may run at once (the node keeps no
//! per-client state), a malformed cursor is a 400 with a reason, a timeout
//! over the maximum is clamped and said so. Publish: 415, 400, 413 and bad
//! channels each with their code, admission before the body is read, and a
//! batch is all-or-nothing, naming its bad item.

use std::time::{Duration, Instant};

use anyhow::{ensure, Context, Result};
use serde_json::{json, Value};
use tests::http::expect_error_body;
use tests::raw_http;
use tests::{unique_channel, within, Broker, Gateway, GatewayOpts, Node, WsClient};

/// Every error code in the gateway's table (`gateway --print-codes`).
fn table_error_codes() -> Result<Vec<String>> {
    let out = std::process::Command::new(tests::bins::gateway()?)
        .arg("--print-codes")
        .output()
        .context("running gateway --print-codes")?;
    Ok(String::from_utf8(out.stdout)?
        .lines()
        .filter_map(|l| l.strip_prefix("| `"))
        .filter_map(|l| l.split('`').next())
        .map(str::to_owned)
        .collect())
}

/// Checks an error answer: `status`, JSON `{"error":{"code","message"}}`
/// with `code`, which must be in the table. Returns the message.
fn expect_refusal(what: &str, status: u16, text: &str, want: (u16, &str)) -> Result<String> {
    let code = expect_error_body(what, status, text)?;
    ensure!(
        (status, code.as_str()) == want,
        "{what}: expected {} {}, got {status} {text}",
        want.0,
        want.1
    );
    ensure!(
        table_error_codes()?.contains(&code),
        "{what}: code {code} is not in the table"
    );
    let body: Value = serde_json::from_str(text)?;
    Ok(body["error"]["message"]
        .as_str()
        .unwrap_or_default()
        .to_owned())
}

#[tokio::test]
async fn concurrent_long_polls_from_one_cursor_all_get_the_same_message_and_cursor() -> Result<()> {
    within(async {
        let node = Gateway::start(GatewayOpts::embedded()).await?;
        let http = node.http();
        let channel = unique_channel("files:alice");
        let start = http.poll(&[&channel], None, 0).await?.cursor;

        let polls: Vec<_> = (0..6)
            .map(|_| {
                let (http, channel, start) = (http.clone(), channel.clone(), start.clone());
                tokio::spawn(async move { http.poll(&[&channel], Some(&start), 8).await })
            })
            .collect();
        // Publish once every poll is parked: the node counts them as live.
        tests::eventually("six parked polls", Duration::from_secs(5), || async {
            let (_, metrics) = http.get("/metrics").await?;
            let parked = metrics
                .lines()
                .find(|l| l.starts_with("gateway_connections{transport=\"poll\"}"))
                .and_then(|l| l.split_whitespace().last())
                .and_then(|n| n.parse::<i64>().ok());
            Ok(parked.is_some_and(|n| n >= 6).then_some(()))
        })
        .await?;
        let ack = http.publish(&channel, json!("once")).await?;

        let mut cursors = Vec::new();
        for poll in polls {
            let answer = poll.await??;
            ensure!(
                answer.recovered
                    && answer.messages.len() == 1
                    && answer.messages[0]["data"] == "once"
                    && answer.messages[0]["offset"] == ack["offset"],
                "a poll from {start} answered {}",
                answer.body
            );
            cursors.push(answer.cursor);
        }
        cursors.dedup();
        ensure!(cursors.len() == 1, "different cursors: {cursors:?}");
        Ok(())
    })
    .await
}

#[tokio::test]
async fn malformed_cursor_is_400_bad_position_with_a_reason() -> Result<()> {
    within(async {
        let node = Gateway::start(GatewayOpts::embedded()).await?;
        let http = node.http();
        let (a, b) = (unique_channel("files:alice"), unique_channel("files:bob"));
        let cases: [(&[&str], &str); 6] = [
            (&[&a], "garbage"),
            (&[&a], "abc:-1"),
            (&[&a], "ab_c:1"),
            (&[&a], "a:1,b:2"),
            (&[&a, &b], "a:1"),
            (&[&a], &"e:1,".repeat(2000)),
        ];
        for (channels, cursor) in cases {
            let url = http.poll_url(channels, Some(cursor), 0)?;
            let what = format!("GET {}", &url.as_str()[..url.as_str().len().min(200)]);
            let (status, text) = http.get_url(url, Duration::ZERO).await?;
            let message = expect_refusal(&what, status, &text, (400, "bad_position"))?;
            ensure!(
                message.contains("cursor"),
                "{what}: the reason does not say what was wrong: {message:?}"
            );
        }
        Ok(())
    })
    .await
}

#[tokio::test]
async fn long_poll_timeout_over_the_maximum_is_clamped_and_reported() -> Result<()> {
    within(async {
        let node = Gateway::start(GatewayOpts::embedded().arg("--poll-max-timeout=1")).await?;
        let http = node.http();
        let channel = unique_channel("files:alice");
        let started = Instant::now();
        let answer = http.poll(&[&channel], None, 30).await?;
        ensure!(
            started.elapsed() < Duration::from_secs(5),
            "a 30 s poll on a node whose maximum is 1 s held {:?}",
            started.elapsed()
        );
        ensure!(
            answer.body["timeout"] == 1 && answer.body["timeout_clamped"] == true,
            "the clamp is not reported: {}",
            answer.body
        );

        // A poll within the maximum says nothing about clamping.
        let answer = http.poll(&[&channel], None, 1).await?;
        ensure!(
            answer.body.get("timeout_clamped").is_none(),
            "clamp reported for 1 s: {}",
            answer.body
        );
        Ok(())
    })
    .await
}

#[tokio::test]
async fn long_poll_timeout_too_large_for_an_integer_is_clamped_not_refused() -> Result<()> {
    within(async {
        let node = Gateway::start(GatewayOpts::embedded().arg("--poll-max-timeout=1")).await?;
        let http = node.http();
        let channel = unique_channel("files:alice");
        let url = http.url(&format!(
            "/v1/poll?channel={channel}&timeout=18446744073709551616"
        ))?;
        let (status, text) = http.get_url(url, Duration::from_secs(1)).await?;
        ensure!(
            status == 200,
            "a timeout over the maximum must be clamped, got {status} {text}"
        );
        let body: Value = serde_json::from_str(&text)?;
        ensure!(body["timeout_clamped"] == true, "not reported: {body}");
        Ok(())
    })
    .await
}

#[tokio::test]
async fn long_poll_timeout_that_is_not_a_whole_number_is_400_bad_request() -> Result<()> {
    within(async {
        let node = Gateway::start(GatewayOpts::embedded()).await?;
        let http = node.http();
        let channel = unique_channel("files:alice");
        for timeout in ["-1", "1.5", "abc", "", "0x10", "1e3"] {
            let mut url = http.url("/v1/poll")?;
            url.query_pairs_mut()
                .append_pair("channel", &channel)
                .append_pair("timeout", timeout);
            let what = format!("GET {url}");
            let (status, text) = http.get_url(url, Duration::ZERO).await?;
            expect_refusal(&what, status, &text, (400, "bad_request"))?;
        }
        Ok(())
    })
    .await
}

#[tokio::test]
async fn long_poll_without_a_channel_is_400_no_channel() -> Result<()> {
    within(async {
        let node = Gateway::start(GatewayOpts::embedded()).await?;
        let (status, text) = node.http().get("/v1/poll?timeout=0").await?;
        expect_refusal("GET /v1/poll", status, &text, (400, "no_channel"))?;
        Ok(())
    })
    .await
}

#[tokio::test]
async fn publish_with_a_content_type_other_than_json_is_415() -> Result<()> {
    within(async {
        let node = Gateway::start(GatewayOpts::embedded()).await?;
        let http = node.http();
        let body = json!({"channel": unique_channel("files:alice"), "data": 1}).to_string();
        for content_type in [
            "text/plain",
            "application/x-www-form-urlencoded",
            "application/jsonx",
            "application/json-seq",
            "multipart/form-data; boundary=x",
        ] {
            let (status, text) = http.publish_raw(content_type, &body).await?;
            let what = format!("publish as {content_type}");
            expect_refusal(&what, status, &text, (415, "unsupported_media_type"))?;
        }

        // No content type at all.
        let request = format!(
            "POST /v1/publish HTTP/1.1\r\nHost: x\r\nContent-Length: {}\r\nConnection: close\r\n\r\n{body}",
            body.len()
        );
        let mut resp = raw_http::send(node.addr(), request.as_bytes()).await?;
        let text = String::from_utf8(resp.body().await?)?;
        expect_refusal(
            "publish without a content type",
            resp.status(),
            &text,
            (415, "unsupported_media_type"),
        )?;

        // Parameters and case do not matter.
        for content_type in ["application/json; charset=utf-8", "Application/JSON"] {
            let (status, text) = http.publish_raw(content_type, &body).await?;
            ensure!(
                status == 200,
                "publish as {content_type}: {status} {text}"
            );
        }
        Ok(())
    })
    .await
}

#[tokio::test]
async fn publish_of_malformed_json_is_400_bad_json() -> Result<()> {
    within(async {
        let node = Gateway::start(GatewayOpts::embedded()).await?;
        let http = node.http();
        for body in [
            "",
            "{",
            "{\"channel\":\"a\",\"data\":}",
            "{\"channel\":\"a\",\"data\":1,}",
            "{\"channel\":\"a\",\"data\":NaN}",
            "{\"channel\":\"a\",\"data\":\"\u{1}\"}",
            "{\"channel\":\"a\",\"data\":1} trailing",
        ] {
            let (status, text) = http.publish_raw("application/json", body).await?;
            expect_refusal(
                &format!("publish {body:?}"),
                status,
                &text,
                (400, "bad_json"),
            )?;
        }
        Ok(())
    })
    .await
}

#[tokio::test]
async fn publish_of_null_data_is_delivered_not_refused() -> Result<()> {
    within(async {
        let node = Gateway::start(GatewayOpts::embedded()).await?;
        let channel = unique_channel("files:alice");
        let mut ws = WsClient::connect(&node.ws_url(&format!("/v1/ws?channel={channel}"))).await?;
        ws.recv_type("subscribed").await?;
        let body = json!({"channel": channel, "data": null}).to_string();
        let (status, text) = node.http().publish_raw("application/json", &body).await?;
        ensure!(
            status == 200,
            "null is a JSON value, but publishing it answered {status} {text}"
        );
        let message = ws.recv_type("message").await?;
        ensure!(
            message.get("data") == Some(&Value::Null),
            "delivered {message}"
        );
        Ok(())
    })
    .await
}

#[tokio::test]
async fn publish_over_the_payload_or_body_limit_is_413() -> Result<()> {
    within(async {
        let opts = GatewayOpts::embedded()
            .arg("--max-payload=100")
            .arg("--max-body=1000");
        let node = Gateway::start(opts).await?;
        let http = node.http();
        let channel = unique_channel("files:alice");

        let at_limit = json!({"channel": channel, "data": "x".repeat(98)}).to_string();
        let (status, text) = http.publish_raw("application/json", &at_limit).await?;
        ensure!(status == 200, "data of exactly 100 bytes: {status} {text}");

        let data_over = json!({"channel": channel, "data": "x".repeat(99)}).to_string();
        let (status, text) = http.publish_raw("application/json", &data_over).await?;
        expect_refusal(
            "data of 101 bytes",
            status,
            &text,
            (413, "payload_too_large"),
        )?;

        let items: Vec<Value> = (0..20)
            .map(|_| json!({"channel": channel, "data": "x".repeat(50)}))
            .collect();
        let body_over = json!({ "messages": items }).to_string();
        let (status, text) = http.publish_raw("application/json", &body_over).await?;
        expect_refusal(
            "a body over 1000 bytes",
            status,
            &text,
            (413, "payload_too_large"),
        )?;
        Ok(())
    })
    .await
}

#[tokio::test]
async fn publish_declaring_a_content_length_over_the_limit_is_413_without_waiting_for_the_body(
) -> Result<()> {
    within(async {
        let node = Gateway::start(GatewayOpts::embedded().arg("--max-body=1000")).await?;
        // Ten megabytes announced, a few bytes sent: admission must not wait
        // for (or buffer) a body it will refuse.
        let request = "POST /v1/publish HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\n\
                       Content-Length: 10000000\r\n\r\n{\"channel\":";
        let started = Instant::now();
        let answer = tokio::time::timeout(
            Duration::from_secs(3),
            raw_http::send(node.addr(), request.as_bytes()),
        )
        .await;
        let mut resp = match answer {
            Ok(resp) => resp?,
            Err(_) => anyhow::bail!(
                "no answer within 3 s to a declared 10 MB body: the node waits for the body"
            ),
        };
        let status = resp.status();
        let text = String::from_utf8(
            tokio::time::timeout(Duration::from_secs(3), resp.body())
                .await
                .context("the 413 body did not end")??,
        )?;
        expect_refusal(
            "declared 10 MB body",
            status,
            &text,
            (413, "payload_too_large"),
        )?;
        ensure!(
            started.elapsed() < Duration::from_secs(3),
            "took {:?}",
            started.elapsed()
        );
        Ok(())
    })
    .await
}

#[tokio::test]
async fn batch_with_one_bad_item_publishes_nothing_and_names_the_item() -> Result<()> {
    within(async {
        let node = Gateway::start(GatewayOpts::embedded().arg("--max-payload=100")).await?;
        let http = node.http();
        let (a, b) = (unique_channel("files:alice"), unique_channel("files:bob"));
        let mut ws_a = WsClient::connect(&node.ws_url(&format!("/v1/ws?channel={a}"))).await?;
        ws_a.recv_type("subscribed").await?;

        let good = |ch: &str| json!({"channel": ch, "data": {"ok": true}});
        let cases = [
            (
                json!({"channel": "bad channel", "data": 1}),
                (400, "bad_channel"),
            ),
            (
                json!({"channel": a, "data": "x".repeat(200)}),
                (413, "payload_too_large"),
            ),
            (json!({"channel": a}), (400, "bad_request")),
            (json!({"data": 1}), (400, "bad_request")),
            (
                json!({"channel": a, "data": 1, "id": "a\nb"}),
                (400, "bad_id"),
            ),
            (
                json!({"channel": a, "data": 1, "publisher": ""}),
                (400, "bad_id"),
            ),
        ];
        for (bad, want) in cases {
            let batch = json!({"messages": [good(&a), good(&b), bad, good(&a)]});
            let (status, text) = http
                .publish_raw("application/json", &batch.to_string())
                .await?;
            let what = format!("batch with {bad} third");
            let message = expect_refusal(&what, status, &text, want)?;
            ensure!(
                message.contains("messages[2]"),
                "{what}: the message does not name the bad item: {message:?}"
            );
        }

        // Nothing of those batches was published: the first message either
        // channel ever gets is the marker, at offset 1.
        for channel in [&a, &b] {
            let ack = http.publish(channel, json!("marker")).await?;
            ensure!(
                ack["offset"] == 1,
                "{channel}: a refused batch published something: {ack}"
            );
        }
        let first = ws_a.recv_type("message").await?;
        ensure!(first["data"] == "marker", "first delivery on {a}: {first}");
        Ok(())
    })
    .await
}

#[tokio::test]
async fn empty_batch_and_batch_over_the_maximum_are_400() -> Result<()> {
    within(async {
        let node = Gateway::start(GatewayOpts::embedded().arg("--max-batch=3")).await?;
        let http = node.http();
        let channel = unique_channel("files:alice");
        let item = json!({"channel": channel, "data": 1});
        for batch in [
            json!({"messages": []}),
            json!({"messages": [item, item, item, item]}),
        ] {
            let (status, text) = http
                .publish_raw("application/json", &batch.to_string())
                .await?;
            expect_refusal(
                &format!("batch {batch}"),
                status,
                &text,
                (400, "bad_request"),
            )?;
        }
        Ok(())
    })
    .await
}

#[tokio::test]
async fn unknown_path_and_wrong_method_are_json_errors_with_allow() -> Result<()> {
    within(async {
        let node = Gateway::start(GatewayOpts::embedded()).await?;
        let (status, text) = node.http().get("/v2/nothing").await?;
        expect_refusal("GET /v2/nothing", status, &text, (404, "not_found"))?;

        let mut resp = raw_http::get(node.addr(), "/v1/publish", &[]).await?;
        let text = String::from_utf8(resp.body().await?)?;
        expect_refusal(
            "GET /v1/publish",
            resp.status(),
            &text,
            (405, "method_not_allowed"),
        )?;
        ensure!(
            resp.header("allow").is_some_and(|a| a.contains("POST")),
            "405 without Allow: POST: {}",
            resp.head
        );
        ensure!(
            resp.header("content-type") == Some("application/json"),
            "error content type: {}",
            resp.head
        );
        Ok(())
    })
    .await
}

#[tokio::test]
async fn unauthorized_publish_is_401_with_www_authenticate_bearer() -> Result<()> {
    within(async {
        let node = Gateway::start(GatewayOpts::embedded().arg("--publish-key=sekrit")).await?;
        let body = json!({"channel": unique_channel("files:alice"), "data": 1}).to_string();
        for auth in [
            None,
            Some("Bearer wrong"),
            Some("sekrit"),
            Some("Basic c2Vrcml0"),
        ] {
            let mut request = format!(
                "POST /v1/publish HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\n\
                 Content-Length: {}\r\nConnection: close\r\n",
                body.len()
            );
            if let Some(auth) = auth {
                request.push_str(&format!("Authorization: {auth}\r\n"));
            }
            request.push_str(&format!("\r\n{body}"));
            let mut resp = raw_http::send(node.addr(), request.as_bytes()).await?;
            let text = String::from_utf8(resp.body().await?)?;
            let what = format!("publish with Authorization {auth:?}");
            expect_refusal(&what, resp.status(), &text, (401, "unauthorized"))?;
            ensure!(
                resp.header("www-authenticate")
                    .is_some_and(|v| v.to_ascii_lowercase().starts_with("bearer")),
                "{what}: RFC 9110 wants WWW-Authenticate on a 401: {}",
                resp.head
            );
        }
        Ok(())
    })
    .await
}

#[tokio::test]
async fn plain_get_of_the_websocket_endpoint_is_a_json_error_from_the_table() -> Result<()> {
    within(async {
        let node = Gateway::start(GatewayOpts::embedded()).await?;
        let channel = unique_channel("files:alice");
        let (status, text) = node
            .http()
            .get(&format!("/v1/ws?channel={channel}"))
            .await?;
        let code = expect_error_body("GET /v1/ws without Upgrade", status, &text)?;
        ensure!(
            table_error_codes()?.contains(&code),
            "GET /v1/ws without Upgrade: code {code} is not in the table"
        );
        Ok(())
    })
    .await
}

#[tokio::test]
async fn deeply_nested_data_gets_the_same_answer_on_both_brokers_and_no_internal_error_text(
) -> Result<()> {
    within(async {
        // 1001 nested arrays: 2 KB, far under the payload limit, but deeper
        // than the Redis function's JSON decoder goes.
        let depth = 1001;
        let data = format!("{}{}", "[".repeat(depth), "]".repeat(depth));
        let mut answers = Vec::new();
        for broker in [Broker::Embedded, Broker::Redis] {
            let node = Node::start(broker, GatewayOpts::embedded()).await?;
            let channel = unique_channel("files:alice");
            let body = format!(r#"{{"channel":"{channel}","data":{data}}}"#);
            let (status, text) = node.http().publish_raw("application/json", &body).await?;
            if status != 200 {
                let what = format!("{broker:?}: {depth}-deep data");
                let message = expect_refusal(&what, status, &text, (400, "bad_json"))?;
                ensure!(
                    !message.contains("Pipeline") && !message.contains("ResponseError"),
                    "{what}: internal error text reaches the publisher: {message:?}"
                );
            }
            answers.push((broker, status));
        }
        ensure!(
            answers[0].1 == answers[1].1,
            "the same publish answered differently per broker: {answers:?}"
        );
        Ok(())
    })
    .await
}

#[tokio::test]
async fn more_channels_than_the_limit_is_refused_with_too_many_channels_on_every_transport(
) -> Result<()> {
    within(async {
        let node = Gateway::start(GatewayOpts::embedded().arg("--max-channels=2")).await?;
        let http = node.http();
        let names: Vec<String> = (0..3).map(|_| unique_channel("files:alice")).collect();
        let query: Vec<String> = names.iter().map(|c| format!("channel={c}")).collect();
        let query = query.join("&");

        for path in [
            format!("/v1/poll?{query}&timeout=0"),
            format!("/v1/sse?{query}"),
        ] {
            let (status, text) = http.get(&path).await?;
            expect_refusal(&path, status, &text, (400, "too_many_channels"))?;
        }
        let request = format!(
            "GET /v1/ws?{query} HTTP/1.1\r\nHost: x\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n\
             Sec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\nSec-WebSocket-Version: 13\r\n\
             Connection: close\r\n\r\n"
        );
        let mut resp = raw_http::send(node.addr(), request.as_bytes()).await?;
        let text = String::from_utf8(resp.body().await?)?;
        expect_refusal(
            "WebSocket upgrade with 3 channels",
            resp.status(),
            &text,
            (400, "too_many_channels"),
        )?;

        // Over a live WebSocket: the third subscribe is refused, the first
        // two keep delivering.
        let mut ws = WsClient::connect(&node.ws_url("/v1/ws")).await?;
        ws.subscribe(&names[0], None).await?;
        ws.subscribe(&names[1], None).await?;
        ws.send(&json!({"op": "subscribe", "channel": names[2]})).await?;
        let refused = ws.recv().await?;
        ensure!(
            refused["type"] == "error" && refused["code"] == "too_many_channels",
            "third subscribe answered {refused}"
        );
        http.publish(&names[1], json!("kept")).await?;
        let message = ws.recv_type("message").await?;
        ensure!(message["data"] == "kept", "after the refusal: {message}");
        Ok(())
    })
    .await
}
