//! Fuzzes channel-name validation (`fanout::Channel::new`) against the
//! README's rule, written out again here: 1 to 255 bytes of
//! `A-Z a-z 0-9 _ - . : @ /`. Accepted names are kept unchanged.
#![no_main]

use fanout::Channel;
use libfuzzer_sys::fuzz_target;

/// The README's rule, independent of the code under test.
fn allowed(name: &str) -> bool {
    (1..=255).contains(&name.len())
        && name
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b"_-.:@/".contains(&b))
}

fuzz_target!(|data: &[u8]| {
    let Ok(name) = std::str::from_utf8(data) else {
        return;
    };
    match Channel::new(name) {
        Ok(channel) => {
            assert!(allowed(name), "accepted {name:?}");
            assert_eq!(channel.as_str(), name);
        }
        Err(e) => {
            assert!(!allowed(name), "refused {name:?}: {e}");
            assert!(!e.to_string().is_empty());
        }
    }
});
