//! The test payload: a JSON object carrying the channel index, the
//! per-channel sequence number and the publish time in microseconds, padded
//! to the scenario's size. Receivers find the three numbers by scanning for
//! their keys rather than parsing the whole frame, so the same code reads a
//! gateway envelope (where the payload is `data`), a bare Nchan message, an
//! SSE `data:` line or a long-poll body, and costs the load generator little.

use std::{
    sync::LazyLock,
    time::{SystemTime, UNIX_EPOCH},
};

use memchr::memmem::{self, Finder};

/// Key of the channel index. The `lt_` prefix keeps it distinct from every
/// envelope field.
const KEY_CH: &[u8] = b"\"lt_ch\":";
/// Key of the per-channel sequence number (1, 2, 3, ... per channel).
const KEY_SEQ: &[u8] = b"\"lt_seq\":";
/// Key of the publish time, Unix microseconds.
const KEY_US: &[u8] = b"\"lt_us\":";

/// Searchers for the keys read from every message, built once (building a
/// searcher per call showed in the generator's profile).
static FIND_CH: LazyLock<Finder<'static>> = LazyLock::new(|| Finder::new(KEY_CH));
static FIND_SEQ: LazyLock<Finder<'static>> = LazyLock::new(|| Finder::new(KEY_SEQ));
static FIND_US: LazyLock<Finder<'static>> = LazyLock::new(|| Finder::new(KEY_US));
/// The envelope's `"offset":` key.
pub static FIND_OFFSET: LazyLock<Finder<'static>> = LazyLock::new(|| Finder::new(b"\"offset\":"));
/// The envelope's `"epoch":"` key.
pub static FIND_EPOCH: LazyLock<Finder<'static>> = LazyLock::new(|| Finder::new(b"\"epoch\":\""));

/// Microseconds since the Unix epoch, from the real-time clock that every
/// process on this machine shares.
pub fn now_us() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_micros() as u64)
        .unwrap_or(0)
}

/// Build the JSON data for one publish, padded with `x` up to `size` bytes.
pub fn encode(ch: u32, seq: u64, t_us: u64, size: usize) -> String {
    let mut out = format!("{{\"lt_ch\":{ch},\"lt_seq\":{seq},\"lt_us\":{t_us},\"lt_pad\":\"");
    let closing = 2;
    let pad = size.saturating_sub(out.len() + closing);
    out.extend(std::iter::repeat_n('x', pad));
    out.push_str("\"}");
    out
}

/// The numbers a receiver needs from one message.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Stamp {
    /// Channel index.
    pub ch: u32,
    /// Per-channel sequence number.
    pub seq: u64,
    /// Publish time, Unix microseconds.
    pub t_us: u64,
}

/// Find the stamp in any frame that contains a payload; `None` when the frame
/// has none (a control frame) or it is malformed.
pub fn scan(frame: &[u8]) -> Option<Stamp> {
    let ch = number_at(frame, &FIND_CH)?;
    let seq = number_at(frame, &FIND_SEQ)?;
    let t_us = number_at(frame, &FIND_US)?;
    Some(Stamp {
        ch: u32::try_from(ch).ok()?,
        seq,
        t_us,
    })
}

/// The unsigned integer after the first match of a prepared key.
pub fn number_at(frame: &[u8], key: &Finder<'_>) -> Option<u64> {
    let at = key.find(frame)? + key.needle().len();
    parse_u64(&frame[at..])
}

/// The string value after the first match of a prepared key (which ends
/// with the opening quote), up to the closing quote.
pub fn string_at<'a>(frame: &'a [u8], key: &Finder<'_>) -> Option<&'a [u8]> {
    let at = key.find(frame)? + key.needle().len();
    let rest = &frame[at..];
    let end = memchr::memchr(b'"', rest)?;
    Some(&rest[..end])
}

/// The unsigned integer that follows the first occurrence of `key`.
pub fn number_after(frame: &[u8], key: &[u8]) -> Option<u64> {
    let at = memmem::find(frame, key)? + key.len();
    parse_u64(&frame[at..])
}

/// The string value that follows the first occurrence of `key` (which must
/// include the opening quote, e.g. `"epoch":"`), up to the closing quote.
pub fn string_after<'a>(frame: &'a [u8], key: &[u8]) -> Option<&'a [u8]> {
    let at = memmem::find(frame, key)? + key.len();
    let rest = &frame[at..];
    let end = memchr::memchr(b'"', rest)?;
    Some(&rest[..end])
}

/// Leading decimal digits (after optional spaces) as a number.
fn parse_u64(bytes: &[u8]) -> Option<u64> {
    let mut value: u64 = 0;
    let mut digits = 0;
    for &b in bytes.iter().skip_while(|b| **b == b' ') {
        if !b.is_ascii_digit() {
            break;
        }
        value = value.checked_mul(10)?.checked_add(u64::from(b - b'0'))?;
        digits += 1;
    }
    (digits > 0).then_some(value)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn encoded_payload_has_the_asked_size_and_scans_back() {
        let data = encode(7, 42, 1_764_860_000_123_456, 200);
        assert_eq!(data.len(), 200);
        let v: serde_json::Value = serde_json::from_str(&data).unwrap();
        assert_eq!(v["lt_seq"], 42);
        let stamp = scan(data.as_bytes()).unwrap();
        assert_eq!(
            stamp,
            Stamp {
                ch: 7,
                seq: 42,
                t_us: 1_764_860_000_123_456
            }
        );
    }

    #[test]
    fn scan_reads_a_gateway_envelope() {
        let data = encode(0, 3, 99, 0);
        let frame = format!(
            "{{\"type\":\"message\",\"channel\":\"lt1:0\",\"offset\":3,\"epoch\":\"k3f9\",\"time\":1,\"data\":{data}}}"
        );
        assert_eq!(scan(frame.as_bytes()).map(|s| s.seq), Some(3));
        assert_eq!(number_after(frame.as_bytes(), b"\"offset\":"), Some(3));
        assert_eq!(
            string_after(frame.as_bytes(), b"\"epoch\":\""),
            Some(&b"k3f9"[..])
        );
    }

    #[test]
    fn control_frames_have_no_stamp() {
        assert_eq!(scan(br#"{"type":"pong"}"#), None);
        assert_eq!(scan(br#"{"lt_ch":1,"lt_seq":x}"#), None);
    }
}
