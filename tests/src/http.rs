//! Plain HTTP against one node: publish, long-poll, and GETs that return the
//! status and body as they came, so tests can assert on refusals as well.
//!
//! Every call is bounded: by [`STEP_TIMEOUT`], or for a long-poll by its own
//! hold time plus [`STEP_TIMEOUT`].

use std::time::Duration;

use anyhow::{anyhow, bail, Context, Result};
use reqwest::Url;
use serde_json::{json, Value};

use crate::wait::STEP_TIMEOUT;

/// An HTTP client bound to one node's base URL.
#[derive(Clone)]
pub struct Http {
    /// Shared connection pool; no proxy, so traffic stays on loopback.
    client: reqwest::Client,
    /// `http://127.0.0.1:PORT`
    base: String,
}

/// A long-poll answer: `{"messages":[...],"cursor":"...","recovered":bool}`.
#[derive(Debug, Clone)]
pub struct PollAnswer {
    pub messages: Vec<Value>,
    pub cursor: String,
    pub recovered: bool,
    /// The whole body, for failure messages.
    pub body: Value,
}

impl Http {
    /// A client for the node at `base` (`http://127.0.0.1:PORT`).
    pub fn new(base: impl Into<String>) -> Self {
        let client = reqwest::Client::builder()
            .no_proxy()
            .connect_timeout(STEP_TIMEOUT)
            .build()
            .expect("building a reqwest client without TLS cannot fail");
        Http {
            client,
            base: base.into(),
        }
    }

    /// The base URL.
    pub fn base(&self) -> &str {
        &self.base
    }

    /// `base + path_and_query`, parsed.
    pub fn url(&self, path_and_query: &str) -> Result<Url> {
        Url::parse(&format!("{}{path_and_query}", self.base))
            .with_context(|| format!("bad URL path {path_and_query:?}"))
    }

    /// `GET path`: status and body text.
    pub async fn get(&self, path_and_query: &str) -> Result<(u16, String)> {
        let url = self.url(path_and_query)?;
        self.send(self.client.get(url), STEP_TIMEOUT).await
    }

    /// `GET url` for a prepared URL (query pairs already encoded).
    pub async fn get_url(&self, url: Url, hold: Duration) -> Result<(u16, String)> {
        self.send(self.client.get(url), hold + STEP_TIMEOUT).await
    }

    /// `POST /v1/publish` with a raw body and content type: status and body.
    pub async fn publish_raw(&self, content_type: &str, body: &str) -> Result<(u16, String)> {
        let request = self
            .client
            .post(self.url("/v1/publish")?)
            .header("content-type", content_type)
            .body(body.to_owned());
        self.send(request, STEP_TIMEOUT).await
    }

    /// Publishes `data` to `channel`; the answer must be 200 with an offset.
    /// Returns the ack (`{"channel","offset","epoch","duplicate"}`).
    pub async fn publish(&self, channel: &str, data: Value) -> Result<Value> {
        self.publish_json(&json!({ "channel": channel, "data": data }))
            .await
    }

    /// Publishes a prepared request body (single or batch); must answer 200.
    pub async fn publish_json(&self, body: &Value) -> Result<Value> {
        let (status, text) = self
            .publish_raw("application/json", &body.to_string())
            .await?;
        if status != 200 {
            bail!("POST /v1/publish {body} answered {status}: {text}");
        }
        serde_json::from_str(&text)
            .with_context(|| format!("POST /v1/publish answered non-JSON {text:?}"))
    }

    /// The URL of a long-poll on `channels` from `cursor`, holding `timeout`.
    pub fn poll_url(&self, channels: &[&str], cursor: Option<&str>, timeout: u64) -> Result<Url> {
        let mut url = self.url("/v1/poll")?;
        {
            let mut query = url.query_pairs_mut();
            for channel in channels {
                query.append_pair("channel", channel);
            }
            if let Some(cursor) = cursor {
                query.append_pair("cursor", cursor);
            }
            query.append_pair("timeout", &timeout.to_string());
        }
        Ok(url)
    }

    /// One long-poll; it must answer 200 with the README's shape.
    pub async fn poll(
        &self,
        channels: &[&str],
        cursor: Option<&str>,
        timeout: u64,
    ) -> Result<PollAnswer> {
        let url = self.poll_url(channels, cursor, timeout)?;
        let (status, text) = self
            .get_url(url.clone(), Duration::from_secs(timeout))
            .await?;
        if status != 200 {
            bail!("GET {url} answered {status}: {text}");
        }
        parse_poll_answer(&text).with_context(|| format!("GET {url}"))
    }

    async fn send(
        &self,
        request: reqwest::RequestBuilder,
        limit: Duration,
    ) -> Result<(u16, String)> {
        let exchange = async {
            let response = request.send().await?;
            let status = response.status().as_u16();
            let text = response.text().await?;
            Ok::<_, reqwest::Error>((status, text))
        };
        match tokio::time::timeout(limit, exchange).await {
            Ok(result) => Ok(result?),
            Err(_) => Err(anyhow!("HTTP request to {} took over {limit:?}", self.base)),
        }
    }
}

/// Parses a long-poll body, checking every field the README promises.
pub fn parse_poll_answer(text: &str) -> Result<PollAnswer> {
    let body: Value =
        serde_json::from_str(text).with_context(|| format!("poll answered non-JSON {text:?}"))?;
    let messages = body["messages"]
        .as_array()
        .with_context(|| format!("poll answer without a messages array: {body}"))?
        .clone();
    let cursor = body["cursor"]
        .as_str()
        .with_context(|| format!("poll answer without a cursor string: {body}"))?
        .to_owned();
    let recovered = body["recovered"]
        .as_bool()
        .with_context(|| format!("poll answer without a recovered bool: {body}"))?;
    Ok(PollAnswer {
        messages,
        cursor,
        recovered,
        body,
    })
}

/// Checks an error answer: a 4xx status and `{"error":{"code","message"}}`
/// with both strings non-empty. Returns the code.
pub fn expect_error_body(what: &str, status: u16, text: &str) -> Result<String> {
    if !(400..500).contains(&status) {
        bail!("{what}: expected a 4xx status, got {status} with body {text:?}");
    }
    let body: Value = serde_json::from_str(text)
        .with_context(|| format!("{what}: {status} error body is not JSON: {text:?}"))?;
    let code = body["error"]["code"].as_str().unwrap_or_default();
    let message = body["error"]["message"].as_str().unwrap_or_default();
    if code.is_empty() || message.is_empty() {
        bail!("{what}: error body lacks error.code / error.message strings: {body}");
    }
    Ok(code.to_owned())
}
