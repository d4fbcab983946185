//! The long-poll transport: `GET /v1/poll?channel=..&cursor=..&timeout=..`.
//!
//! Stateless between requests: the cursor carries everything, so the next
//! poll may go to any node. A poll first reads history after the cursor and
//! answers at once when anything is there (or the cursor could not be
//! honoured). Otherwise it parks a subscriber, positioned exactly where that
//! read left off, until a message arrives, the timeout passes, or the node
//! drains. `timeout=0` never parks: that is interval polling.

use std::time::Duration;

use axum::{
    extract::{RawQuery, State},
    http::{header, HeaderValue},
    response::{IntoResponse, Response},
    Extension,
};
use fanout::{Channel, Event, MultiPosition, Position, SharedMessage, SubscribeError};

use crate::{
    app::{App, ConnInfo, Gauge, Query},
    codes::ErrorCode,
    error::ApiError,
};

/// What one poll answers.
struct Answer {
    messages: Vec<SharedMessage>,
    positions: Vec<Position>,
    recovered: bool,
    /// The hold actually applied, when the request asked for more than the maximum.
    clamped: Option<u64>,
}

pub async fn handler(
    State(app): State<App>,
    RawQuery(raw): RawQuery,
    Extension(conn): Extension<ConnInfo>,
) -> Result<Response, ApiError> {
    // Parsed in a plain function, so that nothing of the raw query is kept
    // while the poll is parked.
    let request = PollRequest::parse(raw, &app.config)?;
    let PollRequest {
        channels,
        cursor,
        hold,
        clamped,
    } = request;

    let _gauge = Gauge::up(app.clone(), |m| &m.poll);
    let mut answer = read_now(&app, &channels, cursor.as_ref()).await?;
    answer.clamped = clamped;
    drop(cursor);
    if answer.messages.is_empty() && answer.recovered && hold > 0 && !app.shutdown.is_cancelled() {
        let hold = Duration::from_secs(hold);
        park(&app, &conn, &channels, &mut answer, hold).await?;
    }
    Ok(render(answer))
}

/// A checked poll request.
struct PollRequest {
    channels: Vec<Channel>,
    cursor: Option<MultiPosition>,
    /// Seconds to hold, after clamping.
    hold: u64,
    /// The hold applied when the request asked for more than the maximum.
    clamped: Option<u64>,
}

impl PollRequest {
    fn parse(raw: Option<String>, cfg: &crate::config::Config) -> Result<Self, ApiError> {
        let query = Query::parse(raw.as_deref());
        let channels = query.channels(cfg.max_channels)?;
        if channels.is_empty() {
            return Err(ApiError::plain(ErrorCode::NoChannel));
        }
        let cursor = match query.get("cursor").filter(|c| !c.is_empty()) {
            None => None,
            Some(c) => Some(
                MultiPosition::parse(c, channels.len())
                    .map_err(|e| ApiError::new(ErrorCode::BadPosition, format!("cursor: {e}")))?,
            ),
        };
        // Any whole number of seconds is accepted; one too large even for an
        // integer is simply over the maximum, and clamped like any other.
        let asked = match query.get("timeout") {
            None => cfg.poll_timeout,
            Some(t) if !t.is_empty() && t.len() <= 64 && t.bytes().all(|b| b.is_ascii_digit()) => {
                t.parse::<u64>().unwrap_or(u64::MAX)
            }
            Some(_) => {
                return Err(ApiError::new(
                    ErrorCode::BadRequest,
                    "timeout must be a whole number of seconds",
                ))
            }
        };
        let hold = asked.min(cfg.poll_max_timeout);
        Ok(Self {
            channels,
            cursor,
            hold,
            clamped: (asked > hold).then_some(hold),
        })
    }
}

/// Reads every channel after its cursor position.
async fn read_now(
    app: &App,
    channels: &[Channel],
    cursor: Option<&MultiPosition>,
) -> Result<Answer, ApiError> {
    let limit = app.config.poll_max_messages;
    let mut answer = Answer {
        messages: Vec::new(),
        positions: Vec::new(),
        recovered: true,
        clamped: None,
    };
    for (i, ch) in channels.iter().enumerate() {
        let since = cursor.and_then(|c| c.0.get(i));
        let (subscribed, msgs) = app.hub.read(ch, since, limit).await?;
        answer.recovered &= subscribed.recovered;
        let mut pos = subscribed.position;
        for m in msgs {
            if answer.messages.len() >= limit {
                break;
            }
            pos = m.position();
            answer.messages.push(m);
        }
        answer.positions.push(pos);
    }
    Ok(answer)
}

/// Waits for the first message after the answer's positions, then takes all that are ready.
async fn park(
    app: &App,
    conn: &ConnInfo,
    channels: &[Channel],
    answer: &mut Answer,
    hold: Duration,
) -> Result<(), ApiError> {
    let mut sub = app.hub.subscriber_with_alarm(conn.alarm.clone());
    for (i, channel) in channels.iter().enumerate() {
        let s = sub
            .subscribe(channel.clone(), Some(&answer.positions[i]))
            .await
            .map_err(|e| match e {
                SubscribeError::Broker(b) => ApiError::from(b),
                other => ApiError::new(ErrorCode::BadRequest, other.to_string()),
            })?;
        // History was lost between the read and the subscribe (the subscribe
        // may wait for the broker): answer now with the verdict.
        if !s.recovered {
            answer.recovered = false;
            answer.positions[i] = s.position;
        }
    }
    if !answer.recovered {
        return Ok(());
    }

    let first = tokio::select! {
        ev = sub.next() => ev,
        _ = tokio::time::sleep(hold) => return Ok(()),
        _ = app.shutdown.cancelled() => return Ok(()),
    };
    let mut ev = first.ok();
    while let Some(e) = ev.take() {
        match e {
            Event::Message(m) => {
                if let Some(i) = channels.iter().position(|c| *c == m.channel) {
                    answer.positions[i] = m.position();
                }
                answer.messages.push(m);
            }
            Event::Reset(s) => {
                if let Some(i) = channels.iter().position(|c| *c == s.channel) {
                    answer.positions[i] = s.position;
                }
                answer.recovered = false;
            }
        }
        if answer.messages.len() < app.config.poll_max_messages {
            ev = sub.try_next().ok().flatten();
        }
    }
    Ok(())
}

/// `{"messages":[...],"cursor":"..","recovered":..}`, splicing the shared envelopes in.
fn render(answer: Answer) -> Response {
    let size: usize = answer.messages.iter().map(|m| m.size() + 1).sum();
    let mut body = String::with_capacity(size + 128);
    body.push_str(r#"{"messages":["#);
    for (i, m) in answer.messages.iter().enumerate() {
        if i > 0 {
            body.push(',');
        }
        body.push_str(m.envelope_str());
    }
    body.push_str(r#"],"cursor":""#);
    body.push_str(&MultiPosition(answer.positions).to_string());
    body.push_str(r#"","recovered":"#);
    body.push_str(if answer.recovered { "true" } else { "false" });
    if let Some(t) = answer.clamped {
        body.push_str(&format!(r#","timeout":{t},"timeout_clamped":true"#));
    }
    body.push('}');
    let mut resp = body.into_response();
    let h = resp.headers_mut();
    h.insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static("application/json"),
    );
    h.insert(header::CACHE_CONTROL, HeaderValue::from_static("no-store"));
    resp
}
