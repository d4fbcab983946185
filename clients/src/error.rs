//! The one error type of the client library.

use std::time::Duration;

use crate::protocol::{ApiErrorBody, ErrorFrame, PositionError};

/// A refusal by the gateway: an HTTP error body `{"error":{"code","message"}}`
/// (then `status` is the HTTP status) or a WebSocket/SSE `error` frame (then
/// `status` is `None`).
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{}{code}: {message}{}",
    status.map(|s| format!("HTTP {s}: ")).unwrap_or_default(),
    channel.as_ref().map(|c| format!(" (channel {c})")).unwrap_or_default())]
pub struct GatewayError {
    pub status: Option<u16>,
    /// `bad_channel`, `bad_json`, `unknown_op`, `bad_position`, ...
    pub code: String,
    pub message: String,
    pub channel: Option<String>,
}

impl From<ErrorFrame> for GatewayError {
    fn from(f: ErrorFrame) -> Self {
        Self {
            status: None,
            code: f.code,
            message: f.reason,
            channel: f.channel,
        }
    }
}

#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// The gateway refused the request (HTTP error body or `error` frame).
    #[error("gateway refused: {0}")]
    Gateway(GatewayError),
    /// An HTTP error status whose body is not the gateway's error JSON.
    #[error("HTTP status {status}: {body}")]
    Status { status: u16, body: String },
    /// A network wait took longer than its timeout.
    #[error("timed out after {after:?} while {what}")]
    Timeout { what: &'static str, after: Duration },
    #[error("HTTP: {0}")]
    Http(#[from] reqwest::Error),
    #[error("WebSocket: {0}")]
    WebSocket(Box<tokio_tungstenite::tungstenite::Error>),
    #[error("JSON: {0}")]
    Json(#[from] serde_json::Error),
    #[error("invalid URL: {0}")]
    Url(String),
    #[error(transparent)]
    Position(#[from] PositionError),
    /// The peer broke the protocol (wrong content type, binary frame, oversized event, ...).
    #[error("protocol: {0}")]
    Protocol(String),
    /// The connection was closed.
    #[error("connection closed")]
    Closed,
    /// A retrying helper gave up.
    #[error("gave up after {attempts} attempts: {last}")]
    GaveUp { attempts: u32, last: Box<Error> },
}

pub type Result<T, E = Error> = std::result::Result<T, E>;

impl Error {
    /// The gateway's error code (`bad_channel`, ...), when the gateway refused.
    pub fn code(&self) -> Option<&str> {
        match self {
            Self::Gateway(g) => Some(&g.code),
            Self::GaveUp { last, .. } => last.code(),
            _ => None,
        }
    }

    /// Whether trying again (reconnecting) may help: network trouble, timeouts,
    /// closed connections, 5xx, 408 and 429. Refusals (4xx, `error` frames),
    /// bad input and protocol violations are final.
    pub fn is_retryable(&self) -> bool {
        match self {
            Self::Gateway(g) => matches!(g.status, Some(s) if s >= 500 || s == 408 || s == 429),
            Self::Status { status, .. } => *status >= 500 || *status == 408 || *status == 429,
            Self::Timeout { .. } | Self::Closed => true,
            Self::Http(e) => !e.is_builder() && !e.is_decode(),
            Self::WebSocket(e) => {
                use tokio_tungstenite::tungstenite::Error as W;
                matches!(
                    **e,
                    W::ConnectionClosed | W::AlreadyClosed | W::Io(_) | W::Protocol(_)
                )
            }
            Self::Json(_) | Self::Url(_) | Self::Position(_) | Self::Protocol(_) => false,
            Self::GaveUp { .. } => false,
        }
    }

    pub(crate) fn timeout(what: &'static str, after: Duration) -> Self {
        Self::Timeout { what, after }
    }

    /// The error for a non-success HTTP answer with `body`.
    pub(crate) fn from_status(status: u16, body: &[u8]) -> Self {
        match serde_json::from_slice::<ApiErrorBody>(body) {
            Ok(b) => Self::Gateway(GatewayError {
                status: Some(status),
                code: b.error.code,
                message: b.error.message,
                channel: None,
            }),
            Err(_) => Self::Status {
                status,
                body: String::from_utf8_lossy(&body[..body.len().min(2048)]).into_owned(),
            },
        }
    }
}

impl From<GatewayError> for Error {
    fn from(g: GatewayError) -> Self {
        Self::Gateway(g)
    }
}

impl From<tokio_tungstenite::tungstenite::Error> for Error {
    fn from(e: tokio_tungstenite::tungstenite::Error) -> Self {
        use tokio_tungstenite::tungstenite::Error as W;
        match e {
            // A refused upgrade: surface the gateway's error body.
            W::Http(resp) => {
                let body = resp.body().as_deref().unwrap_or_default();
                Self::from_status(resp.status().as_u16(), body)
            }
            other => Self::WebSocket(Box::new(other)),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn gateway_error_bodies_are_decoded() {
        let e = Error::from_status(400, br#"{"error":{"code":"bad_channel","message":"bad"}}"#);
        assert_eq!(e.code(), Some("bad_channel"));
        assert!(!e.is_retryable());
        assert_eq!(e.to_string(), "gateway refused: HTTP 400: bad_channel: bad");
        let e = Error::from_status(503, b"<html>busy</html>");
        assert!(matches!(&e, Error::Status { status: 503, body } if body.contains("busy")));
        assert!(e.is_retryable());
    }

    #[test]
    fn error_frames_become_gateway_errors() {
        let g = GatewayError::from(ErrorFrame {
            code: "bad_channel".into(),
            reason: "nope".into(),
            channel: Some("a b".into()),
        });
        assert_eq!(g.to_string(), "bad_channel: nope (channel a b)");
        assert!(!Error::from(g).is_retryable());
    }
}
