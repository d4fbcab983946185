//! WebSocket conformance (RFC 6455) of `GET /v1/ws`, over a raw `TcpStream`
//! with hand-built frames: the classes of cases the Autobahn fuzzing client
//! drives (framing, masking, fragmentation, control frames, UTF-8, close
//! handling, limits), which cannot run here (its only release is Python 2
//! code and this machine has Python 3.11 only).
//!
//! Every close is checked the same way ([`RawWs::expect_close`]): exactly one
//! close frame from the gateway, the last frame, never 1005/1006/1015 on the
//! wire, and a code from the gateway's table.

use std::time::{Duration, Instant};

use anyhow::{ensure, Context, Result};
use serde_json::{json, Value};
use tests::raw_ws::{close_payload, encode, header, header_only, op, RawWs};
use tests::{unique_channel, within, Gateway, GatewayOpts};

/// The default `--ws-max-message`.
const LIMIT: usize = 4096;

/// Every close code in the gateway's table (`gateway --print-codes`).
fn table_close_codes() -> Result<Vec<u16>> {
    let out = std::process::Command::new(tests::bins::gateway()?)
        .arg("--print-codes")
        .output()
        .context("running gateway --print-codes")?;
    let text = String::from_utf8(out.stdout)?;
    let section = text
        .split("| WebSocket close code")
        .nth(1)
        .context("no close code table in --print-codes")?;
    Ok(section
        .lines()
        .filter_map(|l| l.trim_start_matches('|').split('|').next())
        .filter_map(|c| c.trim().parse().ok())
        .collect())
}

/// Every error code in the gateway's table.
fn table_error_codes() -> Result<Vec<String>> {
    let out = std::process::Command::new(tests::bins::gateway()?)
        .arg("--print-codes")
        .output()
        .context("running gateway --print-codes")?;
    let text = String::from_utf8(out.stdout)?;
    Ok(text
        .lines()
        .filter_map(|l| l.strip_prefix("| `"))
        .filter_map(|l| l.split('`').next())
        .map(str::to_owned)
        .collect())
}

async fn node() -> Result<Gateway> {
    Gateway::start(GatewayOpts::embedded()).await
}

async fn connect(node: &Gateway) -> Result<RawWs> {
    RawWs::connect(node.addr(), "/v1/ws").await
}

/// `{"op":"ping"}` padded with JSON whitespace to exactly `len` bytes.
fn padded_ping(len: usize) -> String {
    let op = r#"{"op":"ping"}"#;
    format!(
        "{}{}{}",
        &op[..op.len() - 1],
        " ".repeat(len - op.len()),
        "}"
    )
}

/// Sends the ping op and expects the pong frame: the connection still works.
async fn ping_op(ws: &mut RawWs) -> Result<()> {
    ws.send_text(r#"{"op":"ping"}"#).await?;
    let answer = ws.next_json().await?;
    ensure!(
        answer == json!({"type": "pong"}),
        "ping op answered {answer}"
    );
    Ok(())
}

/// Reads to the end: one close frame with code `want`, which is in the table.
async fn expect_code(ws: &mut RawWs, want: u16, what: &str) -> Result<()> {
    let (code, _) = ws.expect_close().await.with_context(|| what.to_owned())?;
    ensure!(
        code == Some(want),
        "{what}: expected close {want}, got {code:?}"
    );
    ensure!(
        table_close_codes()?.contains(&want),
        "{what}: {want} is not in the gateway's code table"
    );
    Ok(())
}

/// Sends `frames` on a fresh connection and expects close `want`. Write
/// errors are ignored: the gateway may close before it has read them all.
async fn case(node: &Gateway, frames: &[Vec<u8>], want: u16, what: &str) -> Result<()> {
    let mut ws = connect(node).await?;
    for f in frames {
        if ws.send_raw(f).await.is_err() {
            break;
        }
    }
    expect_code(&mut ws, want, what).await
}

#[tokio::test]
async fn unmasked_client_frame_is_closed_with_1002() -> Result<()> {
    within(async {
        let mut node = node().await?;
        let frame = encode(true, 0, op::TEXT, br#"{"op":"ping"}"#, false);
        case(&node, &[frame], 1002, "unmasked text frame").await?;
        node.assert_alive().await
    })
    .await
}

#[tokio::test]
async fn masked_text_in_every_length_encoding_up_to_the_limit_is_answered() -> Result<()> {
    within(async {
        let node = node().await?;
        let mut ws = connect(&node).await?;
        for len in [13, 125, 126, 127, 1000, LIMIT - 1, LIMIT] {
            ws.send_text(&padded_ping(len)).await?;
            let answer = ws
                .next_json()
                .await
                .with_context(|| format!("{len} bytes"))?;
            ensure!(
                answer["type"] == "pong",
                "{len}-byte ping op answered {answer}"
            );
        }
        Ok(())
    })
    .await
}

#[tokio::test]
async fn text_frame_one_byte_over_the_limit_is_closed_with_1009() -> Result<()> {
    within(async {
        let mut node = node().await?;
        let frame = encode(true, 0, op::TEXT, padded_ping(LIMIT + 1).as_bytes(), true);
        case(&node, &[frame], 1009, "frame of limit + 1 bytes").await?;
        node.assert_alive().await
    })
    .await
}

#[tokio::test]
async fn oversize_frame_header_is_closed_with_1009_before_its_payload_is_sent() -> Result<()> {
    within(async {
        let mut node = node().await?;
        // Only the header: a gateway that waited to buffer the payload would
        // never answer, and the read below would time out.
        for len in [1 << 20, 1 << 40, (1 << 63) - 1] {
            let frame = header_only(true, op::TEXT, len);
            case(
                &node,
                &[frame],
                1009,
                &format!("header announcing {len} bytes"),
            )
            .await?;
        }
        node.assert_alive().await
    })
    .await
}

#[tokio::test]
async fn fragmented_message_over_the_limit_is_closed_with_1009() -> Result<()> {
    within(async {
        let mut node = node().await?;
        let chunk = vec![b' '; 1000];
        let mut frames = vec![encode(false, 0, op::TEXT, b"{", true)];
        frames.extend((0..5).map(|_| encode(false, 0, op::CONTINUATION, &chunk, true)));
        case(&node, &frames, 1009, "five 1000-byte continuations").await?;
        node.assert_alive().await
    })
    .await
}

#[tokio::test]
async fn endless_one_byte_continuations_are_cut_with_1009_at_the_message_limit() -> Result<()> {
    within(async {
        let mut node = node().await?;
        let mut ws = connect(&node).await?;
        ws.send(false, op::TEXT, b"{").await?;
        // Twice the limit in one-byte fragments, in batches; the gateway
        // must cut the message once it passes the limit.
        let one = encode(false, 0, op::CONTINUATION, b" ", true);
        let batch: Vec<u8> = one.iter().copied().cycle().take(one.len() * 256).collect();
        for _ in 0..(2 * LIMIT / 256) {
            if ws.send_raw(&batch).await.is_err() {
                break;
            }
        }
        expect_code(&mut ws, 1009, "endless one-byte continuations").await?;
        node.assert_alive().await
    })
    .await
}

#[tokio::test]
async fn empty_continuation_frames_neither_grow_nor_break_the_message() -> Result<()> {
    within(async {
        let node = node().await?;
        let mut ws = connect(&node).await?;
        ws.send(false, op::TEXT, br#"{"op":"#).await?;
        let empty = encode(false, 0, op::CONTINUATION, b"", true);
        let batch: Vec<u8> = empty
            .iter()
            .copied()
            .cycle()
            .take(empty.len() * 2000)
            .collect();
        ws.send_raw(&batch).await?;
        ws.send(true, op::CONTINUATION, br#""ping"}"#).await?;
        let answer = ws.next_json().await?;
        ensure!(answer["type"] == "pong", "answered {answer}");
        Ok(())
    })
    .await
}

#[tokio::test]
async fn fragmented_text_message_is_reassembled() -> Result<()> {
    within(async {
        let node = node().await?;
        let mut ws = connect(&node).await?;
        ws.send(false, op::TEXT, br#"{"op""#).await?;
        ws.send(false, op::CONTINUATION, br#":"pi"#).await?;
        ws.send(true, op::CONTINUATION, br#"ng"}"#).await?;
        let answer = ws.next_json().await?;
        ensure!(answer == json!({"type": "pong"}), "answered {answer}");
        Ok(())
    })
    .await
}

#[tokio::test]
async fn ping_between_fragments_is_answered_and_the_message_still_completes() -> Result<()> {
    within(async {
        let node = node().await?;
        let mut ws = connect(&node).await?;
        ws.send(false, op::TEXT, br#"{"op":"pi"#).await?;
        ws.send(true, op::PING, b"mid-message").await?;
        ws.send(true, op::CONTINUATION, br#"ng"}"#).await?;

        let pong = ws.next_frame().await?.context("closed instead of pong")?;
        ensure!(
            pong.opcode == op::PONG && pong.payload == b"mid-message",
            "expected a pong echoing the ping, got {pong:?}"
        );
        let answer = ws.next_json().await?;
        ensure!(answer == json!({"type": "pong"}), "answered {answer}");
        Ok(())
    })
    .await
}

#[tokio::test]
async fn client_ping_gets_a_pong_with_its_payload_promptly_while_idle() -> Result<()> {
    within(async {
        let node = node().await?;
        let mut ws = connect(&node).await?;
        let full: Vec<u8> = (0..125u8).collect();
        for payload in [Vec::new(), b"hello".to_vec(), full] {
            let sent = Instant::now();
            ws.send(true, op::PING, &payload).await?;
            let pong = ws
                .next_frame_within(Duration::from_secs(1))
                .await
                .context("no pong within 1 s of an idle connection's ping")?
                .context("closed instead of pong")?;
            ensure!(
                pong.opcode == op::PONG && pong.payload == payload && !pong.masked,
                "ping {payload:?} answered {pong:?}"
            );
            ensure!(
                sent.elapsed() < Duration::from_secs(1),
                "pong took {:?}",
                sent.elapsed()
            );
        }
        Ok(())
    })
    .await
}

#[tokio::test]
async fn unsolicited_pong_is_ignored() -> Result<()> {
    within(async {
        let node = node().await?;
        let mut ws = connect(&node).await?;
        ws.send(true, op::PONG, b"unasked").await?;
        ping_op(&mut ws).await
    })
    .await
}

#[tokio::test]
async fn control_frame_over_125_bytes_is_closed_with_1002() -> Result<()> {
    within(async {
        let mut node = node().await?;
        let frame = encode(true, 0, op::PING, &[b'x'; 126], true);
        case(&node, &[frame], 1002, "126-byte ping").await?;
        node.assert_alive().await
    })
    .await
}

#[tokio::test]
async fn fragmented_control_frame_is_closed_with_1002() -> Result<()> {
    within(async {
        let mut node = node().await?;
        let frame = encode(false, 0, op::PING, b"half", true);
        case(&node, &[frame], 1002, "ping without FIN").await?;
        node.assert_alive().await
    })
    .await
}

#[tokio::test]
async fn continuation_without_a_started_message_is_closed_with_1002() -> Result<()> {
    within(async {
        let mut node = node().await?;
        let frame = encode(true, 0, op::CONTINUATION, br#"{"op":"ping"}"#, true);
        case(&node, &[frame], 1002, "lone continuation").await?;
        node.assert_alive().await
    })
    .await
}

#[tokio::test]
async fn new_text_frame_inside_a_fragmented_message_is_closed_with_1002() -> Result<()> {
    within(async {
        let mut node = node().await?;
        let frames = [
            encode(false, 0, op::TEXT, br#"{"op":"#, true),
            encode(true, 0, op::TEXT, br#"{"op":"ping"}"#, true),
        ];
        case(&node, &frames, 1002, "text inside a fragmented text").await?;
        node.assert_alive().await
    })
    .await
}

#[tokio::test]
async fn reserved_bits_without_a_negotiated_extension_are_closed_with_1002() -> Result<()> {
    within(async {
        let mut node = node().await?;
        for rsv in [1, 2, 4, 7] {
            let frame = encode(true, rsv, op::TEXT, br#"{"op":"ping"}"#, true);
            case(&node, &[frame], 1002, &format!("RSV bits {rsv:03b}")).await?;
        }
        node.assert_alive().await
    })
    .await
}

#[tokio::test]
async fn reserved_opcodes_are_closed_with_1002() -> Result<()> {
    within(async {
        let mut node = node().await?;
        for opcode in [3, 4, 5, 6, 7, 0xB, 0xC, 0xD, 0xE, 0xF] {
            let frame = encode(true, 0, opcode, b"", true);
            case(&node, &[frame], 1002, &format!("opcode {opcode:#x}")).await?;
        }
        node.assert_alive().await
    })
    .await
}

#[tokio::test]
async fn invalid_utf8_text_is_closed_with_1007() -> Result<()> {
    within(async {
        let mut node = node().await?;
        let bad: [&[u8]; 6] = [
            b"\xff",
            b"\xc0\x80",         // overlong NUL
            b"\xed\xa0\x80",     // a UTF-16 surrogate
            b"\xf4\x90\x80\x80", // above U+10FFFF
            b"\xce",             // truncated at the end of the message
            b"{\"op\":\"ping\",\"x\":\"\xe2\x82\"}",
        ];
        for payload in bad {
            let frame = encode(true, 0, op::TEXT, payload, true);
            case(&node, &[frame], 1007, &format!("text {payload:?}")).await?;
        }
        node.assert_alive().await
    })
    .await
}

#[tokio::test]
async fn invalid_utf8_split_across_fragments_is_closed_with_1007() -> Result<()> {
    within(async {
        let mut node = node().await?;
        // A lead byte at the end of one fragment, a non-continuation byte
        // at the start of the next: each fragment alone looks fine.
        let frames = [
            encode(false, 0, op::TEXT, b"{\"op\":\"ping\",\"x\":\"\xce", true),
            encode(true, 0, op::CONTINUATION, b"(\"}", true),
        ];
        case(&node, &frames, 1007, "split invalid sequence").await?;
        node.assert_alive().await
    })
    .await
}

#[tokio::test]
async fn invalid_utf8_in_an_unfinished_message_is_closed_with_1007_at_once() -> Result<()> {
    within(async {
        let mut node = node().await?;
        // The message never ends: only incremental validation can fail it.
        let frames = [
            encode(false, 0, op::TEXT, b"{\"op\":\"ping\"", true),
            encode(false, 0, op::CONTINUATION, b",\"x\":\"\xff", true),
        ];
        case(&node, &frames, 1007, "invalid byte, message unfinished").await?;
        node.assert_alive().await
    })
    .await
}

#[tokio::test]
async fn utf8_code_points_split_across_fragments_are_accepted() -> Result<()> {
    within(async {
        let node = node().await?;
        let mut ws = connect(&node).await?;
        // "é" (2 bytes) and "😀" (4 bytes) cut inside their encodings.
        let text = "{\"op\":\"ping\",\"x\":\"é😀\"}".as_bytes();
        let at = text.iter().position(|&b| b == 0xc3).context("é")?;
        let pieces = [
            &text[..at + 1],
            &text[at + 1..at + 3],
            &text[at + 3..at + 4],
            &text[at + 4..at + 5],
            &text[at + 5..],
        ];
        for (i, piece) in pieces.iter().enumerate() {
            let opcode = if i == 0 { op::TEXT } else { op::CONTINUATION };
            ws.send(i == pieces.len() - 1, opcode, piece).await?;
        }
        let answer = ws.next_json().await?;
        ensure!(answer == json!({"type": "pong"}), "answered {answer}");
        Ok(())
    })
    .await
}

#[tokio::test]
async fn client_close_with_a_valid_code_is_answered_by_exactly_one_close_frame() -> Result<()> {
    within(async {
        let mut node = node().await?;
        for code in [
            1000, 1001, 1002, 1003, 1007, 1008, 1009, 1010, 1011, 3000, 3999, 4000, 4999,
        ] {
            let mut ws = connect(&node).await?;
            ws.send(true, op::CLOSE, &close_payload(code, b"bye"))
                .await?;
            let (answer, texts) = ws
                .expect_close()
                .await
                .with_context(|| format!("close {code}"))?;
            ensure!(texts.is_empty(), "close {code}: text frames {texts:?}");
            ensure!(
                answer.is_none() || answer == Some(code) || answer == Some(1000),
                "close {code} answered with close {answer:?}"
            );
        }
        node.assert_alive().await
    })
    .await
}

#[tokio::test]
async fn empty_close_payload_is_legal_and_answered_without_1005_on_the_wire() -> Result<()> {
    within(async {
        let mut node = node().await?;
        let mut ws = connect(&node).await?;
        ws.send(true, op::CLOSE, b"").await?;
        let (answer, _) = ws.expect_close().await?;
        ensure!(
            answer.is_none() || answer == Some(1000),
            "empty close answered with close {answer:?}"
        );
        node.assert_alive().await
    })
    .await
}

#[tokio::test]
async fn invalid_or_reserved_close_codes_are_answered_with_1002() -> Result<()> {
    within(async {
        let mut node = node().await?;
        for code in [
            0, 999, 1004, 1005, 1006, 1015, 1016, 1100, 2000, 2999, 5000, 65535,
        ] {
            let frame = encode(true, 0, op::CLOSE, &close_payload(code, b""), true);
            case(&node, &[frame], 1002, &format!("client close {code}")).await?;
        }
        node.assert_alive().await
    })
    .await
}

#[tokio::test]
async fn one_byte_close_payload_is_answered_with_1002() -> Result<()> {
    within(async {
        let mut node = node().await?;
        let frame = encode(true, 0, op::CLOSE, b"\x03", true);
        case(&node, &[frame], 1002, "one-byte close payload").await?;
        node.assert_alive().await
    })
    .await
}

#[tokio::test]
async fn close_reason_that_is_not_utf8_is_answered_with_1007() -> Result<()> {
    within(async {
        let mut node = node().await?;
        let frame = encode(true, 0, op::CLOSE, &close_payload(1000, b"\xff\xfe"), true);
        case(&node, &[frame], 1007, "close reason 0xff 0xfe").await?;
        node.assert_alive().await
    })
    .await
}

#[tokio::test]
async fn frames_after_a_client_close_are_ignored() -> Result<()> {
    within(async {
        let mut node = node().await?;
        let mut ws = connect(&node).await?;
        let mut burst = encode(true, 0, op::CLOSE, &close_payload(1000, b""), true);
        burst.extend(encode(true, 0, op::TEXT, br#"{"op":"ping"}"#, true));
        burst.extend(encode(true, 0, op::PING, b"after close", true));
        burst.extend(encode(true, 0, op::BINARY, b"after close", true));
        ws.send_raw(&burst).await?;
        let (answer, texts) = ws.expect_close().await?;
        ensure!(texts.is_empty(), "answered frames after close: {texts:?}");
        ensure!(
            answer == Some(1000) || answer.is_none(),
            "close answered {answer:?}"
        );
        node.assert_alive().await
    })
    .await
}

#[tokio::test]
async fn binary_message_is_closed_with_1003_unsupported_data() -> Result<()> {
    within(async {
        let mut node = node().await?;
        let frame = encode(true, 0, op::BINARY, br#"{"op":"ping"}"#, true);
        case(&node, &[frame], 1003, "binary frame").await?;
        let frames = [
            encode(false, 0, op::BINARY, b"half", true),
            encode(true, 0, op::CONTINUATION, b"other half", true),
        ];
        case(&node, &frames, 1003, "fragmented binary message").await?;
        node.assert_alive().await
    })
    .await
}

#[tokio::test]
async fn bad_ops_get_error_frames_from_the_table_while_the_subscription_keeps_delivering(
) -> Result<()> {
    within(async {
        let mut node = node().await?;
        let channel = unique_channel("files:alice");
        let mut ws = RawWs::connect(node.addr(), &format!("/v1/ws?channel={channel}")).await?;
        let subscribed = ws.next_json().await?;
        ensure!(
            subscribed["type"] == "subscribed",
            "first frame {subscribed}"
        );
        let codes = table_error_codes()?;

        let bad = [
            "not json",
            "{\"op\":",
            "[]",
            "{}",
            "null",
            r#"{"op":"dance"}"#,
            r#"{"op":5}"#,
            r#"{"op":"subscribe"}"#,
            r#"{"op":"subscribe","channel":"no spaces"}"#,
            r#"{"op":"unsubscribe","channel":"never:held"}"#,
        ];
        for text in bad {
            // Each one fragmented too: reassembly must not change the answer.
            let (a, b) = text.split_at(text.len() / 2);
            ws.send(false, op::TEXT, a.as_bytes()).await?;
            ws.send(true, op::CONTINUATION, b.as_bytes()).await?;
            let frame = ws
                .next_json()
                .await
                .with_context(|| format!("answer to {text:?}"))?;
            let code = frame["code"].as_str().unwrap_or_default();
            ensure!(
                frame["type"] == "error" && codes.iter().any(|c| c == code),
                "{text:?}: expected an error frame with a code from the table, got {frame}"
            );
        }

        node.http().publish(&channel, json!("still here")).await?;
        let message: Value = ws.next_json().await?;
        ensure!(
            message["type"] == "message" && message["data"] == "still here",
            "after the bad ops: {message}"
        );
        node.assert_alive().await
    })
    .await
}

#[tokio::test]
async fn permessage_deflate_offer_is_not_accepted_by_default() -> Result<()> {
    within(async {
        let node = node().await?;
        let offer = (
            "Sec-WebSocket-Extensions",
            "permessage-deflate; client_max_window_bits",
        );
        let mut ws = RawWs::connect_with(node.addr(), "/v1/ws", &[offer]).await?;
        ensure!(
            header(&ws.response_head, "sec-websocket-extensions").is_none(),
            "an extension was negotiated: {}",
            ws.response_head
        );
        ping_op(&mut ws).await
    })
    .await
}

#[tokio::test]
async fn upgrade_with_an_unsupported_version_is_426_naming_version_13() -> Result<()> {
    within(async {
        let node = node().await?;
        let mut stream = tokio::net::TcpStream::connect(node.addr()).await?;
        let request = format!(
            "GET /v1/ws HTTP/1.1\r\nHost: {}\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n\
             Sec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\nSec-WebSocket-Version: 8\r\n\r\n",
            node.addr()
        );
        tokio::io::AsyncWriteExt::write_all(&mut stream, request.as_bytes()).await?;
        let (head, _) = tests::raw_ws::read_head(&mut stream).await?;
        ensure!(
            head.starts_with("HTTP/1.1 426")
                && header(&head, "sec-websocket-version") == Some("13"),
            "RFC 6455 4.4 wants 426 with Sec-WebSocket-Version: 13, got {head:?}"
        );
        Ok(())
    })
    .await
}

#[tokio::test]
async fn gateway_pings_an_idle_client_and_keeps_it_while_it_answers() -> Result<()> {
    within(async {
        let opts = GatewayOpts::embedded()
            .arg("--ws-ping=1")
            .arg("--ws-idle-timeout=2");
        let node = Gateway::start(opts).await?;
        let mut ws = connect(&node).await?;
        // Four pings answered: the connection outlives twice its idle timeout.
        for n in 0..4 {
            let ping = ws
                .next_frame_within(Duration::from_secs(3))
                .await
                .with_context(|| format!("gateway ping {n}"))?
                .with_context(|| format!("closed before ping {n}"))?;
            ensure!(
                ping.opcode == op::PING && !ping.masked,
                "expected a ping, got {ping:?}"
            );
            ws.send(true, op::PONG, &ping.payload).await?;
        }
        ping_op(&mut ws).await
    })
    .await
}

#[tokio::test]
async fn silent_client_is_closed_with_4002_after_the_idle_timeout() -> Result<()> {
    within(async {
        let opts = GatewayOpts::embedded()
            .arg("--ws-ping=1")
            .arg("--ws-idle-timeout=2");
        let node = Gateway::start(opts).await?;
        let mut ws = connect(&node).await?;
        let opened = Instant::now();
        let (code, _) = ws.expect_close().await?;
        ensure!(
            code == Some(4002),
            "a silent client was closed with {code:?}"
        );
        ensure!(
            opened.elapsed() >= Duration::from_secs(2),
            "closed after {:?}, before the idle timeout",
            opened.elapsed()
        );
        Ok(())
    })
    .await
}

#[tokio::test]
async fn draining_node_advises_reconnect_then_sends_exactly_one_close_1001() -> Result<()> {
    within(async {
        let mut node = node().await?;
        let mut ws = connect(&node).await?;
        ping_op(&mut ws).await?;

        let exit = node.terminate().await?;
        ensure!(exit.success(), "drain exit {exit}");
        let (code, texts) = ws.expect_close().await?;
        ensure!(code == Some(1001), "a draining node closed with {code:?}");
        let advice: Value = serde_json::from_str(texts.last().context("no reconnect advice")?)?;
        ensure!(
            advice["type"] == "reconnect" && advice["delay_ms"].is_u64(),
            "advice before the close: {advice}"
        );
        Ok(())
    })
    .await
}
