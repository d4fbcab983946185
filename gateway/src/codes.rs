//! Every error code and WebSocket close code the gateway sends, in one table.
//!
//! Transports pick an [`ErrorCode`] or [`Close`] from here and never invent a
//! code or a reason inline. README's "Codes" section is this table in prose.

use axum::http::StatusCode;

/// One row of the error table.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ErrorInfo {
    /// The code sent on the wire (`{"error":{"code":..}}` or a WS `error` frame).
    pub code: &'static str,
    /// HTTP status on the HTTP endpoints.
    pub status: StatusCode,
    /// Whether retrying the same request later can succeed.
    pub retry: bool,
    /// Default human-readable reason.
    pub reason: &'static str,
}

macro_rules! error_codes {
    ($($variant:ident => $code:literal, $status:ident, $retry:literal, $reason:literal;)*) => {
        /// Codes of refused requests.
        #[derive(Debug, Clone, Copy, PartialEq, Eq)]
        pub enum ErrorCode { $($variant),* }

        impl ErrorCode {
            /// Every code, in table order (for docs and tests).
            pub const ALL: &'static [ErrorCode] = &[$(ErrorCode::$variant),*];

            pub fn info(self) -> ErrorInfo {
                match self {
                    $(ErrorCode::$variant => ErrorInfo {
                        code: $code,
                        status: StatusCode::$status,
                        retry: $retry,
                        reason: $reason,
                    }),*
                }
            }
        }
    };
}

error_codes! {
    BadChannel => "bad_channel", BAD_REQUEST, false,
        "channel names are 1-255 bytes of A-Z a-z 0-9 _ - . : @ /";
    BadJson => "bad_json", BAD_REQUEST, false, "the body is not valid JSON of the expected shape";
    BadRequest => "bad_request", BAD_REQUEST, false, "the request is missing a field or has a wrong one";
    BadPosition => "bad_position", BAD_REQUEST, false,
        "positions are EPOCH:OFFSET, one per channel joined by commas";
    BadId => "bad_id", BAD_REQUEST, false,
        "id and publisher are 1-128 bytes without control characters";
    UnknownOp => "unknown_op", BAD_REQUEST, false, "op must be subscribe, unsubscribe or ping";
    AlreadySubscribed => "already_subscribed", CONFLICT, false,
        "this connection already holds the channel";
    NotSubscribed => "not_subscribed", BAD_REQUEST, false, "this connection does not hold the channel";
    TooManyChannels => "too_many_channels", BAD_REQUEST, false,
        "a connection may hold only a limited number of channels";
    NoChannel => "no_channel", BAD_REQUEST, false, "name at least one channel";
    UnsupportedMediaType => "unsupported_media_type", UNSUPPORTED_MEDIA_TYPE, false,
        "publish bodies must be Content-Type: application/json";
    PayloadTooLarge => "payload_too_large", PAYLOAD_TOO_LARGE, false,
        "the payload is over the node's size limit";
    Unauthorized => "unauthorized", UNAUTHORIZED, false, "a valid API key is required";
    RequestTimeout => "request_timeout", REQUEST_TIMEOUT, true,
        "the request body did not arrive in time";
    NotFound => "not_found", NOT_FOUND, false, "no such endpoint";
    NotUpgrade => "not_websocket", BAD_REQUEST, false,
        "this endpoint takes a WebSocket upgrade (GET with Upgrade: websocket)";
    UpgradeRequired => "upgrade_required", UPGRADE_REQUIRED, false,
        "only WebSocket version 13 is spoken (Sec-WebSocket-Version: 13)";
    MethodNotAllowed => "method_not_allowed", METHOD_NOT_ALLOWED, false,
        "this endpoint does not take that method";
    Unavailable => "unavailable", SERVICE_UNAVAILABLE, true,
        "the broker is unreachable; retry shortly";
    ShuttingDown => "shutting_down", SERVICE_UNAVAILABLE, true,
        "this node is shutting down; reconnect to another";
}

/// WebSocket close codes the gateway sends.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Close {
    /// 1001: the node is draining; reconnect (elsewhere) after the hinted delay.
    GoingAway,
    /// 1002: the peer broke the WebSocket protocol.
    ProtocolError,
    /// 1003: a binary message where only text is accepted.
    UnsupportedData,
    /// 1007: a text message that is not UTF-8.
    InvalidPayload,
    /// 1009: a frame or message over the node's limit.
    TooBig,
    /// 4001: the client did not keep up and its queue overflowed; resume from its position.
    SlowConsumer,
    /// 4002: the client stopped answering pings.
    PingTimeout,
}

impl Close {
    pub const ALL: &'static [Close] = &[
        Close::GoingAway,
        Close::ProtocolError,
        Close::UnsupportedData,
        Close::InvalidPayload,
        Close::TooBig,
        Close::SlowConsumer,
        Close::PingTimeout,
    ];

    /// The close code, its reason text (under 123 bytes) and whether to reconnect.
    pub fn info(self) -> (u16, &'static str, bool) {
        match self {
            Close::GoingAway => (1001, "node draining, reconnect elsewhere", true),
            Close::ProtocolError => (1002, "websocket protocol error", false),
            Close::UnsupportedData => (1003, "binary messages are not accepted", false),
            Close::InvalidPayload => (1007, "text message is not valid UTF-8", false),
            Close::TooBig => (1009, "message over the size limit", false),
            Close::SlowConsumer => (
                4001,
                "slow consumer: queue overflowed, resume from your position",
                true,
            ),
            Close::PingTimeout => (4002, "ping timeout", true),
        }
    }

    pub fn code(self) -> u16 {
        self.info().0
    }

    pub fn reason(self) -> &'static str {
        self.info().1
    }
}

/// The whole table as Markdown, for README and `gateway --print-codes`.
pub fn markdown() -> String {
    let mut out =
        String::from("| error code | HTTP status | retry | meaning |\n|---|---|---|---|\n");
    for c in ErrorCode::ALL {
        let i = c.info();
        let retry = if i.retry { "yes" } else { "no" };
        out.push_str(&format!(
            "| `{}` | {} | {retry} | {} |\n",
            i.code,
            i.status.as_u16(),
            i.reason
        ));
    }
    out.push_str("\n| WebSocket close code | reconnect | reason |\n|---|---|---|\n");
    for c in Close::ALL {
        let (code, reason, again) = c.info();
        let again = if again { "yes" } else { "no" };
        out.push_str(&format!("| {code} | {again} | {reason} |\n"));
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn codes_are_unique_and_reasons_fit_a_close_frame() {
        let mut names: Vec<_> = ErrorCode::ALL.iter().map(|c| c.info().code).collect();
        names.sort_unstable();
        names.dedup();
        assert_eq!(names.len(), ErrorCode::ALL.len());
        let mut closes: Vec<_> = Close::ALL.iter().map(|c| c.code()).collect();
        closes.sort_unstable();
        closes.dedup();
        assert_eq!(closes.len(), Close::ALL.len());
        for c in Close::ALL {
            assert!(c.reason().len() <= 123, "{c:?}");
            assert!(!matches!(c.code(), 1005 | 1006 | 1015), "{c:?} is reserved");
        }
    }
}
