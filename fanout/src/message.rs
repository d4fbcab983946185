//! Messages as stored and delivered: the envelope every transport sends.
//!
//! A [`Message`] is created once per publish (by the embedded broker, or by
//! decoding what Redis pub/sub delivered) and shared by reference count with
//! every subscriber that receives it. Its JSON envelope is encoded once; a
//! transport that needs another framing encodes it once too, through
//! [`Message::encoded`], and shares those bytes the same way.

use std::{
    any::Any,
    sync::{Arc, OnceLock},
};

use bytes::Bytes;
use serde::Deserialize;

use crate::{Channel, Epoch, Position};

/// The longest publisher-supplied idempotency id or publisher name, in bytes.
pub const MAX_ID_LEN: usize = 128;

/// How many transports may cache their own framing of a message.
pub const ENCODING_SLOTS: usize = 4;

/// One published message, shared by every subscriber that receives it.
pub struct Message {
    pub channel: Channel,
    pub offset: u64,
    pub epoch: Epoch,
    /// Publish time, Unix milliseconds.
    pub time_ms: u64,
    /// Idempotency id given by the publisher, if any.
    pub id: Option<Box<str>>,
    /// The full JSON envelope: `{"type":"message","channel":..,"data":..}`.
    envelope: Bytes,
    /// Transport framings of this message, each built on first use.
    encodings: [OnceLock<Box<dyn Any + Send + Sync>>; ENCODING_SLOTS],
}

/// What a publisher asks for; checked by [`PublishRequest::new`].
#[derive(Debug, Clone)]
pub struct PublishRequest {
    pub channel: Channel,
    /// The payload as JSON text, already validated as JSON by the caller.
    pub data: Box<str>,
    pub id: Option<Box<str>>,
    pub publisher: Option<Box<str>>,
}

/// The answer to a publish.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PublishOutcome {
    pub channel: Channel,
    pub offset: u64,
    pub epoch: Epoch,
    /// True when the idempotency id was already accepted; `offset` is the original one.
    pub duplicate: bool,
}

/// Why a publish request was refused before reaching the broker.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum RequestError {
    #[error("{field} must be 1 to {MAX_ID_LEN} bytes without control characters")]
    BadId { field: &'static str },
}

impl PublishRequest {
    /// Checks the optional id and publisher fields; channel and JSON are checked by their types.
    pub fn new(
        channel: Channel,
        data: Box<str>,
        id: Option<Box<str>>,
        publisher: Option<Box<str>>,
    ) -> Result<Self, RequestError> {
        check_label(id.as_deref(), "id")?;
        check_label(publisher.as_deref(), "publisher")?;
        Ok(Self {
            channel,
            data,
            id,
            publisher,
        })
    }
}

fn check_label(s: Option<&str>, field: &'static str) -> Result<(), RequestError> {
    match s {
        Some(s) if s.is_empty() || s.len() > MAX_ID_LEN || s.chars().any(char::is_control) => {
            Err(RequestError::BadId { field })
        }
        _ => Ok(()),
    }
}

/// An envelope as decoded by a node: the fields it needs to order and route
/// it, and every other field decoded too (then dropped), so one strict pass
/// proves the whole envelope is JSON a client can parse.
#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct EnvelopeHead<'a> {
    #[serde(rename = "type", borrow)]
    _kind: std::borrow::Cow<'a, str>,
    #[serde(borrow)]
    channel: std::borrow::Cow<'a, str>,
    offset: u64,
    #[serde(borrow)]
    epoch: std::borrow::Cow<'a, str>,
    time: u64,
    #[serde(default, borrow)]
    id: Option<std::borrow::Cow<'a, str>>,
    #[serde(default, rename = "publisher", borrow)]
    _publisher: Option<std::borrow::Cow<'a, str>>,
    #[serde(rename = "data")]
    _data: serde_json::Value,
}

/// Why an envelope received from a broker could not be used.
#[derive(Debug, thiserror::Error)]
#[error("malformed envelope: {0}")]
pub struct EnvelopeError(String);

impl Message {
    /// Builds the envelope for a message assigned `offset` in `epoch` at `time_ms`.
    pub fn build(req: &PublishRequest, offset: u64, epoch: Epoch, time_ms: u64) -> Self {
        let mut env = String::with_capacity(req.data.len() + req.channel.as_str().len() + 96);
        env.push_str(r#"{"type":"message","channel":"#);
        push_json_str(&mut env, req.channel.as_str());
        env.push_str(&format!(
            r#","offset":{offset},"epoch":"{epoch}","time":{time_ms}"#
        ));
        if let Some(id) = &req.id {
            env.push_str(r#","id":"#);
            push_json_str(&mut env, id);
        }
        if let Some(p) = &req.publisher {
            env.push_str(r#","publisher":"#);
            push_json_str(&mut env, p);
        }
        env.push_str(r#","data":"#);
        env.push_str(&req.data);
        env.push('}');
        Self {
            channel: req.channel.clone(),
            offset,
            epoch,
            time_ms,
            id: req.id.clone(),
            envelope: Bytes::from(env),
            encodings: Default::default(),
        }
    }

    /// Decodes an envelope as the Redis function wrote it.
    ///
    /// The whole envelope is decoded strictly in one pass (UTF-8, numbers in
    /// range, no lone surrogates, no unknown fields): something written into Redis by hand that
    /// clients could not decode is refused here, once per node, rather than
    /// handed to every subscriber.
    pub fn from_envelope(envelope: Bytes) -> Result<Self, EnvelopeError> {
        let head: EnvelopeHead<'_> =
            serde_json::from_slice(&envelope).map_err(|e| EnvelopeError(e.to_string()))?;
        let channel = Channel::new(&head.channel).map_err(|e| EnvelopeError(e.to_string()))?;
        let epoch = Epoch::new(&head.epoch).map_err(|e| EnvelopeError(e.to_string()))?;
        let (offset, time_ms, id) = (head.offset, head.time, head.id.map(|s| s.into()));
        Ok(Self {
            channel,
            offset,
            epoch,
            time_ms,
            id,
            envelope,
            encodings: Default::default(),
        })
    }

    /// The JSON envelope, shared.
    pub fn envelope(&self) -> &Bytes {
        &self.envelope
    }

    /// The envelope as text (it is always valid UTF-8 JSON).
    pub fn envelope_str(&self) -> &str {
        std::str::from_utf8(&self.envelope).unwrap_or_default()
    }

    /// Bytes a queued copy of this message pins, for queue accounting.
    pub fn size(&self) -> usize {
        self.envelope.len()
    }

    /// The position of a reader that has just read this message.
    pub fn position(&self) -> Position {
        Position::new(self.epoch.clone(), self.offset)
    }

    /// A transport's own framing of this message, built once in `slot` and then shared.
    ///
    /// Each transport owns one slot number below [`ENCODING_SLOTS`] and always stores
    /// the same type there; `None` means the slot number is out of range or holds
    /// another type, which is a bug in the caller.
    pub fn encoded<T: Any + Send + Sync>(
        &self,
        slot: usize,
        build: impl FnOnce(&Message) -> T,
    ) -> Option<&T> {
        let cell = self.encodings.get(slot)?;
        cell.get_or_init(|| Box::new(build(self))).downcast_ref()
    }
}

impl std::fmt::Debug for Message {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Message")
            .field("channel", &self.channel)
            .field("offset", &self.offset)
            .field("epoch", &self.epoch)
            .finish_non_exhaustive()
    }
}

/// Appends `s` as a JSON string literal.
fn push_json_str(out: &mut String, s: &str) {
    // serde_json's escaping is the reference; a String cannot fail to serialize.
    out.push_str(&serde_json::to_string(s).unwrap_or_else(|_| "\"\"".into()));
}

/// Shared handle to a message.
pub type SharedMessage = Arc<Message>;

#[cfg(test)]
mod tests {
    use super::*;

    fn req(data: &str) -> PublishRequest {
        PublishRequest::new(
            Channel::new("files:alice").unwrap(),
            data.into(),
            Some("evt\"1".into()),
            None,
        )
        .unwrap()
    }

    #[test]
    fn built_envelope_is_json_and_decodes_back() {
        let m = Message::build(&req(r#"{"a":[1,2]}"#), 7, Epoch::new("e1").unwrap(), 123);
        let v: serde_json::Value = serde_json::from_slice(m.envelope()).unwrap();
        assert_eq!(v["type"], "message");
        assert_eq!(v["offset"], 7);
        assert_eq!(v["id"], "evt\"1");
        assert_eq!(v["data"]["a"][1], 2);
        let back = Message::from_envelope(m.envelope().clone()).unwrap();
        assert_eq!(
            (back.offset, back.time_ms, back.id.as_deref()),
            (7, 123, Some("evt\"1"))
        );
    }

    #[test]
    fn envelopes_clients_could_not_decode_are_refused() {
        let env = |data: &str| {
            Bytes::from(format!(
                r#"{{"type":"message","channel":"c","offset":1,"epoch":"e","time":1,"data":{data}}}"#
            ))
        };
        assert!(Message::from_envelope(env("[1]")).is_ok());
        for bad in ["1e400", r#""\ud800""#, "NaN", "01"] {
            assert!(Message::from_envelope(env(bad)).is_err(), "{bad} accepted");
        }
    }

    #[test]
    fn transport_encoding_is_built_once() {
        let m = Message::build(&req("1"), 1, Epoch::new("e").unwrap(), 0);
        let mut calls = 0;
        let a = m.encoded(0, |_| {
            calls += 1;
            Bytes::from_static(b"x")
        });
        assert_eq!(a.map(|b| b.len()), Some(1));
        let b = m.encoded(0, |_| -> Bytes { unreachable!() });
        assert!(b.is_some());
        assert_eq!(calls, 1);
        assert!(m.encoded(ENCODING_SLOTS, |_| 0u8).is_none());
    }

    #[test]
    fn control_characters_in_ids_are_refused() {
        let ch = Channel::new("c").unwrap();
        assert!(PublishRequest::new(ch.clone(), "1".into(), Some("a\nb".into()), None).is_err());
        assert!(PublishRequest::new(ch, "1".into(), None, Some("".into())).is_err());
    }
}
