//! Channel names: the one place where a name is checked.
//!
//! A channel name is 1 to [`MAX_CHANNEL_LEN`] bytes of `A-Z a-z 0-9 _ - . : @ /`.
//! The set leaves out `,` (it joins positions of several channels), `{` and `}`
//! (Redis hash-tag braces), whitespace and control characters, so a valid name
//! can be embedded in Redis keys, URLs and SSE ids without escaping.

use std::{borrow::Borrow, fmt, sync::Arc};

/// The longest channel name accepted, in bytes.
pub const MAX_CHANNEL_LEN: usize = 255;

/// A validated channel name; cheap to clone (shared string).
#[derive(Clone, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct Channel(Arc<str>);

/// Why a channel name was refused.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ChannelError {
    #[error("channel name is empty")]
    Empty,
    #[error("channel name is longer than {MAX_CHANNEL_LEN} bytes")]
    TooLong,
    #[error("channel name contains {0:?}; allowed are A-Z a-z 0-9 _ - . : @ /")]
    BadChar(char),
}

/// Whether `b` may appear in a channel name.
pub fn is_channel_byte(b: u8) -> bool {
    b.is_ascii_alphanumeric() || matches!(b, b'_' | b'-' | b'.' | b':' | b'@' | b'/')
}

impl Channel {
    /// Checks `name` and wraps it.
    pub fn new(name: &str) -> Result<Self, ChannelError> {
        if name.is_empty() {
            return Err(ChannelError::Empty);
        }
        if name.len() > MAX_CHANNEL_LEN {
            return Err(ChannelError::TooLong);
        }
        if let Some(c) = name
            .chars()
            .find(|c| !c.is_ascii() || !is_channel_byte(*c as u8))
        {
            return Err(ChannelError::BadChar(c));
        }
        Ok(Self(name.into()))
    }

    pub fn as_str(&self) -> &str {
        &self.0
    }
}

impl Borrow<str> for Channel {
    fn borrow(&self) -> &str {
        &self.0
    }
}

impl fmt::Display for Channel {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

impl fmt::Debug for Channel {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        fmt::Debug::fmt(&*self.0, f)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn accepts_the_documented_alphabet() {
        assert!(Channel::new("files:alice/doc-42_v.1@eu").is_ok());
        assert!(Channel::new(&"a".repeat(MAX_CHANNEL_LEN)).is_ok());
    }

    #[test]
    fn refuses_empty_long_and_foreign_names() {
        assert_eq!(Channel::new(""), Err(ChannelError::Empty));
        assert_eq!(Channel::new(&"a".repeat(256)), Err(ChannelError::TooLong));
        assert_eq!(Channel::new("a,b"), Err(ChannelError::BadChar(',')));
        assert_eq!(Channel::new("a{b}"), Err(ChannelError::BadChar('{')));
        assert_eq!(Channel::new("a b"), Err(ChannelError::BadChar(' ')));
        assert_eq!(Channel::new("a\nb"), Err(ChannelError::BadChar('\n')));
        assert_eq!(Channel::new("é"), Err(ChannelError::BadChar('é')));
    }
}
