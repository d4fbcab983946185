//! Slow consumers are cut, not buffered without end, and do not slow anyone
//! else down.
//!
//! One node (embedded broker, default bounds: `--queue-messages 1024`,
//! `--queue-bytes 4194304`) holds four subscribers of one channel while
//! 100 000 small messages are published in batches:
//!
//! - a fast WebSocket subscriber, which must receive all of them, in order;
//! - a raw socket that completes the WebSocket upgrade, reads its
//!   `subscribed` frame and then never reads again;
//! - a raw socket that opens the SSE stream the same way;
//! - a `gateway-cli subscribe` process stopped with SIGSTOP.
//!
//! The three stalled clients must be cut: the node drops them from the
//! channel, closes their sockets (reading them afterwards ends in EOF or a
//! reset, never in silence) and counts each cut on
//! `gateway_slow_consumer_disconnects_total` (the SSE count also has a test
//! of its own, with nothing else on the node: it once went uncounted). The node's resident memory (`VmRSS`) must stay below
//! its baseline (measured with every subscriber attached, before the first
//! publish) plus [`RSS_HEADROOM`] = 64 MiB throughout.
//!
//! What a stalled WebSocket reads once it wakes up is documented, not
//! asserted: when the gateway notices the overflow while its write to that
//! socket is stuck, it drops the connection without a close frame (the last
//! bytes may even be a frame cut short); a close 4001 comes only when it
//! notices with nothing pending. The test prints which it observed.

use std::sync::{Arc, Mutex};
use std::time::Duration;

use anyhow::{ensure, Context, Result};
use serde_json::{json, Value};
use tests::faults::metric;
use tests::faults::stalled::{ws_frames, DrainEnd, PausedCli, StalledSocket};
use tests::{
    eventually, unique_channel, within, Gateway, GatewayOpts, Position, WsClient, STEP_TIMEOUT,
};
use tokio::sync::watch;

const MESSAGES: usize = 100_000;

/// Messages per publish request.
const BATCH: usize = 250;

/// The most messages the fast subscriber may lag behind before the next
/// batch is published: with [`BATCH`] it keeps the fast subscriber's queue
/// under half of its 1024-message bound, so a fast client is never cut for
/// the test's own burstiness.
const LAG_BEFORE_BATCH: usize = 256;

/// RSS allowed above the baseline.
const RSS_HEADROOM: u64 = 64 << 20;

/// RSS is sampled every this many batches.
const RSS_EVERY: usize = 20;

/// How long a drained stalled socket may stay silent before it counts as
/// still open.
const DRAIN_SILENCE: Duration = Duration::from_secs(3);

/// What the fast subscriber has taken: a count the publisher waits on, and
/// the first broken promise it saw.
struct Fast {
    count: watch::Receiver<usize>,
    error: Arc<Mutex<Option<String>>>,
    task: tokio::task::JoinHandle<Result<()>>,
}

/// Reads every message on `ws`, checking each follows the one before it
/// (`start`, then `n` = 0, 1, 2, ... as published).
fn read_fast(mut ws: WsClient, channel: String, start: Position) -> Fast {
    let (tx, count) = watch::channel(0usize);
    let error = Arc::new(Mutex::new(None));
    let seen = error.clone();
    let task = tokio::spawn(async move {
        let mut at = start;
        for n in 0..MESSAGES {
            let message = ws.recv_type("message").await?;
            let position = Position::of_message(&message)?;
            let follows = at.is_followed_by(&position.epoch, position.offset)
                && message["channel"] == channel.as_str()
                && message["data"] == json!({ "n": n });
            if !follows {
                let broken = format!("message #{n} after {at}: {message}");
                if let Ok(mut slot) = seen.lock() {
                    *slot = Some(broken.clone());
                }
                anyhow::bail!(broken);
            }
            at = position;
            let _ = tx.send(n + 1);
        }
        ws.close().await
    });
    Fast { count, error, task }
}

async fn local_subscribers(node: &Gateway, channel: &str) -> Result<u64> {
    let (_, text) = node.http().get(&format!("/v1/channels/{channel}")).await?;
    let body: Value = serde_json::from_str(&text)?;
    body["local_subscribers"]
        .as_u64()
        .with_context(|| format!("/v1/channels answered {body}"))
}

#[tokio::test]
async fn slow_consumers_are_cut_while_a_fast_one_gets_all_100k_in_order_and_memory_stays_bounded(
) -> Result<()> {
    within(async {
        let node = Gateway::start(GatewayOpts::embedded()).await?;
        let channel = unique_channel("files:alice");

        let mut ws = WsClient::connect(&node.ws_url("/v1/ws")).await?;
        let start = Position::of_subscribed(&ws.subscribe(&channel, None).await?)?;
        let mut fast = read_fast(ws, channel.clone(), start);
        let path = format!("?channel={channel}");
        let stalled_ws = StalledSocket::websocket(node.addr(), &format!("/v1/ws{path}")).await?;
        let stalled_sse = StalledSocket::sse(node.addr(), &format!("/v1/sse{path}")).await?;
        let paused = PausedCli::start(&node.base_url(), &channel, "ws").await?;
        ensure!(
            local_subscribers(&node, &channel).await? == 4,
            "all four subscribers must hold the channel before publishing"
        );

        let baseline = node.rss_bytes()?;
        let mut peak = baseline;
        for (i, first) in (0..MESSAGES).step_by(BATCH).enumerate() {
            let lag_ok = first.saturating_sub(LAG_BEFORE_BATCH);
            tokio::time::timeout(STEP_TIMEOUT, fast.count.wait_for(|&n| n >= lag_ok))
                .await
                .map_err(|_| {
                    anyhow::anyhow!("the fast subscriber stalled before message {lag_ok}")
                })?
                .map_err(|_| {
                    anyhow::anyhow!(
                        "the fast subscriber stopped: {:?}",
                        fast.error.lock().ok().and_then(|e| e.clone())
                    )
                })?;
            let batch: Vec<Value> = (first..(first + BATCH).min(MESSAGES))
                .map(|n| json!({ "channel": channel, "data": { "n": n } }))
                .collect();
            node.http()
                .publish_json(&json!({ "messages": batch }))
                .await?;
            if i % RSS_EVERY == 0 {
                peak = peak.max(node.rss_bytes()?);
            }
        }
        tokio::time::timeout(STEP_TIMEOUT * 2, &mut fast.task)
            .await
            .context("the fast subscriber did not get every message in time")?
            .context("fast subscriber task")?
            .context("fast subscriber")?;
        peak = peak.max(node.rss_bytes()?);

        let http = node.http();
        eventually("the stalled clients dropped", STEP_TIMEOUT, || async {
            Ok((local_subscribers(&node, &channel).await? == 0).then_some(()))
        })
        .await
        .with_context(|| format!("gateway-cli stderr {:?}", paused.stderr()))?;
        let cut = metric(&http, "gateway_slow_consumer_disconnects_total").await?;

        let (ws_bytes, ws_end) = stalled_ws.read_to_end(DRAIN_SILENCE).await;
        let (frames, torn) = ws_frames(&ws_bytes);
        let ws_messages = frames.iter().filter(|f| f.opcode == 0x1).count();
        let ws_last = match frames.last() {
            Some(f) if f.opcode == 0x8 => format!("close {:?}", f.close_code()),
            Some(f) => format!(
                "opcode {:#x} then {torn} bytes of a frame cut short",
                f.opcode
            ),
            None => "nothing".into(),
        };
        let (sse_bytes, sse_end) = stalled_sse.read_to_end(DRAIN_SILENCE).await;
        let sse_text = String::from_utf8_lossy(&sse_bytes);
        let sse_events = sse_text.matches("\nid: ").count();
        let sse_finished = sse_text.ends_with("0\r\n\r\n");
        paused.resume()?;

        eprintln!(
            "FIGURES slow consumers: published {MESSAGES}; fast websocket delivered \
             {MESSAGES}/{MESSAGES} lost 0 duplicated 0 out-of-order 0; stalled websocket cut \
             ({ws_end:?}) after {ws_messages} text frames, last frame {ws_last}; stalled sse \
             cut ({sse_end:?}) after {sse_events} events, terminal chunk {sse_finished}; \
             SIGSTOPped gateway-cli cut; slow-consumer cuts counted {cut}; RSS baseline {} MiB \
             peak {} MiB bound {} MiB",
            baseline >> 20,
            peak >> 20,
            (baseline + RSS_HEADROOM) >> 20
        );

        ensure!(
            peak <= baseline + RSS_HEADROOM,
            "RSS peaked at {} MiB, over the baseline {} MiB + 64 MiB",
            peak >> 20,
            baseline >> 20
        );
        for (what, end) in [("websocket", &ws_end), ("sse", &sse_end)] {
            ensure!(
                matches!(end, DrainEnd::Eof | DrainEnd::Reset(_)),
                "the stalled {what} socket must be closed by the node, but it ended {end:?}"
            );
        }
        ensure!(
            cut == 3.0,
            "gateway_slow_consumer_disconnects_total is {cut} after three slow-consumer cuts"
        );
        ensure!(
            ws_messages < MESSAGES && sse_events < MESSAGES,
            "a stalled client cannot have been sent everything: ws {ws_messages}, sse {sse_events}"
        );
        Ok(())
    })
    .await
}

/// Payload of the SSE metric test's messages: big, so socket buffers fill
/// after few messages.
const BIG: usize = 2048;

/// The most batches the SSE metric test publishes before giving up on the
/// cut (about 40 MB, far past any socket buffer).
const MAX_BIG_BATCHES: usize = 500;

#[tokio::test]
async fn stalled_sse_client_cut_as_a_slow_consumer_is_counted_in_the_metrics() -> Result<()> {
    within(async {
        let node = Gateway::start(GatewayOpts::embedded()).await?;
        let channel = unique_channel("files:alice");
        let stalled =
            StalledSocket::sse(node.addr(), &format!("/v1/sse?channel={channel}")).await?;

        let filler = "x".repeat(BIG);
        let mut published = 0;
        for _ in 0..MAX_BIG_BATCHES {
            if local_subscribers(&node, &channel).await? == 0 {
                break;
            }
            let batch: Vec<Value> = (0..BATCH / 5)
                .map(|_| json!({ "channel": channel, "data": filler }))
                .collect();
            node.http()
                .publish_json(&json!({ "messages": batch }))
                .await?;
            published += BATCH / 5;
        }
        let (_, end) = stalled.read_to_end(DRAIN_SILENCE).await;
        let cut = metric(&node.http(), "gateway_slow_consumer_disconnects_total").await?;
        let sse_open = metric(&node.http(), "gateway_connections{transport=\"sse\"}").await?;
        eprintln!(
            "FIGURES stalled SSE: published {published} messages of {BIG} bytes; stream ended \
             {end:?}; slow-consumer cuts counted {cut}; SSE connections open {sse_open}"
        );
        ensure!(
            matches!(end, DrainEnd::Eof | DrainEnd::Reset(_)),
            "the stalled SSE stream was never cut: {end:?} after {published} messages"
        );
        ensure!(
            cut == 1.0,
            "the node cut a stalled SSE client as a slow consumer (its stream ended, it left the \
             channel) but gateway_slow_consumer_disconnects_total is {cut}, not 1"
        );
        Ok(())
    })
    .await
}
