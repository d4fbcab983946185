//! HTTP error answers: a status from the code table and a JSON body.

use axum::{
    http::{header, HeaderValue},
    response::{IntoResponse, Response},
    Json,
};
use serde_json::json;

use crate::codes::ErrorCode;

/// A refused HTTP request: `{"error":{"code":..,"message":..}}` with the code's status.
#[derive(Debug)]
pub struct ApiError {
    pub code: ErrorCode,
    pub message: String,
}

impl ApiError {
    pub fn new(code: ErrorCode, message: impl Into<String>) -> Self {
        Self {
            code,
            message: message.into(),
        }
    }

    /// The code's default reason as the message.
    pub fn plain(code: ErrorCode) -> Self {
        Self {
            code,
            message: code.info().reason.into(),
        }
    }
}

impl From<fanout::BrokerError> for ApiError {
    fn from(e: fanout::BrokerError) -> Self {
        match e {
            fanout::BrokerError::Unavailable(cause) => {
                tracing::warn!(%cause, "broker unavailable");
                Self::plain(ErrorCode::Unavailable)
            }
            fanout::BrokerError::Rejected { code, reason } => {
                let code = ErrorCode::ALL
                    .iter()
                    .copied()
                    .find(|c| c.info().code == code)
                    .unwrap_or(ErrorCode::BadRequest);
                Self::new(code, reason)
            }
            fanout::BrokerError::Config(why) => {
                tracing::error!(%why, "broker misconfigured");
                Self::plain(ErrorCode::Unavailable)
            }
        }
    }
}

impl IntoResponse for ApiError {
    fn into_response(self) -> Response {
        let info = self.code.info();
        let body = json!({"error": {"code": info.code, "message": self.message}});
        let mut resp = (info.status, Json(body)).into_response();
        let headers = resp.headers_mut();
        if info.retry {
            headers.insert(header::RETRY_AFTER, HeaderValue::from_static("1"));
        }
        match self.code {
            ErrorCode::Unauthorized => {
                headers.insert(header::WWW_AUTHENTICATE, HeaderValue::from_static("Bearer"));
            }
            ErrorCode::UpgradeRequired => {
                headers.insert(
                    header::SEC_WEBSOCKET_VERSION,
                    HeaderValue::from_static("13"),
                );
                headers.insert(header::UPGRADE, HeaderValue::from_static("websocket"));
            }
            _ => {}
        }
        resp
    }
}
