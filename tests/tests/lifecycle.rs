//! A node's life: SIGTERM drains it in order (WebSocket clients are told to
//! reconnect and closed with 1001 "going away", SSE streams end) and the
//! process exits cleanly within its drain deadline.

use anyhow::{ensure, Result};
use tests::{unique_channel, within, Broker, GatewayOpts, Node, SseClient, WsClient};

#[tokio::test]
async fn sigterm_closes_websockets_with_going_away_ends_sse_and_exits_cleanly() -> Result<()> {
    within(async {
        let opts = GatewayOpts::embedded().arg("--drain-timeout").arg("3");
        let mut node = Node::start(Broker::Embedded, opts).await?;
        let channel = unique_channel("files:alice");

        let mut ws = WsClient::connect(&node.gateway.ws_url("/v1/ws")).await?;
        ws.subscribe(&channel, None).await?;
        let mut url = node.http().url("/v1/sse")?;
        url.query_pairs_mut().append_pair("channel", &channel);
        let mut sse = SseClient::connect(url, None).await?;
        sse.subscribed().await?;

        let (status, closed, sse_end) = tokio::join!(
            node.gateway.terminate(),
            ws.expect_close(),
            sse.expect_end()
        );
        let status = status?;
        let (close, advice) = closed?;

        ensure!(status.success(), "exit status after SIGTERM: {status}");
        ensure!(
            close == Some(1001),
            "expected WebSocket close 1001 going away, got {close:?} (advice {advice:?})"
        );
        sse_end
    })
    .await
}
