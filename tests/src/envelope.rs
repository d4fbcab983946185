//! Checks on the wire shapes every transport shares: the message envelope,
//! positions (`EPOCH:OFFSET`) and multi-channel positions (joined by `,`).

use std::fmt;

use anyhow::{bail, Context, Result};
use serde_json::Value;

/// A single-channel position: "I have everything up to and including
/// `offset` of the history named `epoch`".
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Position {
    pub epoch: String,
    pub offset: u64,
}

/// The epoch of a channel nothing was ever published to. Its position `0:0`
/// leads into whichever epoch the channel's first publish creates.
pub const NEVER_PUBLISHED_EPOCH: &str = "0";

impl Position {
    /// Whether this is `0:0`, the position of a channel nothing was ever
    /// published to.
    pub fn is_never_published(&self) -> bool {
        self.epoch == NEVER_PUBLISHED_EPOCH && self.offset == 0
    }

    /// Whether a message at `epoch:offset` is the one right after this
    /// position.
    pub fn is_followed_by(&self, epoch: &str, offset: u64) -> bool {
        offset == self.offset + 1
            && (epoch == self.epoch
                || (self.is_never_published() && epoch != NEVER_PUBLISHED_EPOCH))
    }

    /// The position of a publish ack (`epoch` and `offset` fields).
    pub fn of_ack(ack: &Value) -> Result<Self> {
        Position::of_subscribed(ack).with_context(|| format!("publish ack {ack}"))
    }

    /// Parses `EPOCH:OFFSET`.
    pub fn parse(text: &str) -> Result<Self> {
        let (epoch, offset) = text
            .rsplit_once(':')
            .with_context(|| format!("position {text:?} is not EPOCH:OFFSET"))?;
        if epoch.is_empty() || !epoch.chars().all(|c| c.is_ascii_alphanumeric()) {
            bail!("position {text:?} has a non-alphanumeric epoch");
        }
        let offset = offset
            .parse()
            .with_context(|| format!("position {text:?} has a non-numeric offset"))?;
        Ok(Position {
            epoch: epoch.to_owned(),
            offset,
        })
    }

    /// Parses a multi-channel position (`E1:O1,E2:O2`).
    pub fn parse_multi(text: &str) -> Result<Vec<Self>> {
        text.split(',').map(Position::parse).collect()
    }

    /// The position of a `subscribed` frame (`epoch` and `offset` fields).
    pub fn of_subscribed(frame: &Value) -> Result<Self> {
        let epoch = frame["epoch"]
            .as_str()
            .with_context(|| format!("subscribed frame without epoch: {frame}"))?;
        let offset = frame["offset"]
            .as_u64()
            .with_context(|| format!("subscribed frame without offset: {frame}"))?;
        Ok(Position {
            epoch: epoch.to_owned(),
            offset,
        })
    }

    /// The position right after a message envelope.
    pub fn of_message(message: &Value) -> Result<Self> {
        Ok(Position {
            epoch: epoch_of(message)?.to_owned(),
            offset: offset_of(message)?,
        })
    }
}

impl fmt::Display for Position {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}:{}", self.epoch, self.offset)
    }
}

/// The `offset` of an envelope.
pub fn offset_of(message: &Value) -> Result<u64> {
    message["offset"]
        .as_u64()
        .with_context(|| format!("envelope without a numeric offset: {message}"))
}

/// The `epoch` of an envelope.
pub fn epoch_of(message: &Value) -> Result<&str> {
    message["epoch"]
        .as_str()
        .filter(|e| !e.is_empty())
        .with_context(|| format!("envelope without an epoch: {message}"))
}

/// Checks one envelope: `type`, `channel`, `offset`, `epoch`, a numeric
/// `time`, and `data` exactly as published.
pub fn check_envelope(
    message: &Value,
    channel: &str,
    offset: u64,
    epoch: &str,
    data: &Value,
) -> Result<()> {
    let ok = message["type"] == "message"
        && message["channel"] == channel
        && message["offset"] == offset
        && message["epoch"] == epoch
        && message["time"].is_u64()
        && message["data"] == *data;
    if !ok {
        bail!(
            "expected envelope {{type:message, channel:{channel}, offset:{offset}, \
             epoch:{epoch}, time:<ms>, data:{data}}}, got {message}"
        );
    }
    Ok(())
}

/// Checks that `messages` are `data` published to `channel`, in order, and
/// follow `after` exactly: offsets `after.offset + 1, ..` in `after`'s epoch
/// (any one epoch when `after` is the never-published position `0:0`).
/// Returns the position after the last message.
pub fn check_consecutive(
    messages: &[Value],
    channel: &str,
    after: &Position,
    data: &[Value],
) -> Result<Position> {
    if messages.len() != data.len() {
        bail!(
            "expected {} messages after {after}, got {}: {messages:?}",
            data.len(),
            messages.len()
        );
    }
    let mut position = after.clone();
    for (i, (message, data)) in messages.iter().zip(data).enumerate() {
        if position.is_never_published() {
            position.epoch = epoch_of(message)?.to_owned();
        }
        position.offset += 1;
        check_envelope(message, channel, position.offset, &position.epoch, data)
            .with_context(|| format!("message #{i} after {after} of {messages:?}"))?;
    }
    Ok(position)
}
