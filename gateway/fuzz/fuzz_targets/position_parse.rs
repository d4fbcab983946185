//! Fuzzes position decoding (`fanout::Position::parse` and
//! `fanout::MultiPosition::parse`): no panic, and whatever is accepted
//! prints back to a text that decodes to the same position, names exactly
//! the asked number of channels, and holds only `A-Za-z0-9:,`.
#![no_main]

use fanout::{MultiPosition, Position};
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let Some((&count, rest)) = data.split_first() else {
        return;
    };
    let Ok(text) = std::str::from_utf8(rest) else {
        return;
    };

    if let Ok(p) = Position::parse(text) {
        let printed = p.to_string();
        assert_eq!(Position::parse(&printed), Ok(p.clone()), "{text:?}");
        assert!(printed
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b == b':'));
        assert!(!text.contains(','), "{text:?}");
    }

    let channels = usize::from(count % 8);
    if let Ok(m) = MultiPosition::parse(text, channels) {
        assert_eq!(m.0.len(), channels, "{text:?}");
        let printed = m.to_string();
        assert_eq!(MultiPosition::parse(&printed, channels), Ok(m), "{text:?}");
        assert!(printed
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b == b':' || b == b','));
    }
});
