//! Fuzzes the WebSocket client-op parser (`gateway::ws::parse_op`) with any
//! text: it never panics, every refusal carries a code from the table and a
//! reason, and every accepted op names a channel that validates again.
#![no_main]

use fanout::Channel;
use gateway::codes::ErrorCode;
use gateway::ws::{parse_op, ClientOp};
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let Ok(text) = std::str::from_utf8(data) else {
        return;
    };
    match parse_op(text) {
        Ok(ClientOp::Subscribe { channel, .. }) | Ok(ClientOp::Unsubscribe { channel }) => {
            assert_eq!(Channel::new(channel.as_str()).as_ref(), Ok(&channel));
        }
        Ok(ClientOp::Ping) => {}
        Err(e) => {
            assert!(ErrorCode::ALL.contains(&e.code), "{e:?}");
            assert!(!e.reason.is_empty(), "{e:?}");
        }
    }
});
