//! Epochs and positions: how a client names "what I have already seen".
//!
//! A [`Position`] is `EPOCH:OFFSET` for one channel. A connection holding several
//! channels names all of them at once with a [`MultiPosition`]: the positions
//! joined by `,` in the order the channels were given. The SSE `id:`, the
//! long-poll `cursor` and the WebSocket `since` are all decoded here.

use std::{fmt, sync::Arc};

/// The longest epoch accepted, in bytes.
pub const MAX_EPOCH_LEN: usize = 32;

/// The most channels one multi-channel position may name.
pub const MAX_POSITIONS: usize = 1024;

/// One life of a channel's history; changes when that history is lost.
#[derive(Clone, PartialEq, Eq, Hash)]
pub struct Epoch(Arc<str>);

impl Epoch {
    /// Checks `s` (1 to 32 ASCII letters and digits) and wraps it.
    pub fn new(s: &str) -> Result<Self, PositionError> {
        if s.is_empty() || s.len() > MAX_EPOCH_LEN || !s.bytes().all(|b| b.is_ascii_alphanumeric())
        {
            return Err(PositionError::BadEpoch);
        }
        Ok(Self(s.into()))
    }

    /// The epoch of a channel nothing was ever published to: `0`. It costs no
    /// state anywhere, and a position `0:0` flows into whichever epoch the
    /// channel's first publish creates (see [`Position::leads_into`]).
    pub fn empty() -> Self {
        Self("0".into())
    }

    pub fn is_empty(&self) -> bool {
        &*self.0 == "0"
    }

    /// A fresh epoch, unlikely to repeat: time in microseconds and 20 random bits, base 36.
    pub fn generate() -> Self {
        let micros = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map(|d| d.as_micros() as u64)
            .unwrap_or(0);
        let mixed = (micros << 20) ^ u64::from(fastrand::u32(..1 << 20));
        Self(base36(mixed).into())
    }

    pub fn as_str(&self) -> &str {
        &self.0
    }
}

fn base36(mut n: u64) -> String {
    const DIGITS: &[u8; 36] = b"0123456789abcdefghijklmnopqrstuvwxyz";
    let mut out = Vec::with_capacity(13);
    loop {
        out.push(DIGITS[(n % 36) as usize]);
        n /= 36;
        if n == 0 {
            break;
        }
    }
    out.reverse();
    String::from_utf8(out).unwrap_or_default()
}

impl fmt::Display for Epoch {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

impl fmt::Debug for Epoch {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        fmt::Debug::fmt(&*self.0, f)
    }
}

/// "I have everything of the channel up to and including `offset` in `epoch`."
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Position {
    pub epoch: Epoch,
    pub offset: u64,
}

/// Why a position could not be decoded.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum PositionError {
    #[error("position must be EPOCH:OFFSET")]
    Syntax,
    #[error("epoch must be 1 to 32 letters and digits")]
    BadEpoch,
    #[error("offset must be a decimal number")]
    BadOffset,
    #[error("position names {got} channels but the request has {want}")]
    WrongCount { got: usize, want: usize },
}

impl Position {
    pub fn new(epoch: Epoch, offset: u64) -> Self {
        Self { epoch, offset }
    }

    /// Whether a reader at this position is still on the line of `epoch`: the
    /// same epoch, or "nothing yet" of a channel that had no epoch then.
    pub fn leads_into(&self, epoch: &Epoch) -> bool {
        self.epoch == *epoch || (self.epoch.is_empty() && self.offset == 0)
    }

    /// Decodes `EPOCH:OFFSET`.
    pub fn parse(s: &str) -> Result<Self, PositionError> {
        let (epoch, offset) = s.split_once(':').ok_or(PositionError::Syntax)?;
        let epoch = Epoch::new(epoch)?;
        if offset.is_empty() || offset.len() > 20 || !offset.bytes().all(|b| b.is_ascii_digit()) {
            return Err(PositionError::BadOffset);
        }
        let offset = offset.parse().map_err(|_| PositionError::BadOffset)?;
        Ok(Self { epoch, offset })
    }
}

impl fmt::Display for Position {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}:{}", self.epoch, self.offset)
    }
}

/// The positions of every channel a connection holds, in the request's channel order.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct MultiPosition(pub Vec<Position>);

impl MultiPosition {
    /// Decodes `POS,POS,...` and checks it names exactly `channels` channels.
    pub fn parse(s: &str, channels: usize) -> Result<Self, PositionError> {
        let parts: Vec<&str> = s.split(',').take(MAX_POSITIONS + 1).collect();
        if parts.len() != channels {
            return Err(PositionError::WrongCount {
                got: parts.len(),
                want: channels,
            });
        }
        parts
            .into_iter()
            .map(Position::parse)
            .collect::<Result<_, _>>()
            .map(Self)
    }
}

impl fmt::Display for MultiPosition {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        for (i, p) in self.0.iter().enumerate() {
            if i > 0 {
                f.write_str(",")?;
            }
            write!(f, "{p}")?;
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn position_round_trips() {
        let p = Position::parse("k3f9a2:17").unwrap();
        assert_eq!(p.epoch.as_str(), "k3f9a2");
        assert_eq!(p.offset, 17);
        assert_eq!(p.to_string(), "k3f9a2:17");
    }

    #[test]
    fn garbage_positions_are_refused() {
        for bad in [
            "", ":", "abc", "abc:", ":5", "a-b:1", "abc:-1", "abc:1x", "abc:+1", "abc: 1",
        ] {
            assert!(Position::parse(bad).is_err(), "{bad:?} accepted");
        }
        assert_eq!(
            Position::parse("e:99999999999999999999999"),
            Err(PositionError::BadOffset)
        );
        assert_eq!(
            Position::parse("e:18446744073709551616"),
            Err(PositionError::BadOffset)
        );
    }

    #[test]
    fn multi_position_must_match_channel_count() {
        let m = MultiPosition::parse("a:1,b:2", 2).unwrap();
        assert_eq!(m.to_string(), "a:1,b:2");
        assert!(matches!(
            MultiPosition::parse("a:1", 2),
            Err(PositionError::WrongCount { got: 1, want: 2 })
        ));
    }

    #[test]
    fn generated_epochs_are_valid_and_differ() {
        let a = Epoch::generate();
        let b = Epoch::generate();
        assert!(Epoch::new(a.as_str()).is_ok());
        assert_ne!(a, b);
    }
}
