//! Fuzzes the SSE encoder (`gateway::sse::data_lines`) with any payload and
//! reads its output back with the HTML standard's parsing rules, written
//! out again here: every line is a `data` field (so no payload byte starts
//! another field or ends the event), and the event's data is the payload
//! with CR LF and lone CR turned into LF.
#![no_main]

use libfuzzer_sys::fuzz_target;

/// CR LF, lone CR and lone LF each end a line; the text after the last
/// line break is an unfinished line.
fn split_lines(bytes: &[u8]) -> (Vec<&[u8]>, &[u8]) {
    let mut lines = Vec::new();
    let mut rest = bytes;
    while let Some(i) = rest.iter().position(|&b| b == b'\r' || b == b'\n') {
        lines.push(&rest[..i]);
        let skip = if rest[i] == b'\r' && rest.get(i + 1) == Some(&b'\n') {
            2
        } else {
            1
        };
        rest = &rest[i + skip..];
    }
    (lines, rest)
}

/// The payload as a conforming parser hands it out: line breaks as LF.
fn normalised(payload: &[u8]) -> Vec<u8> {
    let (lines, last) = split_lines(payload);
    let mut out = Vec::with_capacity(payload.len());
    for line in lines {
        out.extend_from_slice(line);
        out.push(b'\n');
    }
    out.extend_from_slice(last);
    out
}

fuzz_target!(|payload: &[u8]| {
    let encoded = gateway::sse::data_lines(payload);
    assert_eq!(encoded.last(), Some(&b'\n'), "unterminated: {encoded:?}");

    let (lines, unfinished) = split_lines(&encoded);
    assert!(unfinished.is_empty(), "unfinished line {unfinished:?}");
    let mut data: Vec<u8> = Vec::new();
    for (i, line) in lines.iter().enumerate() {
        // A blank line would dispatch the event early; any other field
        // name would be an injected field.
        let value = line
            .strip_prefix(b"data:")
            .unwrap_or_else(|| panic!("line {line:?} of {encoded:?} is not a data field"));
        let value = value.strip_prefix(b" ").unwrap_or(value);
        if i > 0 {
            data.push(b'\n');
        }
        data.extend_from_slice(value);
    }
    assert_eq!(data, normalised(payload), "round trip of {payload:?}");
});
