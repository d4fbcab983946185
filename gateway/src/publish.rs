//! The publish API: `POST /v1/publish` with one message or a batch.
//!
//! Admission comes before work: the API key, the content type and the body
//! size are checked before the body is parsed, and every item of a batch is
//! validated before any is published, so a bad item publishes nothing.

use axum::{
    body::Body,
    extract::State,
    http::{header, HeaderMap},
    Json,
};
use fanout::{Channel, PublishOutcome, PublishRequest};
use serde::Deserialize;
use serde_json::{json, value::RawValue, Value};

use crate::{app::App, codes::ErrorCode, error::ApiError};

/// How long a publisher may take to send its request body.
const BODY_TIMEOUT: std::time::Duration = std::time::Duration::from_secs(10);

/// One message as a publisher sends it.
#[derive(Deserialize)]
struct Item {
    channel: Option<String>,
    #[serde(default)]
    data: Data,
    id: Option<String>,
    publisher: Option<String>,
}

/// A publish body: one message, or `{"messages":[...]}`. (Not a flattened
/// [`Item`]: serde cannot flatten the raw `data` value.)
#[derive(Deserialize)]
struct PublishBody {
    channel: Option<String>,
    #[serde(default)]
    data: Data,
    id: Option<String>,
    publisher: Option<String>,
    messages: Option<Vec<Item>>,
}

/// The `data` field as raw JSON: absent is `None`, while `null` is a payload
/// like any other (a plain `Option` would read it as absent).
#[derive(Default)]
struct Data(Option<Box<RawValue>>);

impl<'de> Deserialize<'de> for Data {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        Box::<RawValue>::deserialize(d).map(|raw| Data(Some(raw)))
    }
}

pub async fn handler(
    State(app): State<App>,
    headers: HeaderMap,
    body: Body,
) -> Result<Json<Value>, ApiError> {
    authorize(&app, &headers)?;
    let json_type = headers
        .get(header::CONTENT_TYPE)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.split(';').next())
        .is_some_and(|t| t.trim().eq_ignore_ascii_case("application/json"));
    if !json_type {
        return Err(ApiError::plain(ErrorCode::UnsupportedMediaType));
    }
    let limit = app.config.max_body;
    // Refuse a declared oversize body before reading any of it.
    let declared = headers
        .get(header::CONTENT_LENGTH)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.parse::<u64>().ok());
    if declared.is_some_and(|n| n > limit as u64) {
        return Err(ApiError::new(
            ErrorCode::PayloadTooLarge,
            format!("the body is over {limit} bytes"),
        ));
    }
    // The body must arrive in bounded time: a client trickling it in would
    // otherwise pin up to `--max-body` bytes for as long as it likes.
    let bytes = match tokio::time::timeout(BODY_TIMEOUT, axum::body::to_bytes(body, limit)).await {
        Ok(Ok(b)) => b,
        Ok(Err(_)) => {
            return Err(ApiError::new(
                ErrorCode::PayloadTooLarge,
                format!("the body is over {limit} bytes"),
            ))
        }
        Err(_) => return Err(ApiError::plain(ErrorCode::RequestTimeout)),
    };
    let parsed: PublishBody = serde_json::from_slice(&bytes)
        .map_err(|e| ApiError::new(ErrorCode::BadJson, e.to_string()))?;

    match parsed.messages {
        None => {
            let item = Item {
                channel: parsed.channel,
                data: parsed.data,
                id: parsed.id,
                publisher: parsed.publisher,
            };
            let req = check(&app, item, None)?;
            let outcome = app.hub.publish(req).await?;
            app.metrics
                .published
                .fetch_add(1, std::sync::atomic::Ordering::Relaxed);
            Ok(Json(outcome_json(&outcome)))
        }
        Some(items) => {
            if items.is_empty() || items.len() > app.config.max_batch {
                let max = app.config.max_batch;
                return Err(ApiError::new(
                    ErrorCode::BadRequest,
                    format!("a batch holds 1 to {max} messages"),
                ));
            }
            let reqs = items
                .into_iter()
                .enumerate()
                .map(|(i, item)| check(&app, item, Some(i)))
                .collect::<Result<Vec<_>, _>>()?;
            let n = reqs.len() as u64;
            let outcomes = app.hub.publish_batch(reqs).await?;
            app.metrics
                .published
                .fetch_add(n, std::sync::atomic::Ordering::Relaxed);
            let results: Vec<Value> = outcomes.iter().map(outcome_json).collect();
            Ok(Json(json!({ "results": results })))
        }
    }
}

fn authorize(app: &App, headers: &HeaderMap) -> Result<(), ApiError> {
    let Some(key) = &app.config.publish_key else {
        return Ok(());
    };
    let given = headers
        .get(header::AUTHORIZATION)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.strip_prefix("Bearer "));
    let ok = given.is_some_and(|g| constant_time_eq(g.as_bytes(), key.as_bytes()));
    if ok {
        Ok(())
    } else {
        Err(ApiError::plain(ErrorCode::Unauthorized))
    }
}

fn constant_time_eq(a: &[u8], b: &[u8]) -> bool {
    a.len() == b.len() && a.iter().zip(b).fold(0u8, |acc, (x, y)| acc | (x ^ y)) == 0
}

/// Validates one item; `index` names it in errors when it is part of a batch.
fn check(app: &App, item: Item, index: Option<usize>) -> Result<PublishRequest, ApiError> {
    let at = |msg: String| match index {
        Some(i) => format!("messages[{i}]: {msg}"),
        None => msg,
    };
    let name = item
        .channel
        .ok_or_else(|| ApiError::new(ErrorCode::BadRequest, at("channel is required".into())))?;
    let channel = Channel::new(&name)
        .map_err(|e| ApiError::new(ErrorCode::BadChannel, at(format!("{name:?}: {e}"))))?;
    let data = item
        .data
        .0
        .ok_or_else(|| ApiError::new(ErrorCode::BadRequest, at("data is required".into())))?;
    let max = app.config.max_payload;
    if data.get().len() > max {
        return Err(ApiError::new(
            ErrorCode::PayloadTooLarge,
            at(format!("data is over {max} bytes")),
        ));
    }
    if nesting(data.get()) > MAX_NESTING {
        return Err(ApiError::new(
            ErrorCode::BadJson,
            at(format!("data nests deeper than {MAX_NESTING} levels")),
        ));
    }
    // Strict JSON, as every client will parse it: numbers in range, no lone
    // surrogates (a raw value alone lets both through).
    if let Err(e) = serde_json::from_str::<serde::de::IgnoredAny>(data.get())
        .and_then(|_| serde_json::from_str::<Value>(data.get()))
    {
        return Err(ApiError::new(ErrorCode::BadJson, at(format!("data: {e}"))));
    }
    let data: Box<str> = data.get().into();
    PublishRequest::new(
        channel,
        data,
        item.id.map(Into::into),
        item.publisher.map(Into::into),
    )
    .map_err(|e| ApiError::new(ErrorCode::BadId, at(e.to_string())))
}

/// Deepest nesting of arrays and objects a payload may have. Every broker and
/// every client parser then agrees on it (Redis's own JSON decoder stops at 1000,
/// many client libraries far earlier).
pub const MAX_NESTING: usize = 64;

/// How deeply arrays and objects nest in valid JSON text.
pub fn nesting(json: &str) -> usize {
    let (mut depth, mut deepest, mut in_string, mut escaped) = (0usize, 0usize, false, false);
    for b in json.bytes() {
        if in_string {
            match (escaped, b) {
                (true, _) => escaped = false,
                (false, b'\\') => escaped = true,
                (false, b'"') => in_string = false,
                _ => {}
            }
            continue;
        }
        match b {
            b'"' => in_string = true,
            b'[' | b'{' => {
                depth += 1;
                deepest = deepest.max(depth);
            }
            b']' | b'}' => depth = depth.saturating_sub(1),
            _ => {}
        }
    }
    deepest
}

fn outcome_json(o: &PublishOutcome) -> Value {
    json!({
        "channel": o.channel.as_str(),
        "offset": o.offset,
        "epoch": o.epoch.as_str(),
        "duplicate": o.duplicate,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn nesting_counts_brackets_outside_strings_only() {
        assert_eq!(nesting("1"), 0);
        assert_eq!(nesting(r#"{"a":[1,{"b":[]}]}"#), 4);
        assert_eq!(nesting(r#"["[[[", "\\\"{{"]"#), 1);
    }
}
