//! A WebSocket peer that goes quiet without closing — a client process
//! frozen with SIGSTOP, or a socket that stopped reading — is closed by the
//! node's ping timeout even when no message is published, so half-open
//! connections do not pile up.
//!
//! With `--ws-ping 1 --ws-idle-timeout 2` the node pings every second and
//! gives up on a peer it has not heard from for 2 s: both connections must
//! be gone within [`CLOSE_BOUND`], and the raw socket, read afterwards,
//! must end with the node's pings and then close 4002 ("ping timeout").

use std::time::{Duration, Instant};

use anyhow::{ensure, Result};
use tests::faults::metric;
use tests::faults::stalled::{ws_frames, DrainEnd, PausedCli, StalledSocket};
use tests::{eventually, unique_channel, within, Gateway, GatewayOpts};

const PING_SECS: u64 = 1;
const IDLE_SECS: u64 = 2;

/// The idle timeout, one more ping interval for the check to run, and
/// slack.
const CLOSE_BOUND: Duration = Duration::from_secs(IDLE_SECS + PING_SECS + 4);

#[tokio::test]
async fn frozen_websocket_peers_are_closed_by_the_ping_timeout_with_4002() -> Result<()> {
    within(async {
        let node = Gateway::start(
            GatewayOpts::embedded()
                .arg("--ws-ping")
                .arg(PING_SECS.to_string())
                .arg("--ws-idle-timeout")
                .arg(IDLE_SECS.to_string()),
        )
        .await?;
        let channel = unique_channel("files:alice");
        let stalled =
            StalledSocket::websocket(node.addr(), &format!("/v1/ws?channel={channel}")).await?;
        let frozen = PausedCli::start(&node.base_url(), &channel, "ws").await?;
        let frozen_at = Instant::now();

        let http = node.http();
        let gone = eventually("both quiet peers closed", CLOSE_BOUND, || async {
            let open = metric(&http, "gateway_connections{transport=\"ws\"}").await?;
            Ok((open == 0.0).then(|| frozen_at.elapsed()))
        })
        .await?;

        let (bytes, end) = stalled.read_to_end(Duration::from_secs(2)).await;
        let (frames, torn) = ws_frames(&bytes);
        let pings = frames.iter().filter(|f| f.opcode == 0x9).count();
        let last = frames.last().and_then(|f| f.close_code());
        eprintln!(
            "FIGURES ping timeout: both closed {gone:?} after freezing; raw socket got {pings} \
             pings then close {last:?} ({end:?}, {torn} torn bytes); gateway-cli stderr lines {}",
            frozen.stderr().len()
        );
        ensure!(
            last == Some(4002) && torn == 0 && matches!(end, DrainEnd::Eof | DrainEnd::Reset(_)),
            "the quiet raw socket must end with close 4002: last close {last:?}, {torn} torn \
             bytes, {end:?}, frames {frames:?}"
        );
        ensure!(pings >= 1, "the node never pinged the quiet peer");
        Ok(())
    })
    .await
}
