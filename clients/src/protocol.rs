//! The gateway's wire protocol (README: "Concepts" and the transport sections).
//!
//! - [`Envelope`]: a message as every transport delivers it.
//! - [`Position`] (`EPOCH:OFFSET`) and [`MultiPosition`] (positions joined by `,`
//!   in the request's channel order).
//! - [`ServerFrame`]: what the gateway sends on a WebSocket (and, by event
//!   name, on SSE): `subscribed`, `message`, `unsubscribed`, `pong`, `error`,
//!   `reconnect`.
//! - [`ClientOp`]: what a WebSocket client sends: `subscribe`, `unsubscribe`, `ping`.
//! - [`ApiError`]: the `{"error":{"code","message"}}` body of a refused HTTP request.

use std::{fmt, str::FromStr};

use serde::{de::Error as _, Deserialize, Deserializer, Serialize, Serializer};
use serde_json::Value;

/// The longest epoch the gateway issues or accepts, in bytes.
pub const MAX_EPOCH_LEN: usize = 32;

/// The longest channel name, in bytes.
pub const MAX_CHANNEL_LEN: usize = 255;

/// Whether `name` is a valid channel name: 1 to 255 bytes of `A-Z a-z 0-9 _ - . : @ /`.
///
/// The client library never refuses a name itself (the gateway is the judge and
/// answers `bad_channel`); the CLI uses this to fail early.
pub fn is_valid_channel(name: &str) -> bool {
    !name.is_empty()
        && name.len() <= MAX_CHANNEL_LEN
        && name.bytes().all(|b| {
            b.is_ascii_alphanumeric() || matches!(b, b'_' | b'-' | b'.' | b':' | b'@' | b'/')
        })
}

// ---------------------------------------------------------------------------
// Positions
// ---------------------------------------------------------------------------

/// "I have everything of the channel up to and including `offset` in `epoch`."
///
/// Text form `EPOCH:OFFSET`, e.g. `k3f9a2:17`; `k3f9a2:0` is "nothing yet".
/// Serialized (serde) as that string.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct Position {
    pub epoch: String,
    pub offset: u64,
}

/// Why a position could not be decoded.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum PositionError {
    #[error("position must be EPOCH:OFFSET")]
    Syntax,
    #[error("epoch must be 1 to 32 ASCII letters and digits")]
    BadEpoch,
    #[error("offset must be a decimal number")]
    BadOffset,
    #[error("position names {got} channels but there are {want}")]
    WrongCount { got: usize, want: usize },
}

impl Position {
    pub fn new(epoch: impl Into<String>, offset: u64) -> Self {
        Self {
            epoch: epoch.into(),
            offset,
        }
    }

    /// Decodes `EPOCH:OFFSET` (epoch: 1 to 32 ASCII alphanumerics; offset: decimal u64).
    pub fn parse(s: &str) -> Result<Self, PositionError> {
        let (epoch, offset) = s.split_once(':').ok_or(PositionError::Syntax)?;
        if epoch.is_empty()
            || epoch.len() > MAX_EPOCH_LEN
            || !epoch.bytes().all(|b| b.is_ascii_alphanumeric())
        {
            return Err(PositionError::BadEpoch);
        }
        if offset.is_empty() || !offset.bytes().all(|b| b.is_ascii_digit()) {
            return Err(PositionError::BadOffset);
        }
        let offset = offset.parse().map_err(|_| PositionError::BadOffset)?;
        Ok(Self {
            epoch: epoch.to_owned(),
            offset,
        })
    }

    /// Whether a message at `(epoch, offset)` is already covered by this position
    /// (same epoch and offset not beyond ours): a duplicate after a resume.
    pub fn covers(&self, epoch: &str, offset: u64) -> bool {
        self.epoch == epoch && offset <= self.offset
    }
}

impl fmt::Display for Position {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}:{}", self.epoch, self.offset)
    }
}

impl FromStr for Position {
    type Err = PositionError;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        Self::parse(s)
    }
}

impl Serialize for Position {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.collect_str(self)
    }
}

impl<'de> Deserialize<'de> for Position {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        let s = std::borrow::Cow::<str>::deserialize(d)?;
        Self::parse(&s).map_err(D::Error::custom)
    }
}

/// The positions of several channels, in the request's channel order, written
/// `POS,POS,...` (e.g. `k3f9a2:17,q81zz0:4`). The SSE `id:` and the long-poll
/// `cursor` are multi-channel positions. Serialized (serde) as that string.
#[derive(Debug, Clone, PartialEq, Eq, Hash, Default)]
pub struct MultiPosition(pub Vec<Position>);

impl MultiPosition {
    /// Decodes `POS,POS,...` with any number (at least one) of positions.
    pub fn parse(s: &str) -> Result<Self, PositionError> {
        s.split(',')
            .map(Position::parse)
            .collect::<Result<_, _>>()
            .map(Self)
    }

    /// Decodes `POS,POS,...` and checks it names exactly `channels` channels.
    pub fn parse_for(s: &str, channels: usize) -> Result<Self, PositionError> {
        let m = Self::parse(s)?;
        if m.0.len() != channels {
            return Err(PositionError::WrongCount {
                got: m.0.len(),
                want: channels,
            });
        }
        Ok(m)
    }

    pub fn len(&self) -> usize {
        self.0.len()
    }

    pub fn is_empty(&self) -> bool {
        self.0.is_empty()
    }
}

impl From<Vec<Position>> for MultiPosition {
    fn from(v: Vec<Position>) -> Self {
        Self(v)
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

impl FromStr for MultiPosition {
    type Err = PositionError;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        Self::parse(s)
    }
}

impl Serialize for MultiPosition {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.collect_str(self)
    }
}

impl<'de> Deserialize<'de> for MultiPosition {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        let s = std::borrow::Cow::<str>::deserialize(d)?;
        Self::parse(&s).map_err(D::Error::custom)
    }
}

// ---------------------------------------------------------------------------
// Envelope and server frames
// ---------------------------------------------------------------------------

fn message_type() -> String {
    "message".to_owned()
}

/// One message as delivered on every transport:
/// `{"type":"message","channel":..,"offset":..,"epoch":..,"time":..,"id":..,"publisher":..,"data":..}`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Envelope {
    /// Always `"message"`.
    #[serde(rename = "type", default = "message_type")]
    pub kind: String,
    pub channel: String,
    pub offset: u64,
    pub epoch: String,
    /// Publish time, Unix milliseconds.
    pub time: u64,
    /// Idempotency id, when the publisher gave one.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub id: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub publisher: Option<String>,
    /// The published JSON value, unchanged.
    pub data: Value,
}

impl Envelope {
    /// The position of a reader that has just read this message.
    pub fn position(&self) -> Position {
        Position::new(self.epoch.clone(), self.offset)
    }
}

/// `{"type":"subscribed","channel":..,"epoch":..,"offset":..,"recovered":..}`:
/// messages after `offset` follow. `recovered: false` means the requested
/// position could not be honoured and delivery continues from `offset`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Subscribed {
    pub channel: String,
    pub epoch: String,
    pub offset: u64,
    #[serde(default = "yes")]
    pub recovered: bool,
}

fn yes() -> bool {
    true
}

impl Subscribed {
    pub fn position(&self) -> Position {
        Position::new(self.epoch.clone(), self.offset)
    }
}

/// `{"type":"error","code":..,"reason":..,"channel":..}`: a request was refused;
/// the WebSocket stays usable.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ErrorFrame {
    pub code: String,
    #[serde(default)]
    pub reason: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub channel: Option<String>,
}

impl fmt::Display for ErrorFrame {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}: {}", self.code, self.reason)?;
        if let Some(c) = &self.channel {
            write!(f, " (channel {c})")?;
        }
        Ok(())
    }
}

/// A frame the gateway sends (WebSocket text frame, or the `data:` of an SSE event).
#[derive(Debug, Clone, PartialEq)]
pub enum ServerFrame {
    Subscribed(Subscribed),
    Message(Envelope),
    Unsubscribed {
        channel: String,
    },
    Pong,
    Error(ErrorFrame),
    /// The gateway asks the client to reconnect after `delay_ms` (e.g. it is draining).
    Reconnect {
        delay_ms: u64,
    },
    /// A frame of a type this library does not know (kept whole, never an error).
    Unknown(Value),
}

#[derive(Deserialize)]
struct UnsubscribedBody {
    channel: String,
}

#[derive(Deserialize)]
struct ReconnectBody {
    #[serde(default)]
    delay_ms: u64,
}

impl ServerFrame {
    /// Decodes one frame from JSON text.
    pub fn parse(text: &str) -> Result<Self, serde_json::Error> {
        Self::from_value(serde_json::from_str(text)?)
    }

    /// Decodes one frame from a JSON value; the frame type is its `"type"` field.
    pub fn from_value(v: Value) -> Result<Self, serde_json::Error> {
        Self::from_value_or(v, None)
    }

    /// Like [`from_value`](Self::from_value), with `default_type` used when the
    /// value has no `"type"` field (an SSE event name, for instance).
    pub fn from_value_or(v: Value, default_type: Option<&str>) -> Result<Self, serde_json::Error> {
        let kind = match v.get("type").and_then(Value::as_str) {
            Some(t) => t.to_owned(),
            None => match default_type {
                Some(t) => t.to_owned(),
                None => return Ok(Self::Unknown(v)),
            },
        };
        Ok(match kind.as_str() {
            "message" => Self::Message(serde_json::from_value(v)?),
            "subscribed" => Self::Subscribed(serde_json::from_value(v)?),
            "unsubscribed" => {
                let b: UnsubscribedBody = serde_json::from_value(v)?;
                Self::Unsubscribed { channel: b.channel }
            }
            "pong" => Self::Pong,
            "error" => Self::Error(serde_json::from_value(v)?),
            "reconnect" => {
                let b: ReconnectBody = serde_json::from_value(v)?;
                Self::Reconnect {
                    delay_ms: b.delay_ms,
                }
            }
            _ => Self::Unknown(v),
        })
    }

    /// The frame's `"type"` string.
    pub fn type_name(&self) -> &str {
        match self {
            Self::Subscribed(_) => "subscribed",
            Self::Message(_) => "message",
            Self::Unsubscribed { .. } => "unsubscribed",
            Self::Pong => "pong",
            Self::Error(_) => "error",
            Self::Reconnect { .. } => "reconnect",
            Self::Unknown(v) => v.get("type").and_then(Value::as_str).unwrap_or(""),
        }
    }
}

#[derive(Serialize)]
#[serde(tag = "type", rename_all = "lowercase")]
enum TaggedFrame<'a> {
    Subscribed(&'a Subscribed),
    Unsubscribed { channel: &'a str },
    Pong,
    Error(&'a ErrorFrame),
    Reconnect { delay_ms: u64 },
}

impl Serialize for ServerFrame {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        match self {
            Self::Message(e) => e.serialize(s),
            Self::Unknown(v) => v.serialize(s),
            Self::Subscribed(x) => TaggedFrame::Subscribed(x).serialize(s),
            Self::Unsubscribed { channel } => TaggedFrame::Unsubscribed { channel }.serialize(s),
            Self::Pong => TaggedFrame::Pong.serialize(s),
            Self::Error(e) => TaggedFrame::Error(e).serialize(s),
            Self::Reconnect { delay_ms } => TaggedFrame::Reconnect {
                delay_ms: *delay_ms,
            }
            .serialize(s),
        }
    }
}

impl<'de> Deserialize<'de> for ServerFrame {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        Self::from_value(Value::deserialize(d)?).map_err(D::Error::custom)
    }
}

// ---------------------------------------------------------------------------
// Client operations (WebSocket)
// ---------------------------------------------------------------------------

/// A WebSocket operation sent by the client.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "op", rename_all = "lowercase")]
pub enum ClientOp {
    /// Live messages from now, or (with `since`) everything after that position, then live.
    Subscribe {
        channel: String,
        #[serde(default, skip_serializing_if = "Option::is_none")]
        since: Option<Position>,
    },
    Unsubscribe {
        channel: String,
    },
    /// Answered by `{"type":"pong"}`.
    Ping,
}

impl ClientOp {
    pub fn subscribe(channel: impl Into<String>, since: Option<Position>) -> Self {
        Self::Subscribe {
            channel: channel.into(),
            since,
        }
    }

    pub fn unsubscribe(channel: impl Into<String>) -> Self {
        Self::Unsubscribe {
            channel: channel.into(),
        }
    }

    /// The op as JSON text.
    pub fn to_json(&self) -> String {
        // Serializing these plain structs cannot fail.
        serde_json::to_string(self).unwrap_or_default()
    }
}

// ---------------------------------------------------------------------------
// HTTP error body
// ---------------------------------------------------------------------------

/// The body of a refused HTTP request: `{"error":{"code":"bad_channel","message":"..."}}`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ApiError {
    pub code: String,
    #[serde(default)]
    pub message: String,
}

/// The wrapper object around [`ApiError`].
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ApiErrorBody {
    pub error: ApiError,
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use serde_json::json;

    use super::*;

    #[test]
    fn position_round_trips_and_refuses_garbage() {
        let p: Position = "k3f9a2:17".parse().unwrap();
        assert_eq!(p, Position::new("k3f9a2", 17));
        assert_eq!(p.to_string(), "k3f9a2:17");
        for bad in [
            "", ":", "abc", "abc:", ":5", "a-b:1", "abc:-1", "abc:1x", "abc:+1", "abc: 1",
        ] {
            assert!(Position::parse(bad).is_err(), "{bad:?} accepted");
        }
        assert_eq!(
            Position::parse("e:18446744073709551616"),
            Err(PositionError::BadOffset)
        );
        assert_eq!(
            Position::parse(&format!("{}:1", "a".repeat(33))),
            Err(PositionError::BadEpoch)
        );
        assert!(p.covers("k3f9a2", 17) && p.covers("k3f9a2", 3));
        assert!(!p.covers("k3f9a2", 18) && !p.covers("other", 1));
    }

    #[test]
    fn multi_position_round_trips_and_checks_count() {
        let m = MultiPosition::parse("k3f9a2:17,q81zz0:4").unwrap();
        assert_eq!(
            m.0,
            vec![Position::new("k3f9a2", 17), Position::new("q81zz0", 4)]
        );
        assert_eq!(m.to_string(), "k3f9a2:17,q81zz0:4");
        assert!(MultiPosition::parse_for("a:1", 1).is_ok());
        assert_eq!(
            MultiPosition::parse_for("a:1", 2),
            Err(PositionError::WrongCount { got: 1, want: 2 })
        );
        assert!(MultiPosition::parse("a:1,").is_err());
        assert_eq!(
            serde_json::to_string(&m).unwrap(),
            r#""k3f9a2:17,q81zz0:4""#
        );
    }

    #[test]
    fn envelope_decodes_with_and_without_optional_fields() {
        let text = r#"{"type":"message","channel":"files:alice","offset":7,"epoch":"k3f9a2",
            "time":1764860000123,"id":"evt-991","publisher":"sync-svc","data":{"a":[1,2]}}"#;
        let e: Envelope = serde_json::from_str(text).unwrap();
        assert_eq!(e.kind, "message");
        assert_eq!((e.offset, e.time), (7, 1764860000123));
        assert_eq!(e.id.as_deref(), Some("evt-991"));
        assert_eq!(e.publisher.as_deref(), Some("sync-svc"));
        assert_eq!(e.data["a"][1], 2);
        assert_eq!(e.position(), Position::new("k3f9a2", 7));

        let e: Envelope =
            serde_json::from_str(r#"{"channel":"c","offset":1,"epoch":"e","time":0,"data":null}"#)
                .unwrap();
        assert_eq!(
            (e.kind.as_str(), e.id.as_deref(), e.publisher.as_deref()),
            ("message", None, None)
        );
        let back = serde_json::to_value(&e).unwrap();
        assert_eq!(
            back,
            json!({"type":"message","channel":"c","offset":1,"epoch":"e","time":0,"data":null})
        );
    }

    #[test]
    fn every_server_frame_decodes_and_re_encodes() {
        let cases = [
            json!({"type":"subscribed","channel":"files:alice","epoch":"k3f9a2","offset":17,"recovered":true}),
            json!({"type":"message","channel":"c","offset":1,"epoch":"e","time":5,"data":{"x":1}}),
            json!({"type":"unsubscribed","channel":"files:alice"}),
            json!({"type":"pong"}),
            json!({"type":"error","code":"bad_channel","reason":"no","channel":"a b"}),
            json!({"type":"reconnect","delay_ms":250}),
        ];
        let names = [
            "subscribed",
            "message",
            "unsubscribed",
            "pong",
            "error",
            "reconnect",
        ];
        for (v, name) in cases.iter().zip(names) {
            let f = ServerFrame::parse(&v.to_string()).unwrap();
            assert_eq!(f.type_name(), name);
            assert!(!matches!(f, ServerFrame::Unknown(_)), "{v}");
            assert_eq!(&serde_json::to_value(&f).unwrap(), v);
        }
        match ServerFrame::parse(r#"{"type":"error","code":"unknown_op"}"#).unwrap() {
            ServerFrame::Error(e) => {
                assert_eq!(
                    (e.code.as_str(), e.reason.as_str(), e.channel),
                    ("unknown_op", "", None)
                )
            }
            other => panic!("{other:?}"),
        }
        let f = ServerFrame::parse(r#"{"type":"future","x":1}"#).unwrap();
        assert!(matches!(f, ServerFrame::Unknown(_)));
        assert_eq!(f.type_name(), "future");
        assert!(ServerFrame::parse(r#"{"type":"subscribed"}"#).is_err());
        assert!(ServerFrame::parse("not json").is_err());
    }

    #[test]
    fn default_type_applies_only_when_type_is_missing() {
        let v = json!({"channel":"c","epoch":"e","offset":3,"recovered":false});
        match ServerFrame::from_value_or(v, Some("subscribed")).unwrap() {
            ServerFrame::Subscribed(s) => assert!(!s.recovered),
            other => panic!("{other:?}"),
        }
        let v = json!({"type":"pong"});
        assert_eq!(
            ServerFrame::from_value_or(v, Some("message")).unwrap(),
            ServerFrame::Pong
        );
    }

    #[test]
    fn client_ops_encode_as_documented() {
        assert_eq!(
            ClientOp::subscribe("files:alice", None).to_json(),
            r#"{"op":"subscribe","channel":"files:alice"}"#
        );
        assert_eq!(
            ClientOp::subscribe("files:alice", Some(Position::new("k3f9a2", 17))).to_json(),
            r#"{"op":"subscribe","channel":"files:alice","since":"k3f9a2:17"}"#
        );
        assert_eq!(
            ClientOp::unsubscribe("files:alice").to_json(),
            r#"{"op":"unsubscribe","channel":"files:alice"}"#
        );
        assert_eq!(ClientOp::Ping.to_json(), r#"{"op":"ping"}"#);
        let back: ClientOp =
            serde_json::from_str(r#"{"op":"subscribe","channel":"c","since":"e:1"}"#).unwrap();
        assert_eq!(back, ClientOp::subscribe("c", Some(Position::new("e", 1))));
    }

    #[test]
    fn channel_names_follow_the_readme() {
        assert!(is_valid_channel("files:alice/doc-42_v.1@eu"));
        assert!(is_valid_channel(&"a".repeat(255)));
        for bad in ["", "a b", "a,b", "é", "a{b}"] {
            assert!(!is_valid_channel(bad), "{bad:?}");
        }
        assert!(!is_valid_channel(&"a".repeat(256)));
    }

    #[test]
    fn api_error_body_decodes() {
        let b: ApiErrorBody =
            serde_json::from_str(r#"{"error":{"code":"bad_json","message":"expected value"}}"#)
                .unwrap();
        assert_eq!(b.error.code, "bad_json");
    }
}
