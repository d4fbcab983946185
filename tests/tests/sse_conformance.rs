//! Server-Sent Events conformance (WHATWG HTML, "Server-sent events") of
//! `GET /v1/sse`, read over a raw socket so every byte and every chunk is
//! seen as the gateway wrote it: headers, no byte-order mark, fields that a
//! publisher cannot forge, heartbeats at the configured interval, events
//! flushed as soon as they are written, and status codes chosen for how
//! `EventSource` reacts (it gives up for good on anything but 200).

use std::time::{Duration, Instant};

use anyhow::{bail, ensure, Context, Result};
use serde_json::Value;
use tests::raw_http::{self, RawResponse};
use tests::{unique_channel, within, Broker, Gateway, GatewayOpts, Node, STEP_TIMEOUT};

/// One event as the standard's parser builds it: its fields in order.
type Fields = Vec<(String, String)>;

/// Splits a stream into lines the way the standard does: CR LF, lone CR
/// and lone LF all end a line. A trailing partial line is left out.
fn lines(text: &str) -> Vec<&str> {
    let mut out = Vec::new();
    let mut rest = text;
    while let Some(i) = rest.find(['\r', '\n']) {
        out.push(&rest[..i]);
        let skip = if rest[i..].starts_with("\r\n") { 2 } else { 1 };
        rest = &rest[i + skip..];
    }
    out
}

/// The complete blocks of `text` (up to a blank line), with a check that
/// every line is a comment or one of the four fields, written `name: value`.
/// A block without `data` (say, a lone `retry:`) sets fields but is not
/// dispatched as an event.
fn blocks(text: &str) -> Result<Vec<Fields>> {
    let mut events = Vec::new();
    let mut current: Fields = Vec::new();
    for line in lines(text) {
        if line.is_empty() {
            if !current.is_empty() {
                events.push(std::mem::take(&mut current));
            }
            continue;
        }
        if line.starts_with(':') {
            continue;
        }
        let (name, value) = line
            .split_once(": ")
            .with_context(|| format!("line {line:?} is not `field: value`"))?;
        ensure!(
            matches!(name, "data" | "id" | "event" | "retry"),
            "line {line:?} names field {name:?}"
        );
        current.push((name.to_owned(), value.to_owned()));
    }
    Ok(events)
}

/// The blocks of `text` that the standard dispatches as events: those with data.
fn events(text: &str) -> Result<Vec<Fields>> {
    Ok(blocks(text)?
        .into_iter()
        .filter(|b| field(b, "data").is_some())
        .collect())
}

/// The value of `name` in an event (the last one, as the standard keeps).
fn field<'a>(event: &'a Fields, name: &str) -> Option<&'a str> {
    event
        .iter()
        .rev()
        .find(|(n, _)| n == name)
        .map(|(_, v)| v.as_str())
}

/// The event's data lines joined by LF, as `event.data`.
fn data(event: &Fields) -> String {
    event
        .iter()
        .filter(|(n, _)| n == "data")
        .map(|(_, v)| v.as_str())
        .collect::<Vec<_>>()
        .join("\n")
}

/// Whether `id` is a multi-channel position: `EPOCH:OFFSET` joined by `,`.
fn is_position_list(id: &str) -> bool {
    id.split(',').all(|p| {
        p.split_once(':').is_some_and(|(e, o)| {
            !e.is_empty()
                && e.len() <= 32
                && e.bytes().all(|b| b.is_ascii_alphanumeric())
                && !o.is_empty()
                && o.bytes().all(|b| b.is_ascii_digit())
        })
    })
}

/// Checks every field of every event: ids are positions (so never CR, LF or
/// NUL), event names are the documented ones, retry is digits only.
fn check_fields(events: &[Fields]) -> Result<()> {
    for event in events {
        for (name, value) in event {
            match name.as_str() {
                "id" => ensure!(is_position_list(value), "id {value:?} in {event:?}"),
                "event" => ensure!(
                    value == "subscribed" || value == "error",
                    "event name {value:?}"
                ),
                "retry" => ensure!(
                    !value.is_empty() && value.bytes().all(|b| b.is_ascii_digit()),
                    "retry {value:?}"
                ),
                _ => {}
            }
        }
    }
    Ok(())
}

/// Opens a raw SSE stream on `channels` with extra request headers.
async fn open(node: &Gateway, channels: &[&str], headers: &[(&str, &str)]) -> Result<RawResponse> {
    let query: Vec<String> = channels.iter().map(|c| format!("channel={c}")).collect();
    let path = format!("/v1/sse?{}", query.join("&"));
    raw_http::get(node.addr(), &path, headers).await
}

/// Reads until `text` holds at least `n` complete events; returns all of them.
async fn read_events(resp: &mut RawResponse, text: &mut String, n: usize) -> Result<Vec<Fields>> {
    loop {
        let all = events(text)?;
        if all.len() >= n {
            return Ok(all);
        }
        let chunk = resp
            .next_chunk()
            .await
            .with_context(|| format!("waiting for {n} events after {text:?}"))?
            .with_context(|| format!("stream ended after {} of {n} events: {text:?}", all.len()))?;
        text.push_str(std::str::from_utf8(&chunk).context("stream is not UTF-8")?);
    }
}

#[tokio::test]
async fn sse_headers_are_event_stream_no_cache_no_buffering_and_never_compressed() -> Result<()> {
    within(async {
        let node = Gateway::start(GatewayOpts::embedded()).await?;
        let channel = unique_channel("files:alice");
        let resp = open(
            &node,
            &[&channel],
            &[("Accept-Encoding", "gzip, deflate, br, zstd")],
        )
        .await?;
        ensure!(resp.status() == 200, "status of {}", resp.head);
        let content_type = resp
            .header("content-type")
            .unwrap_or_default()
            .to_ascii_lowercase();
        ensure!(
            content_type == "text/event-stream"
                || content_type == "text/event-stream; charset=utf-8",
            "content-type {content_type:?}"
        );
        ensure!(
            resp.header("cache-control")
                .is_some_and(|v| v.contains("no-cache")),
            "cache-control in {}",
            resp.head
        );
        ensure!(
            resp.header("x-accel-buffering") == Some("no"),
            "x-accel-buffering in {}",
            resp.head
        );
        ensure!(
            resp.header("content-encoding").is_none(),
            "compressed although EventSource needs each event at once: {}",
            resp.head
        );
        ensure!(
            resp.header("content-length").is_none(),
            "a stream with a length: {}",
            resp.head
        );
        Ok(())
    })
    .await
}

#[tokio::test]
async fn sse_stream_starts_without_a_byte_order_mark() -> Result<()> {
    within(async {
        let node = Gateway::start(GatewayOpts::embedded()).await?;
        let channel = unique_channel("files:alice");
        let mut resp = open(&node, &[&channel], &[]).await?;
        let first = resp.next_chunk().await?.context("empty stream")?;
        ensure!(
            !first.starts_with(b"\xef\xbb\xbf"),
            "stream starts with a BOM: {first:?}"
        );
        ensure!(
            [&b"retry: "[..], b":", b"event: ", b"id: ", b"data: "]
                .iter()
                .any(|p| first.starts_with(p)),
            "stream starts with {:?}",
            String::from_utf8_lossy(&first)
        );
        Ok(())
    })
    .await
}

#[tokio::test]
async fn publisher_controlled_bytes_cannot_inject_an_sse_field_or_event() -> Result<()> {
    within(async {
        let node = Gateway::start(GatewayOpts::embedded()).await?;
        let channel = unique_channel("files:alice");
        let mut resp = open(&node, &[&channel], &[]).await?;
        let mut text = String::new();
        read_events(&mut resp, &mut text, 1).await?;

        // Raw JSON bodies: escaped line breaks in strings, raw CR / LF / CRLF
        // as whitespace, and field-like text in id and publisher.
        let payloads = [
            r#""\n\nid: x\n""#,
            r#""a\rid: x\r\revent: hijack\r""#,
            r#""a\r\nretry: 1\r\n\r\ndata: x""#,
            "[1,\n\n2]",
            "{\"k\":\r\"v\"}",
            "[\r\n\r\n]",
            "[1,\r\r\r2]",
        ];
        let http = node.http();
        for (i, raw) in payloads.iter().enumerate() {
            // Distinct ids: a repeated one would be an idempotent duplicate.
            let body = format!(
                r#"{{"channel":"{channel}","data":{raw},"id":"id: x{i}","publisher":"event: y"}}"#
            );
            let (status, answer) = http.publish_raw("application/json", &body).await?;
            ensure!(status == 200, "publishing {raw:?}: {status} {answer}");
        }

        let all = read_events(&mut resp, &mut text, 1 + payloads.len()).await?;
        check_fields(&blocks(&text)?)?;
        let messages: Vec<&Fields> = all
            .iter()
            .filter(|e| field(e, "event").is_none() && field(e, "data").is_some())
            .collect();
        ensure!(
            messages.len() == payloads.len(),
            "{} message events for {} publishes: {text:?}",
            messages.len(),
            payloads.len()
        );
        for (i, (event, raw)) in messages.iter().zip(payloads).enumerate() {
            let envelope: Value =
                serde_json::from_str(&data(event)).with_context(|| format!("data of {event:?}"))?;
            let published: Value = serde_json::from_str(raw)?;
            ensure!(
                envelope["data"] == published,
                "{raw:?} arrived as {envelope}"
            );
            ensure!(
                envelope["id"] == format!("id: x{i}") && envelope["publisher"] == "event: y",
                "id / publisher changed: {envelope}"
            );
        }
        Ok(())
    })
    .await
}

#[tokio::test]
async fn sse_ids_of_a_multi_channel_stream_are_position_lists_without_cr_lf_or_nul() -> Result<()> {
    within(async {
        let node = Gateway::start(GatewayOpts::embedded()).await?;
        let (a, b) = (unique_channel("files:alice"), unique_channel("files:bob"));
        let mut resp = open(&node, &[&a, &b], &[]).await?;
        let mut text = String::new();
        read_events(&mut resp, &mut text, 2).await?;
        let http = node.http();
        http.publish(&a, serde_json::json!(1)).await?;
        http.publish(&b, serde_json::json!(2)).await?;
        http.publish(&a, serde_json::json!(3)).await?;

        let all = read_events(&mut resp, &mut text, 5).await?;
        check_fields(&blocks(&text)?)?;
        for event in &all {
            let id = field(event, "id").context("event without id")?;
            ensure!(
                id.split(',').count() == 2,
                "id {id:?} does not name both channels"
            );
            ensure!(!id.contains(['\r', '\n', '\0']), "id {id:?}");
        }
        let last = field(&all[4], "id").unwrap_or_default();
        let offsets: Vec<&str> = last
            .split(',')
            .filter_map(|p| p.split(':').nth(1))
            .collect();
        ensure!(offsets == ["2", "1"], "last id {last:?} is not a:2,b:1");
        Ok(())
    })
    .await
}

#[tokio::test]
async fn sse_heartbeat_comments_arrive_at_the_configured_interval() -> Result<()> {
    within(async {
        let node = Gateway::start(GatewayOpts::embedded().arg("--sse-heartbeat=1")).await?;
        let channel = unique_channel("files:alice");
        let mut resp = open(&node, &[&channel], &[]).await?;
        resp.next_chunk().await?.context("empty stream")?;

        let mut last = Instant::now();
        let mut beats = 0;
        while beats < 3 {
            let chunk = resp
                .next_chunk_within(Duration::from_secs(3))
                .await
                .with_context(|| format!("heartbeat {} not within 3 s", beats + 1))?
                .context("stream ended")?;
            let gap = last.elapsed();
            last = Instant::now();
            ensure!(
                chunk == b": heartbeat\n\n",
                "idle stream sent {:?}",
                String::from_utf8_lossy(&chunk)
            );
            ensure!(
                gap >= Duration::from_millis(500) && gap <= Duration::from_millis(2500),
                "heartbeat {} came {gap:?} after the previous one (interval 1 s)",
                beats + 1
            );
            beats += 1;
        }
        Ok(())
    })
    .await
}

#[tokio::test]
async fn each_sse_event_is_flushed_as_soon_as_it_is_written() -> Result<()> {
    within(async {
        // The default 15 s heartbeat: nothing else would push a buffered event out.
        let node = Gateway::start(GatewayOpts::embedded()).await?;
        let channel = unique_channel("files:alice");
        let mut resp = open(&node, &[&channel], &[]).await?;
        let mut text = String::new();
        read_events(&mut resp, &mut text, 1).await?;

        for n in 1..=3 {
            let sent = Instant::now();
            node.http()
                .publish(&channel, serde_json::json!({ "n": n }))
                .await?;
            let chunk = resp
                .next_chunk_within(Duration::from_secs(2))
                .await
                .with_context(|| format!("event {n} not flushed within 2 s"))?
                .context("stream ended")?;
            let chunk = String::from_utf8(chunk)?;
            ensure!(
                chunk.starts_with("id: ") && chunk.ends_with("\n\n") && events(&chunk)?.len() == 1,
                "event {n} was not written whole in one flush: {chunk:?}"
            );
            ensure!(
                sent.elapsed() < Duration::from_secs(2),
                "event {n} took {:?}",
                sent.elapsed()
            );
        }
        Ok(())
    })
    .await
}

#[tokio::test]
async fn sse_with_a_malformed_last_event_id_streams_with_recovered_false_not_a_4xx() -> Result<()> {
    within(async {
        let node = Gateway::start(GatewayOpts::embedded()).await?;
        let channel = unique_channel("files:alice");
        for bad in [
            "garbage",
            "a:1,b:2",
            "abc:-1",
            ":",
            "e:99999999999999999999999",
        ] {
            let mut resp = open(&node, &[&channel], &[("Last-Event-ID", bad)]).await?;
            ensure!(
                resp.status() == 200,
                "Last-Event-ID {bad:?}: EventSource would give up on {}",
                resp.head
            );
            let mut text = String::new();
            let all = read_events(&mut resp, &mut text, 1).await?;
            let subscribed: Value = serde_json::from_str(&data(&all[0]))?;
            ensure!(
                subscribed["recovered"] == false,
                "Last-Event-ID {bad:?}: {subscribed}"
            );
        }
        Ok(())
    })
    .await
}

#[tokio::test]
async fn sse_on_a_draining_node_ends_the_stream_with_a_retry_hint() -> Result<()> {
    within(async {
        let mut node = Gateway::start(GatewayOpts::embedded()).await?;
        let channel = unique_channel("files:alice");
        let mut resp = open(&node, &[&channel], &[]).await?;
        let mut text = String::new();
        read_events(&mut resp, &mut text, 1).await?;

        let exit = node.terminate().await?;
        ensure!(exit.success(), "drain exit {exit}");
        let mut rest = String::new();
        while let Some(chunk) = resp.next_chunk().await? {
            rest.push_str(&String::from_utf8(chunk)?);
        }
        let retry = lines(&rest)
            .into_iter()
            .filter_map(|l| l.strip_prefix("retry: "))
            .next_back()
            .with_context(|| format!("the stream ended without a retry hint: {rest:?}"))?;
        ensure!(
            retry.bytes().all(|b| b.is_ascii_digit()) && !retry.is_empty(),
            "retry {retry:?}"
        );
        Ok(())
    })
    .await
}

#[tokio::test]
async fn sse_while_the_broker_is_down_answers_200_with_a_retry_hint_not_a_terminal_5xx(
) -> Result<()> {
    within(async {
        let mut node = Node::start(
            Broker::Redis,
            GatewayOpts::embedded().arg("--redis-timeout=1"),
        )
        .await?;
        node.redis.as_mut().context("redis")?.kill()?;
        let channel = unique_channel("files:alice");

        let opened = Instant::now();
        let mut resp = open(&node.gateway, &[&channel], &[]).await?;
        let status = resp.status();
        let body = tokio::time::timeout(STEP_TIMEOUT, resp.body()).await;
        let body = match body {
            Ok(b) => String::from_utf8_lossy(&b?).into_owned(),
            Err(_) => bail!(
                "status {status}: the stream neither delivered nor ended within {STEP_TIMEOUT:?}"
            ),
        };
        ensure!(
            status == 200 && lines(&body).iter().any(|l| l.starts_with("retry: ")),
            "a transient broker outage answered {status} {body:?} after {:?}: \
             EventSource gives up for good on any status but 200",
            opened.elapsed()
        );
        let all = blocks(&body)?;
        check_fields(&all)?;
        let error = all
            .iter()
            .find(|b| field(b, "event") == Some("error"))
            .with_context(|| format!("no `event: error` in {body:?}"))?;
        let error: Value = serde_json::from_str(&data(error))?;
        ensure!(error["code"] == "unavailable", "error event {error}");
        Ok(())
    })
    .await
}

#[tokio::test]
async fn sse_last_event_id_header_that_is_not_visible_ascii_says_recovered_false() -> Result<()> {
    within(async {
        let node = Gateway::start(GatewayOpts::embedded()).await?;
        let channel = unique_channel("files:alice");
        node.http().publish(&channel, serde_json::json!(1)).await?;

        // Raw UTF-8 in the header: not a position, so it must not be read
        // as "no position" (recovered from now, silently skipping).
        let request = format!(
            "GET /v1/sse?channel={channel} HTTP/1.1\r\nHost: x\r\nLast-Event-ID: \u{e9}:1\r\n\r\n"
        );
        let mut resp = raw_http::send(node.addr(), request.as_bytes()).await?;
        ensure!(resp.status() == 200, "answered {}", resp.head);
        let mut text = String::new();
        let all = read_events(&mut resp, &mut text, 1).await?;
        let subscribed: Value = serde_json::from_str(&data(&all[0]))?;
        ensure!(
            subscribed["recovered"] == false,
            "an unreadable Last-Event-ID was taken as none: {subscribed}"
        );
        Ok(())
    })
    .await
}
